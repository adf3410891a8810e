"""Rows in, batches out: what a run reads, tokenized once, cut into length-grouped batches.

    corpus = load_data(cfg)          # the splits as row streams: files, globs, a directory or the hub; no row read
    early = tokenize_early(corpus, cfg, dist)   # before the model: each row read once (checked, hashed, tokenized
                                                # into the memory-mapped cache), or none when the cache has them
    train, held = tokenized(early, corpus, tokenizer, cfg, dist)   # Encoded, once the model has its length
    for rows in EpochBatches(train, cfg.batch_size, cfg.seed, epoch):   # windowed length grouping
        batch = train.batch(rows)    # input_ids, attention_mask, labels; eval_windows plans evaluation

Modules: sources (CSV/JSONL/Parquet readers), labels (label and text checks), classes (class names), hub (hub
datasets), corpus (splits, subsets, holdout, checks), cache (the token cache), batches (encode, Encoded, the two
planners, collate), splits (a run's two splits, tokenized before the model loads), prefetch (batches made ahead).
"""
from .batches import Encoded, EpochBatches, collate, encode, eval_windows
from .corpus import check_classes, check_rows, load_data
from .prefetch import Prefetcher
from .splits import Tokenized, tokenize_early, tokenized

__all__ = ["load_data", "tokenize_early", "tokenized", "Tokenized", "check_rows", "check_classes", "encode",
           "Encoded", "EpochBatches", "eval_windows", "collate", "Prefetcher"]
