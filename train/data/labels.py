"""Labels and texts as a reader finds them, checked, and the task kind a label column is written for: class ids
or names (single-label; never both in one split), lists of them (multi-label) or numbers (regression); a text is a
non-empty, valid Unicode string."""
from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import UserError

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"  # the task kinds (train.tasks.KINDS)
LABEL_COLUMNS = ("label", "labels")  # the label column, the first present: GoEmotions' lists are 'labels'

RawRow = tuple[object, object, int]  # text (a str, or a pair of them), label as written, line (or Parquet row) number
# The hub's usual text columns, in the order they are looked for: one text, or a pair (a pair before a single
# column it holds: question/sentence is QNLI's pair, not its 'sentence' alone).
TEXT_COLUMNS = (("text",), ("question", "sentence"), ("sentence",), ("sentence1", "sentence2"),
                ("question1", "question2"), ("premise", "hypothesis"))
_WHOLE = re.compile(r"-?[0-9]+")  # the one written form of a whole number: ASCII digits, an optional minus
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters (category Cc)


def whole_number(text: str) -> int | None:
    """The whole number `text` writes (surrounding whitespace aside, as for every field), or None. Only ASCII
    digits count: str.isdigit() also takes '²' and '١٢', which int() then refuses or reads as another number."""
    text = text.strip()
    return int(text) if _WHOLE.fullmatch(text) else None


def number_problem(text: str) -> str | None:
    """Why `text` is no label although it looks like a number ('²', '١٢', '+1', '--1'), or None; any other
    text is a class name."""
    digits = text.strip().lstrip("+-")  # signs, then digits of any script
    if digits and all(c.isnumeric() for c in digits) and whole_number(text) is None:
        return "is not a whole number as labels are written (ASCII digits 0-9, an optional leading '-')"
    return None


