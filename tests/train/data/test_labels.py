"""train.data.labels: what counts as a label and as a text, and the task kind a label column is written for,
checked without any file."""
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.errors import UserError
from train.data.labels import LabelKindError, LabelKinds, kind_of_labels, label_of, labelled, text_problem


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


@pytest.mark.parametrize("values, kind", [
    ([0, 2, 1, 2], "single_label"),
    (["3", " 4 ", "-1"], "single_label"),  # whole numbers as CSV writes them
    (["World", "Sports", "Sci/Tech"], "single_label"),
    ([1, "cat"], "single_label"),  # ids beside names: one kind; train.data.labels refuses that mix itself
    ([[0, 2], [], ["a", "b"], (1,)], "multi_label"),
    ([[0.0, 1.0, 1.0]], "multi_label"),  # multi-hot rows are lists too
    ([3.8, 0.0, 5.0], "regression"),  # STS-B
    ([2, 3.8, 5], "regression"),  # whole numbers among numbers are numbers
    (["3.8", "5", "1e-3", ".5", "2."], "regression"),
    ([1.0, 2.0, 0.0], "regression"),  # whole floats are numbers as written, not class ids
    (["1.0"], "regression"),
    ((v for v in [1, 2]), "single_label"),  # any iterable, read once
])
def test_kind_of_labels(values, kind):
    assert kind_of_labels(values) == kind


@pytest.mark.parametrize("values, index, match", [
    (["cat", "dog", 3.8], 2, r"^label 2 \(3\.8\) is a number, but label 0 \('cat'\) is a class name: one column"),
    ([1, 2, [1]], 2, r"^label 2 \(\[1\]\) is a list, but label 0 \(1\) is a whole number"),
    ([[1], 2.5], 1, r"^label 1 \(2\.5\) is a number, but label 0 \(\[1\]\) is a list"),
    ([1, "cat", 2.5, "x"], 2, r"^label 2 \(2\.5\) is a number, but label 1 \('cat'\) is a class name"),
    (["2.5", "cat"], 1, r"^label 1 \('cat'\) is a class name, but label 0 \('2\.5'\) is a number"),
    ([1, None], 1, r"^label 1 \(None\) is no label"),
    ([True, 1], 0, r"^label 0 \(True\) is no label"),
    ([float("nan")], 0, r"^label 0 \(nan\) is no label"),
    ([1, float("inf")], 1, r"^label 1 \(inf\) is no label"),
    (["nan"], 0, r"^label 0 \('nan'\) is no label"),
    (["1", "+1"], 1, r"^label 1 \('\+1'\) is no label"),
    (["1e999"], 0, r"^label 0 \('1e999'\) is no label"),
    (["a", "  "], 1, r"^label 1 \('  '\) is no label"),
    ([{"a": 1}], 0, r"^label 0 \(\{'a': 1\}\) is no label"),
    ([[1, None]], 0, r"^label 0 is a list whose item 1 \(None\) is no label"),
    ([[1], [[2]]], 1, r"^label 1 is a list whose item 0 \(\[2\]\) is no label"),
    ([list(range(100)), 1.5], 1, r"label 0 \(\[0, 1, 2, .{27}\.\.\.\) is a list"),  # long values cut short
])
def test_kind_of_labels_refuses_naming_the_index(values, index, match):
    with pytest.raises(LabelKindError, match=match) as caught:
        kind_of_labels(values)
    assert caught.value.index == index and isinstance(caught.value, ValueError)


def test_kind_of_no_labels_is_refused():
    with pytest.raises(ValueError, match=r"^no labels to read the task kind from$"):
        kind_of_labels([])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-10**6, 10**6), min_size=1), st.lists(st.floats(allow_nan=False, allow_infinity=False)))
def test_whole_numbers_are_classes_until_a_float_joins(ints, floats):
    assert kind_of_labels(ints) == "single_label"
    assert kind_of_labels(ints + floats) == ("regression" if floats else "single_label")
