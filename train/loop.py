"""The training loop, top to bottom, as in nanoGPT's train.py:

    for each epoch: for each batch: autocast → backward → unscale → clip → step → schedule → zero_grad,
    then log, checkpoint when due, stop cleanly on SIGTERM/SIGINT;
    after each epoch: evaluate, keep the best adapter, checkpoint; at the end: write eval.json and plots.
"""
from __future__ import annotations

import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lora import save_adapter

from .batches import EpochBatches
from .distributed import all_reduce_confusion, all_sum, barrier, shard
from .inference import autocast, logits_of, predict_rows, rows_batch, to_device
from .metrics import confusion_matrix, format_report, report_from_confusion
from .prefetch import Prefetcher
from .prefix import PrefixCache
from .rundir import EVAL, RUN_INFO, rng_state, run_record, write_json

if TYPE_CHECKING:
    from .run import State


class Diverged(RuntimeError):
    """The loss stopped being a finite number."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived; the run checkpointed after the step in flight."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, step


def lr_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class Progress:
    """Where the run is; saved in every checkpoint."""
    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next batch index within the epoch
    step: int = 0  # optimizer steps done
    train_seconds: float = 0.0
    examples: int = 0
    best_accuracy: float = -1.0
    history: list = field(default_factory=list)  # one dict per finished epoch
    best: dict = field(default_factory=dict)  # the full report of the best epoch so far


class StopSignals:
    """While active, SIGTERM/SIGINT only set a flag, so the step in flight finishes and is checkpointed.
    A second signal acts at once (the last checkpoint stays)."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# Reading a loss makes the host wait for the device; losses are read in groups of this many steps (and
# before every checkpoint, evaluation or stop), so a GPU is never stalled once per step.
LOSS_READ_EVERY = 16


def train(s: "State") -> dict | None:
    """Run from s.progress to the end. Returns eval.json's dict, or None when stopped by cfg.stop_after."""
    cfg, p, unread = s.cfg, s.progress, []
    with StopSignals() as stop:
        for epoch in range(p.epoch, cfg.epochs):
            p.epoch = epoch
            batches = EpochBatches(s.train_data.offsets if isinstance(s.train_data, PrefixCache) else s.train_data,
                                   cfg.batch_size, cfg.seed, epoch)
            bar = tqdm(total=len(batches), initial=p.batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=None if s.dist.main else True, leave=False, dynamic_ncols=True)
            s.model.train()
            # On CUDA, batches are made ahead on a thread, pinned, while the step runs. On CPU the step uses
            # every core, and a thread beside it slowed a 2-core step by ~40%: there they are made inline.
            cuda = s.device.type == "cuda"
            with Prefetcher(batches, lambda rows: rows_batch(s.train_data, shard(rows, s.dist) or rows[:1], s.pad_id),
                            start=p.batch, depth=2 if cuda else 0, pin=cuda) as ready:
                for item in ready:
                    started = time.perf_counter()
                    loss, stopping = train_step(s, item.rows, item.batch, stop.signum)
                    p.step, p.batch, p.examples = p.step + 1, p.batch + 1, p.examples + len(item.rows)
                    elapsed = time.perf_counter() - started
                    p.train_seconds += elapsed
                    unread.append(({"step": p.step, "epoch": p.epoch, "lr": s.optimizer.param_groups[0]["lr"],
                                    "examples_per_s": len(item.rows) / elapsed}, loss))
                    bar.update(1)
                    save = bool(cfg.save_every) and p.step % cfg.save_every == 0
                    early = cfg.stop_after is not None and p.step >= cfg.stop_after and p.batch < len(batches)
                    if save or stopping or early or len(unread) >= LOSS_READ_EVERY:
                        read_losses(s, unread, bar)
                    if save or stopping or early:
                        checkpoint(s)
                    if stopping:
                        raise Stopped(stopping, p.step)
                    if early:
                        return None
            read_losses(s, unread, bar)
            bar.close()
            p.epoch, p.batch = epoch + 1, 0
            evaluate(s)
            checkpoint(s)
            if cfg.stop_after is not None and p.step >= cfg.stop_after and p.epoch < cfg.epochs:
                return None
    return finish(s)


def read_losses(s: "State", unread: list, bar) -> None:
    """Read the losses of the steps not yet logged (one wait for the device), check they are finite, log them."""
    if not unread:
        return
    values = torch.stack([loss for _, loss in unread]).tolist()
    for (entry, _), value in zip(unread, values):
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} at step {entry['step']} (epoch {entry['epoch'] + 1})")
        log(s, {"step": entry["step"], "epoch": entry["epoch"], "loss": value,
                **{k: entry[k] for k in ("lr", "examples_per_s")}})
    bar.set_postfix(loss=f"{values[-1]:.4f}", ex_s=f"{unread[-1][0]['examples_per_s']:.1f}")
    unread.clear()