def label_of(raw: object) -> int | str | None:
    """A label as written, as a whole number (also when written as text: "3") or a class name; None for
    anything else (null, true, 1.5, [1], {"a": 1}, NaN, 1e23, '²', a control character): such a label is
    refused, never made a class."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        number = whole_number(text)
        if number is not None:
            return number
        return None if not text or number_problem(text) or _CONTROL.search(text) else text
    return None


def label_column(names: Iterable[str]) -> str:
    """The label column among a header's or a record's names: the first of LABEL_COLUMNS present, else 'label'
    (which the caller's message then names as missing)."""
    names = set(names)
    return next((c for c in LABEL_COLUMNS if c in names), LABEL_COLUMNS[0])


def csv_label(text: str | None) -> object:
    """A CSV field's label: a JSON list when written as one ('[2, 5]', '["joy"]'), else the text as it is."""
    if text is not None and text.strip().startswith("["):
        try:
            value = json.loads(text)
            return value if isinstance(value, list) else text
        except ValueError:
            pass
    return text


def text_columns(names: Iterable[str], where: str, explicit: Sequence[str] | None = None) -> tuple[str, ...] | None:
    """The column(s) holding the text, from a header or a record's keys: `explicit` (one or two names) when
    given, else the first of TEXT_COLUMNS present; None when none is. Half of a pair without the other half is
    one line naming `where`."""
    listed = list(names)
    names = set(listed)
    if explicit:
        missing = [c for c in explicit if c not in names]
        if missing or not 1 <= len(explicit) <= 2:
            raise UserError(f"{where}: text columns {','.join(explicit)}: " + (
                f"no column {missing[0]!r} (it has {', '.join(map(str, listed))})" if missing else
                "give one column or a pair"))
        return tuple(explicit)
    found = next((cols for cols in TEXT_COLUMNS if names.issuperset(cols)), None)
    half = next((pair for pair in TEXT_COLUMNS[1:] if len(pair) == 2 and names & set(pair)), None)
    if found is None and half is not None:
        has, lacks = (half[0], half[1]) if half[0] in names else (half[1], half[0])
        raise UserError(f"{where}: has a {has!r} column but no {lacks!r}: a pair of texts needs both")
    return found


def row_text(get, columns: tuple[str, ...]) -> object:
    """A row's text: its one column's value, or a (first, second) pair. get: column name -> value."""
    return get[columns[0]] if len(columns) == 1 else (get[columns[0]], get[columns[1]])


def text_problem(text: object) -> str | None:
    """What makes `text` no text to classify (not a string, empty, a lone surrogate), or None; a pair's
    texts are checked each."""
    if isinstance(text, tuple):
        return next((f"{side} text: {p}" for side, p in zip(("first", "second"), map(text_problem, text)) if p),
                    None)
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"text is not valid Unicode (a lone surrogate at character {e.start})"
    return None


def case_twins(first_seen: dict[str, str]) -> list[str]:
    """A note per set of class names that differ only in case ('Sports', 'sports'), naming where each is first
    written (first_seen: name -> "FILE line N"). They stay distinct classes, as written: a careful user is
    told, and fixes the labels if they meant one class."""
    spellings: dict[str, list[str]] = {}
    for name, where in first_seen.items():
        spellings.setdefault(name.casefold(), []).append(f"{name!r} ({where})")
    return [f"note: labels {' and '.join(same)} differ only in case; they are {len(same)} classes"
            for same in spellings.values() if len(same) > 1]


class LabelKinds:
    """Labels are all whole numbers or all class names: remembers the first, refuses a label of the other kind
    (a stray "Sports" among numbers would otherwise become a fifth class)."""

    def __init__(self) -> None:
        self.first: tuple[type, str] | None = None  # the first label's kind, and where it was
        self.pairs: tuple[bool, str] | None = None  # whether the first text is a pair, and where it was

    def shape(self, text: object, where: str) -> str | None:
        """Why `text` does not go with the split's first text (a pair among single texts, or the reverse)."""
        pair, say = isinstance(text, tuple), {True: "a pair of texts", False: "one text"}
        if self.pairs is None:
            self.pairs = (pair, where)
        elif pair != self.pairs[0]:
            return (f"text is {say[pair]}, but at {self.pairs[1]} it is {say[self.pairs[0]]}; "
                    "a split's files hold one text each, or a pair each")
        return None

    def check(self, raw: object, where: str) -> int | str:
        label = label_of(raw)
        if label is None:
            why = None if not isinstance(raw, str) else number_problem(raw) or (
                "holds a control character" if _CONTROL.search(raw.strip()) else None)
            raise UserError(f"{where}: label {raw!r} {why or 'is neither a whole number nor a class name'}")
        if self.first is None:
            self.first = (type(label), where)
        elif type(label) is not self.first[0]:
            kinds = {int: "a whole number", str: "a class name"}
            raise UserError(f"{where}: label {raw!r} is {kinds[type(label)]}, but the label at "
                            f"{self.first[1]} is {kinds[self.first[0]]}; labels are all one or the other")
        return label


def labelled(rows: Iterable[RawRow], names: list[str], layout: str, path: Path,
             kinds: LabelKinds | None = None, task: str = SINGLE) -> Iterator[tuple[object, object]]:
    """(text or pair of texts, label) per row, the label as the task's kind trains on it: a class 0..K-1, a
    multi-hot bytes of K 0/1 (multi-label) or a float (regression). Whole-number class ids count from 1 in AG
    News files and from 0 otherwise; names are looked up among `names`. One LabelKinds checks every file of a
    split."""
    base, kinds = 1 if layout == "agnews" else 0, kinds or LabelKinds()
    index = {n: i for i, n in enumerate(names)}
    unit = "row" if path.suffix == ".parquet" else "line"
    for text, raw, line in rows:
        where = f"{path} {unit} {line}"
        problem = text_problem(text) or kinds.shape(text, where)
        if problem:
            raise UserError(f"{where}: {problem}")
        if task == REGRESSION:
            yield text, score(raw, where)
        elif task == MULTI:
            if not isinstance(raw, (list, tuple)):
                raise UserError(f"{where}: label {raw!r} is not a list; a multi-label split's labels are lists of "
                                "class ids or names ([0, 3], [])")
            yield text, multi_hot((class_index(kinds.check(item, where), item, names, index, base, where)
                                   for item in raw), len(names))
        else:
            yield text, class_index(kinds.check(raw, where), raw, names, index, base, where)


def multi_hot(classes: Iterable[int], k: int) -> bytes:
    """A multi-label row as training takes it: K bytes, 1 for each of `classes` (0..K-1), 0 elsewhere."""
    hot = bytearray(k)
    for c in classes:
        hot[c] = 1
    return bytes(hot)


def class_index(label: int | str, raw: object, names: list[str], index: dict[str, int], base: int,
                where: str) -> int:
    """A checked label's class 0..K-1: a whole number within base..base+K-1, or one of `names` (index)."""
    if isinstance(label, int):
        if not base <= label < base + len(names):
            raise UserError(f"{where}: label {label} is outside {base}..{base + len(names) - 1}")
        return label - base
    if label in index:
        return index[label]
    twin = next((n for n in names if n.casefold() == label.casefold()), None)  # Sports vs sports
    raise UserError(f"{where}: unknown label {raw!r} (labels: {', '.join(names)})"
                    + (f"; labels are case-sensitive: did you mean {twin!r}?" if twin else ""))


def score(raw: object, where: str) -> float:
    """A regression label: a finite number, written as one (3.8, "3.8", 4) or refused in one line."""
    if _scalar(raw) not in ("whole number", "number"):
        raise UserError(f"{where}: label {raw!r} is not a finite number, as a regression's labels are (3.8, 4)")
    return float(raw.strip() if isinstance(raw, str) else raw)


class LabelKindError(ValueError):
    """A label column kind_of_labels refuses; index: the position of the value at fault, which the caller
    turns into a file and line."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


_REAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# The kinds each way of writing a label allows: a whole number is a class id, or a value among other numbers.
_ALLOWS = {"whole number": {SINGLE, REGRESSION}, "number": {REGRESSION}, "class name": {SINGLE}, "list": {MULTI}}


def kind_of_labels(values: Iterable[object], where: Callable[[int], str] | None = None) -> str:
    """The task kind of a label column as read (JSON values, or CSV text): "single_label" when every label is
    a whole number (3, "3") or a class name; "multi_label" when every label is a list (of ids or names, maybe
    empty); "regression" when they are numbers and one at least is written as a float (3.8, "3.8", 1e-3).
    A float with nothing after the point (5.0, "1.0") counts as written: a number on a scale, so a column of
    only whole floats is regression (STS-B has 0.0 and 5.0 among its 3.8s); write class ids as ints."""
    possible = label_kinds(values, where)
    return SINGLE if SINGLE in possible else next(iter(possible))


def label_kinds(values: Iterable[object], where: Callable[[int], str] | None = None) -> frozenset[str]:
    """Every kind the column fits: whole numbers fit single-label and regression. Raises LabelKindError (a
    ValueError with .index) at the first label that is no label (null, true, NaN, infinity, '', '+1') or whose
    kind no earlier one shares, naming both as where(i) says (else "label i"); ValueError when there are none."""
    possible, first, name = {SINGLE, MULTI, REGRESSION}, {}, where or (lambda i: f"label {i}")
    for i, value in enumerate(values):
        how = _written_as(value, i, name)
        if not possible & _ALLOWS[how]:
            earlier, (j, seen, at) = next((h, f) for h, f in first.items() if not _ALLOWS[h] & _ALLOWS[how])
            raise LabelKindError(f"{name(i)} ({_show(value)}) is a {how}, but {at} ({_show(seen)}) is a {earlier}: "
                                 "one column holds one kind of label (class ids or names, lists of them, or numbers)",
                                 i)
        possible &= _ALLOWS[how]
        first.setdefault(how, (i, value, name(i)))
    if not first:
        raise ValueError("no labels to read the task kind from")
    return frozenset(possible)


def _written_as(value: object, i: int, name: Callable[[int], str]) -> str:
    """How label `i` is written: "whole number", "number", "class name" or "list"; LabelKindError if none."""
    if isinstance(value, (list, tuple)):
        for j, item in enumerate(value):
            if isinstance(item, (list, tuple)) or _scalar(item) is None:
                raise LabelKindError(f"{name(i)} is a list whose item {j} ({_show(item)}) is no label", i)
        return "list"
    how = _scalar(value)
    if how is None:
        raise LabelKindError(f"{name(i)} ({_show(value)}) is no label: not a whole number, a finite number "
                             f"(ASCII digits, an optional leading '-'), a class name or a list", i)
    return how


def _scalar(value: object) -> str | None:
    if isinstance(value, bool) or value is None:  # bool is an int to Python, but true is no label
        return None
    if isinstance(value, numbers.Integral):
        return "whole number"
    if isinstance(value, numbers.Real):
        return "number" if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _WHOLE.fullmatch(text):
        return "whole number"
    if _REAL.fullmatch(text):
        return "number" if math.isfinite(float(text)) else None
    try:  # what float() reads but is no plain number ('nan', 'inf', '+1', '1_0', '١٢') is refused, not a name
        float(text)
        return None
    except ValueError:
        return "class name" if text else None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
