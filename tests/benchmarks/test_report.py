"""benchmarks/report.py: the race table rendered from its JSON, and the README sections it fills."""
import json

import pytest


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


def test_a_race_under_way_says_which_runs_its_figures_cover():
    from benchmarks.report import render

    data = _race_json() | {"complete": False, "runs": [{"contestant": "reference", "seed": 0},
                                                       {"contestant": "fast", "seed": 0}]}
    for text in (render(data), render(data, "headline")):
        assert text.count("**Race under way**: 2 run(s) so far (reference (seed 0), fast (seed 0))") == 1
    assert "under way" not in render(_race_json()) + render(_race_json(), "headline")


def test_the_headline_names_only_what_has_run_and_the_engine_alone_when_it_raced():
    from benchmarks.report import render

    pair = lambda m: {"wall": {"median": m, "min": m, "max": m, "per_round": [m]}}  # noqa: E731
    data = _race_json()
    data["summary"] = {"fast": data["summary"]["fast"]}
    line = render(data, "headline")
    assert line.endswith("seeds 0, 1): fast recipe 89.00%.")  # no ratio, no reference: nothing dangling
    data["summary"]["engine"] = dict(data["summary"]["fast"], accuracy_mean=0.885)
    data["ratios"] = {"fast/engine": pair(0.71), "fast/tuned": pair(0.3)}
    line = render(data, "headline")
    assert "fast recipe 89.00% in 0.300× the tuned PEFT + Trainer reference's whole-process time" in line
    assert "; the fast recipe in 0.710× the time of PEFT + Trainer running it (88.50%)." in line
    assert "PEFT + Trainer tuned" not in line
