"""train.tasks: the table of task kinds (sizes, losses against their formulas, activations, evaluation's two
steps). How a label column says its kind is tests/train/data/test_labels.py's."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from train import metrics
from train.tasks import KINDS, is_better, task_kind

SINGLE, MULTI, REGRESSION = KINDS["single_label"], KINDS["multi_label"], KINDS["regression"]


@pytest.mark.parametrize("name, problem_type, outputs, default, reduce", [
    ("single_label", "single_label_classification", 5, "accuracy", "sum"),
    ("multi_label", "multi_label_classification", 5, "macro_f1", "sum"),
    ("regression", "regression", 1, "pearson", "gather"),
])
def test_table(name, problem_type, outputs, default, reduce):
    kind = task_kind(name)
    assert kind is KINDS[name] and kind.name == name and kind.problem_type == problem_type
    assert kind.outputs(5) == outputs and kind.default_metric == default and kind.reduce == reduce
    assert default in kind.metric_names(5) and default in kind.metric_names(2)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'name'"):
        kind.name = "other"


def test_metric_names_add_binary_f1_for_two_classes_only():
    assert SINGLE.metric_names(2) == ("accuracy", "macro_f1", "mcc", "f1")
    assert SINGLE.metric_names(3) == ("accuracy", "macro_f1", "mcc")
    assert MULTI.metric_names(2) == ("micro_f1", "macro_f1", "exact_match")
    assert REGRESSION.metric_names(1) == ("pearson", "spearman", "mse")


def test_unknown_kind_is_refused_naming_the_kinds():
    with pytest.raises(ValueError, match=r"unknown task kind 'ranking': one of single_label, multi_label, regression"):
        task_kind("ranking")


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_single_label_loss_is_smoothed_cross_entropy(smoothing, seed):
    logits, targets = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 4, (7,))
    logp = logits.log_softmax(-1)
    # smoothing spreads eps evenly over the K classes: (1 - eps) * -log p_y + eps * mean_k(-log p_k)
    rows = (1 - smoothing) * -logp[torch.arange(7), targets] + smoothing * -logp.mean(-1)
    torch.testing.assert_close(SINGLE.loss(logits, targets, smoothing), rows.mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(SINGLE.loss(logits, targets, smoothing, "sum"), rows.sum(), rtol=0, atol=1e-12)


def test_multi_label_loss_is_bce_and_ignores_smoothing(seed):
    logits, targets = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6, 3))
    p = logits.sigmoid()
    rows = -(targets * p.log() + (1 - targets) * (1 - p).log())
    torch.testing.assert_close(MULTI.loss(logits, targets), rows.mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(MULTI.loss(logits, targets, 0.3, "none"), rows, rtol=0, atol=1e-12)
    assert not MULTI.smooths and not REGRESSION.smooths and SINGLE.smooths


@pytest.mark.parametrize("shape", [(5, 1), (5,)])
def test_regression_loss_is_mse(shape, seed):
    logits, targets = torch.randn(shape, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    expected = ((logits.reshape(5) - targets) ** 2).mean()
    torch.testing.assert_close(REGRESSION.loss(logits, targets, 0.1), expected, rtol=0, atol=1e-12)


def test_regression_loss_refuses_outputs_that_would_broadcast(seed):
    with pytest.raises(ValueError, match=r"outputs must be \(n, 1\) or \(n,\) for \(n,\) targets, got \(5, 2\)"):
        REGRESSION.loss(torch.randn(5, 2), torch.randn(5))
    with pytest.raises(ValueError, match=r"got \(4, 1\) and \(5,\)"):
        REGRESSION.loss(torch.randn(4, 1), torch.randn(5))


@pytest.mark.parametrize("dtype, loss_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_losses_run_in_float32_at_least(dtype, loss_dtype, seed):
    logits = torch.randn(4, 3).to(dtype)
    assert SINGLE.loss(logits, torch.tensor([0, 2, 1, 0]), 0.1).dtype == loss_dtype
    assert MULTI.loss(logits, torch.ones(4, 3)).dtype == loss_dtype
    assert REGRESSION.loss(logits[:, :1], torch.randn(4)).dtype == loss_dtype
    reference = F.cross_entropy(logits.float(), torch.tensor([0, 2, 1, 0]), label_smoothing=0.1)
    torch.testing.assert_close(SINGLE.loss(logits, torch.tensor([0, 2, 1, 0]), 0.1).float(), reference)


def test_activations(seed):
    logits = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(SINGLE.activation(logits), logits.softmax(-1), rtol=0, atol=0)
    torch.testing.assert_close(MULTI.activation(logits), logits.sigmoid(), rtol=0, atol=0)
    assert torch.equal(REGRESSION.activation(logits[:, :1]), logits[:, :1])
    assert SINGLE.activation(logits.half()).dtype == torch.float32


def test_single_label_summary_is_the_confusion_and_scores_name_its_metrics(seed):
    probs, targets = SINGLE.activation(torch.randn(20, 2)), torch.randint(0, 2, (20,))
    summary = SINGLE.summarize(probs, targets)
    assert torch.equal(summary, metrics.confusion_matrix(probs.argmax(-1), targets, 2))
    report = SINGLE.scores(summary, ["neg", "pos"])
    assert set(SINGLE.metric_names(2)) <= set(report) and report == metrics.single_label_scores(summary, ["neg", "pos"])


def test_multi_label_threshold_is_half_unless_set_and_strict():
    probs, targets = torch.tensor([[0.5, 0.7, 0.2]]), torch.tensor([[1, 1, 0]])
    assert MULTI.summarize(probs, targets).per_label[0].tolist() == [0, 1, 0]  # TP: 0.5 is not above 0.5
    assert MULTI.summarize(probs, targets, threshold=0.1).per_label[0].tolist() == [1, 1, 0]
    report = MULTI.scores(MULTI.summarize(probs, targets), ["a", "b", "c"])
    assert set(MULTI.metric_names(3)) <= set(report) and report["exact_match"] == 0.0


def test_regression_summary_is_every_row_and_scores_from_it(seed):
    outputs, targets = torch.randn(9, 1), torch.randn(9)
    summary = REGRESSION.summarize(REGRESSION.activation(outputs), targets)
    assert summary.shape == (9, 2) and summary.dtype == torch.float64
    assert REGRESSION.scores(summary, []) == metrics.regression_scores(outputs[:, 0], targets)


def test_is_better_reads_mse_as_lower():
    assert is_better("mse", 0.2, 0.3) and not is_better("mse", 0.3, 0.2)
    assert is_better("pearson", 0.3, 0.2) and not is_better("accuracy", 0.2, 0.2)
    assert is_better("mse", 9.0, None) and is_better("macro_f1", 0.0, None)
