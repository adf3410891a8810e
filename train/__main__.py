"""python -m train: fine-tune a frozen encoder with LoRA. flags → TrainConfig → build → loop.

User mistakes end as one line on stderr and exit code 2, never a traceback (see train/cli.py).
SIGTERM / SIGINT finish the step in flight, checkpoint, and exit 143 / 130 naming --resume.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cli import Parser, csv_list, layer_list, rank_value, run_main, top_layers_value
from .config import (ATTENTIONS, DEFAULT_RECIPE, HEADS, METRICS, PRECISIONS, RECIPES, TASKS, TRACKERS, TrainConfig,
                     with_recipe)
from .errors import Diverged, Finished, Stopped, UserError, say_stopped, stop_signal

DEFAULT_CACHE = str(__import__("train.files", fromlist=["cache_home"]).cache_home() / "roberta-lora")  # XDG rules
RESUME_MAY_CHANGE = {"stop_after", "device", "debug", "resume", "cache_dir"}  # a moved run takes another cache


def _default(key: str, value, unset: str = "none") -> str:
    """' (default: V)', or each recipe's value where the recipes differ on `key`; `unset` names None."""
    def shown(v) -> str:
        return ",".join(map(str, v)) if isinstance(v, tuple) else (unset if v is None else str(v))
    per = {name: shown(r.get(key, value)) for name, r in sorted(RECIPES.items())}
    if len(set(per.values())) > 1:
        return " (default: " + "; ".join(f"{n}: {v}" for n, v in per.items()) + ")"
    return f" (default: {shown(value)})"


def parser() -> argparse.ArgumentParser:
    """Flags default to 'not given' (SUPPRESS), so the parse itself says which the user typed; the help
    shows the value that runs when a flag is left out: each recipe's, or TrainConfig's."""
    p = Parser(prog="python -m train", description="Fine-tune a frozen encoder with LoRA for text classification.",
               argument_default=argparse.SUPPRESS)
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help=f"start from a named recipe (default: {DEFAULT_RECIPE}); flags given override its values")
    _data_flags(p.add_argument_group("model and data").add_argument, TrainConfig())
    _recipe_flags(p.add_argument_group("recipe (LoRA, head, optimizer, schedule)").add_argument, TrainConfig())
    _run_flags(p.add_argument_group("the run").add_argument, TrainConfig())
    return p


def _data_flags(a, d: TrainConfig) -> None:
    a("--model", help="hub id or local model directory" + _default("model", d.model))
    a("--data", help="hub dataset name, ag_news_sample (shipped), or a directory with train.csv and "
      "test/dev/validation.csv" + _default("data", d.data))
    a("--data-config", metavar="NAME", help="the hub dataset's configuration: --data nyu-mll/glue --data-config "
      "mrpc, or --data glue/mrpc")
    a("--streaming", action="store_true", help="read a hub dataset as it downloads")
    a("--train-file", help="training CSV/JSONL/Parquet, or a glob of them (AG News layout, or text,label columns)")
    a("--eval-file", help="evaluation CSV/JSONL/Parquet, or a glob of them")
    a("--text-columns", type=csv_list, metavar="A[,B]", help="the column holding the text, or two holding a pair "
      "(default: text, sentence, or a pair by the hub's usual names)")
    a("--holdout", type=int, metavar="N", help="hold out N training rows (stratified, the same for every seed) as the "
      "validation rows that pick the best epoch; the evaluation rows are then scored with it (with --train-file "
      "alone, the held-out rows are scored, the final epoch's)")
    a("--max-train-samples", type=int, help="stratified subset of the training data")
    a("--max-eval-samples", type=int, help="stratified subset of the evaluation data")
    a("--task", choices=TASKS, help="single_label, multi_label (a list of labels per row) or regression (a number "
      "per row); auto: read from the training labels" + _default("task", d.task))
    a("--metric", choices=METRICS, help="the score that picks the best epoch (default: accuracy, macro_f1 or "
      "pearson, by the task's kind)")
    a("--threshold", type=float, help="multi-label: predict a label when its sigmoid is above this"
      + _default("threshold", d.threshold))
    a("--allow-empty-classes", action="store_true", help="train even if a class has no training row")
    a("--max-length", type=int, help="tokens per text; longer texts are truncated" + _default("max_length", 128))


