"""How a run stops, and what the user sees while it runs: the exception types (UserError and the stops), the
signal guards that turn SIGTERM / Ctrl-C into clean stops (an exception that lets every cleanup run, or a flag the
loop reads between steps), a stop's line, and the progress bars of the slow phases. data/, the model and the run
directory use these; the command-line layer (train/cli.py) turns each exception into one line and an exit code."""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager


class UserError(Exception):
    """A mistake the user can fix: a bad flag, file, row or name. The message alone must tell them what to
    fix; run_main prints it as one line and exits 2."""


class Diverged(UserError):
    """The loss stopped being a finite number: the recipe (lr, precision) is the user's to change."""


class HubUnreachable(UserError):
    """A model or dataset that only the hub has, while the hub cannot be reached."""


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


def progress(iterable=None, desc: str = "", total: int | None = None, unit: str = "rows", show: bool = True):
    """A progress bar on stderr for a phase that can take more than a few seconds (tokenizing, the frozen
    prefix, evaluating, scoring): rows/s, gone when the phase ends, off when stderr is not a terminal or
    `show` is False."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, disable=None if show else True,
                dynamic_ncols=True, unit_scale=True, mininterval=0.5)


def say_stopped(text: str) -> None:
    """A stop's one line on stderr, on a line of its own (not glued to a progress bar)."""
    print(("\n" if sys.stderr.isatty() else "") + text, file=sys.stderr)


def stop_signal(e: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt: Interrupted carries SIGTERM's, Ctrl-C raises it bare."""
    return getattr(e, "signum", signal.SIGINT)


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


def note(line: str) -> None:
    """A `note:` line on stderr, from one process of a torchrun job (every process opens the data)."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(line, file=sys.stderr, flush=True)
