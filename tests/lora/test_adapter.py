"""save_adapter / load_adapter with our own code: file layout, round trip, refusals, no pickle."""
import copy
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora import (LoRAConfig, LoRALinear, adapter_files, inject_lora, load_adapter, merge_lora, read_adapter_config,
                  save_adapter)
from lora.adapter import CONFIG_NAME, WEIGHTS_NAME

CONFIG = LoRAConfig(rank=4, alpha=8.0, dropout=0.1, use_rslora=True)
HEAD = ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"]
QV_KEY = "base_model.model.roberta.encoder.layer.{i}.attention.self.{t}.lora_{ab}.weight"
FIRST_KEY = QV_KEY.format(i=0, t="query", ab="A")


def expected_keys(layers=(0, 1)):
    return {QV_KEY.format(i=i, t=t, ab=ab) for i in layers for t in ("query", "value") for ab in "AB"} | {
        "base_model.model." + h for h in HEAD}


@pytest.fixture
def saved(tiny_roberta, randomize, batch, tmp_path):
    """(base model, trained-looking adapted model, its logits, adapter directory)."""
    base = tiny_roberta(torch.float64)
    model = randomize(inject_lora(copy.deepcopy(base), CONFIG))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    save_adapter(model, tmp_path / "adapter", CONFIG, base_model_name="tiny-roberta")
    return base, model, logits, tmp_path / "adapter"


def logits_of(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def assert_untouched(model):
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_save_writes_peft_layout(saved):
    _, model, _, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    tensors = load_file(str(directory / WEIGHTS_NAME))
    assert set(tensors) == expected_keys()
    params = dict(model.named_parameters())
    for key, tensor in tensors.items():
        assert torch.equal(tensor, params[key.removeprefix("base_model.model.")]), key
    raw = json.loads((directory / CONFIG_NAME).read_text())
    assert {k: raw[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules",
                                "modules_to_save", "bias", "use_rslora", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8.0, "lora_dropout": 0.1,
        "target_modules": ["query", "value"], "modules_to_save": ["classifier"], "bias": "none",
        "use_rslora": True, "base_model_name_or_path": "tiny-roberta"}


def test_round_trip_reproduces_logits_and_config(saved, batch):
    base, _, logits, directory = saved
    fresh = copy.deepcopy(base)
    loaded, config = load_adapter(fresh, directory)
    assert loaded is fresh and config == CONFIG and read_adapter_config(directory)[0] == CONFIG
    assert torch.equal(logits_of(fresh, batch), logits)
    assert not torch.allclose(logits_of(base, batch), logits, atol=1e-3)  # the adapter changes the model


def test_load_into_already_injected_and_merged_model(saved, batch):
    base, _, logits, directory = saved
    target = merge_lora(inject_lora(copy.deepcopy(base), CONFIG))  # merged with a zero ΔW
    load_adapter(target, directory)
    torch.testing.assert_close(logits_of(target, batch), logits, rtol=0, atol=1e-10)


def test_load_refuses_injected_model_with_other_scaling(saved):
    base, _, _, directory = saved
    other = inject_lora(copy.deepcopy(base), LoRAConfig(rank=4, alpha=16.0, use_rslora=True))
    with pytest.raises(ValueError, match=r"layer.0.attention.self.query has rank 4 and scaling 8"):
        load_adapter(other, directory)


def test_save_refuses_config_that_does_not_describe_the_model(saved, tmp_path):
    _, model, _, _ = saved
    with pytest.raises(ValueError, match=r"has rank 4 and scaling 4, the config says rank 8"):
        save_adapter(model, tmp_path / "bad", LoRAConfig(rank=8, alpha=8.0, use_rslora=True))
    with pytest.raises(ValueError, match=r"self.value is not among the config's targets \['query'\]"):
        save_adapter(model, tmp_path / "bad", LoRAConfig(rank=4, alpha=8.0, use_rslora=True, targets=("query",)))
    assert not (tmp_path / "bad").exists()


def rewrite(directory, edit):
    tensors = load_file(str(directory / WEIGHTS_NAME))
    edit(tensors)
    save_file(tensors, str(directory / WEIGHTS_NAME))


def _rank_2_in_config(directory) -> None:
    raw = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**raw, "r": 2}))


ONE_WRONG = QV_KEY.format(i=1, t="value", ab="B")
EXTRA = QV_KEY.format(i=0, t="key", ab="A")


@pytest.mark.parametrize("spoil, message", [
    (_rank_2_in_config, rf"adapter key {FIRST_KEY} has shape \(4, 32\), the model expects \(2, 32\)"),
    (lambda d: rewrite(d, lambda t: t.__setitem__(ONE_WRONG, torch.zeros(32, 3, dtype=torch.float64))),
     rf"adapter key {ONE_WRONG} has shape \(32, 3\), the model expects \(32, 4\)"),
    (lambda d: rewrite(d, lambda t: t.__setitem__(EXTRA, torch.zeros(4, 32, dtype=torch.float64))),
     rf"adapter key {EXTRA} does not exist in the model"),
    (lambda d: rewrite(d, lambda t: t.pop("base_model.model.classifier.out_proj.bias")),
     r"adapter is missing key base_model.model.classifier.out_proj.bias"),
], ids=["rank-mismatch-in-config", "one-tensor-of-wrong-rank", "extra-key", "missing-key"])
def test_load_refuses_a_file_that_does_not_fit_naming_the_first_bad_key(saved, spoil, message):
    base, _, _, directory = saved
    spoil(directory)
    fresh = copy.deepcopy(base)
    with pytest.raises(ValueError, match=message):
        load_adapter(fresh, directory)
    assert_untouched(fresh)


