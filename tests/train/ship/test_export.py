"""python -m train.export: for every head and target set, PEFT, plain transformers (pipeline) and ONNX Runtime
reproduce our model; the model cards' snippets run; every bad input is one line and exit 2."""
import json
import os
import re

import pytest
import torch

from helpers.shipping import SIX, TEXTS, logits, make_adapter, make_encoder_dir
from helpers.tiny import CLASSES, train_args
from train.ship.export import main as export

# PEFT and transformers' notes (modules_to_save, deprecations) are not what is tested here.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
COMBOS = [(head, targets) for head in ("full", "lora", "linear") for targets in (("query", "value"), SIX)]
IDS = [f"{h}-{'qv' if len(t) == 2 else 'six'}" for h, t in COMBOS]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return make_encoder_dir(tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def tokenizer(encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(encoder)


def base_with_new_head(directory, seed=123):
    """The base as a PEFT user loads it: its classification head freshly (and differently) initialised."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        directory, num_labels=len(CLASSES), id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)}).eval()


def our_predictions(adapter, capsys):
    from train.ship.predict import main as predict

    capsys.readouterr()
    assert predict(["--adapter", str(adapter), "--json", "--precision", "fp32", "--device", "cpu", *TEXTS]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("head, targets", COMBOS, ids=IDS)
def test_peft_and_hf_exports_reproduce_ours(encoder, tokenizer, tmp_path, capsys, head, targets):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, pipeline

    run, ours, _ = make_adapter(tmp_path / "run", encoder, head, targets)
    expected = logits(ours, tokenizer)
    assert export([str(run), "--out", str(tmp_path / "peft"), "--format", "peft"]) == 0
    theirs = PeftModel.from_pretrained(base_with_new_head(encoder), str(tmp_path / "peft")).eval()
    assert (logits(theirs, tokenizer) - expected).abs().max() < 1e-5
    assert not torch.allclose(logits(base_with_new_head(encoder), tokenizer), expected, atol=1e-3)

    assert export([str(run / "adapter"), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    stock = type(plain)(plain.config)  # nothing but the stock class's own modules, each with its own shape
    assert type(plain).__name__ == "RobertaForSequenceClassification" and {
        k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in stock.state_dict().items()}
    assert plain.config.id2label == dict(enumerate(CLASSES)) and plain.config.label2id["Sports"] == 1
    assert (logits(plain, tokenizer) - expected).abs().max() < 1e-4  # merged in fp32 vs unmerged: rounding
    mine = our_predictions(run / "adapter", capsys)
    scores = pipeline("text-classification", model=str(tmp_path / "hf"), top_k=None, truncation=True)(TEXTS)
    for row, theirs_row in zip(mine, scores):
        assert max(theirs_row, key=lambda s: s["score"])["label"] == row["label"]
        assert {s["label"]: pytest.approx(row["probabilities"][s["label"]], abs=1e-5) for s in theirs_row} == {
            s["label"]: s["score"] for s in theirs_row}


# Every head × target combination is exported and checked (each ONNX export costs ~6 CPU-seconds): the default
# recipe's (linear head, six targets) in the fast tier, the other five in the slow one.
ONNX_COMBOS = [pytest.param(*c, id=i, marks=() if i == "linear-six" else pytest.mark.slow) for c, i in zip(COMBOS, IDS)]


@pytest.mark.parametrize("head, targets", ONNX_COMBOS)
def test_onnx_export_matches_ours_with_any_batch_and_length(encoder, tokenizer, tmp_path, head, targets):
    import onnxruntime

    run, ours, _ = make_adapter(tmp_path / "run", encoder, head, targets)
    assert export([str(run), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx/model.onnx"))
    for texts in (TEXTS, TEXTS[:1], [" ".join(TEXTS)] * 3):  # other batch sizes and lengths than traced
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
        got = session.run(["logits"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        assert (torch.from_numpy(got[0]) - logits(ours, tokenizer, texts)).abs().max() < 1e-4


@pytest.mark.parametrize("head", ["full", "lora", "linear"])
def test_bert_heads_are_unchanged_and_export(tmp_path, capsys, head):
    """BERT's head is stock already (pretrained pooler -> classifier): nothing extra is stored or merged."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lora.adapter import file_config
    from train.config import TrainConfig
    from train.model import load_pretrained
    from train.model import lora_config

    encoder = make_encoder_dir(tmp_path / "bert", arch="bert")
    cfg = TrainConfig.from_flat({"targets": ("query", "value"), "head": head})
    config = lora_config(cfg, load_pretrained(str(encoder), 4, CLASSES)[0], 4)
    assert (config.targets, config.trainable_modules, config.saved_modules) == (
        ("query", "value", *(("bert.pooler.dense",) if head == "lora" else ())), ("classifier",), ())
    run, ours, total = make_adapter(tmp_path / "run", encoder, head, ("query", "value"))
    assert file_config(ours, config) is config  # written exactly as before the head change
    assert total == 1 * 2 * 4 * 128 + (64 * 4 + 4) + (4 * 128 if head == "lora" else 0)  # 1 layer, q and v
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    expected = logits(ours, tokenizer)
    assert export([str(run), "--out", str(tmp_path / "peft"), "--format", "peft"]) == 0
    theirs = PeftModel.from_pretrained(base_with_new_head(encoder), str(tmp_path / "peft")).eval()
    assert (logits(theirs, tokenizer) - expected).abs().max() < 1e-5
    assert export([str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert (logits(plain, tokenizer) - expected).abs().max() < 1e-4


def snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_real_run_exports_with_cards_whose_snippets_run(tiny_model_dir, tiny_data_dir, tmp_path, capsys, monkeypatch):
    """A run of python -m train (the default recipe) -> each format, and each card's snippet, run as written from
    the folder that holds the export. The tiny base has no hub id: the card names none (never its local path),
    and the PEFT snippet's one BASE-MODEL line is what a reader fills in."""
    from huggingface_hub import ModelCard

    from train.__main__ import main as train

    run = tmp_path / "run"
    assert train([*train_args(tiny_model_dir, tiny_data_dir, run, "--epochs", "1"), "--recipe", "all-linear"]) == 0
    report = json.loads((run / "eval.json").read_text())
    monkeypatch.chdir(tmp_path)
    for fmt in ("peft", "hf", "onnx"):
        out = tmp_path / f"export-{fmt}"
        assert export([str(run), "--out", str(out), "--format", fmt, "--license", "apache-2.0"]) == 0
        card = (out / "README.md").read_text()
        data = ModelCard(card).data  # huggingface_hub's own parse: the model-index must be well formed
        assert data.license == "apache-2.0" and data.pipeline_tag == "text-classification"
        assert data.library_name == dict(peft="peft", hf="transformers", onnx="onnx")[fmt]
        assert data.base_model is None and {(r.metric_type, r.metric_config): r.metric_value
                                            for r in data.eval_results} == {
            ("accuracy", None): round(report["accuracy"], 4), ("f1", "macro"): round(report["macro_f1"], 4),
            ("matthews_correlation", None): round(report["mcc"], 4)}
        for path in out.iterdir():  # what the hub and PEFT read names none of this machine's folders
            if path.name in ("README.md", "adapter_config.json", "config.json", "tokenizer_config.json"):
                assert str(tmp_path) not in path.read_text() and str(tiny_model_dir) not in path.read_text(), path
        assert f"**{report['trainable_params']:,}**" in card and "| linear: the stock head" in card
        assert f"| {report['accuracy']:.4f} | {report['macro_f1']:.4f} | {report['mcc']:.4f} |" in card
        assert all(f"| {c['label']} | {c['precision']:.4f} |" in card for c in report["per_class"])
        capsys.readouterr()
        code = snippet(card).replace('"BASE-MODEL"', json.dumps(str(tiny_model_dir)))
        exec(compile(code, f"{fmt}/README.md", "exec"), {})
        printed = capsys.readouterr()
        assert any(label in printed.out for label in CLASSES), printed.out
        assert "LOAD REPORT" not in printed.out + printed.err and "MISSING" not in printed.out + printed.err


def test_the_card_names_the_base_by_its_hub_id(tmp_path):
    from train.ship.modelcard import hub_base

    local = tmp_path / "m"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"_name_or_path": "microsoft/mpnet-base"}))
    assert hub_base("roberta-base") == "roberta-base" and hub_base(str(local)) == "microsoft/mpnet-base"
    assert hub_base(str(local), "sentence-transformers/all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    (local / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path / "elsewhere")}))
    assert hub_base(str(local)) is None and hub_base(str(tmp_path / "nowhere/x")) is None


def refused(argv, capsys) -> str:
    try:
        code = export([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_every_bad_input_is_one_line(encoder, tmp_path, capsys, monkeypatch):
    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", ("query", "value"))
    out = tmp_path / "out"
    assert "does not exist" in refused([tmp_path / "nope", "--out", out, "--format", "hf"], capsys)
    assert "is neither a run directory" in refused([tmp_path, "--out", out, "--format", "hf"], capsys)
    assert "invalid choice: 'tf'" in refused([run, "--out", out, "--format", "tf"], capsys)
    assert "(--out) is the input" in refused([run, "--out", run / "adapter", "--format", "peft"], capsys)
    (out / "data.txt").parent.mkdir()
    (out / "data.txt").write_text("keep me")
    assert "already exists and this tool did not write it" in refused([run, "--out", out, "--format", "hf"], capsys)
    assert "is not an export" in refused([run, "--out", out, "--format", "hf", "--overwrite"], capsys)
    assert (out / "data.txt").read_text() == "keep me"
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # as if the onnx extra were missing
    line = refused([run, "--out", tmp_path / "o2", "--format", "onnx"], capsys)
    assert "--format onnx needs onnxscript: pip install 'roberta-lora[onnx]'" in line
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.*"))  # nothing half-written


def test_overwrite_replaces_an_earlier_export(encoder, tmp_path, capsys):
    run, _, _ = make_adapter(tmp_path / "run", encoder, "full", ("query", "value"))
    out = tmp_path / "out"
    assert export([str(run), "--out", str(out), "--format", "hf"]) == 0
    assert export([str(run), "--out", str(out), "--format", "peft", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".roberta-lora-export", "README.md", "adapter_config.json",
                                                     "adapter_model.safetensors", "eval.json", "train_config.json"]


def test_an_adapter_missing_a_stored_head_tensor_is_refused_in_one_line(encoder, tmp_path, capsys):
    """Such a file was never written by this version (earlier 0.1 builds did not store classifier.dense): it is
    refused, never loaded with a head re-drawn at random."""
    from safetensors.torch import load_file, save_file

    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", ("query", "value"))
    weights = run / "adapter/adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(weights)).items() if "classifier.dense" not in k}
    save_file(tensors, str(weights))
    line = refused([run, "--out", tmp_path / "out", "--format", "hf"], capsys)
    assert "cannot load adapter" in line and "classifier.dense" in line


def test_overwrite_never_replaces_a_training_run(encoder, tmp_path, capsys, tiny_model_dir, tiny_data_dir):
    from train.__main__ import main as train

    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", ("query", "value"))
    other = tmp_path / "other"
    assert train(train_args(tiny_model_dir, tiny_data_dir, other, "--epochs", "1")) == 0
    before = sorted(p.name for p in other.rglob("*"))
    line = refused([run, "--out", other, "--format", "hf", "--overwrite"], capsys)
    assert "is not an export of python -m train.export" in line and sorted(p.name for p in other.rglob("*")) == before


def test_an_unfinished_run_is_exported_only_when_asked(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from train.__main__ import main as train

    run = tmp_path / "run"
    assert train(train_args(tiny_model_dir, tiny_data_dir, run, "--epochs", "2", "--stop-after", "16")) == 0
    capsys.readouterr()
    line = refused([run, "--out", tmp_path / "e", "--format", "peft"], capsys)
    assert "is an unfinished run" in line and "--allow-unfinished" in line and not (tmp_path / "e").exists()
    assert export([str(run), "--out", str(tmp_path / "e"), "--format", "peft", "--allow-unfinished"]) == 0
    assert capsys.readouterr().err.splitlines() == [  # named as such, as predict and evaluate name it
        f"note: {run} is an unfinished run (no eval.json): its adapter is the best epoch so far"]


def test_exports_follow_the_umask_and_leave_no_staging(encoder, tmp_path):
    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", SIX)
    mask = os.umask(0o022)
    try:
        assert export([str(run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    finally:
        os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o755
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_staging_folder_a_kill_left_is_swept_and_sigterm_removes_its_own(encoder, tmp_path, monkeypatch, capsys):
    import signal
    import subprocess
    import sys

    from train.files import _host
    import train.ship.export as export_module

    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", SIX)
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    left = tmp_path / f".out.{_host()}.{gone}.abc.roberta-lora.tmp"
    left.mkdir()
    (left / "model.safetensors").write_text("half")

    def stopped(*args, **kwargs):
        from train.errors import Interrupted

        raise Interrupted(signal.SIGTERM)
    monkeypatch.setattr(export_module, "write_model_card", stopped)
    capsys.readouterr()
    assert export([str(run), "--out", str(tmp_path / "out"), "--format", "peft"]) == 143  # the shell's SIGTERM code
    assert capsys.readouterr().err.strip().splitlines() == [
        "stopped by SIGTERM; what was in progress was not written"]  # one line, no traceback
    assert not left.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert not (tmp_path / "out").exists()


def test_a_truncated_or_foreign_eval_json_is_one_line(encoder, tmp_path, capsys):
    run, _, _ = make_adapter(tmp_path / "run", encoder, "linear", SIX)
    (run / "eval.json").write_text('{"accuracy": 0.5, "mac')
    assert "eval.json is not valid JSON" in refused([run, "--out", tmp_path / "a", "--format", "peft"], capsys)
    (run / "eval.json").write_text('{"loss": [1, 2]}')
    assert "is not the eval.json of a run" in refused([run, "--out", tmp_path / "a", "--format", "peft"], capsys)
