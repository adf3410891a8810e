"""train/device.py: the device, the attention kernel and the pretrained model's own dropout."""
import json

import pytest
import torch
from torch import nn

from lora import LoRAConfig, LoRALinear, inject_lora
from helpers.tiny import train_args
from train.__main__ import main
from train.config import TrainConfig
from train.device import inference_attention, pick_attention, pick_device, set_model_dropout
from train.model import load_pretrained


def test_auto_attention_is_eager_on_cpu_and_sdpa_on_cuda_and_a_choice_is_kept():
    assert pick_attention("auto", torch.device("cpu")) == "eager"
    assert pick_attention("auto", torch.device("cuda", 0)) == "sdpa"
    assert pick_attention("sdpa", torch.device("cpu")) == "sdpa"
    assert pick_attention("eager", torch.device("cuda")) == "eager"


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_eager_and_sdpa_attention_compute_the_same_logits_and_grads(kind, tiny_roberta, tiny_bert, batch, randomize):
    make = tiny_roberta if kind == "roberta" else tiny_bert
    model = randomize(inject_lora(make(torch.float64), LoRAConfig(rank=2)))
    outputs = []
    for attention in ("sdpa", "eager"):
        model.config._attn_implementation = attention
        model.zero_grad()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits.square().sum().backward()
        outputs.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (sdpa, sdpa_grads), (eager, eager_grads) = outputs
    torch.testing.assert_close(eager, sdpa, rtol=0, atol=1e-12)
    for a, b in zip(eager_grads, sdpa_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_model_dropout_sets_every_pretrained_dropout_and_leaves_lora_dropout_alone(tiny_roberta):
    model = tiny_roberta()
    inject_lora(model, LoRAConfig(rank=2, dropout=0.3))
    set_model_dropout(model, 0.0)
    lora_dropouts = {id(m.dropout) for m in model.modules() if isinstance(m, LoRALinear)}
    own = [m.p for m in model.modules() if isinstance(m, nn.Dropout) and id(m) not in lora_dropouts]
    assert len(own) >= 5 and set(own) == {0.0}  # embeddings, per layer: attention probs, 2 hidden; head
    assert {m.dropout.p for m in model.modules() if isinstance(m, LoRALinear)} == {0.3}
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.0
    # With every dropout at 0, training mode computes exactly what eval mode does.
    model.train()
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        first, second = (model(input_ids=ids).logits for _ in range(2))
    assert torch.equal(first, second)


def test_model_dropout_none_keeps_the_models_own(tiny_roberta):
    model = tiny_roberta(hidden_dropout_prob=0.25)
    set_model_dropout(model, None)
    assert model.roberta.encoder.layer[0].output.dropout.p == 0.25


def test_model_dropout_and_attention_are_validated_in_one_error():
    with pytest.raises(ValueError, match=r"model_dropout must be in \[0, 1\), got 1.5; .*attention must be one of "
                                         r"auto, sdpa, eager, got 'flash'"):
        TrainConfig(model_dropout=1.5, attention="flash")


def test_a_run_trains_with_the_attention_and_model_dropout_it_was_given(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                         monkeypatch):
    import train.model as run_module

    seen = {}
    real = run_module.set_model_dropout

    def spy(model, p):
        real(model, p)
        seen["attention"] = model.config._attn_implementation
        seen["dropouts"] = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}

    monkeypatch.setattr(run_module, "set_model_dropout", spy)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1", "--model-dropout", "0",
                           "--attention", "sdpa")) == 0
    assert seen == {"attention": "sdpa", "dropouts": {0.0}}
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["model_dropout"] == 0.0 and saved["attention"] == "sdpa"
    eager, _ = load_pretrained(str(tiny_model_dir), 4, ["a", "b", "c", "d"], "eager")
    assert eager.config._attn_implementation == "eager"


def test_inference_attention_is_sdpa_inside_and_the_training_kernel_after_even_on_error(tiny_roberta):
    model = tiny_roberta(attn_implementation="eager")
    with inference_attention(model):
        assert model.config._attn_implementation == "sdpa"
    assert model.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError, match="inside"):
        with inference_attention(model):
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "eager"


def test_cuda_runs_leave_cudnn_out_of_sdpa_and_cpu_runs_leave_it_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    assert pick_device("cpu") == torch.device("cpu") and calls == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto") == torch.device("cuda") and calls == [False]
    assert pick_device("cuda:1") == torch.device("cuda", 1) and calls == [False, False]
    from train.errors import UserError

    with pytest.raises(UserError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\)"):
        pick_device("cuda:2")
    with pytest.raises(UserError, match="--device meta: expected auto, cpu, cuda, cuda:N or mps"):
        pick_device("meta")


def test_a_device_that_is_missing_or_not_a_device_is_one_clear_error(monkeypatch):
    from train.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="--device cuda:0: CUDA is not available here"):
        pick_device("cuda:0")
    with pytest.raises(UserError, match="--device gpu7 is not a device"):
        pick_device("gpu7")


def test_auto_precision_is_bf16_only_where_the_cpu_has_it_and_explicit_choices_are_checked(monkeypatch):
    import train.device as device
    from train.errors import UserError

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    assert device.pick_precision("auto", cpu) is None and device.pick_precision("bf16", cpu) == torch.bfloat16
    with pytest.raises(UserError, match="--precision fp16 on a CPU .* use --precision fp32"):
        device.pick_precision("fp16", cpu)
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.pick_precision("auto", cpu) == torch.bfloat16 and device.pick_precision("fp32", cpu) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device.pick_precision("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(UserError, match="this GPU does not support bfloat16; use fp16"):
        device.pick_precision("bf16", torch.device("cuda"))


def test_forward_batches_are_small_on_cpu_and_large_on_a_gpu():
    from train.device import forward_batch_size

    assert forward_batch_size(torch.device("cpu")) == 32
    assert forward_batch_size(torch.device("cuda", 0)) == forward_batch_size(torch.device("mps")) == 128
