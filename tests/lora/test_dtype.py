"""cast_frozen: the frozen base in the autocast dtype, LoRA and the head in float32, and merging still exact."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lora import LoRAConfig, LoRALinear, cast_frozen, inject_lora, lora_layers, merge_lora, save_adapter, unmerge_lora
from lora.adapter import WEIGHTS_NAME

SIX = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")


class CastLog(TorchDispatchMode):
    """Records the storage of every tensor that a dtype cast (aten._to_copy) reads."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.sources.add(args[0].untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def frozen_linear_params(model: nn.Module) -> dict[str, nn.Parameter]:
    adapters = {id(p) for _, layer in lora_layers(model) for p in (layer.lora_A.weight, layer.lora_B.weight)}
    return {n: p for n, p in model.named_parameters() if not p.requires_grad and id(p) not in adapters
            and isinstance(model.get_submodule(n.rpartition(".")[0]), (nn.Linear, LoRALinear))}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_frozen_linears_take_the_dtype_and_everything_else_stays_float32(tiny_roberta, randomize, dtype):
    model = randomize(inject_lora(tiny_roberta(), LoRAConfig(rank=2, targets=SIX)))
    before = dict(model.named_parameters())
    frozen = frozen_linear_params(model)
    assert len(frozen) == 2 * (2 * 6)  # weight and bias of the 6 Linears in each of 2 layers; no pooler here
    assert cast_frozen(model, dtype) is model
    for name, param in model.named_parameters():
        assert param is before[name], name  # cast in place: optimizers and EMA keep valid references
        assert param.dtype == (dtype if name in frozen else torch.float32), name
    assert model.roberta.encoder.layer[0].attention.output.LayerNorm.weight.dtype == torch.float32
    assert model.roberta.embeddings.word_embeddings.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)


def test_autocast_no_longer_casts_frozen_weights_and_grads_stay_float32(tiny_roberta, batch, randomize):
    plain = randomize(inject_lora(tiny_roberta(), LoRAConfig(rank=2, targets=SIX))).train()
    cast = cast_frozen(copy.deepcopy(plain), torch.bfloat16)
    for model, expect_recast in ((plain, True), (cast, False)):
        frozen = frozen_linear_params(model)
        with CastLog() as log, torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        recast = {n for n, p in frozen.items() if p.untyped_storage().data_ptr() in log.sources}
        # Without cast_frozen every frozen weight is cast again at every call (the control); with it, none.
        assert recast == (set(frozen) if expect_recast else set())
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        torch.testing.assert_close(cast.eval()(**inputs).logits, plain.eval()(**inputs).logits, rtol=0, atol=0.05)


def test_adapter_saved_after_cast_frozen_is_float32_and_unchanged(tiny_roberta, randomize, tmp_path):
    config = LoRAConfig(rank=2, targets=SIX)
    model = randomize(inject_lora(tiny_roberta(), config))
    save_adapter(model, tmp_path / "before", config)
    save_adapter(cast_frozen(model, torch.bfloat16), tmp_path / "after", config)
    before, after = (load_file(str(tmp_path / side / WEIGHTS_NAME)) for side in ("before", "after"))
    assert before.keys() == after.keys() and len(after) == 2 * 12 + 4
    assert all(t.dtype == torch.float32 and torch.equal(t, before[k]) for k, t in after.items())


def bf16_base_layer(seed: int = 0) -> LoRALinear:
    """A LoRALinear with a bfloat16 base and float32 A and B (non-zero), as cast_frozen leaves it."""
    torch.manual_seed(seed)
    layer = LoRALinear.from_linear(nn.Linear(64, 48), LoRAConfig(rank=4, alpha=8.0))
    nn.init.normal_(layer.lora_B.weight, std=0.05)
    return cast_frozen(layer, torch.bfloat16)


def test_merge_with_a_bf16_base_rounds_once_and_is_idempotent(seed):
    layer = bf16_base_layer()
    assert (layer.weight.dtype, layer.lora_A.weight.dtype, layer.lora_B.weight.dtype) == (
        torch.bfloat16, torch.float32, torch.float32)
    base = layer.weight.detach().clone()
    expected = (base.float() + layer.delta_weight()).to(torch.bfloat16)  # ΔW in float32, one rounding
    layer.merge()
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, expected)
    assert not torch.equal(layer.weight, base)
    layer.merge()
    assert torch.equal(layer.weight, expected)
    x = torch.randn(5, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        merged = layer(x)
        layer.unmerge()
        unmerged = layer(x)
    torch.testing.assert_close(merged.float(), unmerged.float(), rtol=0.02, atol=0.02)


def test_unmerge_with_a_bf16_base_is_bit_exact_after_100_cycles(seed):
    layer = bf16_base_layer()
    base = layer.weight.detach().clone()
    for _ in range(100):
        with torch.no_grad():
            layer.lora_B.weight.normal_(0.0, 0.05)
        layer.merge()
        assert not torch.equal(layer.weight, base)
        layer.unmerge()
        assert torch.equal(layer.weight, base)


def test_cast_frozen_on_a_merged_model_equals_cast_then_merge(tiny_roberta, randomize):
    model = randomize(inject_lora(tiny_roberta(), LoRAConfig(rank=2, targets=SIX)))
    twin = copy.deepcopy(model)
    cast_frozen(merge_lora(model), torch.bfloat16)
    merge_lora(cast_frozen(twin, torch.bfloat16))
    for (name, layer), (_, other) in zip(lora_layers(model), lora_layers(twin)):
        assert layer.merged and torch.equal(layer.weight, other.weight), name
    unmerge_lora(model)
    unmerge_lora(twin)
    assert all(torch.equal(a.weight, b.weight) for (_, a), (_, b) in zip(lora_layers(model), lora_layers(twin)))


@pytest.mark.parametrize("dtype", [torch.int8, "bf16", None])
def test_cast_frozen_refuses_a_dtype_that_is_not_floating_point(tiny_roberta, dtype):
    with pytest.raises(ValueError, match="cast_frozen needs a floating-point dtype"):
        cast_frozen(tiny_roberta(), dtype)