def _recipe_flags(a, d: TrainConfig) -> None:
    a("--rank", type=rank_value, help="LoRA rank, or 'auto' for the largest under the budget"
      + _default("rank", d.rank or d.lora.rank))
    a("--max-rank", type=int, help="the ceiling of --rank auto (a --rank given drops the recipe's)"
      + _default("max_rank", d.max_rank))
    a("--alpha", type=float, help="LoRA alpha: the update is scaled by alpha/rank" + _default("alpha", d.lora.alpha))
    a("--dropout", type=float, help="dropout on LoRA's input" + _default("dropout", d.lora.dropout))
    a("--targets", type=csv_list, help="comma-separated roles (RoBERTa's module names, mapped to each family's) or "
      "module names" + _default("targets", d.lora.targets))
    a("--layers", type=layer_list,
      help="comma-separated layer indices, or 'all'" + _default("layers", d.lora.layers, "all"))
    a("--top-layers", type=top_layers_value, metavar="K", help="LoRA only in the top K encoder layers, or a share "
      "of them (0.5: the top half, rounded up); the layers below run once per example, cached"
      + _default("top_layers", None))
    a("--no-prefix-cache", dest="prefix_cache", action="store_false",
      help="run the frozen layers below the first LoRA layer every epoch (with dropout) instead of once")
    a("--model-dropout", type=float, help="dropout inside the pretrained model (hidden, attention, head)"
      + _default("model_dropout", d.model_dropout, "the model's own, 0.1 for RoBERTa"))
    a("--head", choices=HEADS, help="full: the stock head trained whole; linear: only its output layer; lora: LoRA "
      "on its dense layer and the output layer trained" + _default("head", d.head))
    a("--rslora", dest="use_rslora", action=argparse.BooleanOptionalAction, help="rsLoRA: scale the update by "
      "alpha/sqrt(rank), not alpha/rank, so a high rank is not damped" + _default("use_rslora", False))
    a("--lr", type=float, help="peak learning rate" + _default("lr", d.lr))
    a("--lora-plus-ratio", type=float, help="LoRA+: learning-rate multiplier for B"
      + _default("lora_plus_ratio", d.lora_plus_ratio))
    a("--weight-decay", type=float, help="AdamW's decoupled weight decay, on matrices only"
      + _default("weight_decay", d.weight_decay))
    a("--warmup-ratio", type=float, help="fraction of the steps with linear warmup, then cosine decay to 0"
      + _default("warmup_ratio", d.warmup_ratio))
    a("--label-smoothing", type=float, help="cross-entropy label smoothing" + _default("label_smoothing",
                                                                                   d.label_smoothing))
    a("--epochs", type=int, help="passes over the training data" + _default("epochs", d.epochs))
    a("--batch-size", type=int, help="examples per optimizer step, over all processes"
      + _default("batch_size", d.batch_size))
    a("--eval-batch-size", type=int, help="examples per evaluation and frozen-prefix batch (default: 32 on CPU, "
      "128 on GPU)")
    a("--grad-clip", type=float, help="max gradient norm; 0 turns clipping off" + _default("grad_clip", d.grad_clip))
    a("--ema-decay", type=float, help="EMA of trainable weights for eval; 0 = off" + _default("ema_decay", d.ema_decay))
    a("--precision", choices=PRECISIONS, help="auto: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with "
      "AVX512-BF16 or AMX, else fp32" + _default("precision", d.precision))
    a("--attention", choices=ATTENTIONS, help="attention kernel; auto: eager on CPU, where SDPA's backward is slow, "
      "else sdpa (never cuDNN's, which re-plans for each new batch shape)" + _default("attention", d.attention))


