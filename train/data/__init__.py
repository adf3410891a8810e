"""Rows in, batches out: what a run reads, tokenized once, cut into length-grouped batches.

    corpus = load_data(cfg)          # the splits as row streams: files, globs, a directory or the hub; no row read
    early = tokenize_early(corpus, cfg, dist)   # before the model: each row read once (checked, hashed, tokenized
                                                # into the memory-mapped cache), or none when the cache has them
    train, held = tokenized(early, corpus, tokenizer, cfg, dist)   # Encoded, once the model has its length
    for rows in EpochBatches(train, cfg.batch_size, cfg.seed, epoch):   # windowed length grouping
        batch = train.batch(rows)    # input_ids, attention_mask, labels; eval_windows plans evaluation

Modules: sources (CSV/JSONL/Parquet readers), labels (label and text checks), corpus (where the data is, its
class names, the checks), splits (the run's two splits, --holdout and subsets, tokenized in one pass before the
model loads), cache (the token cache), batches (encode, Encoded, the two planners, collate); loaded only when
needed: hub (hub datasets), prefetch (batches made ahead on CUDA).
"""
from .batches import Encoded, EpochBatches, collate, encode, eval_windows, ready_batches
from .corpus import check_classes, check_rows
from .splits import Tokenized, load_data, tokenize_early, tokenized

__all__ = ["load_data", "tokenize_early", "tokenized", "Tokenized", "check_rows", "check_classes", "encode",
           "Encoded", "EpochBatches", "eval_windows", "collate", "ready_batches"]
