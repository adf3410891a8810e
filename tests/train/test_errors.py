"""Every mistake a user can make ends as one line on stderr and exit code 2, never a traceback."""
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.oneline import refused
from helpers.tiny import CLASSES, train_args
from train.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Run from a scratch directory, so a refusal that fails to happen cannot leave runs/ in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("flag, value, message", [
    ("--rank", "0", "rank must be >= 1 or 'auto', got 0"),
    ("--lr", "0", "lr must be > 0, got 0.0"),
    ("--lr", "-0.001", "lr must be > 0, got -0.001"),
    ("--dropout", "1", "dropout must be in [0, 1), got 1.0"),
    ("--dropout", "-0.1", "dropout must be in [0, 1), got -0.1"),
    ("--epochs", "0", "epochs must be a whole number >= 1, got 0"),
    ("--eval-batch-size", "0", "eval_batch_size must be a whole number >= 1, got 0"),
    ("--max-train-samples", "0", "max_train_samples must be a whole number >= 1, got 0"),
    ("--top-layers", "0", "top_layers must be a whole number >= 1 or a share in (0, 1), got 0"),
    ("--seed", "99999999999999999999999", "seed must be a whole number in 0..2**63-1"),
    ("--device", "meta", "device must be auto, cpu, cuda, cuda:N or mps, got 'meta'"),
    ("--train-file", "train.csv", "train_file and eval_file go together"),
])
def test_bad_flag_values(flag, value, message, tmp_path, capsys):
    out = tmp_path / "run"
    line = refused(["--data", tmp_path, "--output-dir", out, flag, value], capsys)
    assert message in line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("argv, message", [
    (["--rank", "big"], "argument --rank: expected a whole number or 'auto', got 'big'"),
    (["--top-layers", "1.5"], "argument --top-layers: expected a number of layers or a share in (0, 1), got '1.5'"),
    (["--top-layers", "half"], "argument --top-layers: expected a number of layers or a share in (0, 1), got 'half'"),
])
def test_unparsable_flag_value_is_one_line_too(argv, message, capsys):
    with pytest.raises(SystemExit, match="2"):
        main(argv)
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_missing_files(tiny_data_dir, tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    line = refused(["--train-file", missing, "--eval-file", tiny_data_dir / "test.csv", "--output-dir",
                    tmp_path / "o"], capsys)
    assert f"file not found: {missing}" in line
    assert f"data not found: {tmp_path / 'nowhere'}" in refused(["--data", tmp_path / "nowhere"], capsys)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "train.csv").write_text('"1","a","b"\n')
    assert "has none of test/dev/validation" in refused(["--data", tmp_path / "only"], capsys)


