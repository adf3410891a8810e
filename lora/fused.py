"""An opt-in fast path for LoRALinear's training step, off the public API: the same formula as
LoRALinear.forward, y_i = x W_iᵀ + b_i + s_i · (x' A_iᵀ) B_iᵀ (x' = x, or dropout(x) for a single layer),
computed by one autograd.Function, forward and backward, for one layer or for sibling layers that read the
same input (query, key and value of an attention block).

    inject_lora(model, config); fuse(model)    # python -m train does this; unfuse(model) undoes it

- the A projections of the layers are one matmul, x' [A_1; …; A_k]ᵀ, so x is read once for them;
- the low-rank update is added into the base output in place (addmm_), and in the backward every
  contribution to dx (g_i W_i for each layer, then dxa·A) accumulates into one tensor in place:
  no full-size temporaries, no separate adds;
- x is not saved for the frozen base (only x' for A's gradient, once however many layers share it).

Measured with benchmarks/speed.py (`fused_step_ratio_vs_plain`: the default recipe's LoRA on all six Linears at
rank 6, roberta-base shapes, batch 4 × 128, 2 threads, 9 rounds, a 2-core AMD EPYC with AVX512-BF16): under the
default recipe's own conditions (eager attention, no model dropout) a training step takes 0.938× the plain
formula's under bf16 autocast and 0.931× in fp32, so it stays (the rule: 5% or more); with the model's dropout and
SDPA, as the reference runs, 0.979× and 0.931×. An earlier ad-hoc run put the sibling grouping of
query/key/value at 1–2% of that, within noise; it stays too because dropping it changes the last bits of every
adapter trained, which the house's byte-identical check forbids.
Outputs and gradients equal the plain LoRALinear's to float64 precision (tests/lora/test_fused.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layer import LoRALinear


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's where it is on (it leaves float64 alone), else x's."""
    device = x.device.type
    if x.dtype != torch.float64 and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _LoRALinears(torch.autograd.Function):
    """apply(x (..., in), x_lora (..., in) or None for x itself, scalings (k floats), then for each of k
    layers: W (out_i, in), b (out_i,) or None, A (r_i, in), B (out_i, r_i)) -> k outputs (..., out_i)."""

    @staticmethod
    def forward(ctx, x: Tensor, x_lora: Tensor | None, scalings: tuple[float, ...], *params: Tensor | None):
        weights, biases, lora_a, lora_b = params[0::4], params[1::4], params[2::4], params[3::4]
        x2 = x.reshape(-1, x.shape[-1])
        xl2 = x2 if x_lora is None else x_lora.reshape(-1, x.shape[-1])
        a = lora_a[0] if len(lora_a) == 1 else torch.cat(lora_a)  # (Σr, in)
        xa = xl2 @ a.t()  # (n, Σr): every layer's A projection in one pass over x'
        ys = []
        for w, b, b_lora, xa_i, s in zip(weights, biases, lora_b, xa.split([t.shape[0] for t in lora_a], 1),
                                         scalings):
            # Written through a 2-D view of y, so the output is no view itself and may be changed in place.
            y = x.new_empty(*x.shape[:-1], w.shape[0])
            y2 = y.view(-1, w.shape[0])
            torch.mm(x2, w.t(), out=y2) if b is None else torch.addmm(b, x2, w.t(), out=y2)
            y2.addmm_(xa_i, b_lora.t(), alpha=s)  # + s · xa_i B_iᵀ, in place
            ys.append(y)
        # x itself is only needed for a base weight's gradient, which frozen weights never ask for.
        base_grad = any(ctx.needs_input_grad[3 + 4 * i + j] for i in range(len(weights)) for j in (0, 1))
        ctx.save_for_backward(x2 if base_grad else None, xl2, a, xa, *weights, *lora_b)
        ctx.scalings, ctx.shape, ctx.lora_x = scalings, x.shape, x_lora is not None
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        x2, xl2, a, xa, *rest = ctx.saved_tensors
        k = len(grads)
        weights, lora_b = rest[:k], rest[k:]
        need = ctx.needs_input_grad
        dx, dxas, out = None, [], []
        for i, (g, w, b_lora, xa_i, s) in enumerate(zip(grads, weights, lora_b, xa.split(
                [t.shape[1] for t in lora_b], 1), ctx.scalings)):
            g2 = g.reshape(-1, g.shape[-1])
            if need[0]:
                dx = g2 @ w if dx is None else dx.addmm_(g2, w)  # Σ g_i W_i, accumulated in place
            dxas.append(torch.mm(g2, b_lora).mul_(s))  # (n, r_i) = s · g_i B_i
            dw = g2.t() @ x2 if need[3 + 4 * i] else None
            db = g2.sum(0) if need[4 + 4 * i] else None
            db_lora = torch.mm(xa_i.t(), g2).t().mul_(s) if need[6 + 4 * i] else None  # (out_i, r_i)
            out.append((dw, db, db_lora))
        dxa = dxas[0] if k == 1 else torch.cat(dxas, 1)  # (n, Σr)
        need_a = any(need[5 + 4 * i] for i in range(k))
        da = dxa.t() @ xl2 if need_a else None  # (Σr, in): every A's gradient in one pass over x'
        dx_lora = None
        if ctx.lora_x and need[1]:
            dx_lora = (dxa @ a).view(ctx.shape)
        elif not ctx.lora_x and need[0]:
            dx.addmm_(dxa, a)
        grads_in = [None if dx is None else dx.view(ctx.shape), dx_lora, None]
        da = da.split([t.shape[1] for t in lora_b], 0) if need_a else [None] * k
        for i, ((dw, db, db_lora), da_i) in enumerate(zip(out, da)):
            grads_in += [dw, db, da_i if need[5 + 4 * i] else None, db_lora]
        return tuple(grads_in)


