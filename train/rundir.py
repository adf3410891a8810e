"""The run directory: every file name a run writes, atomic writes, the run record (config.json, the adapter's
train_config.json), metrics, checkpoints, eval.json, and how a run starts in a directory (fresh, resumed,
refused). Export, predict and the model card find a finished run's adapter and scores here too (find_run).

Files are written to a hidden temp file and renamed over the target (lora.adapter.atomic_write), so a
crash never leaves half a file; temp files left by a kill -9 are removed when a run next starts here.

    run/  config.json  metrics.jsonl  checkpoint.pt  eval.json  curves.png  confusion.png
          adapter/  adapter_model.safetensors  adapter_config.json  train_config.json
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from lora.adapter import CONFIG_NAME as ADAPTER_CONFIG  # PEFT's adapter_config.json
from lora.adapter import TEMP_SUFFIX, atomic_write

from .cli import Finished, UserError
from .config import TrainConfig

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


def eval_record(best: dict, history: list[dict], train_seconds: float, examples: int, steps: int, trainable: int,
                labels: list[str]) -> dict:
    """What eval.json holds: the best epoch's report, every epoch's scores, the final epoch's (no choice made
    on the evaluation data, so comparable with a single final evaluation), timings and counts."""
    return {
        **{k: best[k] for k in ("accuracy", "macro_f1", "per_class", "confusion", "examples", "eval_seconds")},
        "best_epoch": best["epoch"], "history": history,
        "final_accuracy": history[-1]["accuracy"], "final_macro_f1": history[-1]["macro_f1"],
        "train_seconds": train_seconds, "train_examples": examples,
        "train_examples_per_s": examples / max(train_seconds, 1e-9),
        "eval_examples_per_s": best["examples"] / max(best["eval_seconds"], 1e-9),
        "trainable_params": trainable, "labels": labels, "steps": steps,
    }


def checkpoint_state(model: nn.Module, optimizer, scaler, ema, progress: dict) -> dict:
    """What checkpoint.pt holds: the trained weights, optimizer, scaler, EMA, position and RNG."""
    return {"model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "ema": {n: t.cpu() for n, t in ema.shadow.items()} if ema else {}, "progress": progress,
            "rng": rng_state()}


def restore_checkpoint(state: dict, model: nn.Module, optimizer, scaler, ema, device: torch.device,
                       path: Path) -> dict:
    """Put a checkpoint_state (read from `path`) back in place; returns its progress (a dict)."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state.get("model", {})) != set(trainable):
        raise UserError(f"{path} does not match this model's trainable parameters")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(state["model"][n])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None:
        ema.shadow = {n: t.to(device) for n, t in state["ema"].items()}
    set_rng_state(state["rng"])
    return state["progress"]


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

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

    def start_mode(self, resume: bool | str, overwrite: bool) -> bool:
        """Whether this run resumes (True) or starts fresh (False); refuses a bad --output-dir / --resume.
        resume="auto": continue the checkpoint here if there is one, else start fresh (torchrun restarts)."""
        self.clean_temps()
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output-dir {self.path} is a file, not a directory")
        if resume == "auto":
            if self.finished():
                raise Finished(f"{self.path} is a finished run (eval.json is written); nothing to resume")
            return (self / CHECKPOINT).is_file()
        if not resume and not overwrite and self.holds_run():
            raise UserError(f"{self.path} already holds a run; continue it with --resume {self.path}, "
                            "or pick another --output-dir (or --overwrite)")
        if resume and not (self / CHECKPOINT).is_file():
            raise UserError(f"nothing to resume: {self / CHECKPOINT} does not exist; "
                            f"start again with --output-dir {self.path} --overwrite")
        return bool(resume)

    def same_settings(self, cfg: TrainConfig) -> None:
        """--resume auto must continue the run these flags describe, not another one left in the directory."""
        saved, _ = self.load_config()
        ignore = dict(stop_after=None, device="auto", output_dir="", cache_dir=None)
        if replace(saved, **ignore) != replace(cfg, **ignore):
            changed = [k for k, v in replace(cfg, **ignore).to_dict().items() if replace(saved, **ignore).to_dict()[k] != v]
            raise UserError(f"{self.path} holds a run with other settings ({', '.join(changed)}); "
                            f"use another --output-dir, or --resume {self.path} to continue that run")

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


@dataclass
class Run:
    adapter_dir: Path
    info: dict  # {"train": TrainConfig dict, "labels": [...]}
    report: dict | None  # eval.json: accuracy, macro_f1, per_class, examples, trainable_params, ...


def read_run_info(adapter_dir: str | Path) -> tuple[TrainConfig, list[str]]:
    """(TrainConfig, labels) from the train_config.json of an adapter written by `python -m train`."""
    path = Path(adapter_dir) / RUN_INFO
    if not path.is_file():
        raise UserError(f"{adapter_dir} is not an adapter written by python -m train (no {RUN_INFO})")
    return parse_record(read_json(path, "run config"), path)


def find_run(path: str | Path) -> Run:
    """A run directory (with adapter/) or an adapter directory, with its run info and scores."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path} does not exist")
    if (p / ADAPTER_CONFIG).is_file():
        adapter, places = p, (p, p.parent)
    elif (p / ADAPTER / ADAPTER_CONFIG).is_file():
        adapter, places = p / ADAPTER, (p / ADAPTER, p)
    else:
        raise UserError(f"{path} is neither a run directory (with {ADAPTER}/) nor an adapter directory "
                        f"(with {ADAPTER_CONFIG})")
    cfg, labels = read_run_info(adapter)
    info = {"train": cfg.to_flat(), "labels": labels}
    report = None
    for place in places:
        if (place / EVAL).is_file():
            report = json.loads((place / EVAL).read_text())
            break
    return Run(adapter, info, report)


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
