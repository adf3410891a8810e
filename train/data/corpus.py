"""A run's labelled data: where it is (files, globs, a directory, a hub dataset), its class names (classes.py),
its splits as row streams (sources.Rows, never held whole) or in memory, stratified subsets, a held-out
evaluation set carved from the training rows (--holdout), and the checks made before training."""
from __future__ import annotations

import glob
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import UserError, progress
from .classes import class_names, infer_names
from .hub import OFFLINE_RUN, HubUnreachable, hub_corpus, model_needs_hub
from .sources import EXTENSIONS, Rows, expand_paths, file_kind, file_rows, raw_rows

EVAL_NAMES = ("test", "dev", "validation")
# Shipped with the package, so a clone trains offline: --data ag_news_sample (its README says what it is).
SAMPLES = {"ag_news_sample": Path(__file__).parent / "ag_news_sample"}


@dataclass
class Split:
    texts: list[str]
    labels: list[int]  # 0..K-1

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """(text, label) per row: a Split is a row source like Rows."""
        return zip(self.texts, self.labels)


@dataclass
class Corpus:
    train: Split
    eval: Split
    label_names: list[str]


@dataclass
class RowCorpus:
    """Like Corpus, but each split is read from its source whenever it is iterated."""
    train: Rows
    eval: Rows
    label_names: list[str]


def open_corpus(data: str, train_file: str | None = None, eval_file: str | None = None,
                streaming: bool = False, cache_dir: str | os.PathLike | None = None) -> RowCorpus:
    """Explicit files (or globs) win; else `data` is a shipped sample's name (SAMPLES), a local directory or a
    hub dataset name. Reads no more than the first record of each file, plus the training labels when no
    classes.txt names them and cache_dir does not remember them. `streaming` applies to hub datasets: rows
    arrive as they download."""
    if train_file or eval_file:
        if not (train_file and eval_file):
            raise UserError("--train-file and --eval-file go together")
        return _file_corpus(expand_paths(train_file), expand_paths(eval_file), train_file, eval_file, cache_dir)
    path = SAMPLES.get(data, Path(data))
    if path.is_dir():
        train = _find(path, ("train",))
        if train is None:
            raise UserError(f"{path} has no train.csv, train.jsonl or train.parquet")
        evalf = _find(path, EVAL_NAMES)
        if evalf is None:
            raise UserError(f"{path} has none of test/dev/validation .csv, .jsonl or .parquet")
        return _file_corpus(train[0], evalf[0], train[1], evalf[1], cache_dir)
    # A hub id is NAME or ORG/NAME; anything else that is not a directory was meant as a local path.
    if (path.suffix in EXTENSIONS or glob.has_magic(data) or path.is_absolute() or data.count("/") > 1
            or data.startswith((".", "~")) or (os.sep != "/" and os.sep in data)):
        raise UserError(f"data not found: {data}")
    return RowCorpus(*hub_corpus(data, streaming, EVAL_NAMES))


def load_corpus(data: str, train_file: str | None = None, eval_file: str | None = None) -> Corpus:
    """open_corpus, read into memory: for corpora that fit."""
    c = open_corpus(data, train_file, eval_file)
    return Corpus(to_split(c.train), to_split(c.eval), c.label_names)


def to_split(rows: Rows) -> Split:
    texts, labels = [], []
    for text, label in rows:
        texts.append(text)
        labels.append(label)
    if not texts:
        raise UserError(f"{rows.name} has no rows")
    return Split(texts, labels)


def _find(directory: Path, stems: tuple[str, ...]) -> tuple[list[Path], str] | None:
    """STEM.EXT, else shards STEM-*.EXT (the hub's train-00000-of-00004.parquet layout), and their name."""
    for stem in stems:
        for ext in EXTENSIONS:
            if (directory / f"{stem}{ext}").is_file():
                return [directory / f"{stem}{ext}"], str(directory / f"{stem}{ext}")
            shards = sorted(p for p in directory.glob(f"{stem}-*{ext}") if p.is_file())
            if shards:
                return shards, str(directory / f"{stem}-*{ext}")
    return None


