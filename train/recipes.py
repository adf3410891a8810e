"""Named recipes: the settings each one fixes. The CLI, TrainConfig's defaults and sweeps all read this table.

Keys are flat setting names, as on the command line: the LoRA ones (LORA_KEYS) go into TrainConfig.lora,
the rest are TrainConfig fields. A flag the user gives always wins over the recipe.
"""
from __future__ import annotations

ALL_LINEAR = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")

RECIPES: dict[str, dict] = {
    # The reference project's recipe: PEFT LoRA r=4 on query/value, full head, HF Trainer defaults.
    "reference": {"rank": 4, "alpha": 16.0, "dropout": 0.0, "targets": ("query", "value"), "layers": None,
                  "head": "full", "lr": 4e-4, "warmup_ratio": 0.0, "weight_decay": 0.0, "label_smoothing": 0.1,
                  "epochs": 5, "model_dropout": None},
    # LoRA on every linear layer of every block, rank 6, lean head: 998,404 trainable on roberta-base.
    # Beat the reference by > 1 pp on the offline proxy (README, sweeps/results). Without the model's own
    # dropout: as accurate on a held-out split, 1.76x faster on CPU (sweeps/results/dropout.md).
    "all-linear": {"rank": 6, "alpha": 16.0, "dropout": 0.0, "targets": ALL_LINEAR, "layers": None,
                   "head": "linear", "lr": 5e-4, "warmup_ratio": 0.06, "weight_decay": 0.01,
                   "label_smoothing": 0.1, "epochs": 5, "model_dropout": 0.0},
    # The fastest recipe at or above the reference's accuracy, chosen at full size (sweeps/mpnet-search.json,
    # sweeps/mpnet-fast.json: MPNet-base, roberta-base's shapes, 800 held-out training rows, 2 seeds): LoRA on
    # the six targets of the top half of the layers only, so the layers below run once per example (frozen-prefix
    # cache), at the largest rank under the budget (12 on roberta-base), rsLoRA's alpha/sqrt(r) scale, 2 epochs;
    # without the model's own dropout, which cost ~40% of a CPU step and no accuracy (sweeps/dropout.json).
    # On 6-layer MiniLM, where it was first chosen, it was the top 2 layers at rank 36 (sweeps/fast.json).
    "fast": {"rank": "auto", "alpha": 16.0, "dropout": 0.0, "targets": ALL_LINEAR, "layers": None, "top_layers": 0.5,
             "use_rslora": True, "head": "linear", "lr": 5e-4, "warmup_ratio": 0.06, "weight_decay": 0.01,
             "label_smoothing": 0.1, "epochs": 2, "model_dropout": 0.0},
}
DEFAULT_RECIPE = "all-linear"

# Settings that belong to lora.LoRAConfig rather than to the training run.
LORA_KEYS = ("rank", "alpha", "dropout", "targets", "layers", "use_rslora")


def recipe(name: str) -> dict:
    """The settings of recipe `name`; a KeyError names the known ones."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return dict(RECIPES[name])
