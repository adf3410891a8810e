"""One training run: set up from a TrainConfig, train, evaluate each epoch, keep the best adapter."""
from __future__ import annotations

import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from lora import lora_layers, save_adapter

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state, write_json
from .config import TrainConfig
from .batches import encode
from .data import load_corpus, stratified_subset
from .distributed import Dist, barrier, cleanup, init_distributed
from .ema import EMA
from .errors import UserError
from .loop import Loop, Progress, lr_at, predict, train
from .metrics import classification_report, format_report
from .model import load_pretrained, pick_device, pick_precision, prepare

ADAPTER_DIR = "adapter"
RUN_INFO = "train_config.json"  # beside the PEFT files: what evaluate/predict need to rebuild the model


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


def run(cfg: TrainConfig, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """Train as `cfg` says; with resume, continue the checkpoint in cfg.output_dir. Returns eval.json's dict."""
    out = Path(cfg.output_dir)
    device = pick_device(cfg.device)
    d = init_distributed(device.type == "cuda")
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    say = log if d.main else (lambda *a, **k: None)
    try:
        return _run(cfg, out, device, d, resume, overwrite, say)
    finally:
        cleanup(d)


def _run(cfg: TrainConfig, out: Path, device: torch.device, d: Dist, resume: bool, overwrite: bool, say) -> dict:
    if not resume and not overwrite and (out / "config.json").exists():
        raise UserError(f"{out} already holds a run; continue it with --resume {out}, "
                        "or pick another --output-dir (or --overwrite)")
    if resume and not (out / "checkpoint.pt").is_file():
        raise UserError(f"nothing to resume: {out / 'checkpoint.pt'} does not exist; "
                        f"start again with --output-dir {out} --overwrite")
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(cfg.data, cfg.train_file, cfg.eval_file)
    corpus.train = stratified_subset(corpus.train, cfg.max_train_samples, cfg.seed)
    corpus.eval = stratified_subset(corpus.eval, cfg.max_eval_samples, cfg.seed)
    model, tokenizer = load_pretrained(cfg.model, len(corpus.label_names), corpus.label_names)
    lconf, plan_rows, total = prepare(cfg, model)
    model.to(device)
    amp = pick_precision(cfg.precision, device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_data = encode(corpus.train, tokenizer, cfg.max_length, cfg.cache_dir)
    eval_data = encode(corpus.eval, tokenizer, cfg.max_length, cfg.cache_dir)
    positions = getattr(model.config, "max_position_embeddings", None)
    longest = int(max(train_data.lengths.max(), eval_data.lengths.max()))
    if positions is not None:
        # RoBERTa numbers positions from pad_token_id + 1, so it has that many fewer usable slots.
        usable = positions - (model.config.pad_token_id + 1 if model.config.model_type in ("roberta", "xlm-roberta")
                              else 0)
        if longest > usable:
            raise UserError(f"--max-length {cfg.max_length} lets texts reach {longest} tokens, longer than "
                            f"{cfg.model} supports ({usable}); use --max-length {usable}")

    groups = param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    base_lrs = [g["lr"] for g in groups]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    steps_per_epoch = -(-len(train_data) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_ratio * total_steps)
    for g, base in zip(optimizer.param_groups, base_lrs):
        g["lr"] = base * lr_at(0, total_steps, warmup)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    progress = Progress()
    if resume:
        state = load_checkpoint(out)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(state["model"]) != set(trainable):
            raise UserError(f"{out / 'checkpoint.pt'} does not match this model's trainable parameters")
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["model"][n])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.shadow = {n: t.to(device) for n, t in state["ema"].items()}
        progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
    elif d.main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("checkpoint.pt", "eval.json", "curves.png", "confusion.png"):  # --overwrite: no mixing runs
            (out / stale).unlink(missing_ok=True)
        shutil.rmtree(out / ADAPTER_DIR, ignore_errors=True)
        write_json(out / "config.json", cfg.to_dict())
        (out / "metrics.jsonl").write_text("")

    say(f"model      {cfg.model}  ({type(model).__name__}, precision {amp or torch.float32}, device {device}"
        + (f", {d.world} processes" if d.world > 1 else "") + ")")
    say(f"data       {len(train_data):,} train / {len(eval_data):,} eval examples, "
        f"{len(corpus.label_names)} classes: {', '.join(corpus.label_names)}")
    say(f"LoRA       rank {lconf.rank}, alpha {lconf.alpha:g}, targets {', '.join(lconf.targets)}, head {cfg.head}")
    for name, count in plan_rows:
        say(f"  {count:>10,}  {name}")
    say(f"trainable  {total:,} parameters (budget {cfg.max_trainable_params:,})")
    say(f"schedule   {cfg.epochs} epochs × {steps_per_epoch} steps of {cfg.batch_size}, lr {cfg.lr:g}, "
        f"warmup {warmup} steps" + (f"; resuming at step {progress.step}" if resume else ""))

    wrapped = model
    if d.world > 1:
        # Only parameters that require grad are registered, so the frozen encoder costs no all-reduce.
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    loop = Loop(wrapped, model, optimizer, scaler, train_data, eval_data, pad_id, device, amp, d,
                base_lrs, total_steps, warmup, ema)
    metrics_file = out / "metrics.jsonl"
    if resume and d.main:  # drop lines logged after the checkpoint, so the log reads as one run
        lines = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
        metrics_file.write_text("".join(json.dumps(x) + "\n" for x in lines if x["step"] <= progress.step))

    def checkpoint() -> None:
        if d.main:
            save_checkpoint(out, {
                "model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "ema": {n: t.cpu() for n, t in ema.shadow.items()} if ema else {},
                "progress": asdict(progress), "rng": rng_state()})
        barrier(d)

    def log_line(entry: dict) -> None:
        if d.main:
            with metrics_file.open("a") as f:
                f.write(json.dumps(entry) + "\n")

    def on_step(p: Progress, loss: float, speed: float) -> None:
        log_line({"step": p.step, "epoch": p.epoch, "loss": loss,
                  "lr": optimizer.param_groups[0]["lr"], "examples_per_s": speed})
        if cfg.save_every and p.step % cfg.save_every == 0:
            checkpoint()

    def on_epoch_end(p: Progress) -> None:
        started = time.perf_counter()
        with ema.applied() if ema else nullcontext():
            probs = predict(model, eval_data, pad_id, cfg.eval_batch_size, device, amp, d)
            report = classification_report(probs.argmax(-1), eval_data.labels, corpus.label_names)
            improved = report["accuracy"] > p.best_accuracy
            if improved and d.main:
                save_adapter(model, out / ADAPTER_DIR, lconf, base_model_name=cfg.model)
                write_json(out / ADAPTER_DIR / RUN_INFO, {"train": cfg.to_dict(), "labels": corpus.label_names})
        report["eval_seconds"] = time.perf_counter() - started
        report["epoch"] = p.epoch
        p.history.append({k: report[k] for k in ("epoch", "accuracy", "macro_f1", "eval_seconds")})
        if improved:
            p.best_accuracy, p.best = report["accuracy"], report
        log_line({"step": p.step, "epoch": p.epoch, "eval_accuracy": report["accuracy"],
                  "eval_macro_f1": report["macro_f1"]})
        say(f"epoch {p.epoch}/{cfg.epochs}: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}")
        checkpoint()

    try:
        progress = train(loop, cfg, progress, on_step, on_epoch_end)
    except KeyboardInterrupt:
        checkpoint()  # the step in flight is lost, every finished one is kept
        raise
    if progress.epoch < cfg.epochs:  # stopped early by stop_after
        checkpoint()
        say(f"stopped after step {progress.step}; continue with --resume {out}")
        return {"stopped_at_step": progress.step}

    best = progress.best  # the epoch whose adapter was saved
    result = {
        **{k: best[k] for k in ("accuracy", "macro_f1", "per_class", "confusion", "examples", "eval_seconds")},
        "best_epoch": best["epoch"], "history": progress.history,
        # The last epoch's scores: no choice made on the eval data, so comparable with a single final eval.
        "final_accuracy": progress.history[-1]["accuracy"], "final_macro_f1": progress.history[-1]["macro_f1"],
        "train_seconds": progress.train_seconds, "train_examples": progress.examples,
        "train_examples_per_s": progress.examples / max(progress.train_seconds, 1e-9),
        "eval_examples_per_s": best["examples"] / max(best["eval_seconds"], 1e-9),
        "trainable_params": total, "labels": corpus.label_names, "steps": progress.step,
    }
    if d.main:
        write_json(out / "eval.json", result)
        from .plots import plot_run
        plot_run(out, result)
        say(format_report(best))
        say(f"trained in {progress.train_seconds:.1f}s ({result['train_examples_per_s']:.1f} examples/s); "
            f"best epoch {best['epoch']} ({best['accuracy']:.4f}); outputs in {out}")
    return result