def train_step(s: "State", rows: list[int], batch: dict, signum: int) -> tuple[torch.Tensor, int]:
    """One optimizer step on global batch `rows`, of which `batch` is this process's shard (collated).
    Returns (the global mean loss as a 0-dim tensor, not yet
    read; the signal to stop on, or 0). Under torchrun every process learns of a signal any of them got,
    in the same all-reduce as the loss."""
    cfg, d, opt = s.cfg, s.dist, s.optimizer
    # A process whose shard is empty still runs one row with weight 0, so DDP's all-reduce happens.
    weight = 1.0 if shard(rows, d) else 0.0
    batch = to_device(batch, s.device)
    with autocast(s.device, s.amp):
        logits = logits_of(s.step_model, batch)
    # Sum over this shard, divided by the global batch: DDP's gradient mean then equals one process's.
    loss_sum = weight * F.cross_entropy(logits.float(), batch["labels"], label_smoothing=cfg.label_smoothing,
                                        reduction="sum")
    loss = loss_sum * d.world / len(rows)
    stop = signum
    if d.world > 1:
        shared = all_sum(torch.stack([loss_sum.detach().float(), torch.tensor(float(signum), device=loss.device)]), d)
        global_loss = shared[0] / len(rows)
        stop = signum or (signal.SIGTERM if float(shared[1]) > 0 else 0)  # a peer was signalled: stop with it
    else:
        global_loss = loss.detach().float()
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(opt)
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
    s.scaler.step(opt)
    s.scaler.update()
    scale = lr_at(s.progress.step + 1, s.total_steps, s.warmup_steps)
    for group, base in zip(opt.param_groups, s.base_lrs):
        group["lr"] = base * scale
    opt.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update()
    return global_loss, stop


def log(s: "State", entry: dict) -> None:
    """One metrics.jsonl line, mirrored into the tracker (--report-to)."""
    if s.dist.main:
        s.run.append_metrics(entry)
        s.tracker.log(entry, entry["step"])


def checkpoint_state(s: "State") -> dict:
    """What checkpoint.pt holds: enough to continue exactly where the run is."""
    return {"model": {n: p.detach().cpu() for n, p in s.model.named_parameters() if p.requires_grad},
            "optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
            "ema": {n: t.cpu() for n, t in s.ema.shadow.items()} if s.ema else {},
            "progress": asdict(s.progress), "rng": rng_state()}


def checkpoint(s: "State") -> None:
    if s.dist.main:
        s.run.save_checkpoint(checkpoint_state(s))
    barrier(s.dist)


def evaluate(s: "State") -> None:
    """Score the epoch (with EMA weights when on); the best epoch so far saves its adapter."""
    p, started = s.progress, time.perf_counter()
    with s.ema.applied() if s.ema else nullcontext():
        index, probs = predict_rows(s.model, s.eval_data, s.pad_id, s.cfg.eval_batch_size, s.device, s.amp,
                                    s.dist, s.net)
        mine = confusion_matrix(probs.argmax(-1), s.eval_data.labels[index], len(s.labels))
        report = report_from_confusion(all_reduce_confusion(mine, s.dist), s.labels)
        improved = report["accuracy"] > p.best_accuracy
        if improved and s.dist.main:
            save_adapter(s.model, s.run.adapter, s.lora, base_model_name=s.cfg.model)
            write_json(s.run.adapter / RUN_INFO, run_record(s.cfg, s.labels))
    report["eval_seconds"] = time.perf_counter() - started
    report["epoch"] = p.epoch
    p.history.append({k: report[k] for k in ("epoch", "accuracy", "macro_f1", "eval_seconds")})
    if improved:
        p.best_accuracy, p.best = report["accuracy"], report
    log(s, {"step": p.step, "epoch": p.epoch, "eval_accuracy": report["accuracy"], "eval_macro_f1": report["macro_f1"]})
    s.say(f"epoch {p.epoch}/{s.cfg.epochs}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")


def finish(s: "State") -> dict:
    """eval.json (the best epoch, plus the final epoch's scores), plots and the report."""
    p, best = s.progress, s.progress.best
    result = {
        **{k: best[k] for k in ("accuracy", "macro_f1", "per_class", "confusion", "examples", "eval_seconds")},
        "best_epoch": best["epoch"], "history": p.history,
        # The last epoch's scores: no choice made on the eval data, so comparable with a single final eval.
        "final_accuracy": p.history[-1]["accuracy"], "final_macro_f1": p.history[-1]["macro_f1"],
        "train_seconds": p.train_seconds, "train_examples": p.examples,
        "train_examples_per_s": p.examples / max(p.train_seconds, 1e-9),
        "eval_examples_per_s": best["examples"] / max(best["eval_seconds"], 1e-9),
        "trainable_params": s.trainable, "labels": s.labels, "steps": p.step,
    }
    if s.dist.main:
        write_json(s.run / EVAL, result)
        from .plots import plot_run

        plot_run(s.run.path, result)
        s.say(format_report(best))
        s.say(f"trained in {p.train_seconds:.1f}s ({result['train_examples_per_s']:.1f} examples/s); "
              f"best epoch {best['epoch']} ({best['accuracy']:.4f}); outputs in {s.run.path}")
    return result
