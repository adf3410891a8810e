"""Encoder families: a recipe written in roles adapts the same projections in every family, a target that
matches nothing stops the run in one line, and each family trains and loads in PEFT with equal logits."""
import json

import pytest
import torch

from helpers.shipping import FAMILY_MODELS, SIX, TEXTS, family_config, logits, make_adapter, make_family_dir
from helpers.tiny import CLASSES, write_agnews
from train.config import TrainConfig
from train.families import FAMILIES, SLOTS, family_of, resolve_targets

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]
TYPES = sorted(FAMILY_MODELS)


def classifier(model_type: str, layers: int = 2, **overrides):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(family_config(model_type, layers=layers, num_labels=4,
                                                                        **overrides))


@pytest.mark.parametrize("model_type", TYPES)
def test_every_family_in_the_table_has_each_slot_in_every_layer(model_type):
    model = classifier(model_type)
    family = family_of(model)
    assert family is not None and model_type in family.model_types
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for i in range(2):
        layer = next(n for n in names if f"layer.{i}." in n).split(f"layer.{i}.")[0] + f"layer.{i}."
        assert {layer + path for path in family.slots} <= names
    assert family.head_out in names and any(n.endswith(family.head_dense) for n in names)


@pytest.mark.parametrize("model_type", TYPES)
def test_the_default_recipe_adapts_the_six_linears_of_every_layer_in_every_family(model_type):
    """Same shapes, same recipe, same count: the roles mean the same adaptation in every family."""
    from train.model import resolve

    model = classifier(model_type)
    resolved, rows = resolve(TrainConfig.from_flat({"rank": 4}), model, 32)
    config = resolved.lora
    lora = sum(v for name, v in rows if name.startswith("LoRA"))
    assert lora == 2 * 4 * (4 * (64 + 64) + 2 * (64 + 128))  # 2 layers, rank 4, q/k/v/o and the two FFN layers
    names = adapted(model, config.targets)
    assert len(names) == 12 and all(".layer." in n for n in names)


def test_roles_are_written_as_given_where_they_are_the_models_own_names():
    roberta, mpnet = classifier("roberta"), classifier("mpnet")
    assert resolve_targets(roberta, SIX, None) == SIX  # the adapter files of RoBERTa and BERT runs do not change
    assert resolve_targets(mpnet, SIX, None) == ("q", "k", "v", "o", "intermediate.dense", "output.dense")
    assert resolve_targets(mpnet, ("query", "value"), (1,)) == ("q", "v")
    assert resolve_targets(mpnet, ("q", "v"), None) == ("q", "v")  # literal names still work
    # `dense` is a role (the three dense layers of a layer), never the head's classifier.dense
    dense = resolve_targets(roberta, ("dense",), None)
    assert dense == ("output.dense", "intermediate.dense") and "classifier.dense" not in adapted(roberta, dense)
    assert len(adapted(roberta, dense)) == 6
    assert set(resolve_targets(classifier("distilbert"), ("dense",), None)) == {"out_lin", "lin1", "lin2"}


