"""LoRALinear: a frozen nn.Linear plus a trainable low-rank update, with exact merge/unmerge, and an opt-in
fused forward (`fused = True`, or lora.fuse(model) for every layer).

The fused forward computes the same formula, y = x Wᵀ + b + s · (x' Aᵀ) Bᵀ (x' = x, or dropout(x)), in one
autograd.Function written for a frozen base: the low-rank update is added into the base output in place (addmm_),
the backward accumulates both contributions to dx into one tensor in place, and x is saved only for A's gradient,
never for the base weight's, which a frozen weight never asks for. So a training step makes fewer full-size
temporaries than the plain formula, which autograd records op by op. python -m train opts in; whether that still
pays is benchmarks/speed.py's `fused_step_ratio_vs_plain`. Each layer runs its own Function, query, key and value
included, so a layer's result never depends on how the model calls its siblings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    `fused` (False unless set, on the layer or by lora.fuse) runs the unmerged forward as one autograd.Function:
    the same outputs and gradients, computed with fewer temporaries.
    """

    fused: bool = False

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
        if self.fused and not self.merged:
            return self._fused_forward(x)
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        return out + self.scaling * self.lora_B(self.lora_A(self.dropout(x)))

    def _fused_forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out) through _FusedLoRA, in the dtype autocast would run the matmuls in."""
        dtype = _compute_dtype(x)
        x = x.to(dtype)  # once; autocast would cast x again for each matmul that reads it
        dropout = isinstance(self.dropout, nn.Dropout) and self.dropout.training
        # No-ops when already in `dtype` (cast_frozen); A and B are small, their casts cost next to nothing.
        return _FusedLoRA.apply(x, self.dropout(x) if dropout else None, self.scaling, self.weight.to(dtype),
                                None if self.bias is None else self.bias.to(dtype),
                                self.lora_A.weight.to(dtype), self.lora_B.weight.to(dtype))

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


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's where it is on (it leaves float64 alone), else x's."""
    device = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _FusedLoRA(torch.autograd.Function):
    """apply(x (..., in), x_lora (..., in) or None for x itself, s, W (out, in), b (out,) or None, A (r, in),
    B (out, r)) -> y (..., out) = x Wᵀ + b + s · (x_lora Aᵀ) Bᵀ, a fresh tensor (no view)."""

    @staticmethod
    def forward(ctx, x: Tensor, x_lora: Tensor | None, scaling: float, weight: Tensor, bias: Tensor | None,
                lora_a: Tensor, lora_b: Tensor) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        xl2 = x2 if x_lora is None else x_lora.reshape(-1, x.shape[-1])
        xa = xl2 @ lora_a.t()  # (n, r)
        # Written through a 2-D view of y, so the output is no view itself and may be changed in place.
        y = x.new_empty(*x.shape[:-1], weight.shape[0])
        y2 = y.view(-1, weight.shape[0])
        torch.mm(x2, weight.t(), out=y2) if bias is None else torch.addmm(bias, x2, weight.t(), out=y2)
        y2.addmm_(xa, lora_b.t(), alpha=scaling)  # + s · xa Bᵀ, in place
        # x itself is only needed for the base weight's gradient, which a frozen weight never asks for.
        base_grad = ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        ctx.save_for_backward(x2 if base_grad else None, xl2, lora_a, xa, weight, lora_b)
        ctx.scaling, ctx.shape, ctx.lora_x = scaling, x.shape, x_lora is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, xl2, lora_a, xa, weight, lora_b = ctx.saved_tensors
        need, s = ctx.needs_input_grad, ctx.scaling
        g2 = grad.reshape(-1, grad.shape[-1])  # (n, out)
        dx = g2 @ weight if need[0] else None
        dxa = torch.mm(g2, lora_b).mul_(s)  # (n, r) = s · g B
        dw = g2.t() @ x2 if need[3] else None
        db = g2.sum(0) if need[4] else None
        da = dxa.t() @ xl2 if need[5] else None  # (r, in)
        db_lora = torch.mm(xa.t(), g2).t().mul_(s) if need[6] else None  # (out, r)
        dx_lora = None
        if ctx.lora_x and need[1]:
            dx_lora = (dxa @ lora_a).view(ctx.shape)
        elif not ctx.lora_x and need[0]:
            dx.addmm_(dxa, lora_a)  # g W + dxa A, accumulated in place
        return None if dx is None else dx.view(ctx.shape), dx_lora, None, dw, db, da, db_lora
