"""What every benchmark shares: paths, medians and per-round ratios, interleaved timing, a training step's
memory, machine info and atomic JSON writes. Kept free of a torch import at module level, because report.py
imports it and must stay light.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for annotations: report.py imports this module and must stay light
    import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]


def median(values: list[float]) -> float:
    """Median of a non-empty list (a thin alias so every benchmark reports the same statistic)."""
    return float(statistics.median(values))


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer around a call measures the call."""
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize()


def interleave(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
               device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per call of each fn: `warmup` untimed rounds, then `repeats`
    timed rounds. Round r starts at contestant r mod n, so no contestant always runs first.

    CPU time is kept too because on a shared machine wall time also counts the time other people's
    jobs held our core; with one torch thread, CPU time is the work our process actually did."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def step_memory(model: torch.nn.Module, step: Callable, device: torch.device) -> dict[str, int]:
    """Memory one training step adds on top of the frozen weights, measured on an extra, untimed step.

    saved_activation_bytes: every tensor autograd keeps for backward, once per storage, parameters
    excluded (the frozen weights are the same for all); the bulk of training memory, and exact on
    any device (CPU has no honest peak-allocation statistic). grad_bytes, optimizer_bytes: trainable
    gradients and AdamW state. On CUDA also cuda_peak_bytes: max_memory_allocated during the step
    minus what was allocated before it."""
    import torch  # here, not at module level (see above)

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    state = [t for s in step.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    out = {"saved_activation_bytes": sum(saved.values()),
           "grad_bytes": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
           "optimizer_bytes": sum(t.numel() * t.element_size() for t in state)}
    if device.type == "cuda":
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() - before
    return out


def ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[i] / den[i]: both were timed within the same round, so load that
    drifts between rounds cancels out, which a ratio of medians would not do."""
    return median([a / b for a, b in zip(num, den)])


def round_ratios(wall: dict, cpu: dict, pairs: tuple[str, ...], device: torch.device) -> dict:
    """Medians and, for each "a/b" in `pairs`, the median per-round ratio (wall; on CPU also CPU time)."""
    split = [pair.split("/") for pair in pairs]
    out = {"median_seconds": {n: median(t) for n, t in wall.items()}, "seconds": wall,
           "ratio": {f"{a}/{b}": ratio(wall[a], wall[b]) for a, b in split}}
    if device.type == "cpu":
        out.update(cpu_seconds=cpu, cpu_ratio={f"{a}/{b}": ratio(cpu[a], cpu[b]) for a, b in split})
    return out


def cpu_isa() -> dict:
    """The CPU's name and bf16 instruction sets as torch's cpuinfo library reads them from CPUID
    (not /proc/cpuinfo: the app's one reader of that file is train.device.cpu_has_bf16)."""
    import torch

    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # torch without the capabilities API
        return {"cpu_name": platform.processor() or platform.machine(), "bf16_flags": []}
    return {"cpu_name": caps.get("cpu_name") or platform.machine(),
            "bf16_flags": sorted(k for k in ("avx512_bf16", "amx_bf16") if caps.get(k))}


def machine_info() -> dict:
    """What the numbers came from: CPU, cores, threads, library versions, GPU, and the load average
    (the machine is shared, so a high load explains noisy absolute times)."""
    import torch
    import transformers

    from train.device import cpu_has_bf16  # the decision `--precision auto` makes, from the same reader

    isa = cpu_isa()
    info = {
        "cpu": isa["cpu_name"],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_bf16(),
        "cpu_bf16_flags": isa["bf16_flags"],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        import peft
        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    return info


def write_json(path: Path, data: dict) -> Path:
    """Write `data` as indented JSON, atomically, so a killed run never leaves half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def abba_order(names: list[str], rounds: int) -> list[list[str]]:
    """Run order per round, reversed every other round (A B C, C B A, A B C ...), so that no contestant
    always runs first or last, and a drift in load hits every contestant alike over two rounds."""
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """num[i] / den[i] per round (each pair ran within the same round), and their median, min and
    max: the headline of a race on a machine whose load drifts between rounds."""
    if len(num) != len(den) or not num:
        raise ValueError(f"paired ratios need equally many rounds on both sides, got {len(num)} and {len(den)}")
    per_round = [a / b for a, b in zip(num, den)]
    return {"median": median(per_round), "min": min(per_round), "max": max(per_round), "per_round": per_round}


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None from a single value, which has no spread)."""
    return float(statistics.fmean(values)), (float(statistics.stdev(values)) if len(values) > 1 else None)
