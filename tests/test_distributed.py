"""torchrun: 2 CPU processes on gloo train exactly like 1 process with the same global batch, resume included."""
import json
import os
import subprocess
import sys

import pytest

from tiny import train_args
from train.__main__ import main


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "train", *args], capture_output=True, text=True, env=env, timeout=300)


def steps(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_two_processes_match_one_and_resume(model_without_dropout, tiny_data_dir, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    # 256 rows in batches of 16 with 3 epochs; batch 16 splits into two shards of 8.
    args = ("--epochs", "3")
    assert main(train_args(model_without_dropout, tiny_data_dir, single, *args)) == 0

    first = torchrun(*train_args(model_without_dropout, tiny_data_dir, multi, *args, "--stop-after", "20"))
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (multi / "eval.json").exists() and len(steps(multi)) == 20
    second = torchrun("--resume", str(multi))
    assert second.returncode == 0, second.stderr[-2000:]

    one, two = steps(single), steps(multi)
    assert [s["step"] for s in two] == [s["step"] for s in one]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    r1, r2 = (json.loads((d / "eval.json").read_text()) for d in (single, multi))
    assert r2["confusion"] == r1["confusion"]  # every eval row counted once, none twice
    assert sum(map(sum, r2["confusion"])) == 64
    assert r2["accuracy"] == r1["accuracy"] and r2["macro_f1"] == pytest.approx(r1["macro_f1"])
    # Only rank 0 writes: one summary and one line per step, not two.
    assert second.stdout.count("trainable ") == 1


def test_a_dead_peer_ends_the_whole_run_without_hanging(tmp_path):
    import time

    import psutil

    from tiny import make_tiny_model, write_agnews

    model, data, out = make_tiny_model(tmp_path / "m"), write_agnews(tmp_path / "d", 4000, 32), tmp_path / "o"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "2", "-m", "train", *train_args(model, data, out, "--epochs", "3")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text()):
            assert launcher.poll() is None and time.monotonic() < deadline, "the run never started training"
            time.sleep(0.5)
        workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "train" in " ".join(p.cmdline())]
        assert len(workers) == 2
        max(workers, key=lambda p: p.pid).kill()  # one peer dies mid-run
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode != 0 and time.monotonic() - killed < 60
    assert "FAILED" in err and "SIGKILL" in err  # torchrun names the rank that died and how
