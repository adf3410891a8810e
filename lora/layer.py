"""LoRALinear: a frozen nn.Linear plus a trainable low-rank update, with exact merge/unmerge."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoRAConfig


class LoRALinear(nn.Module):
    """y = x Wᵀ + b + scaling · B(A(dropout(x))).

    weight (out, in) and bias (out,) are the frozen base, kept under nn.Linear's names so a base
    checkpoint loads unchanged. lora_A.weight is (r, in), kaiming-uniform; lora_B.weight is (out, r),
    zeros, so a fresh layer computes exactly what the wrapped Linear did.

    Args:
        in_features, out_features, bias, device, dtype: as nn.Linear's.
        rank: r, the inner size of B·A.
        scaling: the factor in front of B·A (LoRAConfig.scaling: alpha / r, or alpha / √r with rsLoRA).
        dropout: on the LoRA input only; the frozen path never sees it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        scaling: float,
        dropout: float = 0.0,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        # The factor in front of B·A comes in ready-made: LoRAConfig.scaling is its one formula.
        self.scaling = float(scaling)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **kw), requires_grad=False) if bias else None
        # nn.Linear submodules so parameter names end in lora_A.weight / lora_B.weight, as in PEFT files.
        self.lora_A = nn.Linear(in_features, rank, bias=False, **kw)
        self.lora_B = nn.Linear(rank, out_features, bias=False, **kw)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # While merged, the exact pre-merge weight; rounding makes W + Δ - Δ != W, so never recompute it.
        self.register_buffer("_base_weight", None, persistent=False)
        self.reset_lora_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: LoRAConfig) -> "LoRALinear":
        """Wrap `linear` with `config`'s rank, scaling and dropout, sharing its weight and bias tensors
        (no copy), on its device and dtype."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, config.rank, config.scaling, config.dropout,
                    bias=linear.bias is not None, device=w.device, dtype=w.dtype)
        layer.weight = nn.Parameter(w.data, requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        # A new module starts in train mode; follow the wrapped one so LoRA dropout is off in an eval model.
        return layer.train(linear.training)

    def reset_lora_parameters(self) -> None:
        # Same init as nn.Linear (and PEFT): A random, B zero, so ΔW = 0 at the start.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out). While merged, W already holds ΔW."""
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + self.scaling * self.lora_B(self.lora_A(self.dropout(x)))

    @property
    def merged(self) -> bool:
        return self._base_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A, (out, in), in at least float32 so merging rounds once."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        return (self.lora_B.weight.to(dtype) @ self.lora_A.weight.to(dtype)) * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + ΔW, (out, in), in the weight's dtype, rounded once from at least float32, whether the layer is
        merged now or not: what merge() folds in, what a merged adapter stores and what merge_and_unload keeps."""
        if self.merged:
            return self.weight.detach()
        w = self.weight.detach()
        return (w.to(torch.promote_types(w.dtype, torch.float32)) + self.delta_weight()).to(w.dtype)

    @torch.inference_mode(False)  # called under inference_mode, the saved weight must still train later
    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into weight. Idempotent: merging a merged layer does nothing."""
        if self.merged:
            return
        merged = self.merged_weight()
        self._base_weight = self.weight.data.clone()
        self.weight.data = merged

    @torch.inference_mode(False)
    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight bit for bit. Idempotent."""
        if not self.merged:
            return
        self.weight.data = self._base_weight
        self._base_weight = None

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scaling={self.scaling:g}, merged={self.merged}")
