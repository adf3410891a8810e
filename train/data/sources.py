"""Rows read one at a time from CSV/JSONL/Parquet files or globs of them (one reader, `records`, for training,
evaluation and bulk scoring), labelled and checked (labels.py), so that no reader ever holds a whole corpus in
memory."""
from __future__ import annotations

import csv
import glob
import json
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import NamedTuple

from ..errors import UserError
from .labels import SINGLE, LabelKinds, RawRow, csv_label, label_column, labelled, row_text, text_columns, whole_number

EXTENSIONS = (".csv", ".jsonl", ".parquet")
Columns = tuple[str, ...] | None  # the text column(s) a user named (labels.text_columns' `explicit`), or None


class Rows:
    """A labelled split that can be read again and again, one (text, label 0..K-1) at a time.

    `read` returns a fresh iterator each call. `key`, when given, names the content cheaply (a hub dataset's
    fingerprint, say). `origin`, when given, names where the rows come from, without reading them (the files'
    paths, sizes and times, the settings that pick the rows): the token cache finds its entry by it, and hashes
    the rows only while it builds the entry. With neither, the rows are hashed as they are tokenized."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, int]]], name: str,
                 key: Callable[[], str] | None = None, origin: Callable[[], str] | None = None):
        self.read, self.name, self.key, self.origin = read, name, key, origin

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.read())

    def __repr__(self) -> str:
        return f"Rows({self.name})"


def expand_paths(pattern: str) -> list[Path]:
    """A file, or the files a glob matches, sorted so that every process and run reads one order. A name is
    the file of that name whenever one exists, whatever it holds ('[x].csv', 'a*.csv', spaces, a leading
    dash); only otherwise is it a pattern, whose folder may be a literal name too ('[2024]/train-*.csv')."""
    path = Path(pattern)
    if path.is_file():
        return [path]
    if not glob.has_magic(pattern) or (path.parent.is_dir() and not glob.has_magic(path.name)):
        raise UserError(f"file not found: {path}")
    found = glob.glob(pattern, recursive=True)
    if not found and glob.has_magic(str(path.parent)) and path.parent.is_dir():
        found = glob.glob(str(Path(glob.escape(str(path.parent))) / path.name), recursive=True)
    paths = sorted(Path(p) for p in found if Path(p).is_file())
    if not paths:
        raise UserError(f"no files match {pattern}")
    return paths


class Record(NamedTuple):
    """One record of an input file: where it starts (line, or row for Parquet), its text and label as written
    (label None where the file has none), its id (None where none), and what is wrong with it, if anything."""
    line: int
    text: object
    label: object
    id: object = None
    problem: str | None = None


def records(path: Path, labels: bool = True, columns: Columns = None) -> tuple[Iterator[Record], str]:
    """The records of a CSV, JSONL or Parquet file, lazily, and its layout: 'agnews' (no header: class, title,
    description; the text is title + " " + description) or 'textlabel' (a CSV header or JSON fields naming
    text, or `columns`, and label when `labels`, and maybe id). A malformed record comes with its problem, for
    the caller to stop on (training) or skip (bulk scoring); a file that cannot be read at all is one UserError."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    if path.suffix == ".parquet":
        return _read_parquet(path, labels, columns), "textlabel"
    if path.suffix == ".jsonl":
        return _utf8(path, _read_jsonl(path, labels, columns)), "textlabel"
    try:  # the first record says which CSV layout this is
        rows, kind = _read_csv(path, labels, columns)
    except UnicodeDecodeError:
        raise UserError(f"{path} line {_first_bad_line(path)} is not UTF-8 text") from None
    return _utf8(path, rows), kind


def raw_rows(path: Path, columns: Columns = None) -> tuple[Iterator[RawRow], str]:
    """(text, raw label, line number) per row of a training or evaluation file, lazily, and its layout; the
    first malformed record stops the read, naming its line."""
    found, kind = records(path, True, columns)

    def rows() -> Iterator[RawRow]:
        for r in found:
            if r.problem:
                raise UserError(f"{path} {'row' if path.suffix == '.parquet' else 'line'} {r.line}: {r.problem}")
            yield r.text, r.label, r.line
    return rows(), kind


def _utf8(path: Path, rows: Iterator[Record]) -> Iterator[Record]:
    try:
        yield from rows
    except UnicodeDecodeError:
        raise UserError(f"{path} line {_first_bad_line(path)} is not UTF-8 text") from None


