"""The three task kinds in one table, KINDS: what each needs wherever they differ (the head's size, the loss, the
activation, how evaluation combines processes and scores, its metrics and the default one that picks the best
epoch); and kind_of_labels, which reads the kind from a label column as written.

Evaluation runs in two steps, so that torchrun's scores equal one process's: summarize(outputs, targets) on
each process, combined as the kind's `reduce` says ("sum": all-reduce every tensor of it; "gather": every
row's values in row order), then scores(combined, names) once."""
from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import metrics

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"
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


def is_better(metric: str, new: float, best: float | None) -> bool:
    """Whether score `new` beats `best` (None: nothing yet) on `metric`: lower for mse, higher otherwise."""
    if best is None:
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best


class LabelKindError(ValueError):
    """A label column kind_of_labels refuses; index: the position of the value at fault, which the caller
    turns into a file and line."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


_WHOLE = re.compile(r"-?[0-9]+")  # as train.data.labels writes a whole number: ASCII digits, an optional minus
_REAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# The kinds each way of writing a label allows: a whole number is a class id, or a value among other numbers.
_ALLOWS = {"whole number": {SINGLE, REGRESSION}, "number": {REGRESSION}, "class name": {SINGLE}, "list": {MULTI}}


def kind_of_labels(values: Iterable[object]) -> str:
    """The task kind of a label column as read (JSON values, or CSV text): "single_label" when every label is
    a whole number (3, "3") or a class name; "multi_label" when every label is a list (of ids or names, maybe
    empty); "regression" when they are numbers and one at least is written as a float (3.8, "3.8", 1e-3).
    A float with nothing after the point (5.0, "1.0") counts as written: a number on a scale, so a column of
    only whole floats is regression (STS-B has 0.0 and 5.0 among its 3.8s); write class ids as ints.
    Raises LabelKindError (a ValueError with .index) at the first label that is no label (null, true, NaN,
    infinity, '', '+1') or whose kind no earlier one shares, naming both; ValueError when there are none."""
    possible, first = {SINGLE, MULTI, REGRESSION}, {}
    for i, value in enumerate(values):
        how = _written_as(value, i)
        if not possible & _ALLOWS[how]:
            earlier, j = next((h, j) for h, (j, _) in first.items() if not _ALLOWS[h] & _ALLOWS[how])
            raise LabelKindError(f"label {i} ({_show(value)}) is a {how}, but label {j} ({_show(first[earlier][1])})"
                                 f" is a {earlier}: one column holds one kind of label (class ids or names, lists "
                                 f"of them, or numbers)", i)
        possible &= _ALLOWS[how]
        first.setdefault(how, (i, value))
    if not first:
        raise ValueError("no labels to read the task kind from")
    return SINGLE if SINGLE in possible else possible.pop()


def _written_as(value: object, i: int) -> str:
    """How label `i` is written: "whole number", "number", "class name" or "list"; LabelKindError if none."""
    if isinstance(value, (list, tuple)):
        for j, item in enumerate(value):
            if isinstance(item, (list, tuple)) or _scalar(item) is None:
                raise LabelKindError(f"label {i} is a list whose item {j} ({_show(item)}) is no label", i)
        return "list"
    how = _scalar(value)
    if how is None:
        raise LabelKindError(f"label {i} ({_show(value)}) is no label: not a whole number, a finite number "
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
