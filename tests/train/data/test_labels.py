"""train.data.labels: what counts as a label and as a text, checked without any file."""
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from train.errors import UserError
from train.data.labels import LabelKinds, label_of, labelled, text_problem


@given(st.integers(min_value=-10**6, max_value=10**6))
def test_a_whole_number_is_the_same_label_written_as_a_number_or_as_text(n):
    assert label_of(n) == label_of(str(n)) == label_of(f"  {n} ") == n


@pytest.mark.parametrize("raw", [None, True, False, 1.5, float("nan"), [1], {"a": 1}, "", "   "])
def test_anything_but_a_whole_number_or_a_name_is_no_label(raw):
    assert label_of(raw) is None


def test_names_are_stripped_and_kept_as_names():
    assert label_of(" Sports ") == "Sports" and label_of("1st") == "1st"


@pytest.mark.parametrize("text, problem", [(7, "text is int, not a string"), ("  \n", "empty text"),
                                           ("a\ud800", "a lone surrogate at character 1"), ("fine", None)])
def test_text_problems_are_named(text, problem):
    got = text_problem(text)
    assert got is None if problem is None else problem in got


def test_one_kind_per_split_and_the_first_label_is_named_in_the_refusal():
    kinds = LabelKinds()
    assert kinds.check("2", "f line 1") == 2
    with pytest.raises(UserError, match=r"f line 2: label 'Sports' is a class name, but the label at f line 1 "
                                        r"is a whole number"):
        kinds.check("Sports", "f line 2")


def test_agnews_numbers_count_from_one_other_files_from_zero_and_names_are_looked_up():
    rows = [("a", "1", 1), ("b", "4", 2)]
    assert list(labelled(rows, list("wxyz"), "agnews", Path("t.csv"))) == [("a", 0), ("b", 3)]
    assert list(labelled([("a", 0, 1)], ["x", "y"], "textlabel", Path("t.jsonl"))) == [("a", 0)]
    assert list(labelled([("a", "y", 1)], ["x", "y"], "textlabel", Path("t.jsonl"))) == [("a", 1)]
    with pytest.raises(UserError, match=r"t.parquet row 3: unknown label 'z' \(labels: x, y\)"):
        list(labelled([("a", "z", 3)], ["x", "y"], "textlabel", Path("t.parquet")))
    with pytest.raises(UserError, match=r"t.csv line 1: label 5 is outside 1..4"):
        list(labelled([("a", "5", 1)], list("wxyz"), "agnews", Path("t.csv")))