@pytest.mark.parametrize("field, value", [("use_dora", True), ("lora_bias", True), ("bias", "all"),
                                          ("peft_type", "IA3"), ("target_modules", "query|value"),
                                          ("rank_pattern", {"query": 8})])
def test_read_config_refuses_what_we_do_not_implement(saved, field, value):
    _, _, _, directory = saved
    raw = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**raw, field: value}))
    with pytest.raises(ValueError, match="only plain LoRA adapters"):
        read_adapter_config(directory)


def test_pickle_only_adapter_is_refused(saved):
    base, model, _, directory = saved
    (directory / WEIGHTS_NAME).unlink()
    torch.save({k: v.detach() for k, v in model.state_dict().items()}, directory / "adapter_model.bin")
    fresh = copy.deepcopy(base)
    with pytest.raises(FileNotFoundError, match=r"no adapter_model\.safetensors in"):
        load_adapter(fresh, directory)
    assert_untouched(fresh)
    (directory / CONFIG_NAME).unlink()  # just the pickle: nothing we read is there
    with pytest.raises(FileNotFoundError, match=r"no adapter_config\.json in"):
        load_adapter(fresh, directory)


def test_load_never_unpickles(saved, batch, monkeypatch):
    base, _, logits, directory = saved

    def refuse(*args, **kwargs):
        raise AssertionError("pickle must not be used to load an adapter")
    for target in (torch, pickle):
        monkeypatch.setattr(target, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    fresh = copy.deepcopy(base)
    load_adapter(fresh, directory)
    assert torch.equal(logits_of(fresh, batch), logits)


# A head whose dense layer starts random and stays frozen (or gets LoRA): stored whole, the LoRA merged into it.
SAVED = LoRAConfig(rank=4, alpha=8.0, targets=("query", "value", "classifier.dense"),
                   trainable_modules=("classifier.out_proj",), saved_modules=("classifier",))


def test_saved_modules_are_stored_whole_with_lora_inside_merged(tiny_roberta, randomize, batch, tmp_path):
    base = tiny_roberta(torch.float64)
    model = randomize(inject_lora(copy.deepcopy(base), SAVED))
    assert not model.classifier.dense.weight.requires_grad and model.classifier.out_proj.weight.requires_grad
    save_adapter(model, tmp_path, SAVED)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    assert set(tensors) == expected_keys()  # the form of a full head: PEFT's modules_to_save
    dense = model.classifier.dense
    torch.testing.assert_close(tensors["base_model.model.classifier.dense.weight"],
                               base.classifier.dense.weight + dense.delta_weight(), rtol=0, atol=1e-15)
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert (raw["target_modules"], raw["modules_to_save"]) == (["query", "value"], ["classifier"])
    fresh = copy.deepcopy(base)
    with torch.no_grad():  # another dense init: the stored one must win
        fresh.classifier.dense.weight.normal_()
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits_of(fresh, batch), logits_of(model, batch), rtol=0, atol=1e-12)


def test_saved_modules_are_written_the_same_while_merged(tiny_roberta, randomize, tmp_path):
    model = randomize(inject_lora(tiny_roberta(torch.float64), SAVED))
    save_adapter(model, tmp_path / "unmerged", SAVED)
    save_adapter(merge_lora(model), tmp_path / "merged", SAVED)
    a, b = (load_file(str(tmp_path / d / WEIGHTS_NAME)) for d in ("unmerged", "merged"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-15) for k in a)


def test_saved_modules_that_swallow_every_lora_layer_are_refused(tiny_roberta, tmp_path):
    config = LoRAConfig(targets=("classifier.dense",), trainable_modules=(), saved_modules=("classifier",))
    model = inject_lora(tiny_roberta(), config)
    with pytest.raises(ValueError, match=r"every LoRA layer is inside the stored modules \['classifier'\]"):
        save_adapter(model, tmp_path, config)


def test_adapter_files_are_the_bytes_save_adapter_writes(saved, tmp_path):
    _, model, _, directory = saved
    files = adapter_files(model, CONFIG, base_model_name="tiny-roberta")
    assert sorted(files) == [CONFIG_NAME, WEIGHTS_NAME]
    assert all(files[name] == (directory / name).read_bytes() for name in files)
    assert files == adapter_files(model, CONFIG, base_model_name="tiny-roberta")  # deterministic
    assert json.loads(files[CONFIG_NAME].decode("utf-8"))["r"] == 4
    (tmp_path / "copy").mkdir()
    for name, data in files.items():
        (tmp_path / "copy" / name).write_bytes(data)
    assert read_adapter_config(tmp_path / "copy")[0] == CONFIG


def test_adapter_files_refuse_a_config_that_does_not_describe_the_model(saved):
    _, model, _, _ = saved
    with pytest.raises(ValueError, match=r"has rank 4 and scaling 4, the config says rank 8"):
        adapter_files(model, LoRAConfig(rank=8, alpha=8.0, use_rslora=True))
