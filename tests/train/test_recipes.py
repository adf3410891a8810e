"""Recipe levers: LoRA+, weight decay groups, warmup, EMA at eval, rsLoRA, head choices, layer subsets."""
import json

import pytest
import torch
from safetensors.torch import load_file

from lora import LoRAConfig, inject_lora
from helpers.tiny import train_args
from train.__main__ import main
from train.config import TrainConfig
from train.trainer import param_groups


def test_lora_plus_gives_b_its_own_learning_rate_and_decay_skips_biases(tiny_roberta):
    model = inject_lora(tiny_roberta(), LoRAConfig(rank=2))
    groups = param_groups(model, TrainConfig(lr=1e-3, lora_plus_ratio=16, weight_decay=0.1))
    b_ids = {id(m.lora_B.weight) for m in model.modules() if hasattr(m, "lora_B")}
    for g in groups:
        is_b = {id(p) in b_ids for p in g["params"]}
        assert len(is_b) == 1  # B never shares a group with anything else
        assert g["lr"] == pytest.approx(16e-3 if is_b.pop() else 1e-3)
        assert g["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


def run(model, data, out, *extra):
    assert main(train_args(model, data, out, "--epochs", "1", *extra)) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "eval.json").read_text()), [x for x in lines if "lr" in x]


def test_warmup_rises_then_decays(tiny_model_dir, tiny_data_dir, tmp_path):
    _, steps = run(tiny_model_dir, tiny_data_dir, tmp_path / "w", "--warmup-ratio", "0.25")
    lrs = [s["lr"] for s in steps]  # lr after each step; 16 steps, 4 of warmup
    assert lrs[:3] == sorted(lrs[:3]) and lrs[2] < 2e-2
    assert max(lrs) == pytest.approx(2e-2, rel=0.02)
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < 1e-3


def test_ema_weights_are_the_ones_evaluated_and_saved(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    import train.prefix

    seen = []  # the trained weights as evaluation saw them, one dict per epoch
    real_predict = train.prefix.predict_rows

    def spy(model, *args, **kwargs):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return real_predict(model, *args, **kwargs)

    monkeypatch.setattr(train.prefix, "predict_rows", spy)
    plain, _ = run(tiny_model_dir, tiny_data_dir, tmp_path / "plain")
    ema, _ = run(tiny_model_dir, tiny_data_dir, tmp_path / "ema", "--ema-decay", "0.9")
    a = load_file(str(tmp_path / "plain/adapter/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "ema/adapter/adapter_model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # same training, different (averaged) weights saved
    state = torch.load(tmp_path / "ema/checkpoint.pt", weights_only=True)
    key = next(k for k in state["ema"] if k.endswith("lora_B.weight"))
    saved = next(v for k, v in b.items() if k.endswith(key.replace("lora_B.weight", "lora_B.weight")))
    assert torch.equal(saved, state["ema"][key].to(saved.dtype))
    # The last evaluation saw the EMA weights, not the trained ones the checkpoint holds beside them.
    last = seen[-1]
    assert all(torch.equal(last[n], state["ema"][n].to(last[n].dtype)) for n in state["ema"])
    assert any(not torch.equal(last[n], state["model"][n]) for n in state["model"])


HEAD_KEYS = {f"base_model.model.classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}


@pytest.mark.parametrize("head, head_count", [
    ("full", 64 * 64 + 64 + 64 * 4 + 4), ("lora", 8 * (64 + 64) + 64 * 4 + 4), ("linear", 64 * 4 + 4)])
def test_head_choices_train_what_they_say_and_store_the_whole_head(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                   head, head_count):
    # tiny model: hidden 64, 4 classes; rank 8 on query,value in 2 layers. lora: LoRA on the head's dense too.
    result, _ = run(tiny_model_dir, tiny_data_dir, tmp_path / head, "--head", head, "--rslora")
    tensors = load_file(str(tmp_path / head / "adapter/adapter_model.safetensors"))
    config = json.loads((tmp_path / head / "adapter/adapter_config.json").read_text())
    assert config["use_rslora"] is True
    # Every head is stored whole, as PEFT's modules_to_save holds it (lora: its dense merged), so nothing
    # the classifier computes is left to a random init when the adapter is loaded elsewhere.
    assert config["modules_to_save"] == ["classifier"] and config["target_modules"] == ["query", "value"]
    assert {k for k in tensors if ".classifier." in k} == HEAD_KEYS
    lora = sum(v.numel() for k, v in tensors.items() if "lora_" in k)
    assert lora == 2 * 2 * 8 * (64 + 64)
    assert result["trainable_params"] == lora + head_count


def test_layer_subset_only_adapts_those_layers(tiny_model_dir, tiny_data_dir, tmp_path):
    run(tiny_model_dir, tiny_data_dir, tmp_path / "l1", "--layers", "1", "--targets", "query,key,value")
    keys = [k for k in load_file(str(tmp_path / "l1/adapter/adapter_model.safetensors")) if "lora_A" in k]
    assert len(keys) == 3 and all(".layer.1." in k for k in keys)
    assert json.loads((tmp_path / "l1/adapter/adapter_config.json").read_text())["layers_to_transform"] == [1]


def test_recipes_fill_unset_flags_and_stay_inside_the_budget_on_roberta_base():
    from train.__main__ import config_from_args, parser
    from train.config import RECIPES
    from train.sweep import roberta_base_count

    def config(*argv):
        return config_from_args(parser().parse_args(list(argv)))

    ref = config("--recipe", "reference")
    assert (ref.lora.rank, ref.lora.targets, ref.head, ref.lr) == (4, ("query", "value"), "full", 4e-4)
    assert roberta_base_count(ref, 4) == 741_124
    wide = config("--recipe", "all-linear", "--lr", "1e-3")
    assert wide.lr == 1e-3 and wide.lora.targets == RECIPES["all-linear"]["targets"] and wide.head == "linear"
    assert roberta_base_count(wide, 4) == 998_404
    assert config("--recipe", "all-linear", "--rank", "4").lora.rank == 4


def test_model_dropout_comes_from_the_recipe_and_a_flag_wins():
    from train.__main__ import config_from_args, parser

    def config(*argv):
        return config_from_args(parser().parse_args(list(argv)))

    assert config("--recipe", "fast").model_dropout == 0.0
    assert config("--recipe", "reference").model_dropout is None  # the reference keeps the model's own 0.1
    assert config("--recipe", "fast", "--model-dropout", "0.1").model_dropout == 0.1
    assert config("--recipe", "reference", "--model-dropout", "0").model_dropout == 0.0
