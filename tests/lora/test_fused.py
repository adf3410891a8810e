"""The opt-in fused path (lora.fused: one autograd function, SharedInput groups) against the plain formula
and the plain LoRALinear."""
import copy

import pytest
import torch
from torch import nn

import lora.fused
from lora import LoRAConfig, LoRALinear, inject_lora, lora_layers, merge_lora
from lora.fused import FusedLoRALinear, fuse, lora_linears, unfuse

SIX = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def by_hand(x, weights, biases, lora_a, lora_b, scalings, x_lora=None):
    """The formula, one layer at a time, with plain autograd."""
    x_lora = x if x_lora is None else x_lora
    return [x @ w.T + (0 if b is None else b) + s * (x_lora @ a.T) @ bb.T
            for w, b, a, bb, s in zip(weights, biases, lora_a, lora_b, scalings)]


def random_layers(sizes, n_in=5, bias=True, dtype=torch.float64):
    """(weights, biases, A, B) for layers with (out, rank) in `sizes`, all requiring grad."""
    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, requires_grad=True)
    return ([leaf(o, n_in) for o, _ in sizes], [leaf(o) if bias else None for o, _ in sizes],
            [leaf(r, n_in) for _, r in sizes], [leaf(o, r) for o, r in sizes])


@pytest.mark.parametrize("sizes", [[(4, 2)], [(4, 2), (3, 1), (4, 3)]])
@pytest.mark.parametrize("bias", [True, False])
def test_function_passes_gradcheck(seed, sizes, bias):
    ws, bs, As, Bs = random_layers(sizes, bias=bias)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    params = [t for group in zip(ws, bs, As, Bs) for t in group if t is not None]

    def f(x, *_):
        return lora_linears(x, ws, bs, As, Bs, [0.5, 2.0, 1.5][: len(sizes)])
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("with_dropout", [False, True])
def test_function_values_and_grads_equal_the_formula_in_float64(seed, with_dropout):
    sizes = [(6, 2), (4, 3), (6, 1)] if not with_dropout else [(6, 2)]
    ws, bs, As, Bs = random_layers(sizes)
    scalings = [2.0, 0.5, 3.0][: len(sizes)]
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(3, 4, 5) > 0.3).double()
    dropout = (lambda t: t * mask) if with_dropout else None
    ours = lora_linears(x, ws, bs, As, Bs, scalings, dropout)
    expected = by_hand(x, ws, bs, As, Bs, scalings, x * mask if with_dropout else None)
    leaves = [x, *ws, *bs, *As, *Bs]
    cotangents = [torch.randn_like(y) for y in expected]
    got = torch.autograd.grad(ours, leaves, cotangents)
    want = torch.autograd.grad(expected, leaves, cotangents)
    for y, e in zip(ours, expected):
        assert y.shape == e.shape and not y._is_view()  # a fresh tensor: callers may change it in place
        torch.testing.assert_close(y, e, rtol=0, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_frozen_base_is_not_saved_and_gets_no_grad(seed):
    ws, bs, As, Bs = random_layers([(4, 2)])
    ws[0].requires_grad_(False)
    bs[0].requires_grad_(False)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    lora_linears(x, ws, bs, As, Bs, [1.0])[0].sum().backward()
    assert ws[0].grad is None and bs[0].grad is None
    assert x.grad is not None and As[0].grad is not None and Bs[0].grad is not None


def test_dropout_needs_one_layer_per_call(seed):
    ws, bs, As, Bs = random_layers([(4, 2), (4, 2)])
    with pytest.raises(ValueError, match="dropout on the LoRA input needs one layer per call, got 2"):
        lora_linears(torch.randn(3, 5, dtype=torch.float64), ws, bs, As, Bs, [1.0, 1.0], dropout=lambda t: t)


def twins(base, config, randomize):
    """(fused, plain) models: the same LoRA weights, one with fuse() and one as inject_lora leaves it."""
    fused = randomize(inject_lora(copy.deepcopy(base), config))
    unfused = copy.deepcopy(fused)
    fuse(fused)
    return fused, unfused


@pytest.mark.parametrize("family", ["tiny_roberta", "tiny_bert"])
@pytest.mark.parametrize("targets", [SIX, ("query", "value")])
def test_fused_model_equals_unfused_in_float64_values_and_grads(request, batch, randomize, family, targets):
    base = request.getfixturevalue(family)(torch.float64)
    fused, unfused = twins(base, LoRAConfig(rank=3, targets=targets), randomize)
    assert all(layer._group is not None for name, layer in lora_layers(fused) if name.endswith(("query", "value")))
    assert all(type(layer) is LoRALinear for _, layer in lora_layers(unfused))
    outs = []
    for model in (fused, unfused):
        torch.manual_seed(3)  # the encoder's own dropout draws the same masks in both
        outs.append(model.train()(**batch))
    torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=0, atol=1e-12)
    for out in outs:
        out.loss.backward()
    theirs = dict(unfused.named_parameters())
    for name, param in fused.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            torch.testing.assert_close(param.grad, theirs[name].grad, rtol=0, atol=1e-12, msg=name)
    assert all(layer._group.active and not layer._group._waiting for _, layer in lora_layers(fused) if layer._group)


