"""Build a run from a TrainConfig: data, model with LoRA, optimizer, and where it starts. Returns a State
for train.loop, which does the rest top to bottom."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lora import LoRAConfig, cast_frozen, lora_layers

from .batches import Encoded, encode
from .config import TrainConfig
from .device import pick_attention, pick_device, pick_precision, set_model_dropout
from .distributed import Dist, broadcast_object_from_main, init_distributed, shutdown
from .ema import EMA
from .inputs import check_classes, check_rows, load_data
from .errors import UserError
from .loop import Progress, lr_at, train
from .model import load_pretrained, prepare, usable_length
from .prefix import PrefixCache, PrefixModel, build_prefix_cache, start_layer
from .rundir import CHECKPOINT, RunDir, run_record, set_rng_state
from .trackers import open_tracker


@dataclass
class State:
    """Everything the loop touches. `model` is the model itself (merge, save, checkpoint); `net` is what
    computes logits: the model, or a PrefixModel over its upper layers fed from the frozen-prefix cache;
    `step_model` is `net` as a step calls it (wrapped by DDP under torchrun and/or torch.compile)."""
    cfg: TrainConfig  # as resolved: the rank chosen, as written to config.json
    run: RunDir
    model: nn.Module
    net: nn.Module
    step_model: nn.Module
    lora: LoRAConfig  # what the adapter holds: cfg.lora plus the head's targets and trained modules
    labels: list[str]
    train_data: Encoded | PrefixCache
    eval_data: Encoded | PrefixCache
    pad_id: int
    device: torch.device
    amp: torch.dtype | None
    dist: Dist
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    base_lrs: list[float]
    total_steps: int
    warmup_steps: int
    trainable: int
    progress: Progress
    say: Callable[[str], None]
    tracker: object = None  # trackers.Tracker on rank 0 when --report-to names one


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: LoRA B gets lr × lora_plus_ratio (LoRA+); biases and norms get no weight decay."""
    b_ids = {id(layer.lora_B.weight) for _, layer in lora_layers(model)}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in b_ids, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (cfg.lora_plus_ratio if is_b else 1.0),
             "weight_decay": cfg.weight_decay if decays else 0.0}
            for (is_b, decays), ps in sorted(groups.items())]


def setup_device(cfg: TrainConfig) -> tuple[torch.device, Dist]:
    device = pick_device(cfg.device)
    d = init_distributed(device.type == "cuda")
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device, d


class Finished(Exception):
    """--resume auto found a finished run: nothing to do."""


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


def start_mode(run: RunDir, resume: bool | str, overwrite: bool) -> bool:
    """Whether this run resumes (True) or starts fresh (False); refuses a bad --output-dir / --resume.
    resume="auto": continue the checkpoint here if there is one, else start fresh (torchrun restarts)."""
    run.clean_temps()
    if run.path.exists() and not run.path.is_dir():
        raise UserError(f"--output-dir {run.path} is a file, not a directory")
    if resume == "auto":
        if run.finished():
            raise Finished(f"{run.path} is a finished run (eval.json is written); nothing to resume")
        return (run / CHECKPOINT).is_file()
    if not resume and not overwrite and run.holds_run():
        raise UserError(f"{run.path} already holds a run; continue it with --resume {run.path}, "
                        "or pick another --output-dir (or --overwrite)")
    if resume and not (run / CHECKPOINT).is_file():
        raise UserError(f"nothing to resume: {run / CHECKPOINT} does not exist; "
                        f"start again with --output-dir {run.path} --overwrite")
    return bool(resume)


def same_settings(run: RunDir, cfg: TrainConfig) -> None:
    """--resume auto must continue the run these flags describe, not another one left in the directory."""
    saved, _ = run.load_config()
    ignore = dict(stop_after=None, device="auto", output_dir="", cache_dir=None)
    if replace(saved, **ignore) != replace(cfg, **ignore):
        changed = [k for k, v in replace(cfg, **ignore).to_dict().items() if replace(saved, **ignore).to_dict()[k] != v]
        raise UserError(f"{run.path} holds a run with other settings ({', '.join(changed)}); "
                        f"use another --output-dir, or --resume {run.path} to continue that run")


def run(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False,
        say: Callable[[str], None] = print) -> dict | None:
    """Build and train. Returns eval.json's dict, or None when cfg.stop_after stopped the run early."""
    state = build(cfg, resume, overwrite, say)
    try:
        result = train(state)
    finally:
        if state.tracker is not None:
            state.tracker.close()
    # Only after a clean finish: with a dead peer, destroy_process_group can block, and the process is
    # about to exit anyway, which is what torchrun waits for before it restarts the workers.
    shutdown()
    return result


