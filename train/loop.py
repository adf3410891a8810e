"""The training loop, top to bottom, and the evaluation pass it calls after every epoch."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from lora import merge_lora, unmerge_lora

from .batches import Encoded, collate, epoch_batches, eval_batches
from .distributed import Dist, all_sum, gather_rows, shard


class Diverged(RuntimeError):
    """The loss stopped being a finite number."""


def lr_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


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


@dataclass
class Loop:
    """Everything the loop touches, built by run.py."""
    model: nn.Module  # the model to call: a DDP wrapper under torchrun
    raw: nn.Module  # the model itself, for merge/eval
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_data: Encoded
    eval_data: Encoded
    pad_id: int
    device: torch.device
    amp: torch.dtype | None
    dist: Dist
    base_lrs: list[float]
    total_steps: int
    warmup_steps: int
    ema: object | None = None


def train(loop: Loop, cfg, progress: Progress, on_step, on_epoch_end) -> Progress:
    """Run from `progress` to the end (or cfg.stop_after). on_step(progress, loss) logs/checkpoints;
    on_epoch_end(progress, report) evaluates and saves."""
    d, model, opt = loop.dist, loop.model, loop.optimizer
    for epoch in range(progress.epoch, cfg.epochs):
        progress.epoch = epoch
        batches = epoch_batches(loop.train_data.lengths, cfg.batch_size, cfg.seed, epoch)
        bar = tqdm(total=len(batches), initial=progress.batch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=None if d.main else True, leave=False, dynamic_ncols=True)
        loop.raw.train()
        while progress.batch < len(batches):
            started = time.perf_counter()
            rows = batches[progress.batch]
            mine = shard(rows, d)
            # A process whose shard is empty still runs one row with weight 0, so DDP's all-reduce happens.
            weight = 1.0 if mine else 0.0
            batch = {k: v.to(loop.device, non_blocking=True)
                     for k, v in collate(loop.train_data, mine or rows[:1], loop.pad_id).items()}
            with autocast(loop.device, loop.amp):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            # Sum over this shard, divided by the global batch: DDP's gradient mean then equals one process's.
            loss_sum = weight * F.cross_entropy(logits.float(), batch["labels"],
                                                label_smoothing=cfg.label_smoothing, reduction="sum")
            loss = loss_sum * d.world / len(rows)
            global_loss = float(all_sum(loss_sum.detach(), d)) / len(rows)
            if not math.isfinite(global_loss):
                raise Diverged(f"loss became {global_loss} at step {progress.step + 1} (epoch {epoch + 1})")
            loop.scaler.scale(loss).backward()
            loop.scaler.unscale_(opt)
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
            loop.scaler.step(opt)
            loop.scaler.update()
            progress.step += 1
            scale = lr_at(progress.step, loop.total_steps, loop.warmup_steps)
            for group, base in zip(opt.param_groups, loop.base_lrs):
                group["lr"] = base * scale
            opt.zero_grad(set_to_none=True)
            if loop.ema is not None:
                loop.ema.update()

            progress.batch += 1
            progress.examples += len(rows)
            elapsed = time.perf_counter() - started
            progress.train_seconds += elapsed
            bar.update(1)
            bar.set_postfix(loss=f"{global_loss:.4f}", ex_s=f"{len(rows) / elapsed:.1f}")
            on_step(progress, global_loss, len(rows) / elapsed)
            if cfg.stop_after is not None and progress.step >= cfg.stop_after and progress.batch < len(batches):
                bar.close()
                return progress
        bar.close()
        progress.epoch, progress.batch = epoch + 1, 0
        on_epoch_end(progress)
        if cfg.stop_after is not None and progress.step >= cfg.stop_after:
            return progress
    return progress


def predict(model: nn.Module, data: Encoded, pad_id: int, batch_size: int, device: torch.device,
            amp: torch.dtype | None, d: Dist = Dist()) -> torch.Tensor:
    """Class probabilities (n, K) in data order. LoRA is merged for speed, and unmerged exactly after;
    batches are sorted by length and shared out across processes, each row scored once."""
    was_training = model.training
    model.eval()
    merge_lora(model)  # outside inference_mode: the saved base weight must stay a normal tensor
    try:
        index, probs = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, model.config.num_labels)]
        with torch.inference_mode():
            for rows in eval_batches(data.lengths, batch_size)[d.rank::d.world]:
                batch = collate(data, rows, pad_id)
                with autocast(device, amp):
                    logits = model(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device)).logits
                index.append(torch.tensor(rows))
                probs.append(logits.float().softmax(-1).cpu())
        return gather_rows(torch.cat(index), torch.cat(probs), len(data), d)
    finally:
        unmerge_lora(model)
        model.train(was_training)
