"""curves.png (loss, lr, eval accuracy over steps) and confusion.png, from a run's files."""
from __future__ import annotations

import json
from pathlib import Path

from lora.adapter import atomic_write

from .rundir import METRICS, PLOTS


def plot_run(out: Path, result: dict) -> None:
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
    ax.set(xlabel="predicted", ylabel="true", title=f"accuracy {result['accuracy']:.4f}")
    top = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    fig.tight_layout()
    atomic_write(out / PLOTS[1], lambda p: fig.savefig(p, dpi=100, format="png"))
    plt.close(fig)
