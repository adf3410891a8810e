"""LoRALinear: a frozen nn.Linear plus a trainable low-rank update, with exact merge/unmerge; and
SharedInput, which runs sibling LoRALinears that read the same tensor (query, key, value) as one."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoRAConfig
from .functional import compute_dtype, lora_linears


class LoRALinear(nn.Module):
    """y = x Wᵀ + b + scaling · B(A(dropout(x))).

    weight (out, in) and bias (out,) are the frozen base, kept under nn.Linear's names so a base
    checkpoint loads unchanged. lora_A.weight is (r, in), kaiming-uniform; lora_B.weight is (out, r),
    zeros, so a fresh layer computes exactly what the wrapped Linear did.
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
        # The SharedInput this layer belongs to, if any (set by lora.inject.fuse_shared_inputs).
        self._group: SharedInput | None = None
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

    @property
    def merged(self) -> bool:
        return self._base_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A, (out, in), in at least float32 so merging rounds once."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        return (self.lora_B.weight.to(dtype) @ self.lora_A.weight.to(dtype)) * self.scaling

    @torch.inference_mode(False)  # called under inference_mode, the saved weight must still train later
    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into weight. Idempotent: merging a merged layer does nothing."""
        if self.merged:
            return
        self._base_weight = self.weight.data.clone()
        self.weight.data = (self.weight.data.to(torch.promote_types(self.weight.dtype, torch.float32))
                            + self.delta_weight()).to(self.weight.dtype)

    @torch.inference_mode(False)
    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight bit for bit. Idempotent."""
        if not self.merged:
            return
        self.weight.data = self._base_weight
        self._base_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out)."""
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        if self._group is not None and self._group.usable():
            return self._group(self, x)
        return self.forward_alone(x)

    def forward_alone(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged forward of this layer by itself (lora.functional has the math)."""
        dropout = self.dropout if isinstance(self.dropout, nn.Dropout) and self.dropout.training else None
        return lora_linears(x, [self.weight], [self.bias], [self.lora_A.weight], [self.lora_B.weight],
                            [self.scaling], dropout)[0]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"scaling={self.scaling:g}, merged={self.merged}")


def _version(t: torch.Tensor) -> int:
    """t's in-place change counter (inference tensors keep none, and cannot change)."""
    return -1 if t.is_inference() else t._version


class SharedInput:
    """LoRALinears that a model calls one after another on the very same input tensor, like query, key
    and value in BERT and RoBERTa self-attention.

    The first call computes every layer of the group in one `lora_linears`: one cast of x, one A
    projection, dx accumulated in place. The other layers then take their output, which was computed
    from that same tensor, unchanged since (in-place counters of x and of every weight), in the same
    grad and autocast mode. If a layer is called on another input while outputs wait, or twice, the
    group stops fusing for good and each layer runs alone: as correct, only slower. Dropout on the LoRA
    input in training, or a merged layer, also makes the layers run alone, for that call.
    """

    def __init__(self, layers: Sequence[LoRALinear]) -> None:
        self.layers = tuple(layers)
        self.active = True
        self._x: torch.Tensor | None = None  # the input the waiting outputs were computed from
        self._stamp: tuple = ()
        self._waiting: dict[int, torch.Tensor] = {}  # layer index -> output not yet taken

    def usable(self) -> bool:
        return self.active and not any(
            layer.merged or (isinstance(layer.dropout, nn.Dropout) and layer.dropout.training)
            for layer in self.layers)

    def stamp(self, x: torch.Tensor) -> tuple:
        """Everything besides x's identity that the waiting outputs depend on."""
        params = tuple(_version(p) for layer in self.layers for p in layer.parameters())
        return _version(x), torch.is_grad_enabled(), compute_dtype(x), params

    def __call__(self, layer: LoRALinear, x: torch.Tensor) -> torch.Tensor:
        i = self.layers.index(layer)
        if self._waiting:
            hit = self._x is x and i in self._waiting and self.stamp(x) == self._stamp
            out = self._waiting.pop(i) if hit else None
            if not hit:  # this model does not call the group on one tensor: stop fusing it
                self.active = False
                self._waiting.clear()
            if not self._waiting:
                self._x = None  # do not keep the input alive
            return out if hit else layer.forward_alone(x)
        outs = lora_linears(x, [m.weight for m in self.layers], [m.bias for m in self.layers],
                            [m.lora_A.weight for m in self.layers], [m.lora_B.weight for m in self.layers],
                            [m.scaling for m in self.layers])
        self._x, self._stamp = x, self.stamp(x)
        self._waiting = {j: out for j, out in enumerate(outs) if j != i}
        return outs[i]

    def __getstate__(self) -> dict:
        # deepcopy and pickle see the group between forwards: outputs in flight are not part of it.
        return {**self.__dict__, "_x": None, "_stamp": (), "_waiting": {}}