def adapted(model, targets) -> list[str]:
    """The Linears PEFT's suffix rule selects for `targets`."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and any(n == t or n.endswith("." + t) for t in targets)]


@pytest.mark.parametrize("target", ["classifier", "out_proj", "qq", "pooler.dense"])
def test_a_target_that_matches_no_linear_in_a_layer_names_what_is_there(target):
    with pytest.raises(ValueError, match=rf"target '{target}' matches no Linear in the encoder's layers; "
                                         r"the layers have attention\.attn\.q, .*attention\.attn\.o, "
                                         r"intermediate\.dense, output\.dense \(MPNet; roles: query"):
        resolve_targets(classifier("mpnet"), ("query", target), None)


def test_the_cli_stops_on_a_target_that_matches_nothing_before_training(tmp_path, capsys):
    from train.__main__ import main

    model, data = make_family_dir(tmp_path / "m", "mpnet"), write_agnews(tmp_path / "d", 16, 8)
    capsys.readouterr()
    code = main(["--model", str(model), "--data", str(data), "--targets", "query,valu", "--output-dir",
                 str(tmp_path / "run"), "--cache-dir", "", "--precision", "fp32"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "target 'valu' matches no Linear" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run/metrics.jsonl").read_text()


def test_every_slot_role_selects_one_slot_except_output_dense_which_follows_peft():
    from train.families import role_slots

    assert [role_slots(s.rpartition(".")[2] if "self" in s else s) for s in SLOTS] == [[0], [1], [2], [3], [4], [3, 5]]
    assert role_slots("dense") == [3, 4, 5] and role_slots("q") == []
    assert {f.name for f in FAMILIES if f.splits} == {"RoBERTa", "BERT", "ELECTRA", "MPNet"}


def train_family(tmp_path, model_type, *extra) -> tuple:
    from train.__main__ import main as train

    model, data = make_family_dir(tmp_path / "model", model_type), write_agnews(tmp_path / "data", 64, 16)
    run = tmp_path / "run"
    args = ["--model", str(model), "--data", str(data), "--output-dir", str(run), "--cache-dir", str(tmp_path / "c"),
            "--epochs", "2", "--batch-size", "16", "--lr", "5e-3", "--precision", "fp32", "--rank", "4", *extra]
    assert train(args) == 0
    return model, run, json.loads((run / "eval.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["distilbert", "deberta-v2"])
def test_families_without_a_prefix_split_train_and_load_in_peft(tmp_path, capsys, model_type):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train.__main__ import main as train
    from train.ship.export import main as export
    from train.ship.runs import load_for_inference

    model, run, report = train_family(tmp_path, model_type)
    assert report["trainable_params"] == 2 * 4 * (4 * 128 + 2 * 192) + 64 * 4 + 4
    ours, tokenizer, _ = load_for_inference(str(run / "adapter"), None, torch.device("cpu"))
    assert export([str(run), "--out", str(tmp_path / "peft"), "--format", "peft"]) == 0
    torch.manual_seed(5)
    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=4)
    theirs = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    tok = AutoTokenizer.from_pretrained(model)
    assert (logits(theirs, tok) - logits(ours, tok)).abs().max() < 1e-5
    capsys.readouterr()
    assert train(["--model", str(model), "--data", str(tmp_path / "data"), "--top-layers", "1",
                  "--output-dir", str(tmp_path / "r2"), "--cache-dir", ""]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot split" in err and "run with --no-prefix-cache" in err


@pytest.mark.slow
def test_mpnet_whole_chain(tmp_path, capsys):
    """MPNet, fast-recipe shape (top layer through the frozen-prefix cache): stop, resume, evaluate, predict,
    bulk scoring, and every export, with PEFT's logits equal to ours."""
    import onnxruntime
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train.__main__ import main as train
    from train.ship.evaluate import main as evaluate
    from train.ship.export import main as export
    from train.ship.predict import main as predict

    model, data = make_family_dir(tmp_path / "model", "mpnet"), write_agnews(tmp_path / "data", 64, 16)
    run = tmp_path / "run"
    args = ["--recipe", "fast", "--top-layers", "1", "--rank", "8", "--model", str(model), "--data", str(data),
            "--output-dir", str(run), "--cache-dir", str(tmp_path / "c"), "--batch-size", "16", "--lr", "5e-3",
            "--precision", "fp32"]
    assert train([*args, "--stop-after", "5"]) == 0 and not (run / "eval.json").exists()
    assert train(["--resume", str(run)]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["trainable_params"] == 8 * (4 * 128 + 2 * 192) + 64 * 4 + 4  # one layer at rank 8, linear head
    capsys.readouterr()
    assert evaluate(["--adapter", str(run / "adapter"), "--data", str(data), "--json", "--precision", "fp32"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["accuracy"])
    assert predict(["--adapter", str(run), "--input", str(data / "test.csv"), "--output", str(tmp_path / "p.jsonl"),
                    "--precision", "fp32"]) == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 16
    tok = AutoTokenizer.from_pretrained(model)
    from train.ship.runs import load_for_inference

    ours, _, _ = load_for_inference(str(run / "adapter"), None, torch.device("cpu"))
    expected = logits(ours, tok)
    for fmt in ("peft", "hf", "onnx"):
        assert export([str(run), "--out", str(tmp_path / fmt), "--format", fmt]) == 0
    torch.manual_seed(7)
    base = AutoModelForSequenceClassification.from_pretrained(model, num_labels=4)
    theirs = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    assert (logits(theirs, tok) - expected).abs().max() < 1e-5
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert (logits(plain, tok) - expected).abs().max() < 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx/model.onnx"))
    batch = tok(TEXTS, padding=True, return_tensors="np")
    got = session.run(["logits"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
    assert (torch.from_numpy(got) - expected).abs().max() < 1e-4


@pytest.mark.parametrize("head", ["full", "linear", "lora"])
@pytest.mark.parametrize("model_type", ["mpnet", "electra", "xlm-roberta"])
def test_roberta_headed_families_export_to_peft_with_equal_logits(tmp_path, model_type, head):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from train.ship.export import main as export

    encoder = make_family_dir(tmp_path / "m", model_type, layers=1)
    run, ours, total = make_adapter(tmp_path / "run", encoder, head, ("query", "value"))
    assert total == 2 * 4 * 128 + {"full": 64 * 64 + 64 + 64 * 4 + 4, "linear": 64 * 4 + 4,
                                   "lora": 64 * 4 + 4 + 4 * 128}[head]
    assert export([str(run), "--out", str(tmp_path / "peft"), "--format", "peft"]) == 0
    torch.manual_seed(9)
    base = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=len(CLASSES))
    theirs = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    tok = AutoTokenizer.from_pretrained(encoder)
    assert (logits(theirs, tok) - logits(ours, tok)).abs().max() < 1e-5
