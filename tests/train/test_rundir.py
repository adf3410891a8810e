"""The run directory: corrupt or foreign files end in one line, temp files are cleaned, files follow the umask,
one config shape with versions, a finished run is left alone, and evaluate re-draws the run's subset. And
nothing a user made is deleted or mixed: each case of the adversarial pass (issue 19, classes A, B, E, F) ends
in a correct run or one `error:` line, with the files around it untouched."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers.oneline import refused
from helpers.tiny import train_args, write_agnews
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
    assert record["train"]["rank"] is None and record["train"]["lora"]["rank"] > 1 and record["asked"]["rank"] == "auto"
    assert record["trainable_params"] == sum(count for _, count in record["plan"])
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
    argv = ["--adapter", run / "adapter", "--eval-file", "x"]
    (run / "adapter/train_config.json").write_text(json.dumps({"train": {"rank": "x"}, "labels": ["a"]}))
    assert "was written by an earlier build of python -m train" in refused(argv, capsys, evaluate)
    (run / "adapter/train_config.json").write_text(json.dumps({"train": {"rank": "x"}, "asked": {}, "labels": ["a"]}))
    assert "is not a run config written by python -m train" in refused(argv, capsys, evaluate)


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

    from train.files import _host

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


def run_args(tiny_model_dir, data, out, *extra):
    return train_args(tiny_model_dir, data, out, "--epochs", "1", *extra)


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def test_a_folder_of_the_users_files_with_a_runs_names_is_never_wiped(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                        capsys):
    out = tmp_path / "d"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter/adapter_model.safetensors").write_text("mine")
    (out / "eval.json").write_text("mine")
    for flags in ((), ("--overwrite",)):
        line = refused(run_args(tiny_model_dir, tiny_data_dir, out, "--stop-after", "1", *flags), capsys)
        assert "which no run of python -m train wrote" in line
    assert (out / "eval.json").read_text() == "mine" == (out / "adapter/adapter_model.safetensors").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "eval.json"]  # no lock, no config left behind


def test_a_linked_metrics_file_is_replaced_never_written_through(tiny_model_dir, tiny_data_dir, tmp_path):
    out, outside = tmp_path / "run", tmp_path / "elsewhere.jsonl"
    assert main(run_args(tiny_model_dir, tiny_data_dir, out)) == 0
    outside.write_text("the user's\n")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(outside)
    assert main(run_args(tiny_model_dir, tiny_data_dir, out, "--overwrite")) == 0
    assert outside.read_text() == "the user's\n" and not (out / "metrics.jsonl").is_symlink()


def test_a_live_process_holds_the_folder_and_a_dead_ones_lock_is_taken_over(tiny_model_dir, tiny_data_dir,
                                                                              tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{socket.gethostname()} {sleeper.pid}\n")
        line = refused(run_args(tiny_model_dir, tiny_data_dir, out), capsys)
        assert f"is being written by process {sleeper.pid} on {socket.gethostname()}" in line
    finally:
        sleeper.kill()
    (out / ".lock").write_text(f"{socket.gethostname()} {dead_pid()}\n")
    assert main(run_args(tiny_model_dir, tiny_data_dir, out)) == 0 and not (out / ".lock").exists()


@pytest.mark.slow
def test_two_runs_into_one_folder_at_once_one_is_refused(tiny_model_dir, tiny_data_dir, tmp_path):
    out, env = tmp_path / "run", {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "train", *map(str, run_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "3"))]
    first = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # wait until the first one holds the folder
        if (out / ".lock").exists():
            break
        __import__("time").sleep(0.05)
    second = subprocess.run(args, env=env, capture_output=True, text=True)
    assert first.wait(timeout=300) == 0
    assert second.returncode == 2 and "is being written by process" in second.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == sorted(set(steps))  # one run's lines, never two interleaved


def test_resume_on_changed_data_is_refused(tiny_model_dir, tmp_path, capsys):
    data, out = write_agnews(tmp_path / "data", 64, 16), tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--epochs", "2", "--stop-after", "3")) == 0
    assert "stopped after step 3 (--stop-after), checkpointed; continue with --resume" in capsys.readouterr().err
    rows = (data / "train.csv").read_text().splitlines()
    (data / "train.csv").write_text("\n".join(rows[:-8]) + "\n")  # 8 rows fewer
    line = refused(["--resume", out], capsys)
    assert "the data differ from what" in line and "checkpoint.pt was trained on" in line


def test_resume_auto_on_a_finished_run_with_other_settings_is_refused(tiny_model_dir, tiny_data_dir, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, tiny_data_dir, out)) == 0
    capsys.readouterr()
    assert main(run_args(tiny_model_dir, tiny_data_dir, out, "--resume", "auto")) == 0  # the same: nothing to do
    assert "is a finished run" in capsys.readouterr().out
    assert RunDir(out).load_record().train.eval_batch_size == 32  # chosen by the device (CPU), and written down
    # The evaluation batch is how a run scores, not what it trains: another one continues the same run.
    assert main(run_args(tiny_model_dir, tiny_data_dir, out, "--resume", "auto", "--eval-batch-size", "5")) == 0
    assert "is a finished run" in capsys.readouterr().out
    line = refused(run_args(tiny_model_dir, tiny_data_dir, out, "--resume", "auto", "--lr", "1e-3"), capsys)
    assert "holds a run with other settings (lr)" in line


def test_a_refusal_after_the_folder_was_made_leaves_nothing_that_blocks_a_rerun(tiny_model_dir, tiny_data_dir,
                                                                                 tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setitem(sys.modules, "wandb", None)
    line = refused(run_args(tiny_model_dir, tiny_data_dir, out, "--report-to", "wandb"), capsys)
    assert "--report-to wandb needs the wandb package" in line and not out.exists()
    import train.trainer

    def stopped(*args, **kwargs):  # SIGTERM while the data loads
        from train.errors import Interrupted

        raise Interrupted(signal.SIGTERM)
    monkeypatch.setattr(train.trainer, "load_data", stopped)
    assert main(run_args(tiny_model_dir, tiny_data_dir, out)) == 143
    assert "stopped by SIGTERM before training began; nothing was kept" in capsys.readouterr().err
    assert not out.exists()


def test_a_torn_metrics_line_and_broken_checkpoints_are_one_line_or_a_clean_resume(tiny_model_dir, tiny_data_dir,
                                                                                    tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "2", "--stop-after", "5")) == 0
    capsys.readouterr()
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "lo')  # a kill -9 mid-line
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({k: v for k, v in good.items() if k != "optimizer"}, out / "checkpoint.pt")
    assert "does not fit this run (KeyError: 'optimizer')" in refused(["--resume", out], capsys)
    config = json.loads((out / "config.json").read_text())
    config["train"]["lora"]["rank"] = 5  # edited by hand: the checkpoint's tensors no longer fit
    (out / "config.json").write_text(json.dumps(config))
    torch.save(good, out / "checkpoint.pt")
    assert "does not fit this run (RuntimeError" in refused(["--resume", out], capsys)
    config["train"]["lora"]["rank"] = good["model"][next(k for k in good["model"] if "lora_A" in k)].shape[0]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["--resume", str(out)]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == list(range(1, 33))


@pytest.mark.parametrize("argv, message", [
    (["--targets", "classifier"], "target 'classifier' matches no Linear in the encoder's layers"),
    (["--targets", "out_proj"], "target 'out_proj' matches no Linear in the encoder's layers"),
    (["--targets", "classifier.dense"], "target 'classifier.dense' matches no Linear"),
])
def test_targets_outside_the_layers_are_one_line(argv, message, tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in refused(run_args(tiny_model_dir, tiny_data_dir, out, *argv), capsys) and not out.exists()


def test_dense_is_a_role_and_its_run_evaluates_predicts_and_exports(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    from train.ship.evaluate import main as evaluate
    from train.ship.export import main as export
    from train.ship.predict import main as predict

    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, tiny_data_dir, out, "--targets", "dense", "--recipe", "all-linear")) == 0
    assert evaluate(["--adapter", str(out / "adapter"), "--data", str(tiny_data_dir), "--precision", "fp32"]) == 0
    assert predict(["--adapter", str(out / "adapter"), "--precision", "fp32", "Stocks rally"]) == 0
    assert export([str(out), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0


def test_a_signal_during_the_final_write_out_lets_it_finish(tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch):
    """SIGTERM after eval.json's scores are known and before the plots: the write-out completes (eval.json is
    written last), so the run is finished and whole, not marked finished without its plots."""
    import train.trainer

    real = train.trainer.plot_run

    def plot_then_term(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # the graceful handler only sets a flag here
        real(*args)
    monkeypatch.setattr(train.trainer, "plot_run", plot_then_term)
    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, tiny_data_dir, out)) == 0
    assert (out / "eval.json").is_file() and (out / "curves.png").is_file() and (out / "confusion.png").is_file()


def test_a_full_disk_while_checkpointing_is_one_line(tiny_model_dir, tiny_data_dir, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos; No space left on device")
    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    line = refused(run_args(tiny_model_dir, tiny_data_dir, out), capsys)
    assert "cannot write" in line and "No space left on device" in line and "checkpoint.pt" in line
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
