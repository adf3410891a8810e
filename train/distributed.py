"""torchrun support: the process group (and each process's device), batch shards, reductions, rank 0's work shared
with the others, a stop signal agreed by all, and DDP."""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .device import pick_device
from .errors import Finished, UserError
from .files import env_int

REFUSAL_GRACE_S = 3.0  # how long a silent rank waits before exiting 2 (say_refusal)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> Dist:
    """Join the process group torchrun describes in the environment; a single process needs none."""
    world, local_rank = env_int("WORLD_SIZE", 1, 1), env_int("LOCAL_RANK", 0)  # checked before any group forms
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        timeout = timedelta(minutes=5)  # bounded: a dead peer becomes an error instead of a hang
        store = restart_round_store(world, timeout)  # None: env:// finds the group as usual
        given = {"store": store, "rank": env_int("RANK", 0), "world_size": world} if store else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout, **given)
        warning = shared_store_warning()
        if warning and dist.get_rank() == 0:
            print(warning, file=sys.stderr, flush=True)
    return Dist(dist.get_rank(), world, local_rank)


def setup_device(name: str) -> tuple[torch.device, Dist]:
    """The device `--device` names, and the process group torchrun describes (each process its own GPU)."""
    device = pick_device(name)
    d = init_distributed(device.type == "cuda")
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device, d


def _shared_store_agents() -> int:
    """How many torchrun agents (nodes) run workers on torchrun's shared store; 0 when there is none.
    torchrun (2.x) by default keeps one store server for all restart rounds and points workers at it;
    env:// then adds no per-round prefix, so a restarted worker can read the address its killed
    predecessor wrote and wait on a dead port until the timeout."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return 0
    return env_int("GROUP_WORLD_SIZE", 1, 1)


def restart_round_store(world: int, timeout: timedelta) -> dist.Store | None:
    """torchrun's shared store, keyed by restart round, when one agent (one node) runs every worker: its
    restart count is then the same in all of them and new in every round. None otherwise (env:// as usual):
    the agents of several nodes count restarts apart, so the count cannot name a round."""
    if _shared_store_agents() != 1:
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], env_int("MASTER_PORT", 29500, 1), world, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"roberta_lora/round_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def shared_store_warning() -> str | None:
    """A line for runs of several nodes that may restart on torchrun's shared store, which the workers cannot
    make safe: torch's own switch gives every round a fresh store."""
    if _shared_store_agents() > 1 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:
        return ("warning: torchrun shares one store across the restart rounds of several nodes, where a restarted "
                "worker can wait on a dead peer's address; launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1")
    return None


def say_refusal(line: str) -> None:
    """A refusal's one line on stderr, once per node under torchrun. Every rank meets the same refusal (a flag,
    the hub, rank 0's verdict broadcast by on_main), so only each node's local rank 0 says it; the others stay
    silent, and first linger a moment: torchrun stops the whole group (SIGTERM) once any worker has exited, and
    the rank that speaks may meet the refusal a little later. Read from torchrun's environment, so it holds
    before the process group exists."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1") or os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        print(line, file=sys.stderr, flush=True)
        return
    try:  # torchrun's SIGTERM, once the speaking rank has exited, ends the wait with the refusal's code, 2
        old = signal.signal(signal.SIGTERM, _exit_refused)
    except ValueError:  # not the main thread: signals stay as they are
        old = None
    try:
        time.sleep(REFUSAL_GRACE_S)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _exit_refused(signum, frame) -> None:
    raise SystemExit(2)


def shard(batch: list[int], d: Dist) -> list[int]:
    """This process's rows of a global batch; strided, so each gets a like mix of lengths."""
    return batch[d.rank::d.world]


def all_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def gather_rows(index: torch.Tensor, values: torch.Tensor, n: int, d: Dist) -> torch.Tensor:
    """Place each process's values at their row indices into one (n, ...) tensor on every process."""
    out = torch.zeros((n, *values.shape[1:]), dtype=values.dtype)
    if d.world == 1:
        out[index] = values
        return out
    parts: list = [None] * d.world
    dist.all_gather_object(parts, (index.cpu(), values.cpu()))
    for idx, val in parts:
        out[idx] = val
    return out


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_confusion(conf: torch.Tensor, d: Dist) -> torch.Tensor:
    """The (K, K) confusion counts summed over every process: evaluation sends K² numbers, not every
    row's probabilities. Returns int64 on conf's device; conf itself is left alone."""
    total = conf.to(torch.int64, copy=True)
    if d.world > 1:
        # NCCL reduces only CUDA tensors; gloo takes them where they are.
        work = total.cuda() if dist.get_backend() == "nccl" and not total.is_cuda else total
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        total = work.to(conf.device)
    return total


def broadcast_object_from_main(obj, d: Dist):
    """Rank 0's `obj` (any picklable: a checkpoint's state dict, a cache key) on every process; other
    ranks' `obj` is ignored. So only rank 0 needs to see a file, and no shared filesystem is needed.
    Under NCCL, call torch.cuda.set_device first: the bytes travel through the current device."""
    if d.world == 1:
        return obj
    box = [obj if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], object], d: Dist, share: bool = True):
    """fn() run by rank 0 alone (the one process that must see the output directory); its result (on rank 0
    only when not `share`), or the UserError it raised, on every process: so a multi-node run needs no
    shared filesystem, and no process waits forever for one that refused."""
    answer, result = None, None
    if d.main:
        try:
            result = fn()
            answer = ("ok", result if share else None)
        except (UserError, Finished) as e:
            answer = (type(e).__name__, str(e))
    kind, value = broadcast_object_from_main(answer, d)
    if kind != "ok":
        raise (UserError if kind == "UserError" else Finished)(value)
    return value if share else result


def agreed_signal(signum: int, d: Dist, sync: bool) -> int:
    """The signal to stop on now, or 0. One process: its own. Under torchrun, at a sync point (where every
    process waits anyway: a loss read, a checkpoint), the largest any process got, in one all-reduce;
    elsewhere 0, so a step never waits on the host to learn of a peer's signal."""
    if d.world == 1:
        return signum
    if not sync:
        return 0
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def wrap(model: nn.Module, device: torch.device, d: Dist, compile: bool) -> nn.Module:
    """`model` as a training step calls it: in DDP under torchrun, compiled with --compile."""
    if d.world > 1:
        # Only parameters that require grad are registered, so the frozen encoder costs no all-reduce.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model