def agnews_dir(tmp_path, train_rows, classes=True):
    """A --data directory whose train.csv holds `train_rows` (lists of fields, or raw text) and a good test.csv."""
    d = tmp_path / "data"
    d.mkdir()
    train = d / "train.csv"
    if isinstance(train_rows, str):
        train.write_bytes(train_rows.encode("latin-1"))
    else:
        with train.open("w", newline="") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(train_rows)
    (d / "test.csv").write_text('"1","a","b"\n"2","c","d"\n')
    if classes:
        (d / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return d


GOOD = ["1", "war", "treaty"]


@pytest.mark.parametrize("rows, message", [
    ([GOOD, GOOD, ["2", "only a title"]], "train.csv line 3: expected 3 columns (class,title,description), got 2"),
    ([GOOD, ["3", " ", ""]], "train.csv line 2: empty text"),
    ([GOOD, GOOD, ["5", "x", "y"]], "train.csv line 3: label 5 is outside 1..4"),
    ([["0", "x", "y"]], "train.csv line 1: label 0 is outside 1..4"),
    ([GOOD, ["two", "x", "y"]], "train.csv line 2: class 'two' is not a whole number"),
    ([["1", "multi\nline\ntitle", "d"], GOOD, ["9", "x", "y"]], "train.csv line 5: label 9 is outside 1..4"),
    ([["text", "category"], ["hello", "1"]], "header needs both 'text' and 'label' columns"),
    ('"1","caf\xe9","ok"\n', "train.csv line 1 is not UTF-8 text"),
    ('"1","a","b"\n"2","' + "x" * 140_000 + '","d"\n', "train.csv line 2: not valid CSV (field larger than"),
])
def test_bad_rows_name_file_and_line(rows, message, tmp_path, capsys):
    line = refused(["--data", agnews_dir(tmp_path, rows)], capsys)
    assert message in line


@pytest.mark.parametrize("content, message", [
    ('{"text": "a", "label": 0}\n{"text": "b", "label": \n', "bad.jsonl line 2: not valid JSON"),
    ('{"text": "a", "label": 0}\n\n{"text": "b"}\n', "bad.jsonl line 3: needs 'text' and 'label' fields"),
    ('{"text": 7, "label": 0}\n', "bad.jsonl line 1: text is int, not a string"),
    ('{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n', "bad.jsonl line 2: label 2 is outside 0..1"),
    ('{"text": "a", "label": 1}\n{"text": "b", "label": "one"}\n', "bad.jsonl line 2: label 'one' is a class "
                                                                      "name, but the label at "),
    ('{"text": "a", "label": null}\n', "bad.jsonl line 1: label None is neither a whole number nor a class name"),
    ('{"text": "a", "label": true}\n', "bad.jsonl line 1: label True is neither a whole number nor a class name"),
    ('{"text": "a", "label": 1.5}\n', "bad.jsonl line 1: label 1.5 is neither a whole number nor a class name"),
    ('{"text": "a", "label": [1]}\n', "bad.jsonl line 1: label [1] is neither a whole number nor a class name"),
    ('{"text": "a", "label": {"a": 1}}\n', "bad.jsonl line 1: label {'a': 1} is neither"),
    ('{"text": "a", "label": NaN}\n', "bad.jsonl line 1: label nan is neither a whole number nor a class name"),
    ('{"text": "a", "label": 1e23}\n', "bad.jsonl line 1: label 1e+23 is neither a whole number nor a class name"),
    ('{"text": "a\\ud800b", "label": 0}\n', "bad.jsonl line 1: text is not valid Unicode (a lone surrogate at "
                                            "character 1)"),
])
def test_bad_jsonl_rows(content, message, tmp_path, capsys):
    """The eval file is checked against the classes of the training file (labels 0 and 1)."""
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    assert message in refused(["--train-file", good, "--eval-file", bad], capsys)


@pytest.mark.parametrize("content, message", [
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label": "Sports"}\n',
     "train.jsonl line 3: label 'Sports' is a class name, but the label at "),
    ('{"text": "a", "label": "World"}\n{"text": "b", "label": 1}\n', "train.jsonl line 2: label 1 is a whole number"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": [1]}\n',
     "train.jsonl line 2 ([1]) is a list, but the label at "),
    ('{"text": "a", "label": 0.5}\n{"text": "b", "label": "Sports"}\n',
     "train.jsonl line 2 ('Sports') is a class name, but the label at "),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1000000000000}\n',
     "label 1000000000000 would make 1,000,000,000,001 classes, but only 2 distinct labels appear"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 2000000}\n', "label 2000000 would make 2,000,001 classes"),
    ('{"text": "a", "label": -1}\n{"text": "b", "label": 1}\n', "label -1 is below 0"),
    ('{"text": "a", "label": null}\n', "train.jsonl line 1: label None is neither a whole number nor a class name"),
])
def test_labels_of_the_training_file_are_numbers_or_names_never_new_classes(content, message, tmp_path, capsys):
    """Without classes.txt the training labels name the classes: a label of neither kind, a mix, or a number that
    is no class index is refused before any model is built."""
    train = tmp_path / "train.jsonl"
    train.write_text(content)
    line = refused(["--train-file", train, "--holdout", "1", "--output-dir", tmp_path / "o"], capsys)
    assert message in line and not (tmp_path / "o").exists()


def test_a_parquet_null_label_is_refused(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [0, None, 1]}), tmp_path / "train.parquet")
    line = refused(["--train-file", tmp_path / "train.parquet", "--holdout", "1"], capsys)
    assert "train.parquet row 2: label None is neither a whole number nor a class name" in line


@pytest.mark.parametrize("train, message", [
    ("", "train.csv is empty"),
    ("\n\n", "train.csv is empty"),
    ("text,label\n", "train.csv has no rows"),
])
def test_empty_datasets(train, message, tmp_path, capsys):
    d = agnews_dir(tmp_path, train, classes=False)
    if train.startswith("text"):
        (d / "test.csv").write_text("text,label\nhello,0\n")
    assert message in refused(["--data", d], capsys)
    (d / "classes.txt").write_text("\n")
    (d / "train.csv").write_text('"1","a","b"\n')
    assert "classes.txt lists no class names" in refused(["--data", d], capsys)


def test_unknown_models(tiny_data_dir, tmp_path, monkeypatch, capsys):
    import train.trainer  # noqa: F401  (import cost is not the failure's)

    missing = tmp_path / "no-model-here"
    assert f"model not found: {missing}" in refused(["--model", missing, "--data", tiny_data_dir], capsys)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    line = refused(["--model", "no-such-org/no-such-model", "--data", tiny_data_dir, "--output-dir", tmp_path / "o"],
                   capsys)
    assert time.perf_counter() - started < 20
    assert "cannot fetch model 'no-such-org/no-such-model'" in line and "--model PATH" in line
    assert not (tmp_path / "o").exists()


