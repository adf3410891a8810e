"""Mirror metrics.jsonl into the experiment tracker the user already has: TensorBoard, MLflow or W&B.

    tracker = open_tracker(cfg.report_to, run_dir, cfg.to_dict())   # once, on the main process only
    tracker.log(entry, step=entry["step"])                          # for every metrics.jsonl line
    tracker.close()                                                 # at the end, also after an error

Each tracker is an optional extra (pip install 'roberta-lora[tensorboard]', ...), imported only when asked
for, so a missing one is a one-line error before training starts, never a crash at the first log.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol

from .config import TRACKERS as KINDS
from .errors import UserError

SKIP = ("step",)  # the x axis, not a metric


class Tracker(Protocol):
    def log(self, entry: dict, step: int) -> None:
        """Record every number in `entry` (a metrics.jsonl line) at optimizer step `step`."""

    def close(self) -> None:
        """Flush and finish; safe to call twice."""


def open_tracker(kind: str, run_dir: str | os.PathLike, config: dict) -> Tracker:
    """A tracker of `kind` for the run in `run_dir`, with the run's config recorded as its parameters.
    Raises UserError for an unknown kind or a tracker whose package is not installed."""
    if kind not in KINDS:
        raise UserError(f"--report-to must be one of {', '.join(KINDS)}, got {kind!r}")
    opener = {"none": _NoTracker, "tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _WandB}[kind]
    return opener(Path(run_dir), config)


PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_tracker(kind: str) -> None:
    """Refuse, in one line and before a run writes anything, a tracker that is unknown or not installed."""
    if kind not in KINDS:
        raise UserError(f"--report-to must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind in PACKAGES:
        import importlib.util

        if importlib.util.find_spec(PACKAGES[kind]) is None:
            raise UserError(f"--report-to {kind} needs the {kind} package: pip install 'roberta-lora[{kind}]'")


def metrics(entry: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl line, without the step (bools and text are not metrics)."""
    return {k: float(v) for k, v in entry.items()
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _need(module: str, kind: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--report-to {kind} needs the {module.split('.')[0]} package: "
                        f"pip install 'roberta-lora[{kind}]'") from None


class _NoTracker:
    def __init__(self, run_dir: Path, config: dict) -> None:
        pass

    def log(self, entry: dict, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class _TensorBoard:
    """Event files in RUN_DIR/tensorboard: `tensorboard --logdir RUN_DIR`."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        _need("tensorboard", "tensorboard")  # torch's SummaryWriter needs it, and says so less plainly
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, entry: dict, step: int) -> None:
        for name, value in metrics(entry).items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    """One MLflow run named after the run directory, where MLFLOW_TRACKING_URI says (default ./mlruns)."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        self.mlflow = _need("mlflow", "mlflow")
        self.run = self.mlflow.start_run(run_name=run_dir.name)
        # Parameters are strings for MLflow; lists and None as JSON so they read back unambiguously.
        self.mlflow.log_params({k: v if isinstance(v, (str, int, float)) else json.dumps(v)
                                for k, v in config.items()})
        self.open = True

    def log(self, entry: dict, step: int) -> None:
        self.mlflow.log_metrics(metrics(entry), step=step)

    def close(self) -> None:
        if self.open:
            self.mlflow.end_run()
            self.open = False


class _WandB:
    """One W&B run named after the run directory, in WANDB_PROJECT (default roberta-lora); WANDB_MODE=offline
    keeps it local."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        wandb = _need("wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "roberta-lora"), name=run_dir.name,
                              dir=str(run_dir), config=config)
        self.open = True

    def log(self, entry: dict, step: int) -> None:
        self.run.log(metrics(entry), step=step)

    def close(self) -> None:
        if self.open:
            self.run.finish()
            self.open = False