def lora_linears(x: Tensor, weights, biases, lora_a, lora_b, scalings, dropout=None) -> tuple[Tensor, ...]:
    """y_i = x W_iᵀ + b_i + s_i · (dropout(x) A_iᵀ) B_iᵀ for each layer i, in `compute_dtype(x)`.

    x (..., in); per layer W (out_i, in), b (out_i,) or None, A (r_i, in), B (out_i, r_i), s_i a float.
    `dropout` (a callable, or None for none) is for a single layer: layers sharing one A projection
    must share its input, so each dropout mask would have to be theirs too. Returns k tensors (..., out_i).
    """
    if dropout is not None and len(weights) != 1:
        raise ValueError(f"dropout on the LoRA input needs one layer per call, got {len(weights)}")
    dtype = compute_dtype(x)
    x = x.to(dtype)  # once for all k layers; autocast would cast x again for each matmul that reads it
    x_lora = None if dropout is None else dropout(x)
    params = []
    for w, b, a, b_lora in zip(weights, biases, lora_a, lora_b):
        # No-ops when already in `dtype` (cast_frozen); A and B are small, their casts cost next to nothing.
        params += [w.to(dtype), None if b is None else b.to(dtype), a.to(dtype), b_lora.to(dtype)]
    return _LoRALinears.apply(x, x_lora, tuple(float(s) for s in scalings), *params)


class FusedLoRALinear(LoRALinear):
    """A LoRALinear whose unmerged forward runs `lora_linears` (alone, or with its SharedInput group).
    The same parameters, buffers and state dict as LoRALinear: fuse() and unfuse() only swap the class."""

    _group: SharedInput | None = None

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out), equal to LoRALinear.forward."""
        if self.merged:
            return super().forward(x)
        if self._group is not None and self._group.usable():
            return self._group(self, x)
        return self.forward_alone(x)

    def forward_alone(self, x: Tensor) -> Tensor:
        """The unmerged forward of this layer by itself."""
        dropout = self.dropout if isinstance(self.dropout, nn.Dropout) and self.dropout.training else None
        return lora_linears(x, [self.weight], [self.bias], [self.lora_A.weight], [self.lora_B.weight],
                            [self.scaling], dropout)[0]


def _version(t: Tensor) -> int:
    """t's in-place change counter (inference tensors keep none, and cannot change)."""
    return -1 if t.is_inference() else t._version


class SharedInput:
    """FusedLoRALinears that a model calls one after another on the very same input tensor, like query, key
    and value in BERT and RoBERTa self-attention.

    The first call computes every layer of the group in one `lora_linears`: one cast of x, one A
    projection, dx accumulated in place. The other layers then take their output, which was computed
    from that same tensor, unchanged since (in-place counters of x and of every weight), in the same
    grad and autocast mode. If a layer is called on another input while outputs wait, or twice, the
    group stops fusing for good and each layer runs alone: as correct, only slower. Dropout on the LoRA
    input in training, or a merged layer, also makes the layers run alone, for that call.
    """

    def __init__(self, layers: Sequence[FusedLoRALinear]) -> None:
        self.layers = tuple(layers)
        self.active = True
        self._x: Tensor | None = None  # the input the waiting outputs were computed from
        self._stamp: tuple = ()
        self._waiting: dict[int, Tensor] = {}  # layer index -> output not yet taken

    def usable(self) -> bool:
        return self.active and not any(
            layer.merged or (isinstance(layer.dropout, nn.Dropout) and layer.dropout.training)
            for layer in self.layers)

    def stamp(self, x: Tensor) -> tuple:
        """Everything besides x's identity that the waiting outputs depend on."""
        params = tuple(_version(p) for layer in self.layers for p in layer.parameters())
        return _version(x), torch.is_grad_enabled(), compute_dtype(x), params

    def __call__(self, layer: FusedLoRALinear, x: Tensor) -> Tensor:
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


def fuse(model: nn.Module) -> list[tuple[str, ...]]:
    """Make every LoRALinear of `model` a FusedLoRALinear, and group those that are children of one module
    with the same in_features (query, key and value of an attention block) into a SharedInput, so a model
    that calls them on one tensor computes them at once. Regroups from scratch; returns the groups' layer
    names, in model order."""
    siblings: dict[tuple[str, int], list[tuple[str, FusedLoRALinear]]] = {}
    for name, layer in ((n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)):
        layer.__class__ = FusedLoRALinear
        layer._group = None
        siblings.setdefault((name.rpartition(".")[0], layer.in_features), []).append((name, layer))
    groups = [members for members in siblings.values() if len(members) > 1]
    for members in groups:
        group = SharedInput([layer for _, layer in members])
        for _, layer in members:
            layer._group = group
    return [tuple(name for name, _ in members) for members in groups]


def unfuse(model: nn.Module) -> nn.Module:
    """Every FusedLoRALinear back to a plain LoRALinear. Returns the model."""
    for layer in (m for m in model.modules() if isinstance(m, FusedLoRALinear)):
        layer.__dict__.pop("_group", None)
        layer.__class__ = LoRALinear
    return model
