"""benchmarks/: the race's pairing and ratio math, the work counter, the report, and its child processes.

Offline and fast: the math runs on hand-checkable numbers; the child-process tests use the tiny
model from tests/tiny.py, or a few lines of Python as the child.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.common import abba_order, mean_std, paired_ratio
from benchmarks.contestants import RaceError, Setup, command, preflight, read_result, run_child, start_layer
from benchmarks.work import count_work, ours_batches, padded_tokens, reference_batches

ROOT = Path(__file__).resolve().parents[2]


# --- pairing and the median of paired ratios --------------------------------------------------

def test_abba_order_reverses_every_other_round():
    assert abba_order(["a", "b", "c"], 3) == [["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert abba_order(["a", "b"], 2) == [["a", "b"], ["b", "a"]]


def test_paired_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    # Round 2 ran under heavy load: both sides took 3x longer. Paired, that cancels.
    ours, theirs = [2.0, 9.0, 3.0], [1.0, 3.0, 2.0]
    r = paired_ratio(ours, theirs)
    assert r["per_round"] == [2.0, 3.0, 1.5]
    assert (r["median"], r["min"], r["max"]) == (2.0, 1.5, 3.0)
    assert r["median"] != sorted(ours)[1] / sorted(theirs)[1]  # the ratio of medians would say 1.5


def test_paired_ratio_refuses_unpaired_rounds():
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_ratio([], [])


def test_mean_std_has_no_spread_from_one_seed():
    assert mean_std([0.9]) == (0.9, None)
    mean, std = mean_std([0.88, 0.90, 0.92])
    assert mean == pytest.approx(0.90) and std == pytest.approx(0.02)


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


# --- counted work ----------------------------------------------------------------------------

def test_padded_tokens_pads_each_batch_to_its_longest_row():
    lengths = [10, 2, 3, 7]
    assert padded_tokens(lengths, [[0, 1], [2, 3]]) == 2 * 10 + 2 * 7
    assert padded_tokens(lengths, [[0, 3], [1, 2]]) == 2 * 10 + 2 * 3
    assert padded_tokens(lengths, [[0], [1], [2], [3], []]) == 22


def test_count_work_by_hand():
    train, evals = [10, 2, 3, 7], [5, 1, 4]
    epochs = [[[0, 1], [2, 3]], [[0, 3], [1, 2]]]  # 34 then 26 padded tokens
    one_eval = [[[0, 1], [2]]]  # 2*5 + 1*4 = 14 padded tokens
    w = count_work(train, epochs, evals, one_eval, layers=6)
    assert (w["forward_train"], w["backward_train"], w["forward_eval"], w["forward_prefix"]) == (60 * 6, 60 * 6,
                                                                                                 14 * 6, 0)
    assert w["total"] == 60 * 6 * 2 + 14 * 6

    # LoRA from layer 4 of 6, no cache: every forward runs all 6 layers, backward only the top 2.
    w = count_work(train, epochs, evals, one_eval, layers=6, start=4)
    assert (w["forward_train"], w["backward_train"], w["forward_eval"]) == (60 * 6, 60 * 2, 14 * 6)

    # With the frozen-prefix cache: layers 0-3 once per example, in length-sorted batches of 2:
    # train [10, 7] [3, 2] -> 20 + 6 = 26 tokens, eval [5, 4] [1] -> 10 + 1 = 11 tokens.
    w = count_work(train, epochs, evals, one_eval, layers=6, start=4, prefix_cache=True, prefix_batch_size=2)
    assert (w["forward_train"], w["backward_train"], w["forward_eval"]) == (60 * 2, 60 * 2, 14 * 2)
    assert w["forward_prefix"] == 4 * (26 + 11)
    assert w["total"] == 120 + 120 + 28 + 148


def test_count_work_refuses_a_start_layer_outside_the_encoder():
    with pytest.raises(ValueError):
        count_work([1], [[[0]]], [1], [[[0]]], layers=6, start=6)


def test_batch_plans_cover_every_row_once_per_epoch_and_grouping_cuts_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = (torch.rand(400, generator=gen) ** 3 * 120 + 8).long().tolist()  # long-tailed, like news text
    evals = lengths[:100]
    for train, ev in (ours_batches(lengths, evals, 32, 128, 3, seed=1),
                      reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=False),
                      reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=True)):
        assert len(train) == 3
        assert all(sorted(i for b in epoch for i in b) == list(range(400)) for epoch in train)
        assert all(sorted(i for b in e for i in b) == list(range(100)) for e in ev)
    ours, ours_evals = ours_batches(lengths, evals, 32, 128, 3, seed=1)
    assert len(ours_evals) == 3  # ours evaluates after every epoch, the reference once at the end
    random_, _ = reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=False)
    grouped, _ = reference_batches(lengths, evals, 32, 32, 3, seed=1, grouped=True)
    padded = {name: sum(padded_tokens(lengths, e) for e in plan)
              for name, plan in (("ours", ours), ("random", random_), ("grouped", grouped))}
    assert padded["ours"] < 0.8 * padded["random"] and padded["grouped"] < 0.8 * padded["random"]
    assert min(padded.values()) >= 3 * sum(lengths)


# --- the report --------------------------------------------------------------------------------

def _race_json():
    pair = lambda m, lo, hi: {"median": m, "min": lo, "max": hi, "per_round": [lo, hi]}  # noqa: E731
    summary = {
        "reference": {"label": "reference as specified (PEFT + Trainer)", "precision": "fp32", "epochs": "3",
                      "wall_seconds": 686.0, "cpu_seconds": 1300.0, "loop_seconds": 649.0, "accuracy_mean": 0.8885,
                      "accuracy_std": 0.004, "work_total": 2.5e9, "start_layer": 0},
        "fast": {"label": "ours, fast recipe", "precision": "bf16", "epochs": "2", "wall_seconds": 80.0,
                 "cpu_seconds": 150.0, "loop_seconds": 50.0, "accuracy_mean": 0.89, "accuracy_std": None,
                 "work_total": 0.5e9, "start_layer": 3},
    }
    return {"benchmark": "race", "command": "python -m benchmarks.accuracy --seeds 0,1",
            "machine": {"cpu": "Test CPU", "cpu_count": 2, "torch_threads": 2, "cpu_capability": "AVX512",
                        "cpu_native_bf16": True, "cpu_bf16_flags": ["amx_bf16"], "torch": "2", "transformers": "5",
                        "peft": "0.2"},
            "setup": {"model_name": "all-MiniLM-L6-v2", "model": "/m", "layers": 6, "train_examples": 4800,
                      "eval_examples": 800, "seeds": [0, 1], "work": "padded tokens × layers"},
            "summary": summary,
            "ratios": {"fast/reference": {"wall": pair(0.117, 0.11, 0.12), "work": pair(0.2, 0.2, 0.2)}},
            "headline": {"time_ratio_vs_reference": 0.117, "work_ratio_vs_reference": 0.2},
            "targets": [{"target": "fast ≤ 0.15× the reference (whole process)", "value": 0.117, "met": True},
                        {"target": "fast accuracy ≥ both references'", "value": 0.0015, "met": True},
                        {"target": "fast ≤ 0.33× the tuned reference (whole process)", "value": None, "met": None}]}


def test_race_table_renders_every_contestant_from_the_json():
    from benchmarks.report import render

    text = render(_race_json())
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["reference as specified (PEFT + Trainer)"] == (
        "| reference as specified (PEFT + Trainer) | fp32 | 3 | 686.0 s | 1,300.0 s | 649.0 s | 1 | 88.85% ± 0.40 "
        "| 2.500 | 1 |")
    assert rows["ours, fast recipe, LoRA from layer 3"] == (
        "| ours, fast recipe, LoRA from layer 3 | bf16 | 2 | 80.0 s | 150.0 s | 50.0 s | 0.117× [0.11–0.12] "
        "| 89.00% | 0.500 | 0.200× |")
    assert "work (G token-layers)" in text and "time ÷ tuned" not in text  # only the bases that raced
    assert "native bf16 (amx_bf16)" in text
    assert "fast ≤ 0.15× the reference (whole process): met (0.117×)" in text
    assert "fast accuracy ≥ both references': met (+0.15 pp)" in text
    assert "tuned reference (whole process)" not in text  # a target the race could not judge is left out


def test_update_readme_fills_the_marked_section_from_the_results_file(tmp_path):
    from benchmarks.report import update_readme

    (tmp_path / "accuracy.json").write_text(json.dumps(_race_json()))
    readme = "# x\n<!-- results:accuracy -->\nstale\n<!-- /results:accuracy -->\ntail\n"
    new = update_readme(readme, tmp_path)
    assert "stale" not in new and "| ours, fast recipe, LoRA from layer 3 | bf16 |" in new and new.endswith("tail\n")
    assert update_readme(new, tmp_path) == new


@pytest.mark.parametrize("which", [0, 1], ids=["README.md", "benchmarks/README.md"])
def test_the_committed_results_still_render(which):
    from benchmarks.report import READMES, update_readme

    readme = READMES[which]
    assert "<!-- results:" in readme.read_text()
    assert update_readme(readme.read_text()) == readme.read_text(), "run python -m benchmarks.report"


# --- contestants as child processes -------------------------------------------------------------

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
    from train.records import run_record

    cfg = TrainConfig.from_flat({"epochs": 2, "batch_size": 16, "eval_batch_size": 64, "max_length": 96,
                                 "layers": (4, 3, 5), "precision": "fp32"})
    (out / "config.json").write_text(json.dumps(run_record(cfg, ["a", "b"])))  # the shape python -m train writes
    r = read_result("fast", tmp_path)
    assert r["accuracy"] == 0.85 and r["best_epoch_accuracy"] == 0.9  # the final epoch, not the best
    assert (r["loop_seconds"], r["precision"], r["epochs"], start_layer(r["layers"])) == (12.0, "fp32", 2, 3)
    assert start_layer(None) == 0


def test_tuned_reference_groups_by_length_and_uses_bf16_only_where_native(monkeypatch):
    import benchmarks.variants as reference

    monkeypatch.setattr(reference, "cpu_has_bf16", lambda: False)
    plain = reference.tuned_arguments(torch.device("cpu"))
    assert "bf16" not in plain and (plain.get("train_sampling_strategy") == "group_by_length"
                                    or plain.get("group_by_length") is True)
    monkeypatch.setattr(reference, "cpu_has_bf16", lambda: True)
    assert {"bf16": True, "use_cpu": True}.items() <= reference.tuned_arguments(torch.device("cpu")).items()


def test_tuned_reference_leaves_cudnn_out_of_sdpa_on_cuda_as_ours_does(monkeypatch):
    import benchmarks.variants as reference

    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", calls.append)
    assert reference.tuned_kernels(torch.device("cpu")) == {} and calls == []
    assert reference.tuned_kernels(torch.device("cuda")) == {"cudnn_sdpa": False} and calls == [False]


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


@pytest.mark.parametrize("model_type", ["roberta", "mpnet"])
def test_the_engine_contestant_trains_our_fast_recipe_in_peft(tmp_path, model_type):
    """Same layers, targets (in the model's own names), rank and linear head as `python -m train --recipe fast`:
    the same trainable count, and a frozen head dense layer that is the identity."""
    pytest.importorskip("peft")
    from shipping import make_family_dir
    from tiny import CLASSES

    from benchmarks.variants import model_for, variant_recipe
    from train.config import TrainConfig
    from train.model.load import load_pretrained
    from train.model.plan import apply_head, plan
    from train.recipes import recipe

    encoder = make_family_dir(tmp_path / "m", model_type, layers=3)
    fast = variant_recipe("engine")
    assert (fast["r"], fast["top_layers"], fast["epochs"]) == (recipe("fast")["rank"], recipe("fast")["top_layers"],
                                                               recipe("fast")["epochs"])
    peft_model, layers = model_for(str(encoder), CLASSES, 0, fast, "eager")
    cfg = TrainConfig.from_flat({**recipe("fast"), "model": str(encoder)})
    ours, _ = load_pretrained(str(encoder), 4, CLASSES)
    apply_head(cfg, ours)
    assert layers == [1, 2] and sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == sum(
        v for _, v in plan(cfg, ours)[2])
    dense = peft_model.base_model.model.classifier.dense
    assert torch.equal(dense.weight, torch.eye(64)) and not dense.weight.requires_grad
