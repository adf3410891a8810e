"""The exports of each task kind, and of pairs: transformers' pipeline activates as the task says (a sigmoid per
label, the raw score) and gives what train.predict gives; PeftModel too; ONNX traces pairs, with BERT's token types
as a third input; the cards' snippets run."""
import json

import pytest
import torch

from helpers.shipping import make_encoder_dir
from helpers.tiny import train_args, write_task
from train.__main__ import main as train
from train.ship.export import main as export
from train.ship.predict import main as predict

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
PAIRS = [("goal match coach", "league season striker"), ("market shares", "war election"), ("chip", "robot laptop")]


def ours(run, capsys, *texts, pair=False):
    capsys.readouterr()
    flags = ["--adapter", str(run), "--json", "--precision", "fp32", *(["--pair"] if pair else [])]
    assert predict([*flags, *texts]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def trained(model, data, out, *extra):
    assert train(train_args(model, data, out, "--epochs", "2", *extra)) == 0
    return out


@pytest.fixture(scope="module")
def bert_pairs(tmp_path_factory):
    """A tiny BERT whose tokenizer pairs texts as BERT's does: [CLS] A [SEP] B [SEP], token types 0 then 1."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    directory = make_encoder_dir(tmp_path_factory.mktemp("bert"), arch="bert")
    tok = AutoTokenizer.from_pretrained(directory, model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_a_regression_export_gives_the_raw_score(tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run = trained(tiny_model_dir, write_task(tmp_path / "stsb", "regression"), tmp_path / "run")
    mine = [r["score"] for r in ours(run, capsys, *(t for p in PAIRS for t in p), pair=True)]
    assert export([str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert config["problem_type"] == "regression" and config["id2label"] == {"0": "score"}
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), truncation=True)
    theirs = [classify({"text": a, "text_pair": b})["score"] for a, b in PAIRS]  # one dict in, one answer out
    assert theirs == pytest.approx(mine, abs=1e-5)
    assert export([str(run), "--out", str(tmp_path / "peft"), "--format", "peft"]) == 0
    # the tiny base has a 4-class head; the adapter's replaces it
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1, problem_type="regression", ignore_mismatched_sizes=True)
    model = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    batch = AutoTokenizer.from_pretrained(tiny_model_dir)([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                                                          return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits[:, 0].tolist() == pytest.approx(mine, abs=1e-5)
    card = (tmp_path / "peft/README.md").read_text()
    assert '--pair "A man is playing a flute."' in card and "num_labels=1" in card


@pytest.mark.slow
def test_a_multi_label_export_gives_a_sigmoid_per_label(tiny_model_dir, tmp_path, capsys):
    from transformers import pipeline

    run = trained(tiny_model_dir, write_task(tmp_path / "go", "multi_label"), tmp_path / "run", "--lr", "3e-2")
    texts = ["market shares profit", "war election goal match", "the week"]
    mine = ours(run, capsys, *texts)
    assert export([str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert json.loads((tmp_path / "hf/config.json").read_text())["problem_type"] == "multi_label_classification"
    scores = pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None, truncation=True)(texts)
    for row, theirs in zip(mine, scores):
        assert {s["label"]: s["score"] for s in theirs} == pytest.approx(row["probabilities"], abs=1e-5)
    assert export([str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 0  # checked against PyTorch


@pytest.mark.slow
def test_bert_pairs_carry_token_types_through_training_and_every_export(bert_pairs, tmp_path, capsys):
    import onnxruntime
    from transformers import AutoTokenizer, pipeline

    run = trained(bert_pairs, write_task(tmp_path / "mrpc", "pairs"), tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["pairs"] is True
    mine = ours(run, capsys, *(t for p in PAIRS for t in p), pair=True)
    assert export([str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    classify = pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None, truncation=True)
    for (a, b), row in zip(PAIRS, mine):
        theirs = {s["label"]: s["score"] for s in classify({"text": a, "text_pair": b})}
        assert theirs == pytest.approx(row["probabilities"], abs=1e-5)
    assert export([str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx/model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    batch = AutoTokenizer.from_pretrained(tmp_path / "onnx")([a for a, _ in PAIRS], [b for _, b in PAIRS],
                                                             padding=True, return_tensors="np")
    logits = torch.from_numpy(session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})[0])
    expected = torch.tensor([[row["probabilities"][k] for k in ("0", "1")] for row in mine])
    assert torch.allclose(logits.softmax(-1), expected, atol=1e-5)


def test_token_types_are_zero_then_one_after_the_first_separator(bert_pairs):
    from transformers import AutoTokenizer

    from train.data import encode
    from train.data.corpus import Split

    tokenizer = AutoTokenizer.from_pretrained(bert_pairs)
    data = encode(Split(list(PAIRS), [0, 1, 0]), tokenizer, 64, None)
    batch = data.batch([0, 1, 2])
    theirs = tokenizer([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    assert torch.equal(batch["token_type_ids"], theirs["token_type_ids"] * theirs["attention_mask"])
    single = encode(Split(["goal match", "war"], [0, 1]), tokenizer, 64, None)
    assert "token_type_ids" not in single.batch([0, 1])  # one text: none, as transformers' are all 0
