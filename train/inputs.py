"""The data a run trains and evaluates on: the splits as row streams with their subsets, a held-out
evaluation set carved from the training rows (--holdout), and the checks made before training."""
from __future__ import annotations

from pathlib import Path

import torch

from .config import TrainConfig
from .data import RowCorpus, Split, class_names, load_corpus, open_corpus, stratified_subset, subset_rows
from .errors import UserError


def check_classes(labels: torch.Tensor, names: list[str], cfg: TrainConfig) -> None:
    """Every class must have training rows (labels: the training labels, (n,)), and the evaluation file
    must name the same classes."""
    counts = torch.bincount(labels.long(), minlength=len(names))
    empty = [n for n, c in zip(names, counts.tolist()) if c == 0]
    if empty and not cfg.allow_empty_classes:
        raise UserError(f"{len(empty)} of {len(names)} classes have no training row "
                        f"({', '.join(empty[:5])}{', …' if len(empty) > 5 else ''}): they can never be learned; "
                        "give the class names in a classes.txt beside the training file, fix the labels, "
                        "or pass --allow-empty-classes")
    if cfg.eval_file and not cfg.holdout:
        theirs = class_names(Path(cfg.eval_file))
        if theirs is not None and theirs != names:
            raise UserError(f"the evaluation file's classes.txt lists {theirs}, but training has "
                            f"{names}; both files must use the same classes")


HOLDOUT_SEED = 0  # not the run's seed: every run of a sweep must be scored on the same held-out rows


def carve_holdout(split: Split, n: int) -> tuple[Split, Split]:
    """(the rest, n held-out rows): stratified by class, the same rows whatever the run's seed."""
    if n >= len(split.labels):
        raise UserError(f"--holdout {n} leaves no training rows (the training data has {len(split.labels)})")
    tagged = Split([str(i) for i in range(len(split.labels))], split.labels)
    held = {int(t) for t in stratified_subset(tagged, n, HOLDOUT_SEED).texts}
    pick = lambda keep: Split([t for i, t in enumerate(split.texts) if (i in held) == keep],  # noqa: E731
                              [y for i, y in enumerate(split.labels) if (i in held) == keep])
    return pick(False), pick(True)


def load_data(cfg: TrainConfig) -> RowCorpus:
    """The splits as row streams (read again whenever iterated, never all held), subsets applied.
    --holdout reads the training data into memory to carve its evaluation rows out of it."""
    if cfg.holdout:  # in memory: carved first, then subsets of the rest and of the held-out rows
        corpus = load_corpus(cfg.data, cfg.train_file, cfg.train_file)
        train, held = carve_holdout(corpus.train, cfg.holdout)
        return RowCorpus(stratified_subset(train, cfg.max_train_samples, cfg.seed),
                         stratified_subset(held, cfg.max_eval_samples, cfg.seed), corpus.label_names)
    else:
        corpus = open_corpus(cfg.data, cfg.train_file, cfg.eval_file, streaming=cfg.streaming)
    return RowCorpus(subset_rows(corpus.train, cfg.max_train_samples, cfg.seed),
                     subset_rows(corpus.eval, cfg.max_eval_samples, cfg.seed), corpus.label_names)


def check_rows(corpus: RowCorpus) -> int:
    """Read every row once (a streaming pass, nothing held) so that a malformed row is reported before
    the slow model loading, not after it. Returns the number of rows."""
    return sum(1 for _ in corpus.train) + sum(1 for _ in corpus.eval)
