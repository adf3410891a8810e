"""LoRALinear on its own: identity at init, exact merge/unmerge, dropout, scaling, frozen base."""
import math

import pytest
import torch
from torch import nn

from lora import LoRAConfig, LoRALinear

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_layer(dtype=torch.float32, rank=4, alpha=8.0, dropout=0.0, use_rslora=False, bias=True, b_std=None):
    linear = nn.Linear(64, 48, bias=bias, dtype=dtype)
    layer = LoRALinear.from_linear(linear, LoRAConfig(rank=rank, alpha=alpha, dropout=dropout, use_rslora=use_rslora))
    if b_std is not None:
        with torch.no_grad():
            layer.lora_B.weight.normal_(0.0, b_std)
    return linear, layer


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_fresh_layer_equals_wrapped_linear_exactly(seed, dtype, bias):
    linear, layer = make_layer(dtype, bias=bias)
    assert torch.count_nonzero(layer.lora_A.weight) > 0  # A is random, only B is zero
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    x = torch.randn(5, 7, 64, dtype=dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), linear(x))


def test_identity_at_init_holds_in_train_mode_with_dropout(seed):
    linear, layer = make_layer(dropout=0.5)
    layer.train()
    x = torch.randn(16, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), linear(x))  # dropout only ever touches the LoRA branch


def test_from_linear_shares_base_tensors_and_keeps_dtype(seed):
    linear, layer = make_layer(torch.bfloat16)
    assert layer.weight.data_ptr() == linear.weight.data_ptr()
    assert layer.bias.data_ptr() == linear.bias.data_ptr()
    assert {p.dtype for p in layer.parameters()} == {torch.bfloat16}
    assert layer.lora_A.weight.shape == (4, 64) and layer.lora_B.weight.shape == (48, 4)
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad


@pytest.mark.parametrize("train", [False, True])
def test_from_linear_keeps_the_train_eval_mode(seed, train):
    linear = nn.Linear(8, 8).train(train)
    layer = LoRALinear.from_linear(linear, LoRAConfig(rank=2, alpha=4.0, dropout=0.5))
    assert layer.training == train and layer.dropout.training == train


def test_only_lora_weights_receive_gradients(seed):
    _, layer = make_layer(b_std=0.1)
    layer(torch.randn(3, 64)).square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_A.weight.grad.abs().sum() > 0 and layer.lora_B.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("use_rslora, expected", [(False, 8.0 / 4), (True, 8.0 / math.sqrt(4))])
def test_forward_adds_scaled_low_rank_update(seed, use_rslora, expected):
    linear, layer = make_layer(torch.float64, rank=4, alpha=8.0, use_rslora=use_rslora, b_std=0.1)
    assert layer.scaling == pytest.approx(expected, rel=1e-15)
    x = torch.randn(6, 64, dtype=torch.float64)
    by_hand = linear(x) + expected * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), by_hand, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.delta_weight(), expected * layer.lora_B.weight @ layer.lora_A.weight,
                                   rtol=0, atol=1e-14)


def test_dropout_is_stochastic_in_train_mode_and_off_in_eval(seed):
    linear, layer = make_layer(torch.float64, dropout=0.5, b_std=0.5)
    x = torch.randn(8, 64, dtype=torch.float64)
    with torch.no_grad():
        layer.train()
        first, second = layer(x), layer(x)
        assert not torch.equal(first, second)
        layer.eval()
        clean = linear(x) + layer.scaling * layer.lora_B(layer.lora_A(x))
        assert torch.equal(layer(x), layer(x))
        torch.testing.assert_close(layer(x), clean, rtol=0, atol=1e-12)
        assert not torch.allclose(first, clean)


def test_merged_output_matches_unmerged_in_float64(seed):
    _, layer = make_layer(torch.float64, b_std=0.1)
    x = torch.randn(5, 64, dtype=torch.float64)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        assert layer.merged
        torch.testing.assert_close(layer(x), unmerged, rtol=0, atol=1e-12)


def test_merge_is_idempotent_and_unmerge_too(seed):
    _, layer = make_layer(torch.float64, b_std=0.1)
    base = layer.weight.detach().clone()
    layer.merge()
    once = layer.weight.detach().clone()
    assert not torch.equal(once, base)
    layer.merge()
    assert torch.equal(layer.weight, once)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged and torch.equal(layer.weight, base)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unmerge_restores_base_bit_for_bit_after_100_cycles(seed, dtype):
    linear, layer = make_layer(dtype)
    base_w, base_b = linear.weight.detach().clone(), linear.bias.detach().clone()
    for _ in range(100):
        with torch.no_grad():  # a new ΔW each cycle, as between training steps
            layer.lora_B.weight.normal_(0.0, 0.05)
        layer.merge()
        assert not torch.equal(layer.weight, base_w)  # the merge really changed the weight
        layer.unmerge()
        assert torch.equal(layer.weight, base_w)
    assert layer.weight.dtype == dtype and torch.equal(layer.bias, base_b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_naive_subtract_to_unmerge_drifts_so_the_exactness_test_can_fail(seed, dtype):
    _, layer = make_layer(dtype, b_std=0.05)
    base = layer.weight.detach().clone()
    delta = layer.delta_weight().to(dtype)
    naive = base.clone()
    for _ in range(100):
        naive = (naive + delta) - delta  # W + ΔW - ΔW, rounded in `dtype` each time
    assert not torch.equal(naive, base)
    for _ in range(100):
        layer.merge()
        layer.unmerge()
    assert torch.equal(layer.weight, base)


def test_merged_layer_ignores_dropout_and_lora_branch(seed):
    _, layer = make_layer(torch.float64, dropout=0.5, b_std=0.1)
    layer.merge()
    layer.train()
    x = torch.randn(4, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_merge_inside_inference_mode_leaves_a_trainable_layer(seed):
    layer = LoRALinear.from_linear(nn.Linear(6, 5), LoRAConfig(rank=2, alpha=4))
    nn.init.normal_(layer.lora_B.weight)
    with torch.inference_mode():
        layer.merge()
        layer(torch.randn(3, 6))
        layer.unmerge()
    assert not layer.weight.is_inference()
    layer(torch.randn(3, 6)).sum().backward()  # raised "Inference tensors cannot be saved for backward"
    assert layer.lora_B.weight.grad is not None


def test_forward_matches_the_written_formula_for_any_leading_shape(seed):
    layer = LoRALinear.from_linear(nn.Linear(6, 5).double(), LoRAConfig(rank=2, alpha=3))
    nn.init.normal_(layer.lora_B.weight)
    for shape in ((6,), (4, 6), (2, 3, 6)):
        x = torch.randn(*shape, dtype=torch.float64)
        expected = x @ layer.weight.T + layer.bias + 1.5 * (x @ layer.lora_A.weight.T) @ layer.lora_B.weight.T
        assert layer(x).shape == expected.shape
        assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)


def test_scaling_comes_from_the_config_not_from_a_second_formula(seed):
    class Doubled(LoRAConfig):  # a config whose scaling differs from alpha / rank
        @property
        def scaling(self) -> float:
            return 2 * super().scaling

    assert LoRALinear.from_linear(nn.Linear(6, 5), Doubled(rank=4, alpha=8.0)).scaling == 4.0
    assert LoRALinear(6, 5, rank=4, scaling=0.25).scaling == 0.25
