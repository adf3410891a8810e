"""The three task kinds and sentence pairs end to end on the tiny model: `python -m train` reads the kind from the
labels, trains the kind's head and loss, keeps the epoch honestly, and reports the kind's metrics; predict, bulk
scoring and evaluate follow the run's kind."""
import json

import pytest
import torch
from safetensors.torch import load_file

from helpers.oneline import refused
from helpers.tiny import CLASSES, train_args, write_task
from train.__main__ import main
from train.evaluate import main as evaluate
from train.predict import main as predict


FP32 = ("--precision", "fp32")  # as the runs train: bf16 would round the tiny model's outputs


def run(model, data, out, *extra) -> dict:
    assert main(train_args(model, data, out, *extra)) == 0
    return json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def regression_run(tiny_model_dir, tmp_path_factory):
    data = write_task(tmp_path_factory.mktemp("stsb"), "regression")
    out = tmp_path_factory.mktemp("runs") / "regression"
    return data, out, run(tiny_model_dir, data, out, "--epochs", "8")


@pytest.fixture(scope="module")
def multi_run(tiny_model_dir, tmp_path_factory):
    data = write_task(tmp_path_factory.mktemp("emotions"), "multi_label")
    out = tmp_path_factory.mktemp("runs") / "multi"
    return data, out, run(tiny_model_dir, data, out, "--epochs", "8", "--lr", "3e-2")


def test_float_labels_train_a_regression_on_pairs(regression_run):
    data, out, result = regression_run
    assert result["task"] == "regression" and result["metric"] == "pearson" and result["labels"] == ["score"]
    assert result["pearson"] > 0.8 and result["spearman"] > 0.7 and result["mse"] < 0.5 and result["examples"] == 48
    assert {"accuracy", "confusion", "per_class"}.isdisjoint(result) and not (out / "confusion.png").exists()
    head = [v for k, v in load_file(str(out / "adapter/adapter_model.safetensors")).items() if "out_proj.weight" in k]
    assert head[0].shape[0] == 1  # one output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"eval_pearson", "eval_spearman", "eval_mse"} <= set(lines[-1]) and "eval_accuracy" not in lines[-1]


def test_lists_of_labels_train_a_multi_label_task(multi_run):
    _, out, result = multi_run
    assert result["task"] == "multi_label" and result["metric"] == "macro_f1" and result["labels"] == CLASSES
    assert result["micro_f1"] > 0.8 and result["macro_f1"] > 0.8 and 0 < result["exact_match"] <= 1
    assert [c["label"] for c in result["per_class"]] == CLASSES and "confusion" not in result


