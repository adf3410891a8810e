"""The command-line layer every entry point shares: the parser, flag types, and the one-line-error wrapper.

User mistakes end as one line on stderr and exit code 2, never a traceback. Set ROBERTA_LORA_DEBUG=1
(or pass --debug) to see the traceback for a bug report.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Callable

from .errors import Stopped, UserError, say_stopped, stop_signal

if TYPE_CHECKING:
    from torch import nn

    from .config import TrainConfig

DEBUG_ENV = "ROBERTA_LORA_DEBUG"


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations (`--warmup` must not silently mean `--warmup-ratio`), errors in one line."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help=f"show tracebacks (also: {DEBUG_ENV}=1)")

    def error(self, message: str):  # argparse prints usage plus a line; one line is enough
        self.exit(2, f"error: {message}\n")


def add_scoring_flags(p: argparse.ArgumentParser) -> None:
    """--batch-size, --precision and --device, as evaluate and predict take them."""
    p.add_argument("--batch-size", type=int, help="rows per batch (default: 32 on CPU, 128 on GPU)")
    from .config import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, else fp32 (default: auto)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N")


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def layer_list(text: str) -> tuple[int, ...] | None:
    if text == "all":
        return None
    try:
        return tuple(int(t) for t in csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or comma-separated layer numbers, got {text!r}") from None


def top_layers_value(text: str) -> int | float:
    """A layer count (6) or a share of the layers in (0, 1) (0.5)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0 < share < 1:
        raise argparse.ArgumentTypeError(f"expected a number of layers or a share in (0, 1), got {text!r}")
    return share


def rank_value(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def positive(name: str, value: int | None) -> None:
    """Refuse a flag value below 1 (None = not given)."""
    if value is not None and value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")


def debugging(argv: list[str] | None) -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in (sys.argv[1:] if argv is None else argv)


def run_main(body: Callable[[], int], argv: list[str] | None = None) -> int:
    """Call body(); a UserError or a file-system error the user can fix becomes one line and exit 2; SIGTERM or
    Ctrl-C one line and the shell's code (143, 130): a sweep's run checkpointed, anything else left unwritten."""
    try:
        return body()
    except Stopped as e:  # a sweep's run stopped after the step in flight, checkpointed
        say_stopped(f"stopped by {e} after step {e.step}, checkpointed; run the same command again to continue")
        return 128 + e.signum
    except KeyboardInterrupt as e:  # Interrupted (SIGTERM) or Ctrl-C: atomic writes and staging leave nothing half
        say_stopped(f"stopped by {signal.Signals(stop_signal(e)).name}; what was in progress was not written")
        return 128 + stop_signal(e)
    except UserError as e:
        if debugging(argv):
            raise
        from .distributed import say_refusal  # torchrun's ranks: one line, not one per process

        say_refusal(f"error: {e}")
        return 2
    except OSError as e:  # permissions, a full disk, a file where a directory should be
        if debugging(argv):
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        from .distributed import say_refusal

        say_refusal(f"error: {e.strerror or e}{where}")
        return 2


def describe_plan(say, cfg: TrainConfig, model: nn.Module, labels: list[str], rows: list[tuple[str, int]],
                  counts: tuple[int, int, int | None], amp, device, d, total_steps: int, warmup: int) -> None:
    """Print what will run, before the slow parts (tokenizing, the frozen prefix, training)."""
    layers = model.config.num_hidden_layers
    adapted = ("all" if cfg.lora.layers is None
               else f"{min(cfg.lora.layers)}–{max(cfg.lora.layers)}" if len(cfg.lora.layers) > 1
               and list(cfg.lora.layers) == list(range(min(cfg.lora.layers), max(cfg.lora.layers) + 1))
               else ", ".join(map(str, cfg.lora.layers)))
    say(f"model      {cfg.model}  ({type(model).__name__}, {layers} layers, precision {amp or 'torch.float32'}, "
        f"attention {model.config._attn_implementation}, device {device}"
        + (f", {d.world} processes" if d.world > 1 else "") + ")")
    what = {"single_label": f"{len(labels)} classes", "multi_label": f"{len(labels)} labels, any of them per row",
            "regression": "regression: one score"}[cfg.task]
    say(f"data       {counts[0]:,} train / {counts[1]:,} eval" + (f" / {counts[2]:,} validation" if counts[2] else "")
        + f" examples, {what}" + (f": {', '.join(labels)}" if cfg.task != "regression" else "")
        + f"; epoch kept: {'best ' + cfg.metric + ' on validation' if counts[2] else 'the final one'}")
    scale = f"{'rsLoRA: alpha/√rank' if cfg.lora.use_rslora else 'alpha/rank'} = {cfg.lora.scaling:.2f}"
    say(f"LoRA       rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g} ({scale}), targets {', '.join(cfg.lora.targets)}, "
        f"layers {adapted} of {layers}, head {cfg.head}")
    for name, count in rows:
        say(f"  {count:>10,}  {name}")
    say(f"trainable  {sum(v for _, v in rows):,} parameters (budget {cfg.max_trainable_params:,})")
    say(f"schedule   {cfg.epochs} epochs × {total_steps // cfg.epochs} steps of {cfg.batch_size}, lr {cfg.lr:g}, "
        f"warmup {warmup} steps")
