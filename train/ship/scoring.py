"""Bulk scoring for `python -m train.predict --input ROWS --output PREDS`: read a CSV or JSONL file of
texts (scored by inference.predict in length-sorted batches with a progress bar), write one prediction per
row in input order."""
from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from train.files import atomic_write

from ..data.labels import MULTI, REGRESSION, SINGLE, text_problem
from ..data.sources import records
from ..errors import UserError

OUTPUTS = (".csv", ".jsonl")
INPUTS = (*OUTPUTS, ".parquet")


@dataclass
class ScoredRows:
    """The rows of an input file that will be scored."""
    texts: list  # each a str, or a (first, second) pair where the file has a pair of text columns
    lines: list[int]  # where each row starts in the file (1-based)
    ids: list[object]  # each row's id, None where it has none
    skipped: int = 0


def file_format(path: str, flag: str, formats: tuple[str, ...] = OUTPUTS) -> str:
    """The file's suffix, when it is one of `formats`; else one UserError line."""
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise UserError(f"{flag} {path}: expected a {' or '.join(formats)} file")
    return suffix


def read_rows(path: str, skip_bad: bool, warn=lambda line: print(line, file=sys.stderr),
              columns: tuple[str, ...] | None = None) -> ScoredRows:
    """CSV with a header that names the text column(s) as training files do (`text`, `sentence`, a pair such
    as `sentence1`/`sentence2`: train.data.labels.text_columns; and maybe `id`) or in AG News' layout, JSONL
    objects with those fields, or Parquet with those columns: train.data.sources reads all three. A malformed row
    stops with its line number, or with skip_bad is reported in one line and left out. `columns`: the text
    column(s) the run was trained on (--text-columns), else the usual names are looked for."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--input {path}: file not found")
    file_format(path, "--input", INPUTS)
    found = ((line, text, key, problem) for line, text, _, key, problem in records(p, False, columns)[0])
    rows = _collect(found, f"{path} line", skip_bad, warn)  # a file not UTF-8: one line, with its line
    if not rows.texts:
        raise UserError(f"{path} has no rows to score" + (f" ({rows.skipped} skipped)" if rows.skipped else ""))
    return rows


def given_texts(texts: Iterable[str], where: str, skip_bad: bool,
                warn=lambda line: print(line, file=sys.stderr)) -> ScoredRows:
    """Texts given as arguments (`where`: "text argument") or as stdin lines ("stdin line"), held to the rule
    a file's rows are: an empty or whitespace-only text (or one that is not valid Unicode) stops the run naming
    its place, or with skip_bad is reported in one line and left out."""
    rows = _collect(((n, text, None, None) for n, text in enumerate(texts, start=1)), where, skip_bad, warn)
    if not rows.texts and rows.skipped:
        raise UserError(f"no texts to score ({rows.skipped} skipped)")
    return rows


def _collect(found: Iterable[tuple[int, object, object, str | None]], where: str, skip_bad: bool,
             warn) -> ScoredRows:
    """(place, text, id, problem) → the rows to score; the one rule for a text that is no text to classify."""
    rows = ScoredRows([], [], [])
    for line, text, key, problem in found:
        problem = problem or text_problem(text)
        if problem is not None:
            if not skip_bad:
                raise UserError(f"{where} {line}: {problem}; --on-bad-row skip scores the other rows")
            warn(f"skipped {where} {line}: {problem}")
            rows.skipped += 1
            continue
        rows.texts.append(text)
        rows.lines.append(line)
        rows.ids.append(key)
    return rows


def prediction(kind: str, row: list[float], labels: list[str], threshold: float = 0.5) -> dict:
    """One row's prediction from its outputs as the task kind activates them: the label, its probability and
    every class's (single-label); the labels above `threshold` and every label's probability (multi-label); the
    score (regression)."""
    if kind == REGRESSION:
        return {"score": row[0]}
    if kind == MULTI:
        return {"labels": [n for n, p in zip(labels, row) if p > threshold], "probabilities": dict(zip(labels, row))}
    k = max(range(len(row)), key=row.__getitem__)
    return {"label": labels[k], "probability": row[k], "probabilities": dict(zip(labels, row))}


def write_predictions(path: str, rows: ScoredRows, outputs: torch.Tensor, labels: list[str], kind: str = SINGLE,
                      threshold: float = 0.5) -> None:
    """One row per scored input row, in input order: its id (or line) and its prediction (a label, the labels
    above the threshold as a JSON list, or a score), with every class's probability. Written whole or not at all."""
    suffix = file_format(path, "--output")
    out = io.StringIO(newline="")
    found = [prediction(kind, row, labels, threshold) for row in outputs.tolist()]
    if suffix == ".csv":
        has_id = [i is not None for i in rows.ids]
        keys = ["id"] if all(has_id) else ["line", "id"] if any(has_id) else ["line"]
        what = {SINGLE: "label", MULTI: "labels", REGRESSION: "score"}[kind]
        writer = csv.writer(out)
        writer.writerow([*keys, what, *(f"prob_{name}" for name in labels if kind != REGRESSION)])
        for line, i, p in zip(rows.lines, rows.ids, found):
            key = {"line": line, "id": "" if i is None else i}
            value = json.dumps(p[what]) if kind == MULTI else p[what]
            writer.writerow([*(key[c] for c in keys), value, *p.get("probabilities", {}).values()])
    else:
        for line, i, p in zip(rows.lines, rows.ids, found):
            out.write(json.dumps({**({"line": line} if i is None else {"id": i}), **p}) + "\n")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = out.getvalue()
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
