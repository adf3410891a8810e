"""benchmarks/report.py: the race table rendered from its JSON, and the README sections it fills."""
import json

import pytest

from benchmarks.report import READMES, pages, render, update_readme


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
    (tmp_path / "accuracy.json").write_text(json.dumps(_race_json()))
    readme = "# x\n<!-- results:accuracy -->\nstale\n<!-- /results:accuracy -->\ntail\n"
    new = update_readme(readme, tmp_path)
    assert "stale" not in new and "| ours, fast recipe, LoRA from layer 3 | bf16 |" in new and new.endswith("tail\n")
    assert update_readme(new, tmp_path) == new


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(READMES[0].parent).as_posix())
def test_the_committed_results_still_render(page):
    assert page not in READMES or "<!-- results:" in page.read_text()  # a sitting's page may hold only prose
    assert update_readme(page.read_text()) == page.read_text(), "run python -m benchmarks.report"


def test_the_pages_are_both_readmes_then_each_sittings_page(tmp_path):
    (tmp_path / "speed-b.md").write_text("b")
    (tmp_path / "speed-a.md").write_text("a")
    (tmp_path / "speed-a.json").write_text("{}")
    assert pages(tmp_path) == [*READMES, tmp_path / "speed-a.md", tmp_path / "speed-b.md"]


def _speed_json():
    part = lambda: {"batch_size": 4, "seq_len": 128}  # noqa: E731  the headline view reads only the shape
    return {"benchmark": "speed", "command": "python -m benchmarks.speed --threads 2", "device": "cpu",
            "repeats": 9, "warmup": 1, "precisions": {"bf16": part(), "fp32": part()},
            "machine": _race_json()["machine"],
            "headline": {"step_ratio_vs_peft": {"bf16": 0.9681, "fp32": 1.0049},
                         "step_ratio_vs_floor": {"bf16": 1.0265, "fp32": 1.0083},
                         "eval_speedup_vs_peft_unmerged": {"bf16": 1.0033, "fp32": 3.2},
                         "all_linear_step_ratio_vs_query_value": {"bf16": 1.082, "fp32": 1.16}}}


def test_a_speed_headline_is_one_row_per_precision_with_each_target_met_or_missed():
    text = render(_speed_json(), "headline")
    assert text.startswith("`python -m benchmarks.speed --threads 2` on Test CPU (2 cores")
    assert "| bf16 autocast, 4 × 128 | 0.968 (met) | 1.026 (met) | 1.00× (missed) | 1.082 (met) |" in text
    assert "| fp32, 4 × 128 | 1.005 (missed) | 1.008 (met) | 3.20× (met) | 1.160 (missed) |" in text
    assert "fused" not in text  # a column only where the run measured it
    data = _speed_json()
    data["headline"]["fused_step_ratio_vs_plain"] = {"bf16": 0.9793, "fp32": 0.9315}
    del data["command"]
    text = render(data, "headline")
    assert "| 1.082 (met) | 0.979 |" in text  # no target: a figure, no verdict
    assert text.startswith("Machine: Test CPU (2 cores")  # older results have no command


def test_a_race_under_way_says_which_runs_its_figures_cover():
    data = _race_json() | {"complete": False, "runs": [{"contestant": "reference", "seed": 0},
                                                       {"contestant": "fast", "seed": 0}]}
    for text in (render(data), render(data, "headline")):
        assert text.count("**Race under way**: 2 run(s) so far (reference (seed 0), fast (seed 0))") == 1
    assert "under way" not in render(_race_json()) + render(_race_json(), "headline")


def test_the_headline_names_only_what_has_run_and_the_engine_alone_when_it_raced():
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
