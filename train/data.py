"""Text classification data: where it is (files, globs, a directory, a hub dataset), its class
names, and its splits, either as row streams (train.sources.Rows, never held whole) or in memory;
plus stratified subsets of either."""
from __future__ import annotations

import glob
import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .hub import hub_reachable, unreachable
from .sources import EXTENSIONS, Rows, expand, file_kind, file_rows, raw_labels, raw_rows

EVAL_NAMES = ("test", "dev", "validation")


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
                streaming: bool = False) -> RowCorpus:
    """Explicit files (or globs) win; else `data` is a local directory or a hub dataset name.
    Reads no more than the first record of each file, plus the training labels when no
    classes.txt names them. `streaming` applies to hub datasets: rows arrive as they download."""
    if train_file or eval_file:
        if not (train_file and eval_file):
            raise UserError("--train-file and --eval-file go together")
        return _file_corpus(expand(train_file), expand(eval_file), train_file, eval_file)
    path = Path(data)
    if path.is_dir():
        train = _find(path, ("train",))
        if train is None:
            raise UserError(f"{path} has no train.csv, train.jsonl or train.parquet")
        evalf = _find(path, EVAL_NAMES)
        if evalf is None:
            raise UserError(f"{path} has none of test/dev/validation .csv, .jsonl or .parquet")
        return _file_corpus(train[0], evalf[0], train[1], evalf[1])
    # A hub id is NAME or ORG/NAME; anything else that is not a directory was meant as a local path.
    if (path.suffix in EXTENSIONS or glob.has_magic(data) or path.is_absolute() or data.count("/") > 1
            or data.startswith((".", "~")) or (os.sep != "/" and os.sep in data)):
        raise UserError(f"data not found: {data}")
    return _hub_corpus(data, streaming)


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


def _file_corpus(train: list[Path], evalf: list[Path], train_name: str, eval_name: str) -> RowCorpus:
    names = class_names(train[0])
    kind, eval_kind = file_kind(train), file_kind(evalf)
    if kind != eval_kind:
        raise UserError(f"{train[0]} and {evalf[0]} are in different formats ({kind} vs {eval_kind})")
    by_name = False
    if names is None:
        names, by_name = _infer_names(train, kind, train_name)
    return RowCorpus(file_rows(train, names, kind, train_name, by_name),
                     file_rows(evalf, names, kind, eval_name, by_name), names)


def _infer_names(paths: list[Path], kind: str, name: str) -> tuple[list[str], bool]:
    """Class names from the training labels (one pass, holding only the distinct labels), and
    whether labels are looked up by name. AG News classes are 1..K; text/label files use 0..K-1."""
    top, numeric, seen = None, True, set()
    for label in raw_labels(paths):
        seen.add(str(label))
        if numeric and isinstance(label, int) and not isinstance(label, bool):
            top = label if top is None else max(top, label)
        else:
            numeric = False  # names; numbers mixed in among them are names too
    if not seen:
        raise UserError(f"{name} has no rows")
    if numeric:
        base = 1 if kind == "agnews" else 0
        return [str(i) for i in range(base, max(top, base) + 1)], False
    return sorted(seen), True


def class_names(train_path: Path) -> list[str] | None:
    classes = train_path.parent / "classes.txt"
    if not classes.is_file():
        return None
    try:
        names = [line.strip() for line in classes.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise UserError(f"{classes} is not UTF-8 text") from None
    if not names:
        raise UserError(f"{classes} lists no class names (one per line)")
    if len(set(names)) != len(names):
        raise UserError(f"{classes} lists a class name twice")
    return names


def read_split(path: Path, names: list[str]) -> Split:
    """One file, with labels mapped onto known class names (1..K for AG News, 0..K-1 or names otherwise)."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return to_split(file_rows([path], names, raw_rows(path)[1], str(path)))


def _hub_corpus(name: str, streaming: bool) -> RowCorpus:
    import datasets

    if not hub_reachable():
        datasets.config.HF_HUB_OFFLINE = True  # the cache may still have it
    try:
        ds = datasets.load_dataset(name, streaming=streaming)
    except Exception as e:  # datasets raises many types; all mean "cannot get it"
        if datasets.config.HF_HUB_OFFLINE:
            raise unreachable("dataset", name,
                              "--data DIR (train.csv + test.csv) or --train-file/--eval-file") from None
        raise UserError(f"cannot load dataset '{name}': {str(e).splitlines()[0]}") from None
    evalname = next((s for s in EVAL_NAMES if s in ds), None)
    features = ds["train"].features if "train" in ds else None  # a streaming dataset may not know them
    if "train" not in ds or evalname is None or (features is not None and not {"text", "label"} <= set(features)):
        raise UserError(f"dataset '{name}' needs a train split, a test/validation split and text/label columns")
    names = getattr(features.get("label") if features else None, "names", None)
    index = None
    if not names:  # no ClassLabel: the distinct labels, sorted, from one pass over the training split
        values = sorted({y for _, y in _hub_read(ds["train"], f"{name}[train]")})
        names, index = [str(v) for v in values], {v: i for i, v in enumerate(values)}
    return RowCorpus(*(_hub_rows(ds[s], f"{name}[{s}]", names, index) for s in ("train", evalname)),
                     label_names=[str(n) for n in names])


def _hub_read(split, name: str) -> Iterator[tuple[str, object]]:
    for batch in split.iter(batch_size=1000):
        if "text" not in batch or "label" not in batch:
            raise UserError(f"{name} needs text and label columns, has {sorted(batch)}")
        yield from zip(batch["text"], batch["label"])


def _hub_rows(split, name: str, names: list[str], index: dict | None) -> Rows:
    def read() -> Iterator[tuple[str, int]]:
        for row, (text, label) in enumerate(_hub_read(split, name), start=1):
            y = index.get(label, -1) if index is not None else int(label)
            if not isinstance(text, str) or not 0 <= y < len(names):
                raise UserError(f"{name} row {row}: needs a string text and a label in {', '.join(names)}, "
                                f"got {type(text).__name__} and {label!r}")
            yield text, y
    fingerprint = getattr(split, "_fingerprint", None)  # a downloaded dataset's content id; not when streaming
    return Rows(read, name, (lambda: f"hub:{name}:{fingerprint}") if fingerprint else None)


def stratified_subset(split: Split, n: int | None, seed: int) -> Split:
    """Exactly n rows (all of them if n is None or larger) with the class mix of `split`: each class
    gets its share rounded by largest remainder, and at least one row while n allows. Rows keep
    their order; which rows is a pure function of (split, n, seed)."""
    if n is None or n >= len(split.labels):
        return split
    keep = _stratified_keep(np.asarray(split.labels), n, seed).tolist()
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def subset_rows(rows: Rows, n: int | None, seed: int) -> Rows:
    """The rows stratified_subset would keep, as a stream. The pick is made on first use (one pass
    that holds the labels, 8 bytes a row), so a process that only opens a cache built elsewhere
    never reads the corpus."""
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

    def key() -> str:
        return f"{rows.key()}:subset:{hashlib.sha256(np.packbits(mask()).tobytes()).hexdigest()}"
    return Rows(read, rows.name, key if rows.key else None)


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
