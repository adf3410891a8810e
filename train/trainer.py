"""The main path of `python -m train`, top to bottom, as nanoGPT's train.py:

    build(cfg)  the run directory, the data, the model with LoRA, the optimizer; fresh or from a checkpoint
    train(s)    for each epoch, for each batch: autocast → backward → unscale → clip → step → schedule → zero_grad;
                log, checkpoint when due, stop cleanly on a signal; each epoch: evaluate, keep the best adapter.
Everything else is a library called by name: train.data, train.model, train.prefix, train.rundir.
"""
from __future__ import annotations

import gc
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from lora import adapter_files, cast_frozen, count_trainable, load_trainable, trainable_state

from .cli import describe_plan
from .config import TrainConfig
from .data import Encoded, EpochBatches, load_data, ready_batches, tokenize_early, tokenized
from .device import autocast, pick_precision
from .distributed import Dist, agreed_signal, all_sum, barrier, on_main, setup_device, shard, shutdown, wrap
from .errors import Diverged, Finished, Stopped, StopSignals, interruptible
from .metrics import PLOTTED, eval_record, format_report, plot_run
from .model import EMA, model_for, param_groups, set_head_bias
from .prefix import Logits, score, start_layer
from .rundir import CHECKPOINT, EVAL, Progress, RunDir, checkpoint_state, restore_checkpoint, run_record, write_json
from .tasks import TaskKind, head_prior, is_better, task_kind

LOSS_READ_EVERY = 16  # steps between loss reads (a wait for the device) and stop agreements (an all-reduce)


@dataclass(kw_only=True)
class State:
    """Everything the loop touches. `model` is the model (merge, save, checkpoint); `net` computes its logits from
    token rows or frozen-prefix rows; `step_model` is `net` as a step calls it (DDP, torch.compile)."""
    cfg: TrainConfig  # as resolved (train.model.resolve): what config.json records; cfg.lora is the adapter's
    record: dict  # the run record (rundir.run_record): what was asked, what it resolved to, the plan
    run: RunDir
    model: nn.Module
    net: nn.Module
    step_model: nn.Module
    labels: list[str]
    kind: TaskKind  # the task's kind: its loss, activation and metrics
    train_data: Encoded  # or a PrefixCache: both are batch sources (len, offsets_range, batch)
    eval_data: Encoded
    valid_data: Encoded | None  # the rows that pick the best epoch; None: the final epoch is kept
    selected_on: str  # what picks the kept epoch, as eval.json says it
    evaluated_on: str  # the evaluation rows' name (a file, or a hub split as "name[split]"), as eval.json says it
    device: torch.device
    amp: torch.dtype | None  # the autocast dtype, None for fp32
    dist: Dist
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    base_lrs: list[float]  # each parameter group's peak lr (LoRA+ gives B its own)
    total_steps: int
    warmup_steps: int
    say: Callable[[str], None]
    tracker: object = None  # trackers.Tracker: --report-to's, on rank 0; None without it or elsewhere
    data_keys: list[str]  # the token cache keys of the training and evaluation rows: their fingerprint
    progress: Progress = field(default_factory=Progress)


def lr_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False,
        say: Callable[[str], None] = print) -> dict | None:
    """Build and train. Returns eval.json's dict, or None when cfg.stop_after stopped the run early."""
    try:
        with interruptible():  # SIGTERM while building stops it cleanly: nothing half-made is left behind
            s = build(cfg, resume, overwrite, say)
        try:
            result = train(s)
        finally:
            if s.tracker:
                s.tracker.close()
        s.step_model = s.net  # DDP holds the group: gloo's teardown after the group is gone can abort the process
        gc.collect()
        shutdown()  # after a clean finish only: with a dead peer it can block, and torchrun waits for the exit
        return result
    finally:
        RunDir(cfg.output_dir).unlock()  # the directory is free again, also after a refusal or a stop


