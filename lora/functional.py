"""The LoRA math, written once: y_i = x W_iᵀ + b_i + s_i · (x' A_iᵀ) B_iᵀ for one or more layers that
read the same input x (x' = x, or dropout(x) for a single layer).

One autograd.Function computes it, forward and backward, with nothing but the matmuls:
- the A projections of all the layers are one matmul, x' [A_1; …; A_k]ᵀ, so x is read once for them;
- the low-rank update is added into the base output in place (addmm_), and in the backward every
  contribution to dx (g_i W_i for each layer, then dxa·A) accumulates into one tensor in place:
  no full-size temporaries, no separate adds;
- x is not saved for the frozen base (only x' for A's gradient, once however many layers share it).
Everything runs in one compute dtype (`compute_dtype`), cast once on the way in by `lora_linears`.
"""
from __future__ import annotations

import torch
from torch import Tensor


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
