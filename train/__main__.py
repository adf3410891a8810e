"""python -m train: fine-tune a frozen encoder with LoRA. flags → TrainConfig → build → loop.

User mistakes end as one line on stderr and exit code 2, never a traceback (see train/cli.py).
SIGTERM / SIGINT finish the step in flight, checkpoint, and exit 143 / 130 naming --resume.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from .cli import Diverged, Finished, Parser, Stopped, UserError, csv_list, layer_list, rank_value, run_main
from .config import ATTENTIONS, HEADS, PRECISIONS, TRACKERS, TrainConfig
from .recipes import DEFAULT_RECIPE, RECIPES, recipe

DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "roberta-lora")
RESUME_MAY_CHANGE = {"stop_after", "device", "debug", "resume"}


def parser() -> argparse.ArgumentParser:
    """Flags default to 'not given' (SUPPRESS), so the parse itself says which the user typed; the help
    shows the value that runs when a flag is left out: the default recipe's, or TrainConfig's."""
    d = TrainConfig()
    p = Parser(prog="python -m train", description="Fine-tune a frozen encoder with LoRA for text classification.",
               argument_default=argparse.SUPPRESS)
    a = p.add_argument

    def default(value) -> str:
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else ("all" if value is None else value)
        return f" (default: {shown})"

    a("--recipe", choices=sorted(RECIPES),
      help=f"start from a named recipe (default: {DEFAULT_RECIPE}); flags given override its values")
    a("--model", help="hub id or local model directory" + default(d.model))
    a("--data", help="hub dataset name, or a directory with train.csv and test/dev/validation.csv" + default(d.data))
    a("--streaming", action="store_true", help="read a hub dataset as it downloads")
    a("--train-file", help="training CSV/JSONL/Parquet, or a glob of them (AG News layout, or text,label columns)")
    a("--eval-file", help="evaluation CSV/JSONL/Parquet, or a glob of them")
    a("--holdout", type=int, metavar="N", help="score on N training rows held out (stratified, fixed) instead of "
      "the evaluation data: for choosing recipes")
    a("--max-train-samples", type=int, help="stratified subset of the training data")
    a("--max-eval-samples", type=int, help="stratified subset of the evaluation data")
    a("--allow-empty-classes", action="store_true", help="train even if a class has no training row")
    a("--max-length", type=int, help="tokens per text" + default(d.max_length))
    a("--rank", type=rank_value, help="LoRA rank, or 'auto' for the largest under the budget" + default(d.lora.rank))
    a("--alpha", type=float, help="LoRA alpha" + default(d.lora.alpha))
    a("--dropout", type=float, help="LoRA dropout" + default(d.lora.dropout))
    a("--targets", type=csv_list, help="comma-separated module names" + default(d.lora.targets))
    a("--layers", type=layer_list, help="comma-separated layer indices, or 'all'" + default(d.lora.layers))
    a("--top-layers", type=int, metavar="K", help="LoRA only in the top K encoder layers (the layers below run "
      "once per example, cached)")
    a("--no-prefix-cache", dest="prefix_cache", action="store_false",
      help="run the frozen layers below the first LoRA layer every epoch (with dropout) instead of once")
    a("--model-dropout", type=float, help="dropout inside the pretrained model (hidden, attention, head); "
      "default: the recipe's, else the model's own (0.1 for RoBERTa)")
    a("--head", choices=HEADS, help=default(d.head).strip(" ()"))
    a("--rslora", dest="use_rslora", action="store_true", help="scale by alpha/sqrt(rank)")
    a("--lr", type=float, help="peak learning rate" + default(d.lr))
    a("--lora-plus-ratio", type=float, help="LoRA+: learning-rate multiplier for B" + default(d.lora_plus_ratio))
    a("--weight-decay", type=float, help=default(d.weight_decay).strip(" ()"))
    a("--warmup-ratio", type=float, help=default(d.warmup_ratio).strip(" ()"))
    a("--label-smoothing", type=float, help=default(d.label_smoothing).strip(" ()"))
    a("--epochs", type=int, help=default(d.epochs).strip(" ()"))
    a("--batch-size", type=int, help=default(d.batch_size).strip(" ()"))
    a("--eval-batch-size", type=int, help=default(d.eval_batch_size).strip(" ()"))
    a("--grad-clip", type=float, help=default(d.grad_clip).strip(" ()"))
    a("--ema-decay", type=float, help="EMA of trainable weights for eval; 0 = off" + default(d.ema_decay))
    a("--precision", choices=PRECISIONS, help=default(d.precision).strip(" ()"))
    a("--attention", choices=ATTENTIONS, help="attention kernel; auto: eager on CPU, where SDPA's backward is slow, "
      "else sdpa (never cuDNN's, which re-plans for each new batch shape)" + default(d.attention))
    a("--compile", action="store_true", help="torch.compile the model")
    a("--seed", type=int, help=default(d.seed).strip(" ()"))
    a("--output-dir", help="default: runs/<date-time>")
    a("--save-every", type=int, help="checkpoint every N steps as well as every epoch" + default(d.save_every))
    a("--max-trainable-params", type=int, help=default(d.max_trainable_params).strip(" ()"))
    a("--cache-dir", help=f"tokenized-data cache ('' disables) (default: {DEFAULT_CACHE})")
    a("--stop-after", type=int, help="stop after this many steps, checkpointed, to --resume later")
    a("--device", help=default(d.device).strip(" ()"))
    a("--report-to", choices=TRACKERS, help="mirror metrics.jsonl into this tracker" + default(d.report_to))
    a("--resume", metavar="DIR|auto", help="continue the run in DIR with its saved config; 'auto': continue "
      "--output-dir's checkpoint if it has one, else start fresh (for torchrun --max-restarts)")
    a("--overwrite", action="store_true", help="reuse an --output-dir that already holds a run")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The recipe's values, then every flag the user gave (only those are in `args`), then defaults."""
    given = dict(vars(args))
    for key in ("recipe", "resume", "overwrite", "debug"):
        given.pop(key, None)
    values = {**recipe(getattr(args, "recipe", DEFAULT_RECIPE)), **given}
    for one, other in (("layers", "top_layers"), ("top_layers", "layers")):
        if one in given and other not in given:  # the user's choice of layers replaces the recipe's
            values[other] = None
    values["output_dir"] = given.get("output_dir") or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    cache = given.get("cache_dir", DEFAULT_CACHE)
    values["cache_dir"] = os.path.expanduser(cache) if cache else None
    try:
        return TrainConfig.from_flat(values)
    except ValueError as e:
        raise UserError(str(e)) from None


