"""A run's class names: classes.txt beside the training file, or the training labels themselves (whole numbers,
or names sorted), remembered in the cache folder so that a run whose token cache already holds its rows reads
none of them; and the notes they give rise to (labels that differ only in case)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from train.files import atomic_write

from ..errors import UserError
from .labels import LabelKinds, case_twins
from .sources import files_origin, raw_labels

NAMES_FORMAT = "1"  # of the remembered names (labels-KEY.json); another is not trusted, only recomputed


def note(line: str) -> None:
    """A `note:` line on stderr, from one process of a torchrun job (every process opens the data)."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(line, file=sys.stderr, flush=True)


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


def infer_names(paths: list[Path], kind: str, name: str, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Class names from the training labels (one pass, holding only the distinct labels): whole numbers name
    classes 1..K in AG News files and 0..K-1 otherwise; class names, sorted. A label of neither kind, a mix of
    kinds, or a number that would make far more classes than the labels seen, is one line. With cache_dir, the
    answer (and its notes) is kept there under the files' origin (paths, sizes, times), and read back while the
    files are unchanged."""
    memo = Path(cache_dir) / f"labels-{_origin_key(paths, kind)}.json" if cache_dir else None
    found = _remembered(memo) if memo else None
    if found is None:
        found = _infer(paths, kind, name)
        if memo:
            try:
                atomic_write(memo, lambda tmp: Path(tmp).write_text(json.dumps({"format": NAMES_FORMAT, **found})))
            except OSError:  # a cache that cannot be written costs the next run this pass, nothing else
                pass
    for line in found["notes"]:
        note(line)
    return found["names"]


def _infer(paths: list[Path], kind: str, name: str) -> dict:
    kinds, seen = LabelKinds(), {}  # each distinct label, and where it first appears
    for raw, where in raw_labels(paths):
        seen.setdefault(kinds.check(raw, where), where)
    if not seen:
        raise UserError(f"{name} has no rows")
    if kinds.first[0] is str:
        return {"names": sorted(seen), "notes": case_twins(seen)}
    base, low, top = (1 if kind == "agnews" else 0), min(seen), max(seen)
    if low < base:
        raise UserError(f"{name}: label {low} is below {base}; whole-number labels are {base}..K"
                        + (" in AG News' layout" if base else ""))
    if top - base + 1 > len(seen) + 1000:  # not the index of a class: it would make a head that size
        raise UserError(f"{name}: label {top} would make {top - base + 1:,} classes, but only {len(seen)} distinct "
                        f"labels appear; whole-number labels are {base}..K, or name the classes in classes.txt")
    return {"names": [str(i) for i in range(base, top + 1)], "notes": []}


def _origin_key(paths: list[Path], kind: str) -> str:
    return hashlib.sha256(json.dumps([NAMES_FORMAT, files_origin(paths), kind]).encode()).hexdigest()[:32]


def _remembered(memo: Path) -> dict | None:
    try:
        found = json.loads(memo.read_text())
        if found.get("format") == NAMES_FORMAT and all(isinstance(n, str) for n in found["names"] + found["notes"]):
            return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None
