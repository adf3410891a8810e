"""benchmarks/contestants.py: each contestant's command, run as a child process and timed whole; its
result read back. The children are a few lines of Python."""
import json
import os
import sys

import pytest

from benchmarks.contestants import RaceError, Setup, command, preflight, read_result, run_child, start_layer


def test_commands_give_epochs_to_all_but_the_fast_recipe(tmp_path):
    setup = Setup("M", ["--data", "D"], 3, max_train=64, recipe_args={"default": [], "fast": ["--recipe", "fast"]},
                  extra=["--precision", "fp32"])
    ref, tuned, default, fast, engine, ceiling = (command(n, setup, 7, tmp_path) for n in
                                                  ("reference", "tuned", "default", "fast", "engine", "ceiling"))
    assert ref[1:3] == ["-m", "benchmarks.reference"] and ref[-2:] == ["--variant", "specified"]
    assert tuned[-1] == "tuned" and engine[-1] == "engine" and ceiling[-1] == "ceiling"
    assert ref[ref.index("--out") + 1] == str(tmp_path / "metrics.json")
    for cmd in (ref, default, fast):
        assert cmd[cmd.index("--seed") + 1] == "7" and cmd[cmd.index("--max-train-samples") + 1] == "64"
    assert default[default.index("--epochs") + 1] == "3" and "--epochs" not in fast
    assert fast[-4:] == ["--recipe", "fast", "--precision", "fp32"]
    assert fast[fast.index("--cache-dir") + 1] == str(tmp_path / "cache")  # fresh per run: a cold cache
    with pytest.raises(RaceError):
        command("faster", setup, 0, tmp_path)


@pytest.mark.slow
def test_an_unknown_recipe_ends_the_race_in_one_line_before_anything_runs(tmp_path):
    setup = Setup("M", ["--data", "D"], 3, recipe_args={"default": [], "fast": ["--recipe", "no-such-recipe"]})
    with pytest.raises(RaceError) as e:
        preflight("fast", command("fast", setup, 0, tmp_path), dict(os.environ))
    message = str(e.value.code)
    assert message.startswith("error: contestant fast cannot start:") and "\n" not in message
    assert "no-such-recipe" in message and "--fast-args" in message
    preflight("fast", command("default", setup, 0, tmp_path), dict(os.environ))  # a known one passes


@pytest.mark.slow
def test_run_child_times_the_whole_process_and_its_cpu(tmp_path):
    metrics = tmp_path / "m.json"
    code = (f"import time, pathlib; t = time.process_time()\n"
            f"while time.process_time() - t < 0.3: pass\n"
            f"time.sleep(0.3); pathlib.Path({str(metrics)!r}).write_text('{{}}')")
    timing = run_child([sys.executable, "-c", code], tmp_path / "log.txt", metrics, {})
    assert timing["wall_seconds"] >= 0.6 and 0.3 <= timing["cpu_seconds"] < timing["wall_seconds"]
    assert 0 < timing["to_metrics_seconds"] <= timing["wall_seconds"] + 0.05


def test_run_child_failure_is_one_line_with_the_childs_last_words(tmp_path):
    with pytest.raises(RaceError) as e:
        run_child([sys.executable, "-c", "import sys; print('starting'); sys.exit('error: no such file x.csv')"],
                  tmp_path / "log.txt", tmp_path / "m.json", {})
    assert "exit code 1: error: no such file x.csv" in str(e.value.code) and "\n" not in str(e.value.code)
    with pytest.raises(RaceError, match="wrote no"):
        run_child([sys.executable, "-c", "pass"], tmp_path / "log.txt", tmp_path / "m.json", {})


def test_read_result_takes_ours_settings_from_the_runs_config(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "eval.json").write_text(json.dumps({
        "accuracy": 0.9, "macro_f1": 0.9, "final_accuracy": 0.85, "final_macro_f1": 0.84, "train_seconds": 12.0,
        "trainable_params": 5, "history": [{"accuracy": 0.9, "macro_f1": 0.9}, {"accuracy": 0.85, "macro_f1": 0.84}]}))
    from train.config import TrainConfig
    from train.rundir import run_record

    cfg = TrainConfig.from_flat({"epochs": 2, "batch_size": 16, "eval_batch_size": 64, "max_length": 96,
                                 "layers": (4, 3, 5), "precision": "fp32"})
    record = run_record(cfg, cfg, ["a", "b"], [("LoRA", 5)])  # the shape python -m train writes
    (out / "config.json").write_text(json.dumps(record))
    r = read_result("fast", tmp_path)
    assert r["accuracy"] == 0.85 and r["best_epoch_accuracy"] == 0.9  # the final epoch, not the best
    assert (r["loop_seconds"], r["precision"], r["epochs"], start_layer(r["layers"])) == (12.0, "fp32", 2, 3)
    assert start_layer(None) == 0
