"""A run's labelled data: where it is (files, globs, a directory, a hub dataset), as row streams (sources.Rows, never
held whole) or in memory; its task kind and label names (classes.txt, or the training labels themselves, read once and
remembered in the cache folder, so a warm run reads no row); the checks made before training. Splits: splits.py."""
from __future__ import annotations

import glob
import json
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TrainConfig
from ..errors import UserError, note, progress
from ..files import atomic_write
from .labels import MULTI, REGRESSION, SINGLE, LabelKindError, LabelKinds, case_twins, label_kinds, label_of
from .sources import EXTENSIONS, Rows, expand_paths, file_kind, file_rows, files_origin, raw_labels, raw_rows

EVAL_NAMES = ("test", "dev", "validation")
HUB_EVAL_NAMES = ("validation", "dev", "test")  # GLUE's test split has no labels
# Shipped with the package, so a clone trains offline: --data ag_news_sample (its README says what it is).
SAMPLES = {"ag_news_sample": Path(__file__).parent / "ag_news_sample"}


@dataclass
class Split:
    texts: list[str]
    labels: list  # as the task trains on them: a class 0..K-1, a multi-hot bytes, or a float

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """(text, label) per row: a Split is a row source like Rows."""
        return zip(self.texts, self.labels)


@dataclass
class Corpus:
    train: Split
    eval: Split
    label_names: list[str]
    task: str = SINGLE  # the task kind the labels are read for (labels.SINGLE, MULTI, REGRESSION)


@dataclass
class RowCorpus:
    """Like Corpus, but each split is read from its source whenever it is iterated."""
    train: Rows
    eval: Rows
    label_names: list[str]  # the K labels; regression's one output is named "score"
    task: str = SINGLE  # the task kind the labels are read for (labels.SINGLE, MULTI, REGRESSION)
    valid: Rows | None = None  # validation rows, besides eval, that pick the best epoch: a dev split, --holdout's


def open_corpus(data: str, train_file: str | None = None, eval_file: str | None = None,
                streaming: bool = False, cache_dir: str | os.PathLike | None = None,
                text_columns: tuple[str, ...] | None = None, data_config: str | None = None,
                task: str | None = None) -> RowCorpus:
    """Explicit files (or globs) win; else `data` is a shipped sample's name (SAMPLES), a local directory or a
    hub dataset name. Reads no more than the first record of each file, plus the training labels when no
    classes.txt names them and cache_dir does not remember them. `streaming` applies to hub datasets: rows
    arrive as they download. text_columns: the files' text column(s), else the usual names are looked for.
    data_config: a hub dataset's configuration (an alias such as glue/mrpc names both). task: the kind asked
    for (--task), else read from the training labels (labels.kind_of_labels)."""
    if data_config and (train_file or eval_file or SAMPLES.get(data, Path(data)).is_dir()):
        raise UserError(f"--data-config {data_config} is for a hub dataset, not local files")
    if train_file or eval_file:
        if not (train_file and eval_file):
            raise UserError("--train-file and --eval-file go together")
        return _file_corpus(expand_paths(train_file), expand_paths(eval_file), train_file, eval_file, cache_dir,
                            text_columns, task)
    path = SAMPLES.get(data, Path(data))
    if path.is_dir():
        train = _find(path, ("train",))
        if train is None:
            raise UserError(f"{path} has no train.csv, train.jsonl or train.parquet")
        evalf = _find(path, EVAL_NAMES)
        if evalf is None:
            raise UserError(f"{path} has none of test/dev/validation .csv, .jsonl or .parquet")
        corpus = _file_corpus(train[0], evalf[0], train[1], evalf[1], cache_dir, text_columns, task)
        valid = _find(path, tuple(n for n in EVAL_NAMES if not Path(evalf[1]).name.startswith(n)))  # test + dev
        if valid is not None:
            corpus.valid = file_rows(valid[0], corpus.label_names, file_kind(valid[0], text_columns), valid[1],
                                     text_columns, corpus.task)
        return corpus
    # A hub id is NAME or ORG/NAME; anything else that is not a directory was meant as a local path.
    if (path.suffix in EXTENSIONS or glob.has_magic(data) or path.is_absolute() or data.count("/") > 1
            or data.startswith((".", "~")) or (os.sep != "/" and os.sep in data)):
        raise UserError(f"data not found: {data}")
    if text_columns:
        raise UserError(f"--text-columns names columns of files (--train-file, --data DIR), not of hub dataset {data}")
    from .hub import hub_corpus  # the hub's client is loaded only for a hub dataset

    return RowCorpus(*hub_corpus(data, streaming, HUB_EVAL_NAMES, data_config, task))