def build(cfg: TrainConfig, resume: bool | str, overwrite: bool, say: Callable[[str], None]) -> State:
    """Data and model, LoRA injected, the optimizer, and the start: fresh, or from the checkpoint (resume
    True, or "auto": only if the output directory holds one). The plan is printed before the slow parts."""
    if cfg.report_to != "none":  # a missing tracker package is refused before anything is written
        from .trackers import check_tracker
        check_tracker(cfg.report_to)
    run_dir, (device, d), asked = RunDir(cfg.output_dir), setup_device(cfg.device), cfg
    say = say if d.main else (lambda *a, **k: None)
    mode = on_main(lambda: run_dir.start_mode(resume, overwrite), d)
    if resume == "auto" and mode != "fresh":  # the run here must be the one these settings ask for, finished or not
        on_main(lambda: run_dir.same_settings(cfg), d)
    if mode == "finished":
        raise Finished(f"{run_dir.path} is a finished run (eval.json is written); nothing to resume")
    saved = on_main(run_dir.load_record, d) if mode == "resume" else None
    torch.manual_seed(cfg.seed)
    corpus = load_data(cfg)
    early = tokenize_early(corpus, cfg, d)  # each row read once, before the model: checked, hashed, tokenized
    cfg, model, tokenizer, plan_rows = model_for(cfg, corpus.label_names, device, saved, say,
                                                 early and early.tokenizer, corpus.task)
    amp = pick_precision(cfg.precision, device)
    train_data, eval_data, valid_data = tokenized(early, corpus, tokenizer, cfg, d)  # counted by the pass (or cache)
    set_head_bias(model, head_prior(cfg.task, train_data.labels))  # a resumed run's checkpoint then replaces it
    total_steps = -(-len(train_data) // cfg.batch_size) * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    counts = (len(train_data), len(eval_data), valid_data and len(valid_data))
    describe_plan(say, cfg, model, corpus.label_names, plan_rows, counts, amp, device, d, total_steps, warmup)
    model.to(device)
    if amp is not None:  # autocast would otherwise re-cast every frozen weight at every call
        cast_frozen(model, amp)
    groups, data_keys = param_groups(model, cfg), [x.key for x in (train_data, eval_data, valid_data) if x is not None]
    net, record = Logits(model), run_record(cfg, asked, corpus.label_names, plan_rows, train_data.pairs)
    if cfg.prefix_cache and start_layer(cfg.lora.layers, model.config.num_hidden_layers):  # below LoRA: run once
        from .prefix_cache import frozen_prefix
        net, (train_data, eval_data, valid_data) = frozen_prefix(cfg, model, (train_data, eval_data, valid_data),
                                                                 amp, d, say)
    s = State(cfg=cfg, record=record, run=run_dir, model=model, net=net, step_model=net,
              labels=corpus.label_names, kind=task_kind(cfg.task), train_data=train_data, eval_data=eval_data,
              valid_data=valid_data, device=device, amp=amp, dist=d, selected_on=f"best {cfg.metric} on "
              f"{corpus.valid.name}" if corpus.valid else "final epoch (no validation rows)",
              evaluated_on=corpus.eval.name,
              optimizer=torch.optim.AdamW(groups, lr=cfg.lr), scaler=torch.amp.GradScaler(device.type,
              enabled=amp == torch.float16), ema=EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
              base_lrs=[g["lr"] for g in groups], total_steps=total_steps, warmup_steps=warmup,
              say=say, data_keys=data_keys)
    if mode == "resume":
        restore(s)
        say(f"resuming at step {s.progress.step} of {total_steps}")
    elif d.main:
        run_dir.start(record)
    if cfg.report_to != "none":  # --report-to's tracker, on rank 0 only
        from .trackers import open_tracker
        s.tracker = on_main(lambda: open_tracker(cfg.report_to, run_dir.path, cfg.to_flat()), d, share=False)
    s.step_model = wrap(net, device, d, cfg.compile)
    return s


def restore(s: State) -> None:
    """Continue from the checkpoint; rank 0 reads it and sends it to the others (no shared filesystem)."""
    state = on_main(s.run.load_checkpoint, s.dist)
    s.progress = restore_checkpoint(state, s.model, s.optimizer, s.scaler, s.ema, s.device, s.run / CHECKPOINT,
                                    s.data_keys)
    s.progress.sessions += 1
    if s.dist.main:
        s.run.trim_metrics(s.progress.step)


def train(s: State) -> dict | None:
    """Run from s.progress to the end. Returns eval.json's dict, or None when cfg.stop_after stopped it."""
    cfg, p, unread = s.cfg, s.progress, []  # unread: (loss, examples/s) of the steps not yet logged
    with StopSignals() as signals:
        for epoch in range(p.epoch, cfg.epochs):
            p.epoch = epoch
            s.model.train()
            batches = EpochBatches(s.train_data, cfg.batch_size, cfg.seed, epoch)
            bar = tqdm(total=len(batches), initial=p.batch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=None if s.dist.main else True, dynamic_ncols=True)
            with ready_batches(batches, lambda rows: s.train_data.batch(shard(rows, s.dist) or rows[:1]), p.batch,
                               ahead=s.device.type == "cuda") as ready:
                for rows, batch in ready:
                    started = time.perf_counter()
                    loss = train_step(s, rows, batch)
                    elapsed = time.perf_counter() - started
                    p.step, p.batch, p.examples = p.step + 1, p.batch + 1, p.examples + len(rows)
                    p.train_seconds += elapsed
                    unread.append((loss, len(rows) / elapsed))
                    bar.update(1)
                    limit = cfg.stop_after is not None and p.step >= cfg.stop_after and p.batch < len(batches)
                    save = limit or (cfg.save_every > 0 and p.step % cfg.save_every == 0)
                    sync = save or len(unread) >= LOSS_READ_EVERY
                    signum = agreed_signal(signals.signum, s.dist, sync)
                    if sync or signum:
                        read_losses(s, unread, bar)
                    if save or signum:
                        checkpoint(s)
                    if signum:
                        raise Stopped(signum, p.step)
                    if limit:  # mid-epoch: --resume continues from this batch
                        return None
            read_losses(s, unread, bar)
            bar.close()
            p.epoch, p.batch = epoch + 1, 0
            evaluate(s)
            checkpoint(s)
            if cfg.stop_after is not None and p.step >= cfg.stop_after and p.epoch < cfg.epochs:
                return None
        return finish(s)  # inside the signal guard: a signal now lets the write-out finish


def train_step(s: State, rows: list[int], batch: dict) -> torch.Tensor:
    """One optimizer step on global batch `rows`, of which `batch` is this process's shard (collated).
    Returns the global mean loss as a 0-dim tensor, not yet read (reading waits for the device)."""
    cfg, d, opt = s.cfg, s.dist, s.optimizer
    weight = 1.0 if shard(rows, d) else 0.0  # an empty shard runs one row, weight 0, so DDP's all-reduce happens
    batch = {k: v.to(s.device, non_blocking=True) for k, v in batch.items()}
    labels = batch.pop("labels")
    with autocast(s.device, s.amp):
        logits = s.step_model(**batch)
    # Sum over this shard, divided by the global batch: DDP's gradient mean then equals one process's.
    loss_sum = weight * s.kind.loss_sum(logits.float(), labels, cfg.label_smoothing)
    loss = loss_sum * d.world / len(rows)
    for group, base in zip(opt.param_groups, s.base_lrs):  # the learning rate of this step, set here only
        group["lr"] = base * lr_at(s.progress.step, s.total_steps, s.warmup_steps)
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(opt)
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
    s.scaler.step(opt)
    s.scaler.update()
    opt.zero_grad(set_to_none=True)
    if s.ema is not None:
        s.ema.update()
    return all_sum(loss_sum.detach().float(), d) / len(rows)


def read_losses(s: State, unread: list, bar) -> None:
    """Read the losses of the steps not yet logged (one wait for the device), check they are finite, log them
    with the learning rate each step used. unread: (loss tensor, examples/s) per step, the last step last."""
    if not unread:
        return
    values = torch.stack([loss for loss, _ in unread]).tolist()
    first = s.progress.step - len(values) + 1
    for step, value, (_, speed) in zip(range(first, s.progress.step + 1), values, unread):
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} at step {step} (epoch {s.progress.epoch + 1})")
        log(s, {"step": step, "epoch": s.progress.epoch, "loss": value,
                "lr": s.base_lrs[0] * lr_at(step - 1, s.total_steps, s.warmup_steps), "examples_per_s": speed})
    bar.set_postfix(loss=f"{values[-1]:.4f}", ex_s=f"{unread[-1][1]:.1f}")
    unread.clear()


