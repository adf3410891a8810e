"""LoRAConfig: what to adapt, how, and what else stays trainable."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LoRAConfig:
    """What to adapt and how; invalid values raise one ValueError listing every problem.

    Args:
        rank, alpha, dropout, targets, layers, trainable_modules, saved_modules, use_rslora: as each field's
        comment below says. `scaling` is the one formula for the factor in front of B·A.
    """
    # rank r of the update B·A; the adapter adds r·(in + out) parameters per adapted Linear
    rank: int = 4
    # alpha: the update is scaled by alpha / rank (or alpha / sqrt(rank) with rsLoRA)
    alpha: float = 16.0
    # dropout on the LoRA input only; the frozen path never sees it
    dropout: float = 0.0
    # module-name suffixes to adapt, matched like PEFT's target_modules (name == t or endswith "." + t)
    targets: tuple[str, ...] = ("query", "value")
    # encoder layer indices to adapt; None adapts every layer (PEFT's layers_to_transform)
    layers: tuple[int, ...] | None = None
    # modules trained in full, matched like PEFT's modules_to_save; the head by default
    trainable_modules: tuple[str, ...] = ("classifier",)
    # frozen modules stored whole in the adapter all the same, because the base checkpoint lacks them (a head
    # layer left at its random init): loading the adapter anywhere must restore them, never draw a new init.
    # A LoRA layer inside one is stored merged into it, which is how PEFT's modules_to_save can hold it.
    saved_modules: tuple[str, ...] = ()
    # rsLoRA: scale by alpha / sqrt(rank), which keeps the update's size stable as rank grows
    use_rslora: bool = False

    def __post_init__(self) -> None:
        # Accept lists from JSON or argparse (and a bare name / layer index, as PEFT does), but store
        # tuples so the config stays hashable. Anything else is left as is and reported below.
        for name in ("targets", "layers", "trainable_modules", "saved_modules"):
            value = getattr(self, name)
            if isinstance(value, str) or (name == "layers" and type(value) is int):
                value = (value,)
            elif isinstance(value, list):
                value = tuple(value)
            object.__setattr__(self, name, value)
        problems = []
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            problems.append(f"rank must be an int >= 1, got {self.rank!r}")
        if (isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float))
                or not math.isfinite(self.alpha) or self.alpha <= 0):
            problems.append(f"alpha must be > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if (not isinstance(self.targets, tuple) or not self.targets
                or not all(isinstance(t, str) and t.strip(".") for t in self.targets)):
            problems.append(f"targets must be non-empty module names, got {self.targets!r}")
        if self.layers is not None and (
            not isinstance(self.layers, tuple) or not self.layers
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
        ):
            problems.append(f"layers must be None or non-negative ints, got {self.layers!r}")
        for name in ("trainable_modules", "saved_modules"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(t, str) and t.strip(".") for t in value):
                problems.append(f"{name} must be module names, got {value!r}")
        if not isinstance(self.use_rslora, bool):
            problems.append(f"use_rslora must be a bool, got {self.use_rslora!r}")
        if problems:
            raise ValueError("invalid LoRAConfig: " + "; ".join(problems))

    @property
    def scaling(self) -> float:
        """The factor in front of B·A."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)
