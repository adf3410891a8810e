"""train.metrics against hand-computed values (accuracy, macro-F1, per-class report, confusion matrix), and
every task kind's scores against scikit-learn and SciPy."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from train.metrics import (MultiLabelCounts, average_ranks, binary_f1_from_confusion, classification_report,
                           confusion_matrix, format_report, mcc_from_confusion, multi_label_counts,
                           multi_label_scores, pearson, regression_scores, single_label_scores, spearman)

NAMES = ["World", "Sports", "Business", "Sci/Tech"]
# Class 3 (Sci/Tech) occurs twice but is never predicted.
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
PREDS = torch.tensor([0, 0, 1, 1, 1, 2, 0, 2, 1, 0])


def test_report_matches_hand_computation():
    r = classification_report(PREDS, LABELS, NAMES)
    # confusion[true][pred], counted by hand from the pairs above
    assert r["confusion"] == [[2, 1, 0, 0],
                              [0, 2, 0, 0],
                              [1, 0, 2, 0],
                              [1, 1, 0, 0]]
    # predicted per class 4, 4, 2, 0; true positives 2, 2, 2, 0; support 3, 2, 3, 2
    expected = [  # precision, recall, f1, support
        (2 / 4, 2 / 3, 4 / 7, 3),
        (2 / 4, 2 / 2, 2 / 3, 2),
        (2 / 2, 2 / 3, 4 / 5, 3),
        (0.0, 0.0, 0.0, 2),  # never predicted: precision, recall and F1 are 0, not NaN
    ]
    assert [c["label"] for c in r["per_class"]] == NAMES
    for c, (p, rec, f1, support) in zip(r["per_class"], expected):
        assert c["precision"] == pytest.approx(p) and c["recall"] == pytest.approx(rec)
        assert c["f1"] == pytest.approx(f1) and c["support"] == support
        assert not any(math.isnan(c[k]) for k in ("precision", "recall", "f1"))
    assert r["accuracy"] == pytest.approx(6 / 10)
    assert r["macro_f1"] == pytest.approx(107 / 210)  # (4/7 + 2/3 + 4/5 + 0) / 4
    assert r["examples"] == 10


def test_report_agrees_with_sklearn_on_random_labels(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    labels, preds = torch.randint(0, 5, (300,)), torch.randint(0, 4, (300,))  # class 4 never predicted
    r = classification_report(preds, labels, list("abcde"))
    p, rec, f1, support = metrics.precision_recall_fscore_support(labels, preds, labels=range(5), zero_division=0)
    assert [c["precision"] for c in r["per_class"]] == pytest.approx(list(p))
    assert [c["recall"] for c in r["per_class"]] == pytest.approx(list(rec))
    assert [c["f1"] for c in r["per_class"]] == pytest.approx(list(f1))
    assert [c["support"] for c in r["per_class"]] == list(support)
    assert r["macro_f1"] == pytest.approx(metrics.f1_score(labels, preds, labels=range(5), average="macro",
                                                            zero_division=0))
    assert r["accuracy"] == pytest.approx(metrics.accuracy_score(labels, preds))
    assert r["confusion"] == metrics.confusion_matrix(labels, preds, labels=range(5)).tolist()


def test_class_absent_from_labels_and_predictions_scores_zero_without_nan():
    r = classification_report(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), ["a", "b", "c"])
    assert [c["f1"] for c in r["per_class"]] == [1.0, 1.0, 0.0]
    assert r["per_class"][2]["support"] == 0 and r["confusion"][2] == [0, 0, 0]
    assert r["accuracy"] == 1.0 and r["macro_f1"] == pytest.approx(2 / 3)


def test_accepts_int32_inputs():
    r64 = classification_report(PREDS, LABELS, NAMES)
    r32 = classification_report(PREDS.int(), LABELS.int(), NAMES)
    assert r32 == r64


@pytest.mark.parametrize("preds, labels, match", [
    (torch.tensor([0, 4]), torch.tensor([0, 1]), r"preds must be class indices in 0\.\.3, got 0\.\.4"),
    (torch.tensor([0, 1]), torch.tensor([-1, 1]), r"labels must be class indices in 0\.\.3, got -1\.\.1"),
    (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), r"same length, got \(3,\) and \(2,\)"),
])
def test_bad_inputs_are_refused(preds, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_report(preds, labels, NAMES)


def test_format_report_lists_every_class_in_aligned_columns():
    text = format_report(classification_report(PREDS, LABELS, NAMES))
    lines = text.splitlines()
    assert len(lines) == 1 + len(NAMES) + 3  # the header, a line per class, accuracy, macro-F1, MCC
    header = lines[0]
    f1_end, support_end = header.index("f1") + 2, header.index("support") + len("support")
    for line, name in zip(lines[1:5], NAMES):
        assert line.startswith(name) and len(line) == support_end
    sci = lines[4].split()
    assert sci[-4:] == ["0.0000", "0.0000", "0.0000", "2"]
    accuracy, macro = lines[5], lines[6]
    assert accuracy.startswith("accuracy") and macro.startswith("macro-F1")
    # accuracy and macro-F1 sit in the f1 column, the example count in the support column
    assert accuracy[:f1_end].endswith("0.6000") and accuracy[:support_end].endswith(" 10")
    assert macro.endswith(f"{107 / 210:.4f}") and len(macro) == f1_end
    mcc = f"{mcc_from_confusion(confusion_matrix(PREDS, LABELS, 4)):.4f}"  # checked against sklearn below
    assert lines[7].startswith("MCC") and lines[7].endswith(mcc) and len(lines[7]) == f1_end


def test_two_classes_report_the_f1_of_label_1_as_glue_does():
    from sklearn.metrics import f1_score
    preds, labels = torch.tensor([1, 0, 1, 1, 0, 0]), torch.tensor([1, 1, 0, 1, 0, 0])
    report = classification_report(preds, labels, ["not_equivalent", "equivalent"])
    assert report["f1"] == pytest.approx(f1_score(labels, preds), abs=1e-12)
    assert format_report(report).splitlines()[-1].startswith("F1 equivalent")
    assert "f1" not in classification_report(PREDS, LABELS, NAMES)  # more than two classes: no positive class


# --- the scores of every task kind, against scikit-learn and SciPy to 1e-9 ---------------------------------

def _sk():
    return pytest.importorskip("sklearn.metrics")


def _quiet(fn, *args, **kwargs):
    """fn(...) with sklearn's UndefinedMetricWarning and SciPy's ConstantInputWarning silenced: the cases
    that raise them are the point of the tests that call this."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _pairs(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that agree on about half the rows, so the scores are not all near 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return labels, np.where(rng.random(n) < 0.5, labels, rng.integers(0, k, n))