def build(cfg: TrainConfig, resume: bool | str, overwrite: bool, say: Callable[[str], None]) -> State:
    """Load data and model, inject LoRA, make the optimizer, and start fresh or from the checkpoint
    (resume True, or "auto": only if the output directory holds one)."""
    run = RunDir(Path(cfg.output_dir))
    device, d = setup_device(cfg)
    auto = resume == "auto"
    resume = on_main(lambda: start_mode(run, resume, overwrite), d)
    say = say if d.main else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    corpus = load_data(cfg)
    on_main(lambda: check_rows(corpus), d)
    model, tokenizer = load_pretrained(cfg.model, len(corpus.label_names), corpus.label_names,
                                       pick_attention(cfg.attention, device))
    set_model_dropout(model, cfg.model_dropout)
    if usable_length(cfg.max_length, model) < cfg.max_length:
        say(f"note: --max-length {cfg.max_length} is more than {cfg.model} can take; using "
            f"{usable_length(cfg.max_length, model)}")
    lora, plan_rows, total = prepare(cfg, model)
    # Resolved once and written so: the rank --rank auto chose, the length the model can take.
    cfg = replace(cfg, auto_rank=False, top_layers=None, lora=replace(cfg.lora, rank=lora.rank, layers=lora.layers),
                  max_length=usable_length(cfg.max_length, model))
    model.to(device)
    amp = pick_precision(cfg.precision, device)
    if amp is not None:  # autocast would otherwise re-cast every frozen weight at every call
        cast_frozen(model, amp)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Tokenized once per machine (local rank 0) into a memory-mapped cache that every rank maps.
    train_data = encode(corpus.train, tokenizer, cfg.max_length, cfg.cache_dir, d)
    eval_data = encode(corpus.eval, tokenizer, cfg.max_length, cfg.cache_dir, d)
    check_classes(train_data.labels, corpus.label_names, cfg)

    groups = param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    base_lrs = [g["lr"] for g in groups]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    total_steps = -(-len(train_data) // cfg.batch_size) * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    for g, base in zip(optimizer.param_groups, base_lrs):
        g["lr"] = base * lr_at(0, total_steps, warmup)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    net, train_data, eval_data = frozen_prefix(cfg, model, train_data, eval_data, pad_id, amp, d, say)
    s = State(cfg, run, model, net, net, lora, corpus.label_names, train_data, eval_data, pad_id, device, amp, d,
              optimizer, scaler, ema, base_lrs, total_steps, warmup, total, Progress(), say)
    if resume:
        if auto:
            on_main(lambda: same_settings(run, cfg), d)
        restore(s)
    elif d.main:
        run.start(run_record(cfg, corpus.label_names))
    summarize(s, plan_rows, resume)
    s.tracker = on_main(lambda: open_tracker(cfg.report_to, run.path, cfg.to_flat()), d, share=False)
    s.step_model = wrap(net, device, d, cfg.compile)
    return s


def frozen_prefix(cfg: TrainConfig, model: nn.Module, train_data: Encoded, eval_data: Encoded, pad_id: int,
                  amp: torch.dtype | None, d: Dist, say: Callable[[str], None]):
    """(net, train data, eval data): when LoRA starts above layer 0, the layers below run once per example
    (in eval mode, so without dropout) into the frozen-prefix cache, and net runs the layers above."""
    start = start_layer(cfg.lora.layers, model.config.num_hidden_layers) if cfg.prefix_cache else 0
    if start == 0:
        return model, train_data, eval_data
    began = time.perf_counter()
    train_data, eval_data = (build_prefix_cache(model, data, start, pad_id, amp, cfg.cache_dir, cfg.eval_batch_size, d)
                             for data in (train_data, eval_data))
    say(f"prefix     layers 0..{start - 1} computed once per example ({time.perf_counter() - began:.1f}s, "
        + (f"cached in {cfg.cache_dir})" if cfg.cache_dir else "in memory)"))
    return PrefixModel(model, start), train_data, eval_data


def restore(s: State) -> None:
    """Continue from the checkpoint: trained weights, optimizer, scaler, EMA, position and RNG.
    Rank 0 reads it and sends it to the others: no shared filesystem is needed."""
    state = on_main(s.run.load_checkpoint, s.dist)
    trainable = {n: p for n, p in s.model.named_parameters() if p.requires_grad}
    if set(state.get("model", {})) != set(trainable):
        raise UserError(f"{s.run / CHECKPOINT} does not match this model's trainable parameters")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(state["model"][n])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scaler.load_state_dict(state["scaler"])
    if s.ema is not None:
        s.ema.shadow = {n: t.to(s.device) for n, t in state["ema"].items()}
    s.progress = Progress(**state["progress"])
    set_rng_state(state["rng"])
    if s.dist.main:
        s.run.trim_metrics(s.progress.step)


def wrap(model: nn.Module, device: torch.device, d: Dist, compile: bool) -> nn.Module:
    if d.world > 1:
        # Only parameters that require grad are registered, so the frozen encoder costs no all-reduce.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if compile else model


def summarize(s: State, plan_rows: list[tuple[str, int]], resume: bool) -> None:
    cfg, say, lc = s.cfg, s.say, s.lora
    say(f"model      {cfg.model}  ({type(s.model).__name__}, precision {s.amp or torch.float32}, "
        f"attention {s.model.config._attn_implementation}, device {s.device}"
        + (f", {s.dist.world} processes" if s.dist.world > 1 else "") + ")")
    say(f"data       {len(s.train_data):,} train / {len(s.eval_data):,} eval examples, "
        f"{len(s.labels)} classes: {', '.join(s.labels)}")
    say(f"LoRA       rank {lc.rank}, alpha {lc.alpha:g}, targets {', '.join(cfg.lora.targets)}, head {cfg.head}")
    for name, count in plan_rows:
        say(f"  {count:>10,}  {name}")
    say(f"trainable  {s.trainable:,} parameters (budget {cfg.max_trainable_params:,})")
    say(f"schedule   {cfg.epochs} epochs × {s.total_steps // cfg.epochs} steps of {cfg.batch_size}, lr {cfg.lr:g}, "
        f"warmup {s.warmup_steps} steps" + (f"; resuming at step {s.progress.step}" if resume else ""))
