"""Our LoRA against Hugging Face PEFT from identical weights: same numbers, same files, both directions."""
import copy

import pytest
import torch
from safetensors.torch import load_file

peft = pytest.importorskip("peft")

from lora import LoRAConfig, inject_lora, load_adapter, lora_layers, save_adapter  # noqa: E402
from lora.adapter import WEIGHTS_NAME  # noqa: E402

# PEFT's notes (modules_to_save, deprecated transformers helpers it calls) are not what is tested here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]


def peft_config(config: LoRAConfig) -> "peft.LoraConfig":
    return peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=list(config.targets), modules_to_save=list(config.trainable_modules),
                           layers_to_transform=None if config.layers is None else list(config.layers),
                           use_rslora=config.use_rslora, task_type="SEQ_CLS")


def peft_name(ours: str) -> str:
    """Our parameter name -> the PEFT model's name for the same tensor."""
    if ours.startswith("classifier."):
        return "base_model.model.classifier.modules_to_save.default." + ours.removeprefix("classifier.")
    for ab in ("lora_A", "lora_B"):
        if f".{ab}." in ours:
            return "base_model.model." + ours.replace(f".{ab}.", f".{ab}.default.")
    raise AssertionError(f"{ours} should not be trainable")


def twins(base, config, randomize):
    """(ours, PEFT's) from the same base weights, with the same random A/B and head."""
    ours = randomize(inject_lora(copy.deepcopy(base), config))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(config)).eval()
    theirs_params = dict(theirs.named_parameters())
    ours_trainable = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert {peft_name(n) for n in ours_trainable} == {n for n, p in theirs_params.items() if p.requires_grad}
    with torch.no_grad():
        for name, param in ours_trainable.items():
            theirs_params[peft_name(name)].copy_(param)
    return ours, theirs


def assert_same_forward_backward(ours, theirs, batch):
    out_ours, out_theirs = ours(**batch), theirs(**batch)
    torch.testing.assert_close(out_ours.logits, out_theirs.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_ours.loss, out_theirs.loss, rtol=0, atol=1e-12)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    theirs_params = dict(theirs.named_parameters())
    trainable = [(n, p) for n, p in ours.named_parameters() if p.requires_grad]
    assert len(trainable) == 12  # 2 layers x {query, value} x {A, B} + 4 head tensors
    for name, param in trainable:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, theirs_params[peft_name(name)].grad, rtol=0, atol=1e-12,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("use_rslora", [False, True])
def test_logits_loss_and_grads_match_peft(tiny_roberta, batch, randomize, use_rslora):
    config = LoRAConfig(rank=4, alpha=8.0, use_rslora=use_rslora)
    ours, theirs = twins(tiny_roberta(torch.float64), config, randomize)
    assert_same_forward_backward(ours, theirs, batch)


def test_twenty_adamw_steps_match_peft(tiny_roberta, randomize):
    ours, theirs = twins(tiny_roberta(torch.float64), LoRAConfig(rank=4, alpha=8.0), randomize)
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
                  for m in (ours, theirs)]
    generator = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(3, 100, (8, 12), generator=generator),
             "labels": torch.randint(0, 4, (8,), generator=generator)} for _ in range(4)]
    start = [p.detach().clone() for p in ours.parameters() if p.requires_grad]
    losses = []
    for step in range(20):
        pair = []
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            loss = model(**data[step % len(data)]).loss
            loss.backward()
            optimizer.step()
            pair.append(loss.item())
        losses.append(pair)
    for step, (mine, peft_loss) in enumerate(losses):
        assert mine == pytest.approx(peft_loss, rel=1e-6), f"step {step}"
    # It learned (last pass over the 4 batches beats the first), so the comparison covers moving weights.
    assert sum(m for m, _ in losses[-4:]) < sum(m for m, _ in losses[:4])
    assert all(not torch.allclose(p, s) for p, s in zip((p for p in ours.parameters() if p.requires_grad), start))
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, theirs_params[peft_name(name)], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("config", [LoRAConfig(rank=4, alpha=8.0),
                                    LoRAConfig(rank=3, alpha=6.0, use_rslora=True, layers=(1,))])
def test_our_file_loads_in_peft(tiny_roberta, batch, randomize, tmp_path, config):
    base = tiny_roberta(torch.float64)
    ours = randomize(inject_lora(copy.deepcopy(base), config))
    save_adapter(ours, tmp_path, config)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path)).eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = ours(**inputs).logits
        torch.testing.assert_close(theirs(**inputs).logits, expected, rtol=0, atol=1e-12)
        assert not torch.allclose(base(**inputs).logits, expected, atol=1e-3)


def test_peft_file_loads_in_ours(tiny_roberta, batch, randomize, tmp_path):
    base = tiny_roberta(torch.float64)
    _, theirs = twins(base, LoRAConfig(rank=4, alpha=8.0), randomize)
    theirs.save_pretrained(str(tmp_path))
    fresh = copy.deepcopy(base)
    _, config = load_adapter(fresh, tmp_path)
    assert (config.rank, config.alpha, set(config.targets), config.trainable_modules) == (
        4, 8.0, {"query", "value"}, ("classifier",))  # PEFT's extra "score" dropped: this model has none
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, theirs(**inputs).logits, rtol=0, atol=1e-12)
        assert not torch.allclose(base(**inputs).logits, fresh(**inputs).logits, atol=1e-3)


@pytest.mark.parametrize("config", [LoRAConfig(rank=4, alpha=8.0),
                                    LoRAConfig(rank=2, alpha=4.0, targets=("query", "key", "value"), layers=(0,))])
def test_file_keys_equal_peft_file_keys(tiny_roberta, randomize, tmp_path, config):
    base = tiny_roberta(torch.float64)
    ours, theirs = twins(base, config, randomize)
    save_adapter(ours, tmp_path / "ours", config)
    theirs.save_pretrained(str(tmp_path / "peft"))
    our_keys = set(load_file(str(tmp_path / "ours" / WEIGHTS_NAME)))
    peft_keys = set(load_file(str(tmp_path / "peft" / WEIGHTS_NAME)))
    assert our_keys == peft_keys
    assert len(our_keys) == 2 * sum(1 for _ in lora_layers(ours)) + 4


def test_saved_head_with_merged_lora_loads_in_peft(tiny_roberta, batch, randomize, tmp_path):
    """A frozen random head layer with LoRA on it (the lora head): stored merged as modules_to_save."""
    config = LoRAConfig(rank=4, alpha=8.0, targets=("query", "value", "classifier.dense"),
                        trainable_modules=("classifier.out_proj",), saved_modules=("classifier",))
    base = tiny_roberta(torch.float64)
    ours = randomize(inject_lora(copy.deepcopy(base), config))
    save_adapter(ours, tmp_path, config)
    other_init = copy.deepcopy(base)
    with torch.no_grad():
        other_init.classifier.dense.weight.normal_()  # what loading elsewhere draws: the stored one must win
    theirs = peft.PeftModel.from_pretrained(other_init, str(tmp_path)).eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).logits, ours(**inputs).logits, rtol=0, atol=1e-12)