def test_groups_are_the_siblings_that_share_an_input(tiny_roberta):
    model = inject_lora(tiny_roberta(), LoRAConfig(targets=SIX))
    attention = "roberta.encoder.layer.{}.attention.self."
    assert fuse(model) == [tuple(attention.format(i) + t for t in ("query", "key", "value"))
                                         for i in (0, 1)]
    assert fuse(inject_lora(tiny_roberta(), LoRAConfig(targets=("query", "value")))) == [
        (attention.format(i) + "query", attention.format(i) + "value") for i in (0, 1)]


def test_a_group_runs_its_layers_in_one_call(tiny_roberta, batch, monkeypatch):
    calls = []

    def counting(x, weights, *args, **kwargs):
        calls.append(len(weights))
        return lora_linears(x, weights, *args, **kwargs)
    monkeypatch.setattr(lora.fused, "lora_linears", counting)
    model = inject_lora(tiny_roberta(), LoRAConfig(targets=SIX))
    fuse(model)
    model(input_ids=batch["input_ids"])
    assert calls == [3, 1, 1, 1] * 2  # per layer: query+key+value at once, then the three others alone


class Attention(nn.Module):
    """query on x, key and value on `memory` (cross-attention's shape): the group must notice."""

    def __init__(self) -> None:
        super().__init__()
        config = LoRAConfig(rank=2)
        self.query, self.key, self.value = (LoRALinear.from_linear(nn.Linear(6, 6).double(), config)
                                            for _ in range(3))
        for layer in (self.query, self.key, self.value):
            nn.init.normal_(layer.lora_B.weight)

    def forward(self, x, memory):
        return self.query(x) + self.key(memory) * self.value(memory)


def test_a_group_called_on_different_inputs_stops_fusing_and_stays_correct(seed):
    fused = Attention()
    unfused = copy.deepcopy(fused)
    assert len(fuse(fused)) == 1
    x, memory = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    for _ in range(2):
        torch.testing.assert_close(fused(x, memory), unfused(x, memory), rtol=0, atol=1e-12)
    group = fused.query._group
    assert not group.active and group._waiting == {} and group._x is None


def test_an_input_changed_in_place_between_calls_is_recomputed(seed):
    model = Attention()
    fuse(model)
    x = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        q = model.query(x)
        x.mul_(2)  # the waiting key output was computed from the old values
        k = model.key(x)
        torch.testing.assert_close(k, model.key.forward_alone(x), rtol=0, atol=1e-12)
    assert not torch.allclose(q, model.query.forward_alone(x))


def test_dropout_in_training_runs_the_layers_alone_with_their_own_masks(tiny_roberta, batch, randomize):
    fused, unfused = twins(tiny_roberta(torch.float64), LoRAConfig(rank=2, targets=SIX, dropout=0.3), randomize)
    logits = []
    for model in (fused, unfused):
        torch.manual_seed(5)
        logits.append(model.train()(**batch).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-12)  # same masks drawn in the same order


def test_merged_fused_model_matches_unmerged_and_deepcopies_mid_forward(tiny_roberta, batch, randomize):
    model = randomize(inject_lora(tiny_roberta(torch.float64), LoRAConfig(rank=2, targets=SIX)))
    fuse(model)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    query = model.roberta.encoder.layer[0].attention.self.query
    query(torch.randn(2, 3, 32, dtype=torch.float64))  # key and value outputs now wait in the group
    twin = copy.deepcopy(model)  # outputs in flight (tensors with history) are not copied
    twin_query = twin.roberta.encoder.layer[0].attention.self.query
    assert twin_query._group._waiting == {} and twin_query._group.layers[0] is twin_query
    with torch.no_grad():
        unmerged = twin(**inputs).logits
        torch.testing.assert_close(merge_lora(twin)(**inputs).logits, unmerged, rtol=0, atol=1e-10)


def test_bf16_autocast_fused_is_close_to_unfused_and_grads_stay_float32(tiny_roberta, batch, randomize):
    fused, unfused = twins(tiny_roberta(), LoRAConfig(rank=2, targets=SIX), randomize)
    results = []
    for model in (fused, unfused):
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.train()(**batch)
        out.loss.backward()
        results.append((out.logits.float(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0.02)
    for name, grad in results[0][1].items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, results[1][1][name], rtol=0.1, atol=0.02, msg=name)


def test_unfuse_gives_back_plain_layers_with_the_same_state(tiny_roberta, randomize):
    model = randomize(inject_lora(tiny_roberta(torch.float64), LoRAConfig(rank=2, targets=SIX)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fuse(model)
    assert all(type(layer) is FusedLoRALinear for _, layer in lora_layers(model))
    assert model.state_dict().keys() == state.keys()
    unfuse(model)
    assert all(type(layer) is LoRALinear and "_group" not in vars(layer) for _, layer in lora_layers(model))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