def test_predict_gives_the_kinds_answer(regression_run, multi_run, capsys):
    _, out, _ = regression_run
    assert predict(["--adapter", str(out), *FP32, "--json", "--pair", "goal match coach", "league season"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["text"] == ["goal match coach", "league season"] and set(answer) == {"text", "score"}
    _, out, _ = multi_run
    assert predict(["--adapter", str(out), *FP32, "--json", "market shares profit bank"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["labels"] == ["Business"] and set(answer["probabilities"]) == set(CLASSES)
    assert predict(["--adapter", str(out), *FP32, "war election minister goal match coach"]) == 0
    shown, text = capsys.readouterr().out.rstrip("\n").split("\t")  # the labels joined by commas, or "-"
    assert text == "war election minister goal match coach" and set(shown.split(",")) <= {*CLASSES, "-"}


def test_a_pair_model_asks_for_pairs(regression_run, capsys):
    _, out, _ = regression_run
    line = refused(["--adapter", str(out), "goal match coach"], capsys, predict)
    assert line.endswith("was trained on pairs of texts: give each pair with --pair (two arguments, or two "
                         "tab-separated texts a line)")


def test_bulk_scoring_writes_each_kinds_columns(regression_run, multi_run, tmp_path):
    data, out, _ = regression_run
    assert predict(["--adapter", str(out), "--input", str(data / "test.jsonl"), "--output", str(tmp_path / "r.csv")]
                   ) == 0
    header, first = (tmp_path / "r.csv").read_text().splitlines()[:2]
    assert header == "line,score" and float(first.split(",")[1]) == pytest.approx(float(first.split(",")[1]))
    data, out, _ = multi_run
    assert predict(["--adapter", str(out), "--input", str(data / "test.jsonl"), "--output",
                    str(tmp_path / "m.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and all(set(r["labels"]) <= set(CLASSES) for r in rows)
    assert all(r["labels"] == [n for n, p in r["probabilities"].items() if p > 0.5] for r in rows)


@pytest.mark.parametrize("which", ["regression", "multi"])
def test_evaluate_rescores_the_kept_adapter_as_the_run_did(which, regression_run, multi_run, capsys):
    _, out, result = regression_run if which == "regression" else multi_run
    capsys.readouterr()
    assert evaluate(["--adapter", str(out), *FP32, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("pearson", "spearman", "mse") if which == "regression" else ("micro_f1", "macro_f1", "exact_match"):
        assert report[key] == pytest.approx(result[key], abs=1e-6), key


def test_pairs_of_texts_train_a_classifier_with_f1_and_mcc(tiny_model_dir, tmp_path):
    data = write_task(tmp_path / "mrpc", "pairs")
    result = run(tiny_model_dir, data, tmp_path / "run")
    assert result["task"] == "single_label" and result["labels"] == ["0", "1"]
    assert {"accuracy", "macro_f1", "mcc", "f1"} <= set(result) and result["accuracy"] > 0.7


def test_a_validation_split_picks_the_epoch_and_the_test_file_is_scored_once(tiny_model_dir, tmp_path):
    data = write_task(tmp_path / "three", "pairs", splits=("train", "dev", "test"))
    result = run(tiny_model_dir, data, tmp_path / "run", "--epochs", "3")
    assert result["selected_on"] == f"best accuracy on {data / 'dev.jsonl'}"
    chosen = max(range(3), key=lambda e: (result["history"][e]["accuracy"], -e))  # the first best epoch
    assert result["best_epoch"] == chosen + 1 == result["validation"]["epoch"]
    assert result["validation"]["accuracy"] == result["history"][chosen]["accuracy"]
    assert result["examples"] == 48 and result["evaluated_on"] == str(data / "test.jsonl")  # not dev


@pytest.mark.slow
def test_holdout_rows_pick_the_epoch_and_the_evaluation_file_is_still_scored(tiny_model_dir, tiny_data_dir, tmp_path):
    result = run(tiny_model_dir, tiny_data_dir, tmp_path / "run", "--holdout", "32", "--epochs", "2")
    assert result["selected_on"].startswith("best accuracy on ") and result["selected_on"].endswith("(held out)")
    assert result["validation"]["examples"] == 32 and result["examples"] == 64


@pytest.mark.slow
def test_task_overrides_the_labels_where_they_fit(tiny_model_dir, tmp_path, capsys):
    data = write_task(tmp_path / "mrpc", "pairs")
    result = run(tiny_model_dir, data, tmp_path / "r", "--task", "regression", "--epochs", "1")
    assert result["task"] == "regression" and "pearson" in result
    line = refused(train_args(tiny_model_dir, data, tmp_path / "m", "--task", "multi_label"), capsys)
    assert "--task multi_label does not fit its labels, which are written for regression or single_label" in line
    line = refused(train_args(tiny_model_dir, data, tmp_path / "f", "--metric", "pearson"), capsys)
    assert line.endswith("--metric pearson is not a score of this single_label task: one of accuracy, macro_f1, "
                         "mcc, f1")
    multi = write_task(tmp_path / "go", "multi_label")
    line = refused(train_args(tiny_model_dir, multi, tmp_path / "g", "--task", "regression"), capsys)
    assert "classes.txt names classes, but a regression has none" in line


def test_a_multi_label_row_that_is_no_list_is_one_line(tiny_model_dir, tmp_path, capsys):
    data = write_task(tmp_path / "go", "multi_label")
    rows = (data / "train.jsonl").read_text().splitlines()
    rows[5] = json.dumps({"text": "the war", "labels": "World"})
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    line = refused(train_args(tiny_model_dir, data, tmp_path / "o"), capsys)
    assert line.endswith("train.jsonl line 6: label 'World' is not a list; a multi-label split's labels are lists "
                         "of class ids or names ([0, 3], [])")


def test_a_regression_label_that_is_no_number_is_one_line(tiny_model_dir, tmp_path, capsys):
    data = write_task(tmp_path / "stsb", "regression")
    (data / "test.jsonl").write_text(json.dumps({"sentence1": "a", "sentence2": "b", "label": "high"}) + "\n")
    line = refused(train_args(tiny_model_dir, data, tmp_path / "o"), capsys)
    assert line.endswith("test.jsonl line 1: label 'high' is not a finite number, as a regression's labels are "
                         "(3.8, 4)")


def test_the_multi_label_loss_is_the_mean_over_labels(tiny_model_dir, tmp_path):
    """The per-row loss of a multi-label row is BCE averaged over its K labels, as BCEWithLogitsLoss's mean."""
    from train.tasks import KINDS

    logits, targets = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5, 4))
    expected = torch.nn.BCEWithLogitsLoss()(logits, targets.double()) * 5
    torch.testing.assert_close(KINDS["multi_label"].loss_sum(logits, targets), expected, rtol=0, atol=1e-12)
