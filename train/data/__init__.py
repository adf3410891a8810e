"""Rows in, batches out: what a run reads, tokenized once, cut into length-grouped batches.

    corpus = load_data(cfg)          # the splits as row streams: files, globs, a directory or the hub
    check_rows(corpus)               # every row read once: a bad one is named before the model loads
    train = encode(corpus.train, tokenizer, cfg.max_length, cfg.cache_dir, dist)   # cached, memory-mapped
    check_classes(train.labels, corpus.label_names, cfg)
    for rows in EpochBatches(train, cfg.batch_size, cfg.seed, epoch):   # windowed length grouping
        batch = train.batch(rows)    # input_ids, attention_mask, labels; eval_windows plans evaluation

Modules: sources (CSV/JSONL/Parquet readers), labels (label and text checks), hub (hub datasets), corpus
(splits, subsets, holdout, checks), cache (the token cache), batches (Encoded, the two planners, collate),
prefetch (batches made ahead).
"""
from .batches import Encoded, EpochBatches, collate, encode, eval_windows
from .corpus import check_classes, check_rows, load_data
from .prefetch import Prefetcher

__all__ = ["load_data", "check_rows", "check_classes", "encode", "Encoded", "EpochBatches", "eval_windows",
           "collate", "Prefetcher"]