def resume_config(args: argparse.Namespace) -> TrainConfig:
    """The saved config of the run in --resume DIR; only --stop-after and --device may change."""
    from .rundir import RunDir

    extra = sorted(set(vars(args)) - RESUME_MAY_CHANGE)
    if extra:
        raise UserError(f"--resume continues a run with its saved config; drop --{extra[0].replace('_', '-')}")
    cfg, _ = RunDir(Path(args.resume)).load_config()
    # The directory given, not the one recorded: a run directory may have been moved or copied.
    return replace(cfg, output_dir=str(args.resume), stop_after=getattr(args, "stop_after", None),
                   device=getattr(args, "device", cfg.device))


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
        run(cfg, resume="auto" if resume == "auto" else bool(resume), overwrite=getattr(args, "overwrite", False))
    except Finished as e:
        print(e)
        return 0
    except Diverged as e:
        kept = (Path(out) / CHECKPOINT).is_file()
        where = (f"the last good checkpoint is in {out}; resume with --resume {out} or" if kept
                 else f"no checkpoint was saved yet; rerun with --output-dir {out} --overwrite and")
        print(f"error: {e}; {where} a lower --lr", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"stopped by {e} after step {e.step}, checkpointed; continue with --resume {out}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint stays
        print(f"error: interrupted; continue with --resume {out}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
