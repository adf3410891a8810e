"""torchrun support: process group, batch shards, and gathering evaluation results."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        # A bounded timeout turns a dead peer into an error instead of a hang.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=5))
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


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