def log(s: State, entry: dict) -> None:  # one metrics.jsonl line, mirrored into the tracker (--report-to)
    if s.dist.main:
        s.run.append_metrics(entry)
        if s.tracker:
            s.tracker.log(entry, entry["step"])
        s.progress.plotted.append({k: v for k, v in entry.items() if k in PLOTTED})  # checkpointed: a resume has it


def checkpoint(s: State) -> None:
    """checkpoint.pt: enough to continue exactly where the run is, and the data it may continue on."""
    if s.dist.main:
        s.run.save_checkpoint(checkpoint_state(s.model, s.optimizer, s.scaler, s.ema, asdict(s.progress), s.data_keys))
    barrier(s.dist)


def evaluate(s: State) -> None:
    """Score the epoch (with EMA weights when on) on the validation rows, or without them on the evaluation rows.
    The epoch kept (the best by cfg.metric on validation rows, else the latest) saves its adapter."""
    p, started, metric, valid = s.progress, time.perf_counter(), s.cfg.metric, s.valid_data is not None
    with s.ema.applied() if s.ema else nullcontext():
        report = score(s.model, s.valid_data if valid else s.eval_data, s.kind, s.labels, s.cfg, s.device, s.amp,
                       s.dist, s.net)
        keep = not valid or is_better(metric, report[metric], p.best_score)
        if keep and s.dist.main:
            s.run.save_adapter(adapter_files(s.model, s.cfg.lora, base_model_name=s.cfg.model), s.record)
        if keep and valid:  # the chosen epoch's weights (EMA's, when on) score the evaluation rows at the end
            p.best_state = trainable_state(s.model)
    report |= {"eval_seconds": time.perf_counter() - started, "epoch": p.epoch}
    p.history.append({k: v for k, v in report.items() if k not in ("per_class", "confusion", "examples")})
    if keep:
        p.best_score, p.best = report[metric], report
    shown = s.kind.metric_names(len(s.labels))
    log(s, {"step": p.step, "epoch": p.epoch, **{f"eval_{k}": report[k] for k in shown}})
    s.say(f"epoch {p.epoch}/{s.cfg.epochs}: " + ", ".join(f"{k} {report[k]:.4f}" for k in shown))


