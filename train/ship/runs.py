"""A trained run as the tools (export, predict, evaluate) use it: its classifier rebuilt from the adapter, which
run the adapter comes from, and whether that run finished, decided one way for all three. A run is finished when
eval.json sits beside its adapter (in the adapter's folder, as an export keeps it, or in the run directory above
it); before that, its adapter is the best epoch so far."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from lora import load_adapter
from lora.adapter import CONFIG_NAME as ADAPTER_CONFIG

from ..errors import UserError
from ..model import load_pretrained
from ..rundir import ADAPTER, EVAL, read_run_info
from ..tasks import task_kind


def adapter_dir(path: str | Path) -> Path:
    """The adapter folder `path` names: itself, or a run directory's adapter/ (else `path`, for the loader to
    refuse)."""
    p = Path(path)
    if not (p / ADAPTER_CONFIG).is_file() and (p / ADAPTER / ADAPTER_CONFIG).is_file():
        return p / ADAPTER
    return p


def scores_file(adapter: Path) -> Path | None:
    """The eval.json of the run that wrote `adapter`, or None while that run is unfinished."""
    return next((place / EVAL for place in (adapter, adapter.parent) if (place / EVAL).is_file()), None)


def check_finished(source: str | Path, adapter: Path, allow: bool) -> None:
    """Refuse an adapter of an unfinished run in one line unless --allow-unfinished (`allow`); when allowed, say
    so in one note: line on stderr, so no output passes for a finished run's."""
    if not (adapter / ADAPTER_CONFIG).is_file():
        return  # no adapter at all: the loader says what is wrong
    read_run_info(adapter)  # a damaged run record is the first thing to fix, and says so in one line
    if scores_file(adapter) is not None:
        return
    if not allow:
        raise UserError(f"{source} is an unfinished run (no {EVAL}: its adapter is the best epoch so far); finish it "
                        "with python -m train --resume, or pass --allow-unfinished to use it as it is")
    print(f"note: {source} is an unfinished run (no {EVAL}): its adapter is the best epoch so far", file=sys.stderr)


def load_for_inference(adapter_dir: str, model_name: str | None,
                       device: torch.device) -> tuple[nn.Module, object, dict]:
    """Rebuild a trained classifier from an adapter directory written by `python -m train`:
    the base model (or `model_name`), the head choice, then the adapter. Returns (model, tokenizer, run info):
    {"train": TrainConfig as the run resolved it, "labels": [...], "trainable_params": the run's count}."""
    record = read_run_info(adapter_dir)
    cfg, labels = record.train, record.labels
    info = {"train": cfg, "labels": labels, "trainable_params": record.trainable, "pairs": record.pairs}
    kind = task_kind(cfg.task)
    model, tokenizer = load_pretrained(model_name or cfg.model, kind.outputs(len(labels)), labels,
                                       problem_type=kind.problem_type)
    try:
        load_adapter(model, adapter_dir)
    except Exception as e:  # a wrong, truncated or foreign file: safetensors and our checks raise various types
        raise UserError(f"cannot load adapter {adapter_dir}: {str(e).splitlines()[0] if str(e) else e}") from None
    return model.to(device).eval(), tokenizer, info
