"""train.metrics against hand-computed values: accuracy, macro-F1, per-class report, confusion matrix."""
import math

import pytest
import torch

from train.metrics import classification_report, format_report

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
    assert len(lines) == 1 + len(NAMES) + 2
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
