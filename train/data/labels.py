"""Labels and texts as a reader finds them, checked: a label is a whole number or a class name, never both
in one split, and never anything else; a text is a non-empty, valid Unicode string."""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import UserError

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


def labelled(rows: Iterable[RawRow], names: list[str], kind: str, path: Path,
             kinds: LabelKinds | None = None) -> Iterator[tuple[object, int]]:
    """(text or pair of texts, label 0..K-1) per row. Whole-number labels count from 1 in AG News files and from 0
    otherwise; names are looked up among `names`. One LabelKinds checks every file of a split."""
    base, kinds = 1 if kind == "agnews" else 0, kinds or LabelKinds()
    index = {n: i for i, n in enumerate(names)}
    unit = "row" if path.suffix == ".parquet" else "line"
    for text, raw, line in rows:
        where = f"{path} {unit} {line}"
        problem = text_problem(text) or kinds.shape(text, where)
        if problem:
            raise UserError(f"{where}: {problem}")
        label = kinds.check(raw, where)
        if isinstance(label, int):
            if not base <= label < base + len(names):
                raise UserError(f"{where}: label {label} is outside {base}..{base + len(names) - 1}")
            yield text, label - base
        elif label in index:
            yield text, index[label]
        else:
            twin = next((n for n in names if n.casefold() == label.casefold()), None)  # Sports vs sports
            raise UserError(f"{where}: unknown label {raw!r} (labels: {', '.join(names)})"
                            + (f"; labels are case-sensitive: did you mean {twin!r}?" if twin else ""))
