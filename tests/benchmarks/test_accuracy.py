"""benchmarks/accuracy.py: runs paired by seed, the headline and its targets, and a tiny race end to end
(real child processes on the tiny model from tests/helpers/tiny.py)."""
import json
from pathlib import Path

import pytest


def _run(name, seed, wall, accuracy, work, loop=None, precision="fp32"):
    return {"contestant": name, "seed": seed, "wall_seconds": wall, "cpu_seconds": wall * 2,
            "loop_seconds": loop or wall / 2, "accuracy": accuracy, "precision": precision, "epochs": 3,
            "trainable_params": 1, "loop_includes": "x",
            "work": {"total": work, "forward_train": work / 2, "backward_train": work / 4, "start_layer": 0}}


def test_summarize_pairs_runs_by_seed_and_the_headline_picks_the_fast_recipe():
    from benchmarks.accuracy import headline, summarize, targets

    runs = [_run("reference", 1, 100.0, 0.88, 1000), _run("fast", 1, 30.0, 0.90, 200, precision="bf16"),
            _run("fast", 0, 10.0, 0.89, 200, precision="bf16"), _run("reference", 0, 50.0, 0.87, 1000)]
    summary, ratios = summarize(runs, ["reference", "fast"], [0, 1])
    assert ratios["fast/reference"]["wall"]["per_round"] == [0.2, 0.3]  # seed 0 with seed 0, seed 1 with seed 1
    assert ratios["fast/reference"]["wall"]["median"] == pytest.approx(0.25)
    assert ratios["fast/reference"]["work"]["median"] == pytest.approx(0.2)
    assert ratios["fast/reference"]["wall_over_work"] == pytest.approx(1.25)
    assert summary["fast"]["accuracy_mean"] == pytest.approx(0.895)
    assert summary["fast"]["accuracy_std"] == pytest.approx(0.00707, abs=1e-5)
    head = headline(summary, ratios, {"cpu": "x"})
    assert head["time_ratio_vs_reference"] == 0.25 and head["time_ratio_vs_reference_max"] == 0.3
    assert head["work_ratio_vs_reference"] == 0.2
    assert head["time_ratio_vs_tuned_reference"] is None and head["accuracy_default"] is None
    assert head["precision"] == {"reference": "fp32", "fast": "bf16"}
    met = {t["target"]: t["met"] for t in targets(head)}
    assert met["fast ≤ 0.15× the reference (whole process)"] is False
    assert met["fast accuracy ≥ both references'"] is True
    assert met["fast ≤ 0.33× the tuned reference (whole process)"] is None


def test_a_race_under_way_summarizes_the_runs_it_has():
    from benchmarks.accuracy import headline, summarize, targets

    summary, ratios = summarize([_run("reference", 0, 50.0, 0.87, 1000)], ["reference", "tuned", "fast"], [0, 1])
    assert list(summary) == ["reference"] and ratios == {}
    head = headline(summary, ratios, {})
    assert head["accuracy_reference"] == 0.87 and head["time_ratio_vs_reference"] is None
    assert all(t["met"] is None for t in targets(head))


@pytest.mark.slow
def test_a_tiny_race_end_to_end(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    """Two contestants as real child processes on the tiny model: the tuned reference and a stand-in
    for ours-fast (the reference recipe with LoRA on the top layer only)."""
    pytest.importorskip("peft")
    pytest.importorskip("accelerate")  # Trainer needs it
    from benchmarks.accuracy import main

    out = tmp_path / "race.json"
    result = main(["--model", str(tiny_model_dir), "--train-file", str(tiny_data_dir / "train.csv"),
                   "--eval-file", str(tiny_data_dir / "test.csv"), "--contestants", "tuned,fast", "--seeds", "3",
                   "--max-train-samples", "64", "--max-eval-samples", "16", "--epochs", "1",
                   "--fast-args", "--recipe reference --precision fp32 --batch-size 16 --epochs 2 --layers 1",
                   "--work-dir", str(tmp_path / "runs"), "--out", str(out)])
    head = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert head == result["headline"] == json.loads(out.read_text())["headline"]
    assert head["precision"]["fast"] == "fp32" and head["accuracy_fast"] is not None
    assert head["time_ratio_vs_tuned_reference"] == pytest.approx(
        result["runs"][1]["wall_seconds"] / result["runs"][0]["wall_seconds"], rel=1e-3)
    tuned, fast = result["runs"]
    kept = [json.loads(line) for line in (tmp_path / "runs" / "runs.jsonl").read_text().splitlines()]
    assert kept == json.loads(out.read_text())["runs"]  # each run on disk as it finished
    assert (tuned["contestant"], fast["contestant"]) == ("tuned", "fast")
    assert tuned["epochs"] == 1 and fast["epochs"] == 2  # the fast recipe's own epochs, not the race's
    assert 0 < tuned["loop_seconds"] < tuned["wall_seconds"] and tuned["cpu_seconds"] > 0
    reference = json.loads((Path(tuned["run_dir"]) / "metrics.json").read_text())
    assert reference["steps"] == 2 and reference["train_examples"] == 64 and reference["eval_examples"] == 16
    assert 0 < reference["loop_collate_seconds"] < reference["loop_seconds"] <= reference["train_seconds"]
    assert reference["seed"] == 3 and reference["tuned"]
    # LoRA only in layer 1 of 2: one layer forward and backward per step, layer 0 once per example.
    assert fast["work"]["start_layer"] == 1 and fast["work"]["forward_prefix"] > 0
    assert fast["work"]["backward_train"] == fast["work"]["forward_train"] == fast["work"]["train_padded_tokens"]
    assert tuned["work"]["backward_train"] == 2 * tuned["work"]["train_padded_tokens"]
    assert not (Path(fast["run_dir"]) / "cache").exists()  # removed, so the next run starts cold
    assert "| ours, fast recipe, LoRA from layer 1 | fp32 | 2 |" in race_table_of(out)


def race_table_of(path: Path) -> str:
    from benchmarks.report import render

    return render(json.loads(path.read_text()))
