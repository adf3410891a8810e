"""torchrun: 2 CPU processes on gloo train exactly like 1 process with the same global batch, resume included."""
import json
import os
import socket
import subprocess
import sys

import pytest

from helpers.tiny import train_args
from train.__main__ import main

pytestmark = pytest.mark.slow  # torchrun, subprocesses or whole trainings: the second tier
ROOT = __import__('pathlib').Path(__file__).resolve().parents[2]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    # faulthandler: a rank that aborts (rank 1's rare SIGABRT, whose cause is not found yet) prints every
    # thread's Python stack in its stderr, which the assertions below show
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
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
    assert first.returncode == 0, first.stderr[-8000:]  # the failing rank's lines come before torchrun's summary
    assert not (multi / "eval.json").exists() and len(steps(multi)) == 20
    second = torchrun("--resume", str(multi))
    assert second.returncode == 0, second.stderr[-8000:]

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


@pytest.mark.parametrize("kind", ["regression", "multi_label"])
def test_two_processes_score_every_kind_as_one(kind, model_without_dropout, tmp_path):
    """Regression's rows are gathered (correlations are no sums), multi-label's counts summed: the same scores."""
    from helpers.tiny import write_task

    data, single, multi = write_task(tmp_path / "data", kind, n_eval=45), tmp_path / "single", tmp_path / "multi"
    args = ("--epochs", "2", "--cache-dir", str(tmp_path / "cache"))  # 45 rows: one process scores a row more
    assert main(train_args(model_without_dropout, data, single, *args)) == 0
    run = torchrun(*train_args(model_without_dropout, data, multi, *args))
    assert run.returncode == 0, run.stderr[-8000:]
    r1, r2 = (json.loads((d / "eval.json").read_text()) for d in (single, multi))
    keys = ("pearson", "spearman", "mse") if kind == "regression" else ("micro_f1", "macro_f1", "exact_match")
    assert r2["examples"] == r1["examples"] == 45
    assert {k: r2[k] for k in keys} == pytest.approx({k: r1[k] for k in keys}, rel=1e-4)



