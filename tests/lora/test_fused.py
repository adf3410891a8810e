"""The opt-in fused forward (LoRALinear.fused, lora.fuse): one autograd.Function per layer, against the plain
LoRALinear's outputs and gradients."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

import lora.layer
from lora import LoRAConfig, LoRALinear, fuse, inject_lora, lora_layers, merge_lora, unfuse, unmerge_lora

SIX = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


def layer_pair(bias=True, dropout=0.0, dtype=torch.float64):
    """(fused, plain): twin LoRALinears (5 -> 4, rank 2) with random A, B and a non-trivial scaling."""
    plain = LoRALinear.from_linear(nn.Linear(5, 4, bias=bias, dtype=dtype),
                                   LoRAConfig(rank=2, alpha=3.0, dropout=dropout))
    nn.init.normal_(plain.lora_B.weight)
    fused = copy.deepcopy(plain)
    fused.fused = True
    return fused, plain


def run(layer, x, seed=7):
    """(y, grads of x, W, b, A, B) for a random cotangent, with every tensor a leaf that requires grad."""
    params = {n: p.detach().clone().requires_grad_() for n, p in layer.named_parameters()}
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)  # the same dropout mask for both twins
    y = functional_call(layer, params, (x,))
    grads = torch.autograd.grad(y, [x, *params.values()], torch.ones_like(y).mul_(torch.arange(y.shape[-1])))
    return y, grads


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_one_layer_equals_the_plain_layer_in_float64_values_and_grads(seed, bias, dropout):
    fused, plain = (m.train() for m in layer_pair(bias, dropout))
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    (y, got), (want_y, want) = run(fused, x), run(plain, x)
    assert y.shape == want_y.shape and not y._is_view()  # a fresh tensor: callers may change it in place
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-12)
    assert len(got) == len(want) == (5 if bias else 4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_layer_passes_gradcheck(seed, bias):
    fused, _ = layer_pair(bias)
    params = {n: p.detach().clone().requires_grad_() for n, p in fused.named_parameters()}
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return functional_call(fused, dict(zip(params, values)), (x,))
    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_frozen_base_is_not_saved_and_gets_no_grad(seed):
    fused, _ = layer_pair()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = fused(x)
    assert y.grad_fn.saved_tensors[0] is None  # x kept only for W's gradient, which a frozen W never needs
    y.sum().backward()
    assert fused.weight.grad is None and fused.bias.grad is None
    assert x.grad is not None and fused.lora_A.weight.grad is not None and fused.lora_B.weight.grad is not None


def twins(base, config, randomize):
    """(fused, plain) models: the same LoRA weights, one after fuse() and one as inject_lora leaves it."""
    plain = randomize(inject_lora(copy.deepcopy(base), config))
    return fuse(copy.deepcopy(plain)), plain


def forward_backward(model, batch, seed=3):
    torch.manual_seed(seed)  # the encoder's own dropout (and LoRA's) draws the same masks in both
    out = model.train()(**batch)
    out.loss.backward()
    return out.logits, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["tiny_roberta", "tiny_bert"])
@pytest.mark.parametrize("targets, dropout", [(SIX, 0.0), (("query", "key", "value"), 0.0), (SIX, 0.3)])
def test_fused_encoder_equals_plain_in_float64_values_and_grads(request, batch, randomize, family, targets, dropout):
    base = request.getfixturevalue(family)(torch.float64)
    fused, plain = twins(base, LoRAConfig(rank=3, targets=targets, dropout=dropout), randomize)
    assert all(m.fused for _, m in lora_layers(fused)) and not any(m.fused for _, m in lora_layers(plain))
    (logits, grads), (want_logits, want_grads) = forward_backward(fused, batch), forward_backward(plain, batch)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-12)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, want_grads[name], rtol=0, atol=1e-12, msg=name)


def test_layers_sharing_an_input_each_run_their_own_function(tiny_roberta, batch, monkeypatch):
    calls = []
    apply = lora.layer._FusedLoRA.apply

    def counting(x, *args):
        calls.append(x.shape[-1])
        return apply(x, *args)
    monkeypatch.setattr(lora.layer._FusedLoRA, "apply", counting)
    model = fuse(inject_lora(tiny_roberta(), LoRAConfig(targets=("query", "key", "value"))))
    model(input_ids=batch["input_ids"])
    assert len(calls) == 3 * 2  # query, key and value of both layers: one call each, none grouped


def test_bf16_autocast_fused_is_close_to_plain_and_grads_stay_float32(tiny_roberta, batch, randomize):
    fused, plain = twins(tiny_roberta(), LoRAConfig(rank=2, targets=SIX), randomize)
    results = []
    for model in (fused, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.manual_seed(3)
            out = model.train()(**batch)
        out.loss.backward()
        results.append((out.logits.float(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0.02)
    for name, grad in results[0][1].items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, results[1][1][name], rtol=0.1, atol=0.02, msg=name)


def test_fuse_unfuse_round_trip_keeps_state_and_outputs(tiny_roberta, batch, randomize):
    model = randomize(inject_lora(tiny_roberta(torch.float64), LoRAConfig(rank=2, targets=SIX)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(**batch).logits
        assert fuse(model) is model and all(type(layer) is LoRALinear for _, layer in lora_layers(model))
        torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=1e-12)
        assert copy.deepcopy(model).roberta.encoder.layer[0].attention.self.query.fused
        assert unfuse(model) is model
    assert not any(layer.fused or "fused" in vars(layer) for _, layer in lora_layers(model))
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_merged_fused_layer_runs_the_merged_weight_and_unmerges_back(tiny_roberta, batch, randomize, monkeypatch):
    model = fuse(randomize(inject_lora(tiny_roberta(torch.float64), LoRAConfig(rank=2, targets=SIX))))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        unmerged = model(**inputs).logits
        merge_lora(model)
        monkeypatch.setattr(lora.layer._FusedLoRA, "apply", None)  # merged: one plain matmul, never the Function
        torch.testing.assert_close(model(**inputs).logits, unmerged, rtol=0, atol=1e-10)
        monkeypatch.undo()
        unmerge_lora(model)
        assert all(layer.fused and not layer.merged for _, layer in lora_layers(model))
        torch.testing.assert_close(model(**inputs).logits, unmerged, rtol=0, atol=1e-12)
