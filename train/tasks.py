"""The three task kinds in one table, KINDS: what each needs wherever they differ (the head's size, the loss, the
activation, how evaluation combines processes and scores, its metrics and the default one that picks the best
epoch). train.data.labels reads the kind from a label column as written.

Evaluation runs in two steps, so that torchrun's scores equal one process's: summarize(outputs, targets) on
each process, combined as the kind's `reduce` says ("sum": all-reduce every tensor of it; "gather": every
row's values in row order), then scores(combined, names) once."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import metrics
from .distributed import Dist, all_reduce_confusion, gather_rows
from .errors import UserError
from .data.labels import MULTI, REGRESSION, SINGLE

LOWER_IS_BETTER = frozenset({"mse"})  # every other metric is better higher


@dataclass(frozen=True)
class TaskKind:
    """One kind of task; the functions behind the methods are fields, so KINDS stays one table."""
    name: str
    problem_type: str  # transformers' config.problem_type for it
    per_label_outputs: bool  # the head has one output per label (K), else one
    metrics: tuple[str, ...]  # the scores it reports for every K
    binary_metrics: tuple[str, ...]  # reported for two labels only
    default_metric: str
    reduce: str  # how processes combine summarize's result: "sum" or "gather"
    smooths: bool  # loss applies label_smoothing; the other kinds take it and leave it
    _loss: Callable = field(repr=False)
    _activation: Callable = field(repr=False)
    _summarize: Callable = field(repr=False)
    _scores: Callable = field(repr=False)

    def outputs(self, num_labels: int) -> int:
        """The head's output size for K labels: K, K or 1."""
        return num_labels if self.per_label_outputs else 1

    def metric_names(self, num_labels: int) -> tuple[str, ...]:
        """The keys of the scores it reports for K labels."""
        return self.metrics + (self.binary_metrics if num_labels == 2 else ())

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
             reduction: str = "mean") -> torch.Tensor:
        """logits: (n, outputs); targets: (n,) class indices, (n, K) 0/1, or (n,) floats. In float32 at least
        (half logits are upcast, float64 stays), reduced as torch's `reduction` ("mean", "sum", "none")."""
        return self._loss(_wide(logits), targets, label_smoothing, reduction)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """(n, outputs) logits -> what is predicted from them: softmax, sigmoid or the value itself."""
        return self._activation(_wide(logits))

    def summarize(self, outputs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5):
        """This process's part of the evaluation from activation's (n, outputs) and the targets: the (K, K)
        confusion; MultiLabelCounts of the labels whose probability is above `threshold` (0.5 itself is
        not); or an (n, 2) float64 [prediction, target] per row."""
        return self._summarize(outputs, targets, threshold)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The loss summed over rows, each row's as the kind reduces it: a multi-label row's is the mean over
        its K labels, so that the batch mean equals BCEWithLogitsLoss's mean over n·K."""
        if self.name == MULTI:
            return self.loss(logits, targets, label_smoothing, "none").mean(-1).sum()
        return self.loss(logits, targets, label_smoothing, "sum")

    def scores(self, summary, names: list[str]) -> dict:
        """The report (eval.json's scores) from the summary combined over processes; names: the K labels
        (regression ignores them)."""
        return self._scores(summary, names)


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _column(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Regression's (n, 1) outputs as (n,), checked against the (n,) targets: (n, 1) - (n,) would broadcast
    to (n, n) and train on a wrong loss without a word."""
    out = x.squeeze(-1) if x.ndim == 2 and x.shape[-1] == 1 else x
    if out.shape != like.shape or out.ndim != 1:
        raise ValueError(f"regression outputs must be (n, 1) or (n,) for (n,) targets, got {tuple(x.shape)} "
                         f"and {tuple(like.shape)}")
    return out


def _cross_entropy(logits, targets, smoothing, reduction):
    return F.cross_entropy(logits, targets.long(), label_smoothing=smoothing, reduction=reduction)


def _bce(logits, targets, smoothing, reduction):
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction=reduction)


def _mse(logits, targets, smoothing, reduction):
    return F.mse_loss(_column(logits, targets), targets.to(logits.dtype), reduction=reduction)


def _regression_summary(outputs, targets, threshold):
    return torch.stack([_column(outputs, targets).double(), targets.double()], 1)


KINDS: dict[str, TaskKind] = {k.name: k for k in (
    TaskKind(SINGLE, "single_label_classification", True, ("accuracy", "macro_f1", "mcc"), ("f1",), "accuracy",
             "sum", True, _cross_entropy, lambda z: z.softmax(-1),
             lambda out, y, threshold: metrics.confusion_matrix(out.argmax(-1), y, out.shape[-1]),
             metrics.single_label_scores),
    TaskKind(MULTI, "multi_label_classification", True, ("micro_f1", "macro_f1", "exact_match"), (), "macro_f1",
             "sum", False, _bce, torch.sigmoid,
             lambda out, y, threshold: metrics.multi_label_counts(out > threshold, y),
             metrics.multi_label_scores),
    TaskKind(REGRESSION, "regression", False, ("pearson", "spearman", "mse"), (), "pearson",
             "gather", False, _mse, lambda z: z, _regression_summary,
             lambda summary, names: metrics.regression_scores(summary[:, 0], summary[:, 1])),
)}


def task_kind(name: str) -> TaskKind:
    """KINDS[name], or a ValueError naming the kinds there are."""
    if name not in KINDS:
        raise ValueError(f"unknown task kind {name!r}: one of {', '.join(KINDS)}")
    return KINDS[name]


def head_prior(task: str, labels: torch.Tensor) -> torch.Tensor | None:
    """The output bias a fresh head starts from: the training rows' mean score (regression, (1,)), each label's
    log-odds (multi-label, (K,)); None for single-label, whose head starts as the model's. At LoRA's learning
    rates Adam moves a bias ~lr a step, so a head at 0 would spend its budget reaching the labels' base rate."""
    if task == REGRESSION:
        return labels.double().mean().reshape(1)
    if task == MULTI:
        share = labels.double().mean(0).clamp(1e-4, 1 - 1e-4)
        return (share / (1 - share)).log()
    return None


def kind_of_model(config) -> TaskKind:
    """The kind a model's config was trained for, by transformers' problem_type (unset: single-label)."""
    by_type = {k.problem_type: k for k in KINDS.values()}
    return by_type.get(getattr(config, "problem_type", None), KINDS[SINGLE])


def score_rows(kind: TaskKind, outputs: torch.Tensor, targets: torch.Tensor, index: torch.Tensor, n: int,
               names: list[str], threshold: float = 0.5, d: Dist = Dist()) -> dict:
    """The kind's report of n rows scored by every process: outputs (m, outputs) as activation makes them and
    their targets, for this process's rows `index` (m,); the summaries are combined as the kind's reduce says,
    so torchrun's scores equal one process's."""
    summary = kind.summarize(outputs, targets, threshold)
    if kind.reduce == "gather":
        summary = gather_rows(index, summary, n, d)
    elif isinstance(summary, tuple):
        summary = type(summary)(*(all_reduce_confusion(part, d) for part in summary))
    else:
        summary = all_reduce_confusion(summary, d)
    return kind.scores(summary, names)


def pick_metric(task: str, asked: str | None, outputs: int) -> str:
    """The score that picks the best epoch: `asked` (--metric), or the kind's default; one UserError line when
    the kind reports no such score for a head of `outputs`."""
    kind = task_kind(task)
    metric = asked or kind.default_metric
    if metric not in kind.metric_names(outputs):
        raise UserError(f"--metric {metric} is not a score of this {task} task: one of "
                        f"{', '.join(kind.metric_names(outputs))}")
    return metric


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether score `new` beats `best` (None: nothing yet) on `metric`: lower for mse, higher otherwise."""
    if best is None:
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best