@pytest.mark.parametrize("n", [1, 2, 10, 257, 1000])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_mcc_and_binary_f1_match_sklearn(n, k):
    sk = _sk()
    labels, preds = _pairs(n, k, seed=n * 10 + k)
    confusion = confusion_matrix(torch.from_numpy(preds), torch.from_numpy(labels), k)
    assert abs(mcc_from_confusion(confusion) - _quiet(sk.matthews_corrcoef, labels, preds)) <= 1e-9
    if k == 2:
        assert abs(binary_f1_from_confusion(confusion) - _quiet(sk.f1_score, labels, preds)) <= 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=60))
def test_mcc_matches_sklearn_on_any_labels(pairs):
    labels, preds = (np.array(v) for v in zip(*pairs))
    confusion = confusion_matrix(torch.from_numpy(preds), torch.from_numpy(labels), 4)
    assert abs(mcc_from_confusion(confusion) - _quiet(_sk().matthews_corrcoef, labels, preds)) <= 1e-9


@pytest.mark.parametrize("labels, preds, expected", [
    ([0, 1, 2, 1, 0], [1, 1, 1, 1, 1], 0.0),  # a constant prediction: undefined, 0.0 as sklearn
    ([2, 2, 2, 2], [0, 1, 2, 1], 0.0),  # one true class
    ([0, 1, 2, 1, 0], [0, 1, 2, 1, 0], 1.0),
    ([0, 1, 1, 0], [1, 0, 0, 1], -1.0),
])
def test_mcc_edge_cases_agree_with_sklearn(labels, preds, expected):
    confusion = confusion_matrix(torch.tensor(preds), torch.tensor(labels), 3)
    assert mcc_from_confusion(confusion) == expected == _quiet(_sk().matthews_corrcoef, labels, preds)


