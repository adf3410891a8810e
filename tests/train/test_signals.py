"""SIGTERM and SIGINT on a real process: the step in flight finishes, a checkpoint is written, one line
names --resume, and the exit code is 128 + the signal; the run then resumes to the end."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.tiny import train_args

pytestmark = pytest.mark.slow  # torchrun, subprocesses or whole trainings: the second tier

ROOT = Path(__file__).resolve().parents[2]


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip() and "loss" in json.loads(line))


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_the_step_in_flight_and_resume_finishes(sig, code, tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    argv = train_args(tiny_model_dir, tiny_data_dir, out, "--epochs", "40")  # far longer than the test waits
    proc = subprocess.Popen([sys.executable, "-m", "train", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while steps_logged(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {sig.name} after step ") and f"continue with --resume {out}" in last
    step = int(last.split("after step ")[1].split(",")[0])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["progress"]["step"] == step == steps_logged(out)  # nothing trained is lost
    assert not list(out.glob(".*.tmp"))
    done = subprocess.run([sys.executable, "-m", "train", "--resume", str(out), "--stop-after", str(step + 2)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["step"] == step + 2
