"""The run directory: every file name a run writes, atomic writes, config, metrics and checkpoints.

Files are written to a hidden temp file and renamed over the target (lora.adapter.atomic_write), so a
crash never leaves half a file; temp files left by a kill -9 are removed when a run next starts here.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from lora.adapter import TEMP_SUFFIX, atomic_write

from .config import TrainConfig
from .errors import UserError

CONFIG = "config.json"  # {"train": TrainConfig.to_dict(), "labels": [...], "versions": {...}}
RUN_INFO = "train_config.json"  # the same object beside the PEFT files, so an adapter stands alone
METRICS = "metrics.jsonl"
EVAL = "eval.json"
CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter"
PLOTS = ("curves.png", "confusion.png")


def write_json(target: Path, obj) -> None:
    atomic_write(target, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path, what: str):
    """Parsed JSON, or one UserError line naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({what}): {e}") from None


def versions() -> dict:
    """torch, transformers and project versions, and the git commit of the code when there is one."""
    import importlib.metadata

    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        found["roberta-lora"] = importlib.metadata.version("roberta-lora")
    except importlib.metadata.PackageNotFoundError:
        found["roberta-lora"] = None
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        found["git_commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        found["git_commit"] = None
    return found


def run_record(cfg: TrainConfig, labels: list[str]) -> dict:
    """What config.json and the adapter's train_config.json hold: one shape, written by one function."""
    return {"train": cfg.to_dict(), "labels": list(labels), "versions": versions()}


def parse_record(record: dict, path: Path) -> tuple[TrainConfig, list[str]]:
    """(TrainConfig, labels) from a run record; one UserError line if it is not one."""
    try:
        return TrainConfig.from_dict(record["train"]), list(record["labels"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a run config written by python -m train: {e}") from None


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    def holds_run(self) -> bool:
        return (self / CONFIG).exists()

    def finished(self) -> bool:
        return (self / EVAL).is_file()

    def clean_temps(self) -> None:
        """Remove temp files an interrupted atomic write left behind; they are never read."""
        for folder in (self.path, self.adapter):
            if folder.is_dir():
                for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
                    tmp.unlink(missing_ok=True)

    def start(self, record: dict) -> None:
        """A fresh run here: no outputs of an earlier run are kept (--overwrite), config written first."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output-dir {self.path} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in (CHECKPOINT, EVAL, *PLOTS):
            (self / stale).unlink(missing_ok=True)
        shutil.rmtree(self.adapter, ignore_errors=True)
        write_json(self / CONFIG, record)
        (self / METRICS).write_text("")

    def load_config(self) -> tuple[TrainConfig, list[str]]:
        path = self / CONFIG
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        record = read_json(path, "run config")
        if isinstance(record, dict) and "train" not in record:  # the flat layout of older runs
            return parse_record({"train": record, "labels": []}, path)
        return parse_record(record, path)

    def save_checkpoint(self, state: dict) -> None:
        atomic_write(self / CHECKPOINT, lambda p: torch.save(state, p))

    def load_checkpoint(self) -> dict:
        path = self / CHECKPOINT
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        try:
            # weights_only: tensors, numbers, strings and containers only; no arbitrary objects are built.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, a pickle payload refused by weights_only, a foreign file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path} is not a readable checkpoint of python -m train ({first[:160]}); "
                            f"start again with --output-dir {self.path} --overwrite") from None

    def append_metrics(self, entry: dict) -> None:
        with (self / METRICS).open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def trim_metrics(self, step: int) -> None:
        """Drop lines logged after the checkpoint being resumed, so the log reads as one run."""
        path = self / METRICS
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        write_json_lines(path, [x for x in lines if x["step"] <= step])


def write_json_lines(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda p: Path(p).write_text("".join(json.dumps(x) + "\n" for x in rows)))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
