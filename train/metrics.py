"""Accuracy, macro-F1, a per-class report and the confusion matrix, from predicted and true labels; and the
run's pictures of them: curves.png (loss, lr, evaluation over steps) and confusion.png.

The scores of every task kind (GLUE's): single-label from the (K, K) confusion (accuracy, macro_f1, mcc, and f1
of label 1 for two classes); multi-label from per-label TP/FP/FN and an exact-match count (micro_f1, macro_f1,
exact_match); regression from every row's prediction and target (pearson, spearman, mse). Counts are what
processes sum under torchrun, so those scores are exact; correlations need the gathered vectors."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from train.files import atomic_write

from .rundir import PLOTS


def classification_report(preds: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """preds, labels: (n,) ints in 0..K-1. Returns accuracy, macro_f1, mcc (and f1 of label 1 for two classes),
    per_class and confusion[true][pred]."""
    return single_label_scores(confusion_matrix(preds, labels, len(names)), names)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(K, K) int64 counts, [true][pred]: all the metrics need, and what processes add up (K² numbers)."""
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(f"preds and labels must be 1-d and the same length, got {tuple(preds.shape)} "
                         f"and {tuple(labels.shape)}")
    for what, t in (("preds", preds), ("labels", labels)):
        if len(t) and not (0 <= int(t.min()) and int(t.max()) < k):
            raise ValueError(f"{what} must be class indices in 0..{k - 1}, got {int(t.min())}..{int(t.max())}")
    return torch.bincount(labels.long() * k + preds.long(), minlength=k * k).reshape(k, k)


def report_from_confusion(confusion: torch.Tensor, names: list[str]) -> dict:
    """Accuracy, macro_f1, per_class and confusion from (K, K) counts [true][pred]."""
    tp = confusion.diag().double()
    predicted, support = confusion.sum(0).double(), confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-300), torch.zeros_like(tp))
    return {
        "accuracy": float(tp.sum() / max(int(confusion.sum()), 1)),
        "macro_f1": float(f1.mean()),
        "per_class": [
            {"label": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, support)
        ],
        "confusion": confusion.tolist(),
        "examples": int(confusion.sum()),
    }


def mcc_from_confusion(confusion: torch.Tensor) -> float:
    """Matthews correlation from (K, K) counts [true][pred], the multiclass form (as sklearn's
    matthews_corrcoef; for K = 2 the binary phi). 0.0 when either side holds one class only (a constant
    prediction, or one true class), as sklearn: the correlation is undefined there and 0.0 reads as no skill."""
    _check_confusion(confusion)
    # Python ints: the products reach n², past int64 and float64's exact integers on large evaluation sets.
    true, pred = [int(x) for x in confusion.sum(1)], [int(x) for x in confusion.sum(0)]
    n, correct = sum(true), int(confusion.trace())
    cov_tp = correct * n - sum(t * p for t, p in zip(true, pred))
    cov_pp, cov_tt = n * n - sum(p * p for p in pred), n * n - sum(t * t for t in true)
    return 0.0 if cov_pp == 0 or cov_tt == 0 else cov_tp / (cov_pp * cov_tt) ** 0.5


def binary_f1_from_confusion(confusion: torch.Tensor) -> float:
    """F1 of the positive class (label 1) from (2, 2) counts [true][pred], GLUE's `f1`. 0.0 when label 1 is
    neither true nor predicted anywhere: sklearn's default zero_division ("warn") scores it 0.0."""
    _check_confusion(confusion)
    if confusion.shape[0] != 2:
        raise ValueError(f"f1 of the positive class needs two classes, got {confusion.shape[0]}")
    tp, fp, fn = int(confusion[1, 1]), int(confusion[0, 1]), int(confusion[1, 0])
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def single_label_scores(confusion: torch.Tensor, names: list[str]) -> dict:
    """report_from_confusion's report of (K, K) counts [true][pred] (summed over processes), with `mcc`,
    and for two classes `f1` of label 1."""
    report = report_from_confusion(confusion, names) | {"mcc": mcc_from_confusion(confusion)}
    return report | ({"f1": binary_f1_from_confusion(confusion)} if len(names) == 2 else {})


def _check_confusion(confusion: torch.Tensor) -> None:
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be (K, K) counts, got shape {tuple(confusion.shape)}")