@pytest.mark.parametrize("labels, preds", [
    ([0, 1, 1, 0], [0, 0, 0, 0]),  # label 1 never predicted
    ([0, 0, 0], [0, 0, 0]),  # label 1 neither true nor predicted: sklearn's zero_division default, 0.0
    ([0, 0, 0], [1, 0, 1]),  # predicted, never true
])
def test_binary_f1_without_positives_is_zero_as_sklearn(labels, preds):
    confusion = confusion_matrix(torch.tensor(preds), torch.tensor(labels), 2)
    assert binary_f1_from_confusion(confusion) == 0.0 == _quiet(_sk().f1_score, labels, preds)


def test_single_label_scores_add_mcc_and_for_two_classes_f1():
    two = single_label_scores(confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2), ["a", "b"])
    assert two["f1"] == pytest.approx(2 / 3) and two["mcc"] == pytest.approx(0.5) and two["accuracy"] == 2 / 3
    four = single_label_scores(confusion_matrix(PREDS, LABELS, 4), NAMES)
    assert "f1" not in four and four == classification_report(PREDS, LABELS, NAMES) | {"mcc": four["mcc"]}


@pytest.mark.parametrize("call, confusion, match", [
    (mcc_from_confusion, torch.zeros(2, 3, dtype=torch.long), r"confusion must be \(K, K\) counts, got shape \(2, 3\)"),
    (binary_f1_from_confusion, torch.zeros(3, 3, dtype=torch.long), r"needs two classes, got 3"),
])
def test_bad_confusions_are_refused(call, confusion, match):
    with pytest.raises(ValueError, match=match):
        call(confusion)


