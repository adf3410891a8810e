"""train.modelcard: front matter, recipe, evaluation table and usage for each kind of directory (the snippets
are run against real exports in test_export.py)."""
import pytest

from helpers.tiny import CLASSES
from train.config import TrainConfig
from train.ship.modelcard import model_card, write_model_card

TRAIN = dict(rank=6, head="linear", lr=4e-4, lora_plus_ratio=16, ema_decay=0.99)
INFO = {"train": TrainConfig.from_flat(TRAIN).to_flat(),
        "labels": CLASSES}
REPORT = {"accuracy": 0.9125, "macro_f1": 0.9101, "examples": 800, "best_epoch": 3,
          "per_class": [{"label": c, "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 200} for c in CLASSES]}


@pytest.mark.parametrize("kind, library", [("adapter", "peft"), ("peft", "peft"), ("hf", "transformers"),
                                           ("onnx", "onnx")])
def test_front_matter_is_what_huggingface_hub_reads(kind, library):
    from huggingface_hub import ModelCard

    data = ModelCard(model_card("runs/x/adapter", kind, INFO, REPORT, 998_404, "roberta-base", "mit")).data
    assert (data.base_model, data.library_name, data.pipeline_tag, data.license) == (
        "roberta-base", library, "text-classification", "mit")
    assert data.metrics == ["accuracy", "f1"] and data.datasets == ["fancyzhx/ag_news"]
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in data.eval_results] == [
        ("fancyzhx/ag_news", "accuracy", 0.9125), ("fancyzhx/ag_news", "f1", 0.9101)]
    bare = ModelCard(model_card("runs/x/adapter", kind, INFO, None, None)).data  # nothing known: nothing claimed
    assert bare.base_model is None and bare.license is None and not bare.eval_results


@pytest.mark.parametrize("rows, split", [("/data/mrpc/dev.jsonl", "dev"), ("fancyzhx/ag_news[test]", "test"),
                                         ("nyu-mll/glue[validation]", "validation"), (None, None)])
def test_the_split_is_the_one_eval_json_says_was_scored(rows, split):
    from huggingface_hub import ModelCard

    report = {**REPORT, **({"evaluated_on": rows} if rows else {})}
    data = ModelCard(model_card("runs/x/adapter", "peft", INFO, report, 998_404)).data
    assert {r.dataset_split for r in data.eval_results} == {split}


def test_recipe_and_exact_trainable_count():
    card = model_card("out", "hf", INFO, REPORT, 998_404)
    assert "| trainable parameters | **998,404** |" in card
    assert "| LoRA | rank 6, alpha 16, dropout 0 |" in card
    assert "| head | linear: the stock head: its output layer trained, its dense layer frozen as the identity |" in card
    assert "lr 0.0004 (LoRA+: B × 16)" in card and "EMA 0.99" in card
    assert "| data | ag_news |" in card


def test_evaluation_table_has_accuracy_macro_f1_and_every_class():
    card = model_card("out", "peft", INFO, REPORT, 1)
    assert "800 examples of the evaluation split of ag_news, epoch 3 (the saved one)." in card
    assert "| 0.9125 | 0.9101 |" in card
    for c in CLASSES:
        assert f"| {c} | 0.9000 | 0.8000 | 0.8500 | 200 |" in card


def test_card_without_scores_or_count_says_so():
    card = model_card("out", "adapter", INFO, None, None)
    assert "No evaluation was recorded" in card and "| trainable parameters | unknown |" in card


def test_usage_names_the_directory_as_shown(tmp_path):  # noqa: D103
    path = write_model_card(tmp_path, "hf", INFO, REPORT, 5, shown="exports/agnews")
    card = path.read_text()
    assert path == tmp_path / "README.md" and card.startswith("---\n") and "# agnews" in card
    assert 'pipeline("text-classification", model="exports/agnews", top_k=None, truncation=True)' in card


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match=r"kind must be one of adapter, peft, hf, onnx, got 'tf'"):
        model_card("out", "tf", INFO, REPORT, 1)


def test_the_base_name_a_local_config_records_is_read_or_is_none_never_a_traceback(tmp_path):
    from train.ship.modelcard import hub_base

    model = tmp_path / "local-model"
    model.mkdir()
    for text, name in [('{"_name_or_path": "FacebookAI/roberta-base"}', "FacebookAI/roberta-base"),
                       ('{"_name_or_path": "/home/me/model"}', None), ('{"_name_or_path": "Face', None),
                       ("[1, 2]", None), ("[" * 100_000, None), ("1" * 5000, None)]:
        (model / "config.json").write_text(text)
        assert hub_base(str(model)) == name