def finish(s: State) -> dict:
    """The kept epoch's weights score the evaluation rows (already scored where no validation rows chose it);
    plots, then eval.json, written last: a run with eval.json is a finished run. Then the report."""
    p, chosen, started = s.progress, s.progress.best, time.perf_counter()
    report = chosen
    if s.valid_data is not None:
        report = score(load_trainable(s.model, p.best_state), s.eval_data, s.kind, s.labels, s.cfg, s.device, s.amp,
                       s.dist, s.net) | {"eval_seconds": time.perf_counter() - started, "epoch": chosen["epoch"]}
    result = eval_record(report, p.history, p.train_seconds, p.examples, p.step, count_trainable(s.model), s.labels,
                         {"task": s.cfg.task, "metric": s.cfg.metric, "selected_on": s.selected_on,
                          "evaluated_on": s.evaluated_on,
                          **({"validation": chosen} if s.valid_data is not None else {})})
    if s.dist.main:
        plot_run(s.run.path, result, p.plotted)
        write_json(s.run / EVAL, result)
        s.say(format_report(report, f"epoch {chosen['epoch']} of {s.cfg.epochs}, kept by {s.selected_on}; its "
                                    "adapter is saved"))
        s.say(f"trained in {p.train_seconds:.1f}s" + (f", summed over its {p.sessions} sessions" if p.sessions > 1
              else "") + f" ({result['train_examples_per_s']:.1f} examples/s); outputs in {s.run.path}")
    return result