def _run_flags(a, d: TrainConfig) -> None:
    a("--compile", action="store_true", help="torch.compile the model")
    a("--seed", type=int, help="seed of LoRA's init, the data order and dropout" + _default("seed", d.seed))
    a("--output-dir", help="where config, metrics, checkpoints, adapter and plots go (default: runs/<date-time>)")
    a("--save-every", type=int, help="checkpoint every N steps as well as every epoch; 0: every epoch only"
      + _default("save_every", d.save_every))
    a("--max-trainable-params", type=int, help="refuse a run with this many trainable parameters or more"
      + _default("max_trainable_params", d.max_trainable_params))
    a("--cache-dir", help=f"tokenized-data cache ('' disables) (default: {DEFAULT_CACHE})")
    a("--stop-after", type=int, help="stop after this many steps, checkpointed, to --resume later")
    a("--device", help="auto (CUDA when there is one), cpu, cuda or cuda:N" + _default("device", d.device))
    a("--report-to", choices=TRACKERS, help="mirror metrics.jsonl into this tracker" + _default("report_to",
                                                                                             d.report_to))
    a("--resume", metavar="DIR|auto", help="continue the run in DIR with its saved config; 'auto': continue "
      "--output-dir's checkpoint if it has one, else start fresh (for torchrun --max-restarts)")
    a("--overwrite", action="store_true", help="reuse an --output-dir that already holds a run")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe's values, then every flag the user gave (only those are in `args`), then defaults."""
    given = dict(vars(args))
    for key in ("recipe", "resume", "overwrite", "debug"):
        given.pop(key, None)
    values = with_recipe(getattr(args, "recipe", DEFAULT_RECIPE), given)
    values["output_dir"] = given.get("output_dir") or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    cache = given.get("cache_dir", DEFAULT_CACHE)
    values["cache_dir"] = os.path.expanduser(cache) if cache else None
    try:
        return TrainConfig.from_flat(values)
    except ValueError as e:
        raise UserError(str(e)) from None


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The saved config of the run in --resume DIR; only --stop-after, --device and --cache-dir may change."""
    from .rundir import RunDir

    extra = sorted(set(vars(args)) - RESUME_MAY_CHANGE)
    if extra:
        raise UserError(f"--resume continues a run with its saved config; drop --{extra[0].replace('_', '-')}")
    cfg = RunDir(Path(args.resume)).load_record().train
    # The directory given, not the one recorded: a run directory may have been moved or copied.
    cache = getattr(args, "cache_dir", None)  # '' turns the cache off, as when the run started
    return replace(cfg, output_dir=str(args.resume), stop_after=getattr(args, "stop_after", None),
                   device=getattr(args, "device", cfg.device),
                   cache_dir=cfg.cache_dir if cache is None else (os.path.expanduser(cache) or None))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main(lambda: _train(args), argv)


def _train(args: argparse.Namespace) -> int:
    from .rundir import CHECKPOINT, RunDir

    resume = getattr(args, "resume", None)
    if resume == "auto" and not getattr(args, "output_dir", None):
        raise UserError("--resume auto continues the run in --output-dir: give --output-dir")
    cfg = resume_config(args) if resume and resume != "auto" else config_from_args(args)
    out = cfg.output_dir
    if resume and resume != "auto" and RunDir(Path(out)).finished():
        print(f"{out} is a finished run (eval.json is written); nothing to resume")
        return 0
    from .trainer import run

    try:
        resume = "auto" if resume == "auto" else bool(resume)
        done = run(cfg, resume=resume, overwrite=getattr(args, "overwrite", False))
    except Finished as e:
        print(e)
        return 0
    except Diverged as e:
        kept = (Path(out) / CHECKPOINT).is_file()
        where = (f"the last good checkpoint is in {out}; resume with --resume {out} or" if kept
                 else f"no checkpoint was saved yet; rerun with --output-dir {out} --overwrite and")
        print(f"error: {e}; {where} a lower --lr", file=sys.stderr)
        return 2
    except Stopped as e:
        say_stopped(f"stopped by {e} after step {e.step}, checkpointed; continue with --resume {out}")
        return 128 + e.signum
    except KeyboardInterrupt as e:  # while building (Interrupted), or a second signal: the last checkpoint stays
        signum = stop_signal(e)
        kept = (Path(out) / CHECKPOINT).is_file()
        say_stopped(f"stopped by {signal.Signals(signum).name} "
                    + (f"before the next checkpoint; continue with --resume {out}" if kept else
                       "before training began; nothing was kept: run the same command again"))
        return 128 + signum
    if done is None:
        print(f"stopped after step {cfg.stop_after} (--stop-after), checkpointed; continue with --resume {out}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