def test_hub_dataset_while_offline_names_the_local_alternative(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    line = refused(["--data", "no_such_dataset_xyz"], capsys)
    assert time.perf_counter() - started < 30
    # The default model (roberta-base) is not cached either: one line names both, and the offline first run.
    assert "cannot fetch dataset 'no_such_dataset_xyz' nor model 'roberta-base'" in line and "--data DIR" in line
    assert "--data ag_news_sample and the MiniLM package" in line


def test_a_hub_dataset_alone_offline_names_it_alone(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = refused(["--data", "no_such_dataset_xyz", "--model", tiny_model_dir], capsys)
    assert "cannot fetch dataset 'no_such_dataset_xyz': the Hugging Face hub is unreachable" in line


def test_output_dir_with_a_run_and_resume_without_checkpoint(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from train.config import TrainConfig
    from train.rundir import run_record

    out = tmp_path / "run"
    out.mkdir()
    assert f"nothing to resume: {out / 'config.json'} does not exist" in refused(["--resume", out], capsys)
    cfg = TrainConfig(model=str(tiny_model_dir), data=str(tiny_data_dir), output_dir=str(out), epochs=1)
    (out / "config.json").write_text(json.dumps(run_record(cfg, cfg, ["a", "b"], [("LoRA", 1)])))
    line = refused(["--resume", out], capsys)
    assert f"nothing to resume: {out / 'checkpoint.pt'} does not exist" in line
    # A run that never reached its first checkpoint holds nothing to keep: the same command starts afresh.
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1")) == 0
    line = refused(train_args(tiny_model_dir, tiny_data_dir, out), capsys)  # now it holds a trained run
    assert f"{out} already holds a run; continue it with --resume {out}" in line and "--overwrite" in line


def tiny_trainable(rank: int, hidden=64, layers=2, labels=4) -> int:
    """By hand: LoRA on query and value in every layer, plus the full RoBERTa head (dense + out_proj)."""
    return rank * layers * 2 * (hidden + hidden) + (hidden * hidden + hidden) + (hidden * labels + labels)


def test_over_budget_is_refused_before_training_with_the_count(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    total = tiny_trainable(8)
    line = refused(train_args(tiny_model_dir, tiny_data_dir, out, "--max-trainable-params", total), capsys)
    assert f"{total:,} trainable parameters reach the budget of {total:,}" in line
    assert "lower --rank" in line and "fewer --targets" in line
    assert not out.exists()
    line = refused(train_args(tiny_model_dir, tiny_data_dir, out, "--rank", "auto", "--max-trainable-params", 4000),
                   capsys)
    assert f"no rank fits under 4,000 trainable parameters: the head alone has {tiny_trainable(0):,}" in line
    assert "--head linear" in line


def test_evaluate_and_predict_refuse_bad_input(tmp_path, capsys):
    from train.ship.evaluate import main as evaluate
    from train.ship.predict import main as predict

    line = refused(["--adapter", tmp_path, "--eval-file", "x.csv"], capsys, evaluate)
    assert f"{tmp_path} is not an adapter written by python -m train" in line
    assert "--batch-size must be >= 1, got 0" in refused(["--adapter", tmp_path, "--batch-size", 0], capsys, evaluate)
    assert "--batch-size must be >= 1, got 0" in refused(["--adapter", tmp_path, "--batch-size", 0, "hi"], capsys,
                                                         predict)
    assert "is not an adapter" in refused(["--adapter", tmp_path / "none", "some text"], capsys, predict)


@pytest.mark.slow
def test_real_process_exits_2_with_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "train", "--rank", "0", "--output-dir", str(tmp_path / "o")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: rank must be >= 1 or 'auto', got 0"]
    assert "Traceback" not in done.stderr + done.stdout


def test_resume_refuses_other_flags_and_long_max_length_is_refused(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    line = refused(["--resume", tmp_path, "--lr", "1e-3"], capsys)
    assert "--resume continues a run with its saved config; drop --lr" in line
    # The tiny RoBERTa has 80 positions, numbered from pad_token_id + 1 = 2: 78 usable.
    long_text = tmp_path / "long"
    long_text.mkdir()
    (long_text / "train.csv").write_text('"1","goal","' + " match" * 100 + '"\n"2","war","treaty"\n')
    (long_text / "test.csv").write_text('"1","goal","match"\n')
    # A length the model cannot take is capped, with one line saying so, and written capped.
    assert main(train_args(tiny_model_dir, long_text, tmp_path / "r", "--max-length", "200", "--epochs", "1",
                           "--allow-empty-classes")) == 0
    assert "--max-length 200 is more than" in capsys.readouterr().out
    assert json.loads((tmp_path / "r/config.json").read_text())["train"]["max_length"] == 78


def test_overwrite_clears_the_previous_run(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1")) == 0
    assert (out / "eval.json").is_file()
    # A second run that stops before its first checkpoint must not leave the first run's files behind.
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--overwrite", "--stop-after", "1")) == 0
    state = __import__("torch").load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == 1
    assert not (out / "eval.json").exists() and not (out / "adapter").exists()