def _file_corpus(train: list[Path], evalf: list[Path], train_name: str, eval_name: str,
                 cache_dir: str | os.PathLike | None) -> RowCorpus:
    names = class_names(train[0])
    kind, eval_kind = file_kind(train), file_kind(evalf)
    if kind != eval_kind:
        raise UserError(f"{train[0]} and {evalf[0]} are in different formats ({kind} vs {eval_kind})")
    if names is None:
        names = infer_names(train, kind, train_name, cache_dir)
    return RowCorpus(file_rows(train, names, kind, train_name), file_rows(evalf, names, kind, eval_name), names)


def read_split(path: Path, names: list[str]) -> Split:
    """One file, with labels mapped onto known class names (1..K for AG News, 0..K-1 or names otherwise)."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return to_split(file_rows([path], names, raw_rows(path)[1], str(path)))


def stratified_subset(split: Split, n: int | None, seed: int) -> Split:
    """Exactly n rows (all of them if n is None or larger) with the class mix of `split`: each class
    gets its share rounded by largest remainder, and at least one row while n allows. Rows keep
    their order; which rows is a pure function of (split, n, seed)."""
    if n is None or n >= len(split.labels):
        return split
    keep = _stratified_keep(np.asarray(split.labels), n, seed).tolist()
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def picked_origin(rows: Rows, how: str) -> Callable[[], str] | None:
    """The origin of the rows that `how` (a subset, a holdout) picks from `rows`: theirs, or their key, and how."""
    base = rows.origin or (rows.key and (lambda: f"key:{rows.key()}"))
    return (lambda: f"{base()}:{how}") if base else None


def subset_rows(rows: Rows, n: int | None, seed: int) -> Rows:
    """The rows stratified_subset would keep, as a stream. The pick is made on first use (one pass
    that holds the labels, 8 bytes a row), so a run whose token cache already holds them never reads
    the corpus: the cache knows them by their origin, the pick's settings included."""
    if n is None:
        return rows
    if n < 1:
        raise UserError(f"a subset needs at least 1 row, got {n}")
    picked: list[np.ndarray] = []

    def mask() -> np.ndarray:
        if not picked:
            labels = np.fromiter((y for _, y in rows), dtype=np.int64)
            keep = np.ones(len(labels), bool)
            if n < len(labels):
                keep[:] = False
                keep[_stratified_keep(labels, n, seed)] = True
            picked.append(keep)
        return picked[0]

    def read() -> Iterator[tuple[str, int]]:
        keep = mask()
        return (row for i, row in enumerate(rows) if keep[i])

    return Rows(read, rows.name, origin=picked_origin(rows, f"subset:{n}:{seed}"))