def load_corpus(data: str, train_file: str | None = None, eval_file: str | None = None,
                text_columns: tuple[str, ...] | None = None, task: str | None = None) -> Corpus:
    """open_corpus, read into memory: for corpora that fit."""
    c = open_corpus(data, train_file, eval_file, text_columns=text_columns, task=task)
    return Corpus(to_split(c.train), to_split(c.eval), c.label_names, c.task)


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
                 cache_dir: str | os.PathLike | None, columns: tuple[str, ...] | None = None,
                 asked: str | None = None) -> RowCorpus:
    names = class_names(train[0])
    kind, eval_kind = file_kind(train, columns), file_kind(evalf, columns)
    if kind != eval_kind:
        raise UserError(f"{train[0]} and {evalf[0]} are in different formats ({kind} vs {eval_kind})")
    if names is None:
        task, names = infer_names(train, kind, train_name, cache_dir, columns, asked)
    else:  # named classes: one per row, or a list of them (the first row says which, unless --task does)
        first = None if asked or kind == "agnews" else next((raw for raw, _ in raw_labels(train[:1], columns)), None)
        task = asked or (MULTI if isinstance(first, (list, tuple)) else SINGLE)  # AG News' layout: one class a row
        if task == REGRESSION:
            raise UserError(f"{train[0].parent / 'classes.txt'} names classes, but a regression has none: "
                            "remove it, or drop --task regression")
    return RowCorpus(file_rows(train, names, kind, train_name, columns, task),
                     file_rows(evalf, names, kind, eval_name, columns, task), names, task)


