"""The whole training state in one file, written atomically, read back without pickle's code paths."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lora.adapter import atomic_write

from .errors import UserError

CHECKPOINT = "checkpoint.pt"


def write_json(target: Path, obj) -> None:
    atomic_write(target, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def save_checkpoint(directory: Path, state: dict) -> None:
    atomic_write(directory / CHECKPOINT, lambda p: torch.save(state, p))


def load_checkpoint(directory: Path) -> dict:
    path = directory / CHECKPOINT
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    # weights_only: tensors, numbers, strings and containers only; no arbitrary objects are built.
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_config(directory: Path):
    """The TrainConfig a run in `directory` was started with."""
    from .config import TrainConfig

    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} is not a valid run config: {e}") from None