def _multi_hot(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, k) targets and predictions; label 0 is never true nor predicted, label 1 true but never predicted."""
    g = torch.Generator().manual_seed(seed)
    targets, preds = torch.rand(n, k, generator=g) < 0.4, torch.rand(n, k, generator=g) < 0.4
    preds = torch.where(torch.rand(n, k, generator=g) < 0.5, targets, preds)
    targets[:, 0], preds[:, :2] = False, False
    return preds, targets


@pytest.mark.parametrize("n, k", [(1, 3), (7, 3), (100, 5), (600, 12)])
def test_multi_label_scores_match_sklearn(n, k):
    sk = _sk()
    preds, targets = _multi_hot(n, k, seed=n + k)
    r = multi_label_scores(multi_label_counts(preds, targets), [f"l{i}" for i in range(k)])
    y, p = targets.int().numpy(), preds.int().numpy()
    for average in ("micro", "macro"):
        assert abs(r[f"{average}_f1"] - _quiet(sk.f1_score, y, p, average=average)) <= 1e-9
    assert abs(r["exact_match"] - sk.accuracy_score(y, p)) <= 1e-9  # subset accuracy on indicator rows
    precision, recall, f1, support = _quiet(sk.precision_recall_fscore_support, y, p)
    for got, want in zip(("precision", "recall", "f1", "support"), (precision, recall, f1, support)):
        assert np.allclose([c[got] for c in r["per_class"]], want, rtol=0, atol=1e-9)
    assert r["per_class"][0]["f1"] == 0.0 and r["examples"] == n


def test_multi_label_counts_add_up_over_processes():
    preds, targets = _multi_hot(90, 4, seed=3)
    parts = [multi_label_counts(p, t) for p, t in zip(preds.split(31), targets.split(31))]
    summed = MultiLabelCounts(*(sum(field) for field in zip(*parts)))
    whole = multi_label_counts(preds, targets)
    assert torch.equal(summed.per_label, whole.per_label) and torch.equal(summed.exact, whole.exact)
    names = list("abcd")
    assert multi_label_scores(summed, names) == multi_label_scores(whole, names)
    assert torch.equal(multi_label_counts(preds.int(), targets.double()).per_label, whole.per_label)  # 0/1 numbers


@pytest.mark.parametrize("preds, targets, match", [
    (torch.tensor([[0, 2]]), torch.tensor([[0, 1]]), r"preds must hold only 0 and 1"),
    (torch.tensor([[0, 1]]), torch.tensor([[0.5, 1]]), r"targets must hold only 0 and 1"),
    (torch.tensor([[0, 1]]), torch.tensor([[0, 1, 1]]), r"same shape, got \(1, 2\) and \(1, 3\)"),
    (torch.tensor([0, 1]), torch.tensor([0, 1]), r"must be \(n, K\)"),
])
def test_bad_multi_label_inputs_are_refused(preds, targets, match):
    with pytest.raises(ValueError, match=match):
        multi_label_counts(preds, targets)


def test_multi_label_scores_refuse_counts_of_other_labels():
    with pytest.raises(ValueError, match=r"counts must be \(3, 2\) per label and \(2,\) exact, got \(3, 3\)"):
        multi_label_scores(multi_label_counts(torch.ones(2, 3), torch.ones(2, 3)), ["a", "b"])


def _stats():
    return pytest.importorskip("scipy.stats")


def _check_regression(x: np.ndarray, y: np.ndarray) -> None:
    stats, r = _stats(), regression_scores(torch.from_numpy(x), torch.from_numpy(y))
    assert abs(r["pearson"] - stats.pearsonr(x, y).statistic) <= 1e-9
    assert abs(r["spearman"] - stats.spearmanr(x, y).statistic) <= 1e-9
    assert abs(r["mse"] - _sk().mean_squared_error(y, x)) <= 1e-9 * max(1.0, r["mse"])
    assert r["examples"] == len(x)


@pytest.mark.parametrize("n", [3, 17, 500, 4000])
@pytest.mark.parametrize("ties", [False, True])
def test_regression_scores_match_scipy(n, ties):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 5, n).astype(float) if ties else rng.normal(size=n) * 3 + 1
    y = 0.6 * x + rng.normal(size=n) if not ties else np.round(0.5 * x + rng.integers(0, 3, n))
    _check_regression(x, y)
    assert torch.equal(average_ranks(torch.from_numpy(x)), torch.from_numpy(_stats().rankdata(x)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-4, 4), st.integers(-4, 4)), min_size=3, max_size=40))
def test_regression_scores_match_scipy_with_ties(pairs):
    x, y = (np.array(v, dtype=float) / 4 for v in zip(*pairs))
    assume(len(set(x)) > 1 and len(set(y)) > 1)  # constant vectors: the next test
    _check_regression(x, y)


@pytest.mark.parametrize("x, y", [
    ([0.1, 0.1, 0.1], [1.0, 2.0, 4.0]),  # the mean of three 0.1s is no 0.1: still constant, still 0.0
    ([1.0, 2.0, 4.0], [7.0, 7.0, 7.0]),
    ([5.0], [2.0]),
])
def test_correlation_of_a_constant_is_zero_where_scipy_gives_nan(x, y):
    r = regression_scores(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert r["pearson"] == 0.0 and r["spearman"] == 0.0
    if len(x) > 1:
        assert math.isnan(_quiet(_stats().pearsonr, x, y).statistic)
        assert math.isnan(_quiet(_stats().spearmanr, x, y).statistic)


def test_regression_takes_numpy_and_float32_and_perfect_orders():
    x = np.array([3.0, 1.0, 2.0, 5.0])
    assert regression_scores(x, x ** 3) == regression_scores(torch.from_numpy(x), torch.from_numpy(x ** 3))
    assert pearson(x, -x) == -1.0 and spearman(x, x ** 3) == 1.0
    assert regression_scores(torch.tensor([1.0, 2.0], dtype=torch.float32), torch.tensor([1.0, 2.0]))["mse"] == 0.0


@pytest.mark.parametrize("preds, targets, match", [
    ([1.0, math.nan], [1.0, 2.0], r"preds must be finite, got nan at row 1"),
    ([1.0, 2.0], [math.inf, 2.0], r"targets must be finite, got inf at row 0"),
    ([1.0, 2.0], [1.0], r"same length, got \(2,\) and \(1,\)"),
    ([[1.0], [2.0]], [[1.0], [2.0]], r"must be 1-d"),
    ([], [], r"no rows to score"),
])
def test_bad_regression_inputs_are_refused(preds, targets, match):
    with pytest.raises(ValueError, match=match):
        regression_scores(torch.tensor(preds), torch.tensor(targets))
