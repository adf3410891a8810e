"""What a run's files hold: the run record (config.json, and the adapter's train_config.json), eval.json's
record, and the checkpoint's state, with the versions and RNG that make a run reproducible. Where and how they
are written is train/rundir.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from torch import nn

from .cli import UserError
from .config import TrainConfig


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


def checkpoint_state(model: nn.Module, optimizer, scaler, ema, progress: dict, data: list[str]) -> dict:
    """What checkpoint.pt holds: the trained weights, optimizer, scaler, EMA, position, RNG, and the
    fingerprints of the data trained and evaluated on (a resume on other data is refused)."""
    return {"model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "ema": {n: t.cpu() for n, t in ema.shadow.items()} if ema else {}, "progress": progress,
            "rng": rng_state(), "data": list(data)}


def restore_checkpoint(state: dict, model: nn.Module, optimizer, scaler, ema, device: torch.device,
                       path: Path, data: list[str]) -> dict:
    """Put a checkpoint_state (read from `path`) back in place; returns its progress (a dict). A checkpoint
    of other data (`data`: the rows' fingerprints), of another model or recipe, or with a part missing, is
    one UserError line."""
    if state.get("data", data) != data:  # checkpoints from before the fingerprint cannot be checked
        raise UserError(f"the data differ from what {path} was trained on (another training or evaluation "
                        "file, or other rows in it); resume with the same data, or start again with --overwrite")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state.get("model", {})) != set(trainable):
        raise UserError(f"{path} does not match this model's trainable parameters")
    try:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["model"][n])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.shadow = {n: t.to(device) for n, t in state["ema"].items()}
        set_rng_state(state["rng"])
        return dict(state["progress"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "start again with --overwrite") from None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
