"""train/model.py's loading: whatever dtype a checkpoint stores, the run gets fp32 weights; a tokenizer that is
not the model's, a config that disagrees with the weights, or a weight the checkpoint lacks is refused in one line."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.shipping import FAMILY_MODELS
from helpers.tiny import train_args
from train.__main__ import main
from train.errors import UserError
from train.model import load_pretrained


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_checkpoint_stored_in_half_precision_loads_in_fp32_and_trains(tiny_model_dir, tiny_data_dir, tmp_path, dtype):
    # transformers 5 keeps the stored dtype; without the cast a CPU run stopped in LayerNorm ("mixed dtype")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    half = tmp_path / "half"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, dtype=dtype).save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(half)
    stored, _ = load_pretrained(str(half), 4, ["a", "b", "c", "d"])
    assert {p.dtype for p in stored.parameters()} == {torch.float32}
    assert main(train_args(half, tiny_data_dir, tmp_path / "run")) == 0
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["accuracy"] >= 0.8  # as the fp32 model learns it
    saved = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}


def model_copy(source, target, drop=(), **config):
    """A copy of a saved model directory without the files in `drop`, with `config` changed in its config.json."""
    import shutil

    shutil.copytree(source, target)
    for name in drop:
        (target / name).unlink()
    if config:
        (target / "config.json").write_text(json.dumps({**json.loads((target / "config.json").read_text()), **config}))
    return target


def test_a_model_directory_without_tokenizer_files_is_refused_for_training_and_for_predict(tiny_model_dir,
                                                                                         tiny_data_dir, tmp_path,
                                                                                         capsys):
    # AutoTokenizer made up a 5-token vocabulary: every run trained to chance and exited 0
    from helpers.oneline import refused
    from helpers.shipping import make_adapter
    from helpers.tiny import CLASSES
    from train.ship.predict import main as predict

    bare = model_copy(tiny_model_dir, tmp_path / "bare", drop=("tokenizer.json", "tokenizer_config.json"))
    line = refused(train_args(bare, tiny_data_dir, tmp_path / "run"), capsys)
    assert f"'{bare}': no tokenizer files" in line
    run, _, _ = make_adapter(tmp_path / "adapter", tiny_model_dir, "linear", ("query", "value"))
    line = refused(["--adapter", run, "--model", bare, "--device", "cpu", "the market"], capsys, predict)
    assert f"'{bare}': no tokenizer files" in line
    with pytest.raises(UserError, match="no tokenizer files"):
        load_pretrained(str(bare), 4, CLASSES)


def test_a_tokenizer_of_another_vocabulary_is_refused(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    def saved(where, words):
        vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", *words])}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                pad_token="<pad>").save_pretrained(where)
        return where

    rows = 41  # the tiny model's embedding: its tokenizer's 41 tokens
    small = saved(model_copy(tiny_model_dir, tmp_path / "small", drop=("tokenizer.json",)), ["market", "goal"])
    with pytest.raises(UserError, match=f"vocabulary of 6 tokens for an embedding of {rows} rows"):
        load_pretrained(str(small), 4, ["a", "b", "c", "d"])
    foreign = [f"mot{i}" for i in range(rows - 4)]  # as many tokens, none of them English
    other = saved(model_copy(tiny_model_dir, tmp_path / "other", drop=("tokenizer.json",)), foreign)
    with pytest.raises(UserError, match=r"reads 2\d of the 2\d tokens of an English sample sentence as unknown"):
        load_pretrained(str(other), 4, ["a", "b", "c", "d"])


@pytest.mark.parametrize("change, tensor, shapes", [
    (dict(intermediate_size=256), "roberta.encoder.layer.0.intermediate.dense.bias", r"\[128\] in its weights but "
     r"\[256\] in its config.json \(and 5 more tensors\)"),
    (dict(vocab_size=200), "roberta.embeddings.word_embeddings.weight", r"\[41, 64\] in its weights but \[200, 64\]"),
])
def test_a_config_that_disagrees_with_the_weights_is_refused_naming_the_tensor(tiny_model_dir, tiny_data_dir,
                                                                               tmp_path, capsys, change, tensor,
                                                                               shapes):
    # ignore_mismatched_sizes re-drew every feed-forward layer at random (exit 0), or an IndexError ended the run
    from helpers.oneline import refused

    changed = model_copy(tiny_model_dir, tmp_path / "changed", **change)
    line = refused(train_args(changed, tiny_data_dir, tmp_path / "run"), capsys)
    assert f"{tensor} is " in line
    with pytest.raises(UserError, match=f"{tensor} is {shapes}"):
        load_pretrained(str(changed), 4, ["a", "b", "c", "d"])


def test_a_checkpoint_missing_an_encoder_weight_is_refused_and_a_head_of_another_size_is_not(tiny_model_dir,
                                                                                            tmp_path):
    from safetensors.torch import save_file

    lacking = model_copy(tiny_model_dir, tmp_path / "lacking")
    weights = load_file(str(lacking / "model.safetensors"))
    del weights["roberta.encoder.layer.1.output.dense.weight"]
    save_file(weights, str(lacking / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match="its weights lack roberta.encoder.layer.1.output.dense.weight, which"):
        load_pretrained(str(lacking), 4, ["a", "b", "c", "d"])
    model, _ = load_pretrained(str(tiny_model_dir), 3, ["a", "b", "c"])  # the saved head has 4 classes: re-drawn
    assert model.classifier.out_proj.out_features == 3


@pytest.mark.parametrize("model_type", ["tiny", "encoder", "bert-encoder", *FAMILY_MODELS])
def test_every_shipped_layout_loads_without_a_refusal(tmp_path, model_type):
    # heads absent from the checkpoint, a pooler no head reads, BERT's pretrained pooler: none of it is refused
    from helpers.shipping import make_encoder_dir, make_family_dir
    from helpers.tiny import make_tiny_model

    directory = (make_tiny_model(tmp_path / "m") if model_type == "tiny"
                 else make_encoder_dir(tmp_path / "m", "bert" if model_type == "bert-encoder" else "roberta")
                 if model_type.endswith("encoder") else make_family_dir(tmp_path / "m", model_type))
    model, tokenizer = load_pretrained(str(directory), 4, ["a", "b", "c", "d"])
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings


def test_a_run_reads_its_tokenizer_once(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """The early data pass loads the tokenizer; the model's loading takes it instead of reading it again (and
    still checks it against the model)."""
    import transformers

    real, calls = transformers.AutoTokenizer.from_pretrained, []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counted)
    assert main(train_args(tiny_model_dir, tiny_data_dir, tmp_path / "run", "--epochs", "1")) == 0
    assert calls == [str(tiny_model_dir)]