class MultiLabelCounts(NamedTuple):
    """What multi-label scores need, as sums: processes add each field up (all_reduce) and the scores stay
    exact. per_label: (3, K) int64, rows TP, FP, FN per label; exact: (2,) int64, rows whose every label is
    right, and rows."""
    per_label: torch.Tensor
    exact: torch.Tensor


def multi_label_counts(preds: torch.Tensor, targets: torch.Tensor) -> MultiLabelCounts:
    """preds, targets: (n, K) of 0/1 (bool or numbers; preds already thresholded). Returns the summable counts."""
    if preds.shape != targets.shape or preds.ndim != 2:
        raise ValueError(f"preds and targets must be (n, K) and the same shape, got {tuple(preds.shape)} "
                         f"and {tuple(targets.shape)}")
    for what, t in (("preds", preds), ("targets", targets)):
        if not ((t == 0) | (t == 1)).all():
            raise ValueError(f"{what} must hold only 0 and 1 (one column per label)")
    p, t = preds.bool(), targets.bool()
    per_label = torch.stack([(p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0)]).long()
    exact = torch.tensor([int((p == t).all(1).sum()), len(p)], dtype=torch.int64)
    return MultiLabelCounts(per_label, exact)


def multi_label_scores(counts: MultiLabelCounts, names: list[str]) -> dict:
    """micro_f1, macro_f1 (the mean over the K labels), exact_match (subset accuracy), per_class and examples
    from the (summed) counts. A label never true and never predicted scores F1 0.0 and still counts in the
    macro mean, as sklearn's default zero_division ("warn") does; so do precision and recall with a zero
    denominator. No rows at all: every score 0.0."""
    per_label, exact = counts
    if per_label.shape != (3, len(names)) or exact.shape != (2,):
        raise ValueError(f"counts must be (3, {len(names)}) per label and (2,) exact, got "
                         f"{tuple(per_label.shape)} and {tuple(exact.shape)}")
    tp, fp, fn = per_label.double()
    f1, precision, recall = _ratio(2 * tp, 2 * tp + fp + fn), _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    total_tp, total_wrong = float(tp.sum()), float(fp.sum() + fn.sum())
    return {
        "micro_f1": 2 * total_tp / (2 * total_tp + total_wrong) if total_tp + total_wrong else 0.0,
        "macro_f1": float(f1.mean()) if len(names) else 0.0,
        "exact_match": int(exact[0]) / max(int(exact[1]), 1),
        "per_class": [
            {"label": n, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, tp + fn)
        ],
        "examples": int(exact[1]),
    }


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise, 0.0 where den is 0 (sklearn's default zero_division)."""
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n,) float64 ranks 1..n, tied values sharing their average rank (scipy.stats.rankdata's
    default, which spearmanr uses)."""
    values, order = x.sort(stable=True)
    _, group, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = torch.empty(len(x), dtype=torch.float64)
    ranks[order] = (ends - (counts.double() - 1) / 2)[group]  # the mean of ranks end-count+1 .. end
    return ranks


def pearson(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Pearson's r of two (n,) vectors, in float64. 0.0 (scipy gives nan) when either is constant or n < 2:
    undefined there, and 0.0 keeps eval.json valid JSON and lets a later epoch count as better."""
    x, y = _vectors(preds, targets)
    if len(x) < 2 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return 0.0
    # Centred and normalised before the product, as scipy does: no overflow for large values.
    xm, ym = x - x.mean(), y - y.mean()
    nx, ny = xm.norm(), ym.norm()
    if nx == 0 or ny == 0:
        return 0.0
    return float(((xm / nx) @ (ym / ny)).clamp(-1.0, 1.0))


def spearman(preds: torch.Tensor, targets: torch.Tensor) -> float:
    """Spearman's rho of two (n,) vectors: Pearson's r of their average ranks (ties averaged, as
    scipy.stats.spearmanr). 0.0 when either is constant or n < 2, as pearson."""
    x, y = _vectors(preds, targets)
    return pearson(average_ranks(x), average_ranks(y))


def regression_scores(preds: torch.Tensor, targets: torch.Tensor) -> dict:
    """pearson, spearman, mse and examples from every row's prediction and target, (n,) each, gathered from
    all processes first: correlations are no sums of per-process parts. NumPy arrays are taken too."""
    x, y = _vectors(preds, targets)
    if not len(x):
        raise ValueError("no rows to score")
    return {"pearson": pearson(x, y), "spearman": spearman(x, y), "mse": float(((x - y) ** 2).mean()),
            "examples": len(x)}