def _first_bad_line(path: Path) -> int:
    """The number of the first line of `path` that is not UTF-8 (read again only when decoding failed)."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
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


AGNEWS = ("class", "title", "description")


def _read_csv(path: Path, labels: bool, columns: Columns) -> tuple[Iterator[Record], str]:
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise UserError(f"{path} is empty")
    header = [h.strip().lower() for h in first[1]]
    agnews = len(first[1]) == 3 and whole_number(first[1][0]) is not None and not columns  # a record, not a header
    named = columns and tuple(c.strip().lower() for c in columns)  # as the header is read
    texts = text_columns(header, str(path), named) if not agnews else ("text",) if "text" in header else None
    label = label_column(header)
    if texts or label in header:
        if not texts or (labels and label not in header):
            raise UserError(f"{path}: header needs both 'text' and 'label' columns, has {first[1]}" if labels else
                            f"{path}: header needs a 'text' column, has {first[1]}")
        return _header_records(rows, header, texts, label), "textlabel"
    if not labels and not (len(first[1]) == 3 and whole_number(first[1][0]) is not None):
        raise UserError(f"{path}: the header needs a 'text' column (or rows of AG News' class,title,description), "
                        f"has {header}")
    return _agnews_records(chain([first], rows), labels), "agnews"


def _header_records(rows, header: list[str], texts: tuple[str, ...], label: str) -> Iterator[Record]:
    column = {name: header.index(name) for name in (*texts, label, "id") if name in header}
    for line, row in rows:
        if len(row) != len(header):
            yield Record(line, None, None, problem=f"expected {len(header)} columns ({','.join(header)}), "
                                                   f"got {len(row)}")
            continue
        get = {name: row[i] for name, i in column.items()}
        yield Record(line, row_text(get, texts), csv_label(get.get(label)), get.get("id"))


def _agnews_records(rows, labels: bool) -> Iterator[Record]:
    for line, row in rows:
        if len(row) != 3:
            yield Record(line, None, None, problem=f"expected 3 columns ({','.join(AGNEWS)}), got {len(row)}")
        elif labels and whole_number(row[0]) is None:
            yield Record(line, None, None, problem=f"class {row[0]!r} is not a whole number (ASCII digits 0-9)")
        else:
            yield Record(line, f"{row[1].strip()} {row[2].strip()}".strip(), whole_number(row[0]) if labels else None)


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


def _read_jsonl(path: Path, labels: bool, columns: Columns) -> Iterator[Record]:
    """The first object's fields name the text column(s) of every line."""
    texts, label = None, "label"
    for line, obj, problem in jsonl_objects(path):
        if texts is None and isinstance(obj, dict):
            texts, label = text_columns(obj, f"{path} line {line}", columns), label_column(obj)
        if problem:
            yield Record(line, None, None, problem=problem)
        elif not isinstance(obj, dict) or texts is None or not obj.keys() >= {*texts, *([label] if labels else [])}:
            names = texts or ("text",)
            quoted = "', '".join(names)
            yield Record(line, None, None, problem=f"needs '{quoted}' and '{label}' fields" if labels else
                         'needs a "text" field' if len(names) == 1 else f'needs "{names[0]}" and "{names[1]}" fields')
        else:
            yield Record(line, row_text(obj, texts), obj.get(label), obj.get("id"))


def _read_parquet(path: Path, labels: bool, columns: Columns, batch_rows: int = 4096) -> Iterator[Record]:
    """Row groups are read a batch at a time; 'line' is the 1-based row number."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{path} is not a Parquet file ({str(e).splitlines()[0]})") from None
    has = f.schema_arrow.names
    texts, label = text_columns(has, str(path), columns), label_column(has)
    if not texts or (labels and label not in has):
        raise UserError(f"{path}: needs 'text' and 'label' columns, has {has}" if labels else
                        f"{path}: needs a 'text' column, has {has}")
    wanted = [c for c in (*texts, label, "id") if c in has]
    row = 0
    for batch in f.iter_batches(batch_size=batch_rows, columns=wanted):
        values = {c: batch.column(c).to_pylist() for c in wanted}
        for i in range(batch.num_rows):
            row += 1
            yield Record(row, row_text({c: values[c][i] for c in texts}, texts),
                         values[label][i] if label in values else None,
                         values["id"][i] if "id" in values else None)


def file_kind(paths: list[Path], columns: Columns = None) -> str:
    """The one format all of `paths` share (each file's first record says); a mix is refused."""
    kind = raw_rows(paths[0], columns)[1]
    for p in paths[1:]:
        other = raw_rows(p, columns)[1]
        if other != kind:
            raise UserError(f"{paths[0]} and {p} are in different formats ({kind} vs {other})")
    return kind


def file_rows(paths: list[Path], names: list[str], kind: str, name: str, columns: Columns = None,
              task: str = SINGLE) -> Rows:
    """The rows of `paths` (the text in `columns`, when given), in order, as one split of the task's kind (how
    labelled reads the labels); read when iterated."""
    def read() -> Iterator[tuple[str, int]]:
        kinds = LabelKinds()
        for p in paths:
            yield from labelled(raw_rows(p, columns)[0], names, kind, p, kinds, task)
    # a run that names no columns, of a single-label task, keeps its cache key
    named = ([list(columns)] if columns else []) + ([task] if task != SINGLE else [])
    return Rows(read, name, origin=lambda: json.dumps([files_origin(paths), kind, names, *named]))


def files_origin(paths: list[Path]) -> list:
    """What names the files without reading them: each one's real path, size, times and inode. An edit changes
    the size or mtime, and always the ctime, which no tool sets back; a copy or a rename-over changes the inode."""
    out = []
    for p in paths:
        real = p.resolve()
        st = real.stat()
        out.append([str(real), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
    return out


def raw_labels(paths: list[Path], columns: Columns = None) -> Iterator[tuple[object, str]]:
    """(label as written, where: "FILE line N") of every row of `paths`."""
    for p in paths:
        for _, label, line in raw_rows(p, columns)[0]:
            yield label, f"{p} {'row' if p.suffix == '.parquet' else 'line'} {line}"
