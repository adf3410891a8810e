"""The ways a run ends early, as exception types. data/, the model and the run directory raise these; the
command-line layer (train/cli.py) turns each into one line and an exit code."""
from __future__ import annotations

import signal


class UserError(Exception):
    """A mistake the user can fix: a bad flag, file, row or name. The message alone must tell them what to
    fix; run_main prints it as one line and exits 2."""


class Diverged(UserError):
    """The loss stopped being a finite number: the recipe (lr, precision) is the user's to change."""


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