def _vectors(preds: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as (n,) float64 CPU tensors, checked: 1-d, one length, finite."""
    x, y = (torch.as_tensor(v).detach().cpu().double() for v in (preds, targets))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"preds and targets must be 1-d and the same length, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    for what, t in (("preds", x), ("targets", y)):
        bad = (~t.isfinite()).nonzero()
        if len(bad):
            raise ValueError(f"{what} must be finite, got {float(t[bad[0, 0]])} at row {int(bad[0, 0])}")
    return x, y


REPORTED = {"accuracy": "accuracy", "macro_f1": "macro-F1", "micro_f1": "micro-F1", "exact_match": "exact match",
            "mcc": "MCC", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman", "mse": "MSE"}  # report order


def format_report(report: dict, title: str | None = None) -> str:
    """The per-class table where there is one, then every score the report has (accuracy, macro-F1, MCC, for two
    classes the F1 of label 1; micro-F1 and exact match; Pearson, Spearman, MSE), as plain text, under `title`."""
    lines = [title] if title else []
    per_class = report.get("per_class", [])
    width = max(12, *(len(c["label"]) for c in per_class)) if per_class else 12
    if per_class:
        lines += [f"{'label':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
        lines += [f"{c['label']:<{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} "
                  f"{c['support']:>9d}" for c in per_class]
    shown = [k for k in REPORTED if k in report]
    for i, key in enumerate(shown):
        name = f"F1 {per_class[-1]['label']}" if key == "f1" and per_class else REPORTED[key]  # label 1, of two
        lines.append(f"{name:<{width}} {report[key]:>29.4f}" + (f" {report['examples']:>9d}" if i == 0 else ""))
    return "\n".join(lines)


PLOTTED = ("step", "loss", "lr", *(f"eval_{k}" for k in REPORTED))  # what curves.png draws of metrics.jsonl's lines


def plot_run(out: Path, result: dict, entries: list[dict]) -> None:
    """curves.png from `entries` (the run's metrics.jsonl lines, as the run kept them: at least PLOTTED), and
    confusion.png from `result` (eval.json's dict)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    train = [e for e in entries if "loss" in e]
    keys = [k for k in REPORTED if any(f"eval_{k}" in e for e in entries) and k != "mse"][:3]  # mse: another scale
    evals = [e for e in entries if any(f"eval_{k}" in e for k in keys)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], lw=0.8)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([e["step"] for e in train], [e["lr"] for e in train])
    axes[1].set(title="learning rate", xlabel="step")
    for key, marker in zip(keys, "ox+"):
        axes[2].plot([e["step"] for e in evals], [e[f"eval_{key}"] for e in evals], marker=marker, label=REPORTED[key])
    scores = [e[f"eval_{k}"] for e in evals for k in keys]
    if scores:  # at least 10 points of range, so a change of a few tenths does not fill the plot
        low = max(0.0, min(min(scores), max(scores) - 0.10) - 0.01)
        axes[2].set_ylim(low, min(1.0, max(max(scores), low + 0.10) + 0.01))
    axes[2].set(title="evaluation", xlabel="step")
    axes[2].legend()
    fig.tight_layout()
    atomic_write(out / PLOTS[0], lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)

    if "confusion" not in result:  # single-label only
        (out / PLOTS[1]).unlink(missing_ok=True)
        return
    labels, confusion = result["labels"], result["confusion"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"epoch {result.get('best_epoch', '?')}: accuracy {result['accuracy']:.4f}")
    top = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    atomic_write(out / PLOTS[1], lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)


def eval_record(report: dict, history: list[dict], train_seconds: float, examples: int, steps: int, trainable: int,
                labels: list[str], selection: dict) -> dict:
    """What eval.json holds: the kept epoch's report on the evaluation rows, every epoch's scores (on the rows that
    chose), how the epoch was chosen (selection: task, metric, selected_on, and the validation report when
    validation rows chose it), timings and counts."""
    return {
        **{k: report[k] for k in (*REPORTED, "per_class", "confusion", "examples", "eval_seconds") if k in report},
        "best_epoch": report["epoch"], **selection, "history": history,
        "train_seconds": train_seconds, "train_examples": examples,
        "train_examples_per_s": examples / max(train_seconds, 1e-9),
        "eval_examples_per_s": report["examples"] / max(report["eval_seconds"], 1e-9),
        "trainable_params": trainable, "labels": labels, "steps": steps,
    }