def test_a_refusal_under_torchrun_is_printed_once_before_torchruns_own_summary(tiny_data_dir, tmp_path):
    # each rank printed the line, then torchrun added its ChildFailedError summary: two copies and a traceback
    run = torchrun(*train_args("some-org/not-cached", tiny_data_dir, tmp_path / "run"))
    lines = [x for x in run.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "cannot fetch model 'some-org/not-cached'" in lines[0], run.stderr[-4000:]
    assert run.stderr.index(lines[0]) < run.stderr.index("ChildFailedError")  # README: torchrun's summary comes after
    assert run.returncode == 1 and run.stderr.count("exitcode  : 2") == 2  # torchrun's code; both ranks refused

def test_a_dead_peer_ends_the_whole_run_without_hanging(tmp_path):
    import time

    import psutil

    from helpers.tiny import make_tiny_model, write_agnews

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


def test_resume_auto_starts_fresh_continues_and_then_has_nothing_to_do(model_without_dropout, tiny_data_dir,
                                                                        tmp_path, capsys):
    out, plain = tmp_path / "auto", tmp_path / "plain"
    args = ("--epochs", "2")
    assert main(train_args(model_without_dropout, tiny_data_dir, plain, *args)) == 0
    auto = train_args(model_without_dropout, tiny_data_dir, out, *args, "--resume", "auto")
    assert main(auto + ["--stop-after", "5"]) == 0  # nothing there: a fresh start
    assert main(auto) == 0  # the checkpoint there: continued
    assert steps(out) == steps(plain) or [s["loss"] for s in steps(out)] == [s["loss"] for s in steps(plain)]
    capsys.readouterr()
    assert main(auto) == 0 and "is a finished run" in capsys.readouterr().out
    other = train_args(model_without_dropout, tiny_data_dir, tmp_path / "o2", *args, "--resume", "auto")
    assert main(other + ["--stop-after", "3"]) == 0
    changed = [a if a != "2e-2" else "1e-2" for a in other]  # another --lr: not the run in that directory
    rc = main(changed)
    assert rc == 2 and "holds a run with other settings (lr)" in capsys.readouterr().err


WRAPPER = """import os, sys
os.makedirs(f"rank{os.environ['RANK']}", exist_ok=True)
os.chdir(f"rank{os.environ['RANK']}")  # each rank its own disk: only rank 0 ever sees the run directory
from train.__main__ import main
sys.exit(main())
"""


def launch(tmp_path, where: str, argv: list[str], nodes: int = 1, env: dict | None = None) -> list[subprocess.Popen]:
    """torchrun, 2 gloo workers, each rank in its own directory under tmp_path/where, one restart allowed:
    one agent (--standalone) running both, or one agent per simulated node, meeting at a c10d rendezvous."""
    (tmp_path / where).mkdir()
    (tmp_path / where / "wrapper.py").write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    if nodes == 1:
        place = ["--standalone", "--nproc_per_node", "2"]
    else:
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        place = ["--nnodes", str(nodes), "--nproc_per_node", str(2 // nodes), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", where]
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *place, "--max-restarts", "1",
                              "wrapper.py", *argv], cwd=tmp_path / where, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(nodes)]


def finish(agents: list[subprocess.Popen]) -> tuple[str, str]:
    """Every agent's stdout and stderr, joined, once all exited 0."""
    outs = [a.communicate(timeout=300) for a in agents]
    said, err = "".join(o for o, _ in outs), "".join(e for _, e in outs)
    assert all(a.returncode == 0 for a in agents), [x for x in err.splitlines() if "rror" in x][-8:]
    return said, err


# 320 steps, long enough to be killed mid-run; --resume auto is what a restarted worker needs.
ELASTIC = ("--epochs", "20", "--save-every", "4", "--resume", "auto")


@pytest.fixture(scope="module")
def uninterrupted(model_without_dropout, tiny_data_dir, tmp_path_factory):
    """The run directory of the 2-worker run that nobody killed."""
    where = tmp_path_factory.mktemp("elastic")
    finish(launch(where, "whole", train_args(model_without_dropout, tiny_data_dir, "out", *ELASTIC)))
    return where / "whole" / "rank0" / "out"


def kill_one_worker_mid_run(agents: list[subprocess.Popen], out) -> None:
    import signal
    import time

    import psutil

    deadline = time.monotonic() + 240
    while (not (out / "metrics.jsonl").is_file() or len(steps(out)) < 10) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [p for a in agents for p in psutil.Process(a.pid).children(recursive=True)
               if "wrapper.py" in " ".join(p.cmdline())]
    assert len(workers) == 2 and all(a.poll() is None for a in agents)
    workers[-1].send_signal(signal.SIGKILL)  # mid-epoch, between checkpoints


def assert_same_run(out, uninterrupted) -> None:
    assert [s["loss"] for s in steps(out)] == [s["loss"] for s in steps(uninterrupted)]
    assert (json.loads((out / "eval.json").read_text())["confusion"]
            == json.loads((uninterrupted / "eval.json").read_text())["confusion"])
    assert not (out.parents[1] / "rank1" / "out").exists()  # rank 1 never needed to see the run directory


def test_a_killed_worker_is_restarted_and_the_run_equals_an_uninterrupted_one(model_without_dropout, tiny_data_dir,
                                                                              tmp_path, uninterrupted):
    agents = launch(tmp_path, "killed", train_args(model_without_dropout, tiny_data_dir, "out", *ELASTIC))
    out = tmp_path / "killed" / "rank0" / "out"
    kill_one_worker_mid_run(agents, out)
    said, err = finish(agents)
    assert "exitcode: -9" in err and "resuming at step" in said  # killed, restarted by torchrun, resumed
    assert_same_run(out, uninterrupted)


def test_on_two_nodes_with_a_fresh_store_per_round_a_killed_worker_costs_one_restart(model_without_dropout,
                                                                                      tiny_data_dir, tmp_path,
                                                                                      uninterrupted):
    # Two agents on one machine stand in for two nodes, as the README launches them.
    agents = launch(tmp_path, "nodes", train_args(model_without_dropout, tiny_data_dir, "out", *ELASTIC), nodes=2,
                    env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"})
    out = tmp_path / "nodes" / "rank0" / "out"
    kill_one_worker_mid_run(agents, out)
    said, err = finish(agents)
    assert "exitcode: -9" in err and "resuming at step" in said and "warning: torchrun shares" not in err
    assert_same_run(out, uninterrupted)
