"""Accuracy, macro-F1, a per-class report and the confusion matrix, from predicted and true labels; and the
run's pictures of them: curves.png (loss, lr, evaluation over steps) and confusion.png."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from train.files import atomic_write

from .rundir import METRICS, PLOTS


def classification_report(preds: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict:
    """preds, labels: (n,) ints in 0..K-1. Returns accuracy, macro_f1, per_class and confusion[true][pred]."""
    return report_from_confusion(confusion_matrix(preds, labels, len(names)), names)


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


def format_report(report: dict, title: str | None = None) -> str:
    """The per-class table, then accuracy and macro-F1, as plain text, under `title` when given."""
    width = max(12, *(len(c["label"]) for c in report["per_class"]))
    lines = [title] if title else []
    lines += [f"{'label':<{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}"]
    for c in report["per_class"]:
        lines.append(f"{c['label']:<{width}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} "
                     f"{c['support']:>9d}")
    lines.append(f"{'accuracy':<{width}} {report['accuracy']:>29.4f} {report['examples']:>9d}")
    lines.append(f"{'macro-F1':<{width}} {report['macro_f1']:>29.4f}")
    return "\n".join(lines)


def plot_run(out: Path, result: dict) -> None:
    """curves.png from out/metrics.jsonl, and confusion.png from `result` (eval.json's dict)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    entries = [json.loads(x) for x in (out / METRICS).read_text().splitlines() if x.strip()]
    train = [e for e in entries if "loss" in e]
    evals = [e for e in entries if "eval_accuracy" in e]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], lw=0.8)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot([e["step"] for e in train], [e["lr"] for e in train])
    axes[1].set(title="learning rate", xlabel="step")
    axes[2].plot([e["step"] for e in evals], [e["eval_accuracy"] for e in evals], marker="o", label="accuracy")
    axes[2].plot([e["step"] for e in evals], [e["eval_macro_f1"] for e in evals], marker="x", label="macro-F1")
    scores = [e[k] for e in evals for k in ("eval_accuracy", "eval_macro_f1")]
    if scores:  # at least 10 points of range, so a change of a few tenths does not fill the plot
        low = max(0.0, min(min(scores), max(scores) - 0.10) - 0.01)
        axes[2].set_ylim(low, min(1.0, max(max(scores), low + 0.10) + 0.01))
    axes[2].set(title="evaluation", xlabel="step")
    axes[2].legend()
    fig.tight_layout()
    atomic_write(out / PLOTS[0], lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)

    labels, confusion = result["labels"], result["confusion"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"best epoch ({result.get('best_epoch', '?')}): accuracy {result['accuracy']:.4f}")
    top = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    atomic_write(out / PLOTS[1], lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