def read_split(path: Path, names: list[str], columns: tuple[str, ...] | None = None, task: str = SINGLE) -> Split:
    """One file, its labels read for the task's kind: classes mapped onto known class names (1..K for AG News,
    0..K-1 or names otherwise), lists of them, or scores."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return to_split(file_rows([path], names, raw_rows(path, columns)[1], str(path), columns, task))


def check_classes(labels: torch.Tensor, names: list[str], cfg: TrainConfig, held: torch.Tensor | None = None) -> None:
    """Every class must have training rows (labels: the training labels, (n,)), and the evaluation file
    must name the same classes. held: the evaluation labels, which under --holdout came from the training data."""
    counts = class_counts(labels, len(names))
    empty = [n for n, c in zip(names, counts.tolist()) if c == 0] if counts is not None else []
    if empty and not cfg.allow_empty_classes:
        taken = cfg.holdout and held is not None and any(
            c > 0 for n, c in zip(names, class_counts(held, len(names)).tolist()) if n in empty)
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


def class_counts(labels: torch.Tensor, k: int) -> torch.Tensor | None:
    """(K,) rows of each class: labels (n,) class ids, or (n, K) multi-hot; None for (n,) regression scores."""
    if labels.is_floating_point():
        return None
    return labels.long().sum(0) if labels.ndim == 2 else torch.bincount(labels.long(), minlength=k)


def check_rows(corpus: RowCorpus) -> tuple[int, int]:
    """Read every row once (a streaming pass, nothing held) so that a malformed row is reported before
    the slow model loading, not after it. Returns the numbers of training and evaluation rows."""
    return tuple(sum(1 for _ in progress(split, f"checking {name} rows")) for name, split in
                 (("training", corpus.train), ("evaluation", corpus.eval)))


# The class names: classes.txt, or the training labels themselves, remembered in the cache folder.

NAMES_FORMAT = "2"  # of the remembered names (labels-KEY.json); another is not trusted, only recomputed
MAX_CLASSES = 100_000  # distinct labels held while reading a column: a column of scores names no classes


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


def infer_names(paths: list[Path], kind: str, name: str, cache_dir: str | os.PathLike | None = None,
                columns: tuple[str, ...] | None = None, asked: str | None = None) -> tuple[str, list[str]]:
    """(task kind, label names) from the training labels, in one pass holding only the distinct labels: the kind
    as labels.kind_of_labels reads it, or `asked` (--task) when the labels fit it; for classes, whole numbers
    name classes 1..K in AG News files and 0..K-1 otherwise, class names sorted; a regression's one output is
    "score". A label of no kind, a mix of kinds, or a number that would make far more classes than the labels
    seen, is one line. With cache_dir, the answer (and its notes) is kept there under the files' origin (paths,
    sizes, times), and read back while the files are unchanged."""
    memo = Path(cache_dir) / f"labels-{_origin_key(paths, kind)}.json" if cache_dir else None
    found = _remembered(memo) if memo else None
    if found is None:
        found = _infer(paths, kind, name, columns)
        if memo:
            try:
                atomic_write(memo, lambda tmp: Path(tmp).write_text(json.dumps({"format": NAMES_FORMAT, **found})))
            except OSError:  # a cache that cannot be written costs the next run this pass, nothing else
                pass
    fits = found["kinds"]
    task = asked or (SINGLE if SINGLE in fits else fits[0])
    if task not in fits:
        raise UserError(f"{name}: --task {task} does not fit its labels, which are written for "
                        f"{' or '.join(fits)}")
    if task == REGRESSION:
        return task, ["score"]
    if found["problem"]:
        raise UserError(found["problem"])
    for line in found["notes"]:
        note(line)
    return task, found["names"]


def _infer(paths: list[Path], kind: str, name: str, columns: tuple[str, ...] | None) -> dict:
    """What infer_names remembers: the kinds the labels fit, and the class names (or why they make none)."""
    seen, at = {}, [None, ""]  # each distinct class label, and where it first appears; the row being read

    def values() -> Iterator[object]:
        for raw, where in raw_labels(paths, columns):
            at[:] = raw, where
            yield raw
            for item in raw if isinstance(raw, (list, tuple)) else [raw]:
                label = label_of(item)
                if label is not None and len(seen) <= MAX_CLASSES:  # a regression's scores: no class list
                    seen.setdefault(label, where)
    try:
        fits = label_kinds(values(), lambda i: f"the label at {at[1]}")
    except LabelKindError as e:
        if isinstance(at[0], (str, bool)) or at[0] is None:
            LabelKinds().check(at[0], at[1])  # what is wrong with a text label, in its own words, where it says more
        raise UserError(str(e)) from None
    except ValueError:
        raise UserError(f"{name} has no rows") from None
    names, notes, problem = [], [], f"{name}: its labels name " + ("no classes" if not seen else
                                                                    f"more than {MAX_CLASSES:,} classes")
    try:
        if 0 < len(seen) <= MAX_CLASSES:
            names, notes, problem = *_class_names(seen, kind, name), None
    except UserError as e:
        problem = str(e)
    return {"kinds": sorted(fits), "names": names, "notes": notes, "problem": problem}


def _class_names(seen: dict, kind: str, name: str) -> tuple[list[str], list[str]]:
    """(names, notes) of the classes `seen` (label -> where first): whole numbers or names, never both."""
    kinds = LabelKinds()
    for label, where in seen.items():
        kinds.check(label, where)
    if kinds.first[0] is str:
        return sorted(seen), case_twins(seen)
    base, low, top = (1 if kind == "agnews" else 0), min(seen), max(seen)
    if low < base:
        raise UserError(f"{name}: label {low} is below {base}; whole-number labels are {base}..K"
                        + (" in AG News' layout" if base else ""))
    if top - base + 1 > len(seen) + 1000:  # not the index of a class: it would make a head that size
        raise UserError(f"{name}: label {top} would make {top - base + 1:,} classes, but only {len(seen)} distinct "
                        f"labels appear; whole-number labels are {base}..K, or name the classes in classes.txt")
    return [str(i) for i in range(base, top + 1)], []


def _origin_key(paths: list[Path], kind: str) -> str:
    return hashlib.sha256(json.dumps([NAMES_FORMAT, files_origin(paths), kind]).encode()).hexdigest()[:32]


def _remembered(memo: Path) -> dict | None:
    try:
        found = json.loads(memo.read_text())
        if found.get("format") == NAMES_FORMAT and all(isinstance(n, str) for n in found["names"] + found["notes"]) \
                and set(found["kinds"]) <= {SINGLE, MULTI, REGRESSION} and found["kinds"]:
            return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None