def _stratified_keep(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of the stratified subset; labels: (rows,) ints."""
    if n < 1:
        raise UserError(f"a subset needs at least 1 row, got {n}")
    by_class = {int(y): np.flatnonzero(labels == y) for y in np.unique(labels)}
    total = len(labels)
    quota = {y: n * len(idx) // total for y, idx in by_class.items()}
    by_remainder = sorted(by_class, key=lambda y: (-(n * len(by_class[y]) % total), y))
    for y in by_remainder[: n - sum(quota.values())]:
        quota[y] += 1
    if n >= len(by_class):  # no class present in the data vanishes from the subset
        for y in sorted(by_class):
            if quota[y] == 0:
                quota[max(quota, key=lambda c: (quota[c], -c))] -= 1
                quota[y] = 1
    rng = random.Random(seed)
    # Sampling positions in range(len(idx)) draws exactly what sampling the list idx itself would.
    keep = [idx[rng.sample(range(len(idx)), quota[y])] for y, idx in sorted(by_class.items())]
    return np.sort(np.concatenate(keep))


def check_classes(labels: torch.Tensor, names: list[str], cfg: TrainConfig, held: torch.Tensor | None = None) -> None:
    """Every class must have training rows (labels: the training labels, (n,)), and the evaluation file
    must name the same classes. held: the evaluation labels, which under --holdout came from the training data."""
    counts = torch.bincount(labels.long(), minlength=len(names))
    empty = [n for n, c in zip(names, counts.tolist()) if c == 0]
    if empty and not cfg.allow_empty_classes:
        taken = cfg.holdout and held is not None and any(
            c > 0 for n, c in zip(names, torch.bincount(held.long(), minlength=len(names)).tolist()) if n in empty)
        raise UserError(f"{len(empty)} of {len(names)} classes have no training row "
                        f"({', '.join(empty[:5])}{', …' if len(empty) > 5 else ''}): they can never be learned; "
                        + (f"--holdout {cfg.holdout} took the only rows of some: hold out fewer (a smaller --holdout), "
                           "add rows of them, or pass --allow-empty-classes" if taken else
                           "give the class names in a classes.txt beside the training file, fix the labels, "
                           "or pass --allow-empty-classes"))
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


def holdout_rows(rows: Rows, n: int) -> tuple[Rows, Rows]:
    """carve_holdout's (rest, held-out rows) as streams. The pick is made on first use, by one pass that
    holds the labels (8 bytes a row), so a run whose token cache already holds both never reads the rows. A
    pass over the rest keeps the n held-out rows it passes, and the held-out split is read from them."""
    picked: list[np.ndarray] = []
    kept: list[list[tuple[str, int]]] = []  # the held-out rows, once a pass over the rest has ended

    def held() -> np.ndarray:
        if not picked:
            labels = np.fromiter((y for _, y in rows), dtype=np.int64)
            if n >= len(labels):
                raise UserError(f"--holdout {n} leaves no training rows (the training data has {len(labels)})")
            mask = np.zeros(len(labels), bool)
            mask[_stratified_keep(labels, n, HOLDOUT_SEED)] = True
            picked.append(mask)
        return picked[0]

    def rest() -> Iterator[tuple[str, int]]:
        mask, aside = held(), []
        for i, row in enumerate(rows):
            if mask[i]:
                aside.append(row)
            else:
                yield row
        kept[:] = [aside]

    def held_out() -> Iterator[tuple[str, int]]:
        if kept:
            return iter(kept[0])
        mask = held()
        return (row for i, row in enumerate(rows) if mask[i])
    origin = lambda keep: picked_origin(rows, f"holdout:{n}:{HOLDOUT_SEED}:{keep}")  # noqa: E731
    return Rows(rest, rows.name, origin=origin(False)), Rows(held_out, f"{rows.name} (held out)", origin=origin(True))


def load_data(cfg: TrainConfig) -> RowCorpus:
    """The splits as row streams (read again whenever iterated, never all held), --holdout's evaluation rows
    carved out of the training rows, subsets applied. Reads no rows: the first record of each file, and
    classes.txt (the training labels where no classes.txt names the classes)."""
    try:
        corpus = open_corpus(cfg.data, cfg.train_file, cfg.train_file if cfg.holdout and cfg.train_file
                             else cfg.eval_file, streaming=cfg.streaming, cache_dir=cfg.cache_dir)
    except HubUnreachable:
        if not model_needs_hub(cfg.model):
            raise
        raise HubUnreachable(f"cannot fetch dataset '{cfg.data}' nor model '{cfg.model}': the Hugging Face hub is "
                             "unreachable and they are not in the local cache; pass local ones (--data DIR or "
                             f"--train-file/--eval-file, and --model DIR), or run {OFFLINE_RUN}") from None
    train, held = holdout_rows(corpus.train, cfg.holdout) if cfg.holdout else (corpus.train, corpus.eval)
    return RowCorpus(subset_rows(train, cfg.max_train_samples, cfg.seed),
                     subset_rows(held, cfg.max_eval_samples, cfg.seed), corpus.label_names)


def check_rows(corpus: RowCorpus) -> tuple[int, int]:
    """Read every row once (a streaming pass, nothing held) so that a malformed row is reported before
    the slow model loading, not after it. Returns the numbers of training and evaluation rows."""
    return tuple(sum(1 for _ in progress(split, f"checking {name} rows")) for name, split in
                 (("training", corpus.train), ("evaluation", corpus.eval)))
