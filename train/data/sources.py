"""Labelled rows read one at a time from CSV/JSONL/Parquet files, globs of them, or a hub dataset
(streaming too), so that no reader ever holds a whole corpus in memory."""
from __future__ import annotations

import csv
import glob
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..cli import UserError

RawRow = tuple[object, object, int]  # text, label as written, line (or Parquet row) number
EXTENSIONS = (".csv", ".jsonl", ".parquet")


class Rows:
    """A labelled split that can be read again and again, one (text, label 0..K-1) at a time.

    `read` returns a fresh iterator each call. `key`, when given, names the content cheaply (a
    hub dataset's fingerprint, say); without it the token cache hashes the rows themselves."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, int]]], name: str,
                 key: Callable[[], str] | None = None):
        self.read, self.name, self.key = read, name, key

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.read())

    def __repr__(self) -> str:
        return f"Rows({self.name})"


def expand(pattern: str) -> list[Path]:
    """A file, or the files a glob matches, sorted so that every process and run reads one order."""
    if glob.has_magic(pattern):
        paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not paths:
            raise UserError(f"no files match {pattern}")
        return paths
    path = Path(pattern)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return [path]


def raw_rows(path: Path) -> tuple[Iterator[RawRow], str]:
    """(text, raw label, line number) per row, lazily, and the format: 'agnews' or 'textlabel'."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    if path.suffix == ".parquet":
        return _read_parquet(path), "textlabel"
    if path.suffix == ".jsonl":
        return _utf8(path, _read_jsonl(path)), "textlabel"
    try:  # the first record says which CSV layout this is
        rows, kind = _read_csv(path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    return _utf8(path, rows), kind


def _utf8(path: Path, rows: Iterator[RawRow]) -> Iterator[RawRow]:
    try:
        yield from rows
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None


def _csv_records(path: Path) -> Iterator[tuple[int, list[str]]]:
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


def _read_csv(path: Path) -> tuple[Iterator[RawRow], str]:
    records = _csv_records(path)
    first = next(records, None)
    if first is None:
        raise UserError(f"{path} is empty")
    header = [h.strip().lower() for h in first[1]]
    if "text" in header or "label" in header:
        if "text" not in header or "label" not in header:
            raise UserError(f"{path}: header needs both 'text' and 'label' columns, has {first[1]}")
        return _text_label_records(path, records, first[1], header.index("text"), header.index("label")), "textlabel"
    return _agnews_records(path, first, records), "agnews"


def _text_label_records(path: Path, records, header: list[str], t: int, y: int) -> Iterator[RawRow]:
    for line, row in records:
        if len(row) <= max(t, y):
            raise UserError(f"{path} line {line}: expected columns {','.join(header)}; got {len(row)} fields")
        yield row[t], _maybe_int(row[y]), line


def _agnews_records(path: Path, first, records) -> Iterator[RawRow]:
    yield from _agnews_rows(path, (first,))
    yield from _agnews_rows(path, records)


def _agnews_rows(path: Path, records) -> Iterator[RawRow]:
    for line, row in records:
        if len(row) != 3:
            raise UserError(f'{path} line {line}: expected 3 columns "class","title","description", got {len(row)}')
        if not row[0].strip().lstrip("-").isdigit():
            raise UserError(f"{path} line {line}: class {row[0]!r} is not a whole number")
        yield f"{row[1].strip()} {row[2].strip()}".strip(), int(row[0]), line


def jsonl_objects(path: Path) -> Iterator[tuple[int, object, str | None]]:
    """(line number, parsed value, None) per non-blank line of a JSON Lines file, or (line number, None,
    why) for a line that is not valid JSON: the caller decides whether that ends the read or skips the row."""
    with path.open(encoding="utf-8-sig") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield line, json.loads(raw), None
            except json.JSONDecodeError as e:
                yield line, None, f"not valid JSON ({e.msg})"


def _read_jsonl(path: Path) -> Iterator[RawRow]:
    for line, obj, problem in jsonl_objects(path):
        if problem:
            raise UserError(f"{path} line {line}: {problem}")
        if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
            raise UserError(f"{path} line {line}: needs 'text' and 'label' fields")
        yield obj["text"], obj["label"], line


def _read_parquet(path: Path, batch_rows: int = 4096) -> Iterator[RawRow]:
    """Row groups are read a batch at a time; 'line' is the 1-based row number."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{path} is not a Parquet file ({str(e).splitlines()[0]})") from None
    columns = f.schema_arrow.names
    if "text" not in columns or "label" not in columns:
        raise UserError(f"{path}: needs 'text' and 'label' columns, has {columns}")
    row = 0
    for batch in f.iter_batches(batch_size=batch_rows, columns=["text", "label"]):
        for text, label in zip(batch.column("text").to_pylist(), batch.column("label").to_pylist()):
            row += 1
            yield text, label, row


def _maybe_int(value: str) -> int | str:
    s = value.strip()
    return int(s) if s.lstrip("-").isdigit() else s


def labelled(rows: Iterable[RawRow], names: list[str], kind: str, path: Path,
             by_name: bool = False) -> Iterator[tuple[str, int]]:
    """(text, label 0..K-1) per row. Whole-number labels count from 1 in AG News files and from 0
    otherwise; with `by_name` every label (numbers too) is looked up as a class name."""
    base = 1 if kind == "agnews" else 0
    index = {n: i for i, n in enumerate(names)}
    unit = "row" if path.suffix == ".parquet" else "line"
    for text, label, line in rows:
        if not isinstance(text, str):
            raise UserError(f"{path} {unit} {line}: text is {type(text).__name__}, not a string")
        if not text.strip():
            raise UserError(f"{path} {unit} {line}: empty text")
        if by_name and not isinstance(label, str):
            label = str(label)
        if isinstance(label, int) and not isinstance(label, bool):
            if not base <= label < base + len(names):
                raise UserError(f"{path} {unit} {line}: label {label} is outside {base}..{base + len(names) - 1}")
            yield text, label - base
        elif isinstance(label, str) and label in index:
            yield text, index[label]
        else:
            raise UserError(f"{path} {unit} {line}: unknown label {label!r} (labels: {', '.join(names)})")


def file_kind(paths: list[Path]) -> str:
    """The one format all of `paths` share (each file's first record says); a mix is refused."""
    kind = raw_rows(paths[0])[1]
    for p in paths[1:]:
        other = raw_rows(p)[1]
        if other != kind:
            raise UserError(f"{paths[0]} and {p} are in different formats ({kind} vs {other})")
    return kind


def file_rows(paths: list[Path], names: list[str], kind: str, name: str, by_name: bool = False) -> Rows:
    """The rows of `paths`, in order, as one split; nothing is read until the split is iterated."""
    def read() -> Iterator[tuple[str, int]]:
        for p in paths:
            yield from labelled(raw_rows(p)[0], names, kind, p, by_name)
    return Rows(read, name)


def raw_labels(paths: list[Path]) -> Iterator[object]:
    for p in paths:
        for _, label, _ in raw_rows(p)[0]:
            yield label


def content_key(rows: Iterable[tuple[str, int]], chunk: int = 4096) -> tuple[str, int]:
    """sha256 over every (text, label), fed a chunk of rows at a time; and the number of rows."""
    h, n, part = hashlib.sha256(), 0, []
    for text, label in rows:
        part.append(f"{label}\0{text}\0")
        n += 1
        if len(part) == chunk:
            h.update("".join(part).encode("utf-8", "surrogatepass"))
            part.clear()
    h.update("".join(part).encode("utf-8", "surrogatepass"))
    return h.hexdigest(), n
