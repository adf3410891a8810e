"""train.distributed helpers under 2 gloo processes: confusion all-reduce, broadcast from rank 0, and
encode's local-rank-0 build behind a barrier."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.distributed import Dist, all_reduce_confusion, broadcast_object_from_main

WORKER = r"""
import json, sys, time
import torch, torch.distributed as dist
from train.data.batches import encode
from train.distributed import Dist, all_reduce_confusion, broadcast_object_from_main
from train.data.sources import Rows

rank, init, cache = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
d = Dist(rank, 2, local_rank=rank)  # one machine: rank 1 is local rank 1

class Words:
    name_or_path = "words"
    def __len__(self): return 100
    def get_vocab(self): return {}
    def __call__(self, texts, truncation, max_length):
        time.sleep(1.0)  # rank 1 must wait for this at the barrier, or find no cache
        return {"input_ids": [([0] + [len(w) for w in t.split()] + [2])[:max_length] for t in texts]}

reads = []
def read():
    reads.append(rank)
    return iter([("one two three", 1), ("four", 0), ("five six", 1)])

conf = torch.tensor([[rank + 1, 0], [2 * rank, 5]], dtype=torch.int32)
total = all_reduce_confusion(conf, d)
state = broadcast_object_from_main({"step": 7, "w": torch.arange(3)} if rank == 0 else "only rank 0's counts", d)
data = encode(Rows(read, "rows"), Words(), 8, cache, d)
print(json.dumps({"confusion": total.tolist(), "dtype": str(total.dtype), "conf_after": conf.tolist(),
                  "state": [state["step"], state["w"].tolist()], "reads": reads,
                  "ids": data.ids.tolist(), "offsets": data.offsets.tolist(), "labels": data.labels.tolist()}))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_processes_sum_confusions_share_rank0_objects_and_one_cache_build(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    init = f"file://{tmp_path / 'rendezvous'}"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(rank), init, str(tmp_path / "cache")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    results = []
    for w in workers:
        out, err = w.communicate(timeout=180)
        assert w.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    r0, r1 = results
    assert r0["confusion"] == r1["confusion"] == [[3, 0], [2, 10]] and r0["dtype"] == "torch.int64"
    assert r1["conf_after"] == [[2, 0], [2, 5]]  # the caller's tensor is left alone
    assert r0["state"] == r1["state"] == [7, [0, 1, 2]]
    assert r0["reads"] == [0] and r1["reads"] == []  # rank 0 read the rows once to build; rank 1 never read them
    assert r0["ids"] == r1["ids"] == [0, 3, 3, 5, 2, 0, 4, 2, 0, 4, 3, 2]
    assert r0["offsets"] == r1["offsets"] == [0, 5, 8, 12] and r0["labels"] == r1["labels"] == [1, 0, 1]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_one_process_needs_no_group():
    conf = torch.tensor([[1, 2], [3, 4]], dtype=torch.int32)
    assert all_reduce_confusion(conf, Dist()).tolist() == [[1, 2], [3, 4]]
    obj = {"a": 1}
    assert broadcast_object_from_main(obj, Dist()) is obj


def test_each_torchrun_restart_round_reads_only_its_own_keys_from_the_shared_agent_store(monkeypatch):
    from datetime import timedelta

    import torch.distributed as dist

    from train.distributed import restart_round_store

    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.delenv("GROUP_WORLD_SIZE", raising=False)
    assert restart_round_store(2, timedelta(seconds=5)) is None  # not under torchrun's agent: env:// as usual
    server = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=5))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    killed = restart_round_store(2, timedelta(seconds=5))
    killed.set("default_pg/0/cpu/rank_1", "address of a dead worker")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarted = restart_round_store(2, timedelta(seconds=5))
    assert not restarted.check(["default_pg/0/cpu/rank_1"])  # the dead worker's key is not seen again
    restarted.set("default_pg/0/cpu/rank_1", "address of its replacement")
    assert killed.get("default_pg/0/cpu/rank_1") == b"address of a dead worker"


def test_several_nodes_on_torchruns_shared_store_get_no_round_prefix_and_a_warning_when_they_may_restart(monkeypatch):
    from datetime import timedelta

    from train.distributed import restart_round_store, shared_store_warning

    # Each node's agent counts its own restarts (one restarts for a failure, another for the new round):
    # the counts disagree, so a prefix from them would split one round in two.
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")
    assert restart_round_store(4, timedelta(seconds=5)) is None and shared_store_warning() is None
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in shared_store_warning()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # torch's switch: a fresh store every round
    assert shared_store_warning() is None
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")  # one node: the round prefix covers it
    assert shared_store_warning() is None


@pytest.mark.parametrize("local_rank, says", [("0", True), ("1", False)])
def test_under_torchrun_only_each_nodes_local_rank_0_prints_a_refusal(monkeypatch, capsys, local_rank, says):
    # every rank printed the same `error:` line, one copy per process, before torchrun's own summary
    import train.distributed
    from train.cli import run_main
    from train.errors import UserError

    monkeypatch.setattr(train.distributed, "REFUSAL_GRACE_S", 0.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)

    def body():
        raise UserError("the hub is unreachable")

    assert run_main(body, []) == 2
    assert capsys.readouterr().err == ("error: the hub is unreachable\n" if says else "")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: always said
    assert run_main(body, []) == 2 and capsys.readouterr().err == "error: the hub is unreachable\n"


@pytest.mark.parametrize("name, value", [("WORLD_SIZE", "²"), ("WORLD_SIZE", "0"), ("LOCAL_RANK", " 1"),
                                         ("WORLD_SIZE", "two")])
def test_torchruns_variables_parse_or_are_refused_naming_the_variable(monkeypatch, name, value):
    from train.distributed import init_distributed
    from train.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=f"environment variable {name}="):
        init_distributed(False)
