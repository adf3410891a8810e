"""The run directory: corrupt or foreign files end in one line, temp files are cleaned, files follow the umask,
one config shape with versions, a finished run is left alone, and evaluate re-draws the run's subset."""
import json
import os
import time

import pytest
import torch

from test_errors import refused
from tiny import train_args
from train.__main__ import main
from train.rundir import RunDir


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    """One finished 1-epoch run (evaluated on a 20-row subset with seed 3); shared, so never modified."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "1", "--max-eval-samples", "20",
                           "--seed", "3", "--rank", "auto")) == 0
    return out


def test_one_config_shape_with_the_rank_resolved_and_versions(finished):
    record = json.loads((finished / "config.json").read_text())
    assert record == json.loads((finished / "adapter/train_config.json").read_text())
    assert record["train"]["auto_rank"] is False and record["train"]["lora"]["rank"] > 1
    adapter = json.loads((finished / "adapter/adapter_config.json").read_text())
    assert adapter["r"] == record["train"]["lora"]["rank"]
    assert {"torch", "transformers", "roberta-lora", "git_commit"} <= set(record["versions"])
    assert record["versions"]["torch"] == torch.__version__


def test_files_follow_the_umask(finished):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("config.json", "eval.json", "checkpoint.pt", "adapter/adapter_model.safetensors"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_resume_of_a_finished_run_changes_nothing(finished, capsys):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    assert main(["--resume", str(finished)]) == 0
    assert "is a finished run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before


def test_evaluate_redraws_the_runs_subset_and_says_so(finished, capsys):
    from train.ship.evaluate import main as evaluate

    assert evaluate(["--adapter", str(finished / "adapter"), "--max-eval-samples", "20", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "scoring a stratified subset of 20 of 64 rows (seed 3)" in err
    run = json.loads((finished / "eval.json").read_text())
    assert json.loads(out)["confusion"] == run["confusion"]  # the very rows the run scored


def test_corrupt_and_foreign_files_end_in_one_line(finished, tmp_path, capsys):
    from train.ship.evaluate import main as evaluate

    run = tmp_path / "run"
    os.system(f"cp -r {finished} {run}")
    (run / "eval.json").unlink()  # make it resumable
    (run / "checkpoint.pt").write_bytes((finished / "checkpoint.pt").read_bytes()[:200])  # truncated
    assert "is not a readable checkpoint" in refused(["--resume", run], capsys)
    torch.save({"payload": torch.nn.Linear(2, 2)}, run / "checkpoint.pt")  # a pickle needing code to load
    assert "is not a readable checkpoint" in refused(["--resume", run], capsys)
    (run / "config.json").write_text("{not json")
    assert f"{run / 'config.json'} is not valid JSON" in refused(["--resume", run], capsys)
    (run / "adapter/train_config.json").write_text("[1, 2")
    assert "train_config.json is not valid JSON" in refused(["--adapter", run / "adapter", "--eval-file", "x.csv"],
                                                           capsys, evaluate)
    (run / "adapter/train_config.json").write_text(json.dumps({"train": {"rank": "x"}, "labels": ["a"]}))
    assert "is not a run config written by python -m train" in refused(["--adapter", run / "adapter", "--eval-file", "x"],
                                                                       capsys, evaluate)


def test_output_dir_that_is_a_file_is_refused_before_loading(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    started = time.perf_counter()
    assert f"--output-dir {target} is a file, not a directory" in refused(
        train_args(tiny_model_dir, tiny_data_dir, target), capsys)
    assert time.perf_counter() - started < 5 and target.read_text() == "mine"


def test_temp_files_of_an_interrupted_write_are_removed_at_the_next_start(tmp_path):
    """Only this program's temp files whose process is gone: a live writer's, and the user's own, stay."""
    import subprocess
    import sys

    from lora.files import _host

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run, host, gone = RunDir(tmp_path), _host(), int(dead.stdout)
    (tmp_path / "adapter").mkdir()
    stale = [tmp_path / f".checkpoint.pt.{host}.{gone}.abc123.roberta-lora.tmp",
             tmp_path / f"adapter/.adapter_model.safetensors.{host}.{gone}.x.roberta-lora.tmp"]
    keep = [tmp_path / "notes.tmp", tmp_path / ".mine.tmp", tmp_path / ".draft.abc.tmp",
            tmp_path / f".eval.json.{host}.{os.getpid()}.live.roberta-lora.tmp"]  # the last: a live writer's
    for path in [*stale, *keep]:
        path.write_bytes(b"half")
    run.clean_temps()
    assert not any(p.exists() for p in stale) and all(p.read_bytes() == b"half" for p in keep)


def test_fp16_on_a_cpu_is_refused_with_the_alternative(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    argv = [a for a in train_args(tiny_model_dir, tiny_data_dir, tmp_path / "o") if a not in ("--precision", "fp32")]
    line = refused(argv + ["--precision", "fp16", "--device", "cpu"], capsys)
    assert "--precision fp16 on a CPU is slow" in line and ("--precision bf16" in line or "--precision fp32" in line)


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from train.cli import UserError

    monkeypatch.setenv("ROBERTA_LORA_DEBUG", "1")
    with pytest.raises(UserError, match="nothing to resume"):
        main(["--resume", str(tmp_path)])
