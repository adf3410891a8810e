"""Text classification data: read it (hub, AG News CSV, text/label CSV or JSONL), with one-line
errors for bad files and rows, and take stratified subsets."""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path


from .errors import UserError
from .hub import hub_reachable, unreachable

EVAL_NAMES = ("test", "dev", "validation")


@dataclass
class Split:
    texts: list[str]
    labels: list[int]  # 0..K-1


@dataclass
class Corpus:
    train: Split
    eval: Split
    label_names: list[str]


def load_corpus(data: str, train_file: str | None = None, eval_file: str | None = None) -> Corpus:
    """Explicit files win; else `data` is a local directory or a hub dataset name."""
    if train_file or eval_file:
        if not (train_file and eval_file):
            raise UserError("--train-file and --eval-file go together")
        return _load_files(Path(train_file), Path(eval_file))
    path = Path(data)
    if path.is_dir():
        train = _find(path, ("train",))
        if train is None:
            raise UserError(f"{path} has no train.csv or train.jsonl")
        evalf = _find(path, EVAL_NAMES)
        if evalf is None:
            raise UserError(f"{path} has none of test/dev/validation .csv or .jsonl")
        return _load_files(train, evalf)
    if path.suffix in (".csv", ".jsonl") or os.sep in data or data.startswith("."):
        raise UserError(f"data not found: {data}")
    return _load_hub(data)


def _find(directory: Path, stems: tuple[str, ...]) -> Path | None:
    for stem in stems:
        for ext in (".csv", ".jsonl"):
            if (directory / f"{stem}{ext}").is_file():
                return directory / f"{stem}{ext}"
    return None


def _load_files(train_path: Path, eval_path: Path) -> Corpus:
    for p in (train_path, eval_path):
        if not p.is_file():
            raise UserError(f"file not found: {p}")
    names = class_names(train_path)
    train_rows, train_kind = read_rows(train_path)
    eval_rows, eval_kind = read_rows(eval_path)
    for rows, path in ((train_rows, train_path), (eval_rows, eval_path)):
        if not rows:
            raise UserError(f"{path} has no rows")
    if train_kind != eval_kind:
        raise UserError(f"{train_path} and {eval_path} are in different formats ({train_kind} vs {eval_kind})")
    if names is None:
        raw = [label for _, label, _ in train_rows]
        if all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
            # AG News classes are 1..K; text/label files use 0..K-1.
            base = 1 if train_kind == "agnews" else 0
            names = [str(i) for i in range(base, max(max(raw), base) + 1)]
        else:  # names; numbers mixed in among them are names too
            names = sorted({str(x) for x in raw})
            train_rows, eval_rows = ([(t, y if isinstance(y, str) else str(y), n) for t, y, n in rows]
                                     for rows in (train_rows, eval_rows))
    train = _to_split(train_rows, names, train_kind, train_path)
    evals = _to_split(eval_rows, names, eval_kind, eval_path)
    return Corpus(train, evals, names)


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


def read_rows(path: Path) -> tuple[list[tuple[str, int | str, int]], str]:
    """(text, raw label, line number) per row, and the format: 'agnews' or 'textlabel'."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path), "textlabel"
        return _read_csv(path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None


def _csv_records(path: Path):
    """(line number where the record starts, fields) per CSV record; blank lines are skipped.
    Quoted fields may span lines, so the record number is not the line number."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        start = 1
        try:
            for row in reader:
                if row:
                    yield start, row
                start = reader.line_num + 1
        except csv.Error as e:
            raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None


