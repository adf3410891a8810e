"""The command-line layer every entry point shares: the parser, flag types, and the one-line-error wrapper.

User mistakes end as one line on stderr and exit code 2, never a traceback. Set ROBERTA_LORA_DEBUG=1
(or pass --debug) to see the traceback for a bug report.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import contextmanager
from typing import Callable

DEBUG_ENV = "ROBERTA_LORA_DEBUG"


class UserError(Exception):
    """A mistake the user can fix: a bad flag, file, row or name. The message alone must tell them what to
    fix; run_main prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations (`--warmup` must not silently mean `--warmup-ratio`), errors in one line."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help=f"show tracebacks (also: {DEBUG_ENV}=1)")

    def error(self, message: str):  # argparse prints usage plus a line; one line is enough
        self.exit(2, f"error: {message}\n")


def progress(iterable=None, desc: str = "", total: int | None = None, unit: str = "rows", show: bool = True):
    """A progress bar on stderr for a phase that can take more than a few seconds (tokenizing, the frozen
    prefix, evaluating, scoring): rows/s, gone when the phase ends, off when stderr is not a terminal or
    `show` is False."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=None if show else True,
                dynamic_ncols=True, unit_scale=True, mininterval=0.5)


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


def say_stopped(text: str) -> None:
    """A stop's one line on stderr, on a line of its own (not glued to a progress bar)."""
    print(("\n" if sys.stderr.isatty() else "") + text, file=sys.stderr)


def stop_signal(e: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: Interrupted carries SIGTERM's, Ctrl-C raises it bare."""
    return getattr(e, "signum", signal.SIGINT)


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
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a full disk, a file where a directory should be
        if debugging(argv):
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


class Diverged(RuntimeError):
    """The loss stopped being a finite number."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived; the run checkpointed after the step in flight."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step = signum, step


class Finished(Exception):
    """--resume auto found a finished run: nothing to do."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT before training began (loading, tokenizing, the frozen prefix): the work stops at once,
    temp files go, and nothing of it is kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def interruptible():
    """Within the block, SIGTERM raises Interrupted as Ctrl-C raises KeyboardInterrupt, so every `finally` and
    cleanup runs (a half-built cache, a temp file) instead of the process dying where it stands."""
    def handle(signum, frame):
        raise Interrupted(signum)
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, handle)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


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
