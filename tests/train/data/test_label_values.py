"""Labels as a user writes them: a whole number in ASCII digits (-?[0-9]+, whitespace around it aside, as around
every field) or a class name; anything else ('²', '١٢', '--1', a control character) is one line naming the file
and line, never int()'s traceback."""
import csv
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.tiny import CLASSES
from train.data.corpus import load_corpus
from train.data.labels import LabelKinds, label_of, whole_number
from train.errors import UserError

NOT_ASCII_NUMBERS = ["²", "--1", "١٢", "+1", "½", "１", "-+3", "٣"]


@pytest.mark.parametrize("raw", NOT_ASCII_NUMBERS)
def test_a_number_not_written_in_ascii_digits_is_refused_not_a_traceback(raw, tmp_path):
    assert label_of(raw) is None and whole_number(raw) is None
    with pytest.raises(UserError, match=r"^f line 2: label .* is not a whole number as labels are written \(ASCII "
                                        r"digits 0-9, an optional leading '-'\)$"):
        LabelKinds().check(raw, "f line 2")
    train = tmp_path / "train.csv"
    train.write_text(f'"1","a","b"\n"{raw}","c","d"\n')
    (tmp_path / "test.csv").write_text('"1","a","b"\n')
    with pytest.raises(UserError, match=rf"^{re.escape(str(train))} line 2: class {re.escape(repr(raw))} is not a "
                                        r"whole number \(ASCII digits 0-9\)$"):
        load_corpus(str(tmp_path))


def test_whitespace_around_a_number_is_stripped_as_around_every_field_and_names_stay_names():
    assert whole_number(" 1 ") == 1 and label_of("\t-2\n") == -2 and label_of("1-2") == "1-2"
    with pytest.raises(UserError, match=r"^f line 1: label 'a\\x00b' holds a control character$"):
        LabelKinds().check("a\x00b", "f line 1")


SIGNS_DIGITS_SPACE = st.text(alphabet=st.sampled_from(list("0123456789-+ \t\u00a0\u2003\x00\x1f\x85") +
                                                      ["²", "١", "٢", "１", "½", "७"]), min_size=0, max_size=5)


def _parsed_or_one_line(write, raw, directory, expect):
    """Read `directory`'s corpus: `raw` must be read as int(raw) when it is -?[0-9]+ (whitespace aside) and
    names a class; anything else is refused in one line that names the file and the line."""
    write(directory, raw)
    number = whole_number(raw)
    try:
        corpus = load_corpus(str(directory))
    except UserError as e:
        assert "\n" not in str(e) and re.search(r"train\.(csv|jsonl) line 2\b", str(e)), str(e)
        assert number is None or "outside" in str(e), str(e)
        return
    assert number is not None and corpus.train.labels[1] == expect(number), raw


def _agnews(directory, raw):
    with (directory / "train.csv").open("w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows([("1", "a", "b"), (raw, "c", "d")])
    (directory / "test.csv").write_text('"2","a","b"\n')
    (directory / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def _jsonl(directory, raw):
    (directory / "train.jsonl").write_text(json.dumps({"text": "a", "label": "1"}) + "\n"
                                           + json.dumps({"text": "c", "label": raw}) + "\n")
    (directory / "test.jsonl").write_text(json.dumps({"text": "a", "label": 0}) + "\n")
    (directory / "classes.txt").write_text("\n".join(CLASSES) + "\n")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=SIGNS_DIGITS_SPACE)
def test_fuzzed_number_labels_parse_or_are_refused_in_one_line(raw, tmp_path_factory):
    _parsed_or_one_line(_agnews, raw, tmp_path_factory.mktemp("agnews"), lambda n: n - 1)
    _parsed_or_one_line(_jsonl, raw, tmp_path_factory.mktemp("jsonl"), lambda n: n)


@settings(max_examples=100, deadline=None)
@given(raw=SIGNS_DIGITS_SPACE)
def test_fuzzed_labels_are_a_number_a_name_or_no_label(raw):
    label = label_of(raw)
    if whole_number(raw) is not None:
        assert label == int(raw.strip()) and raw.strip().lstrip("-").isascii()
    elif label is not None:  # a class name: never digits of another script, nor a control character
        assert isinstance(label, str) and label == raw.strip()
        digits = label.lstrip("+-")
        assert not (digits and all(c.isnumeric() for c in digits)) and not re.search("[\x00-\x1f\x7f-\x9f]", label)