def _read_csv(path: Path) -> tuple[list[tuple[str, int | str, int]], str]:
    records = _csv_records(path)
    first = next(records, None)
    if first is None:
        raise UserError(f"{path} is empty")
    header = [h.strip().lower() for h in first[1]]
    if "text" in header or "label" in header:
        if "text" not in header or "label" not in header:
            raise UserError(f"{path}: header needs both 'text' and 'label' columns, has {first[1]}")
        t, y = header.index("text"), header.index("label")
        rows = []
        for line, row in records:
            if len(row) <= max(t, y):
                raise UserError(f"{path} line {line}: expected columns {','.join(first[1])}; got {len(row)} fields")
            rows.append((row[t], _maybe_int(row[y]), line))
        return rows, "textlabel"
    rows = []
    for line, row in (first, *records):
        if len(row) != 3:
            raise UserError(f'{path} line {line}: expected 3 columns "class","title","description", '
                            f"got {len(row)}")
        if not row[0].strip().lstrip("-").isdigit():
            raise UserError(f"{path} line {line}: class {row[0]!r} is not a whole number")
        rows.append((f"{row[1].strip()} {row[2].strip()}".strip(), int(row[0]), line))
    return rows, "agnews"


def _read_jsonl(path: Path) -> list[tuple[str, int | str, int]]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {line}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
                raise UserError(f"{path} line {line}: needs 'text' and 'label' fields")
            rows.append((obj["text"], obj["label"], line))
    return rows


def _maybe_int(value: str) -> int | str:
    s = value.strip()
    return int(s) if s.lstrip("-").isdigit() else s


def read_split(path: Path, names: list[str]) -> Split:
    """One file, with labels mapped onto known class names (1..K for AG News, 0..K-1 or names otherwise)."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    rows, kind = read_rows(path)
    return _to_split(rows, names, kind, path)


def _to_split(rows, names: list[str], kind: str, path: Path) -> Split:
    if not rows:
        raise UserError(f"{path} has no rows")
    base = 1 if kind == "agnews" else 0
    index = {n: i for i, n in enumerate(names)}
    texts, labels = [], []
    for text, label, line in rows:
        if not isinstance(text, str):
            raise UserError(f"{path} line {line}: text is {type(text).__name__}, not a string")
        if not text.strip():
            raise UserError(f"{path} line {line}: empty text")
        if isinstance(label, int) and not isinstance(label, bool):
            if not base <= label < base + len(names):
                raise UserError(f"{path} line {line}: label {label} is outside {base}..{base + len(names) - 1}")
            labels.append(label - base)
        elif isinstance(label, str) and label in index:
            labels.append(index[label])
        else:
            raise UserError(f"{path} line {line}: unknown label {label!r} (labels: {', '.join(names)})")
        texts.append(text)
    return Split(texts, labels)


def _load_hub(name: str) -> Corpus:
    import datasets

    if not hub_reachable():
        datasets.config.HF_HUB_OFFLINE = True  # the cache may still have it
    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # datasets raises many types; all mean "cannot get it"
        if datasets.config.HF_HUB_OFFLINE:
            raise unreachable("dataset", name, "--data DIR (train.csv + test.csv) or --train-file/--eval-file") from None
        raise UserError(f"cannot load dataset '{name}': {str(e).splitlines()[0]}") from None
    evalname = next((s for s in EVAL_NAMES if s in ds), None)
    if "train" not in ds or evalname is None or "text" not in ds["train"].column_names:
        raise UserError(f"dataset '{name}' needs a train split, a test/validation split and text/label columns")
    feature = ds["train"].features["label"]
    names = list(getattr(feature, "names", None) or sorted(set(ds["train"]["label"])))
    return Corpus(*(Split(list(ds[s]["text"]), [int(y) for y in ds[s]["label"]]) for s in ("train", evalname)),
                  label_names=[str(n) for n in names])


def stratified_subset(split: Split, n: int | None, seed: int) -> Split:
    """Exactly n rows (all of them if n is None or larger) with the class mix of `split`: each class
    gets its share rounded by largest remainder, and at least one row while n allows. Rows keep
    their order; which rows is a pure function of (split, n, seed)."""
    if n is None or n >= len(split.labels):
        return split
    if n < 1:
        raise UserError(f"a subset needs at least 1 row, got {n}")
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(split.labels):
        by_class.setdefault(y, []).append(i)
    total = len(split.labels)
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
    keep = []
    for y, idx in sorted(by_class.items()):
        keep += rng.sample(idx, quota[y])
    keep.sort()
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])
