"""What a run leaves behind, as export, predict and the model card read it: the one module that knows
the run directory's file names, and how to load a merged export.

A run directory holds `adapter/` (adapter_model.safetensors, adapter_config.json and train_config.json:
{"train": TrainConfig dict, "labels": [...]}) and `eval.json` (the saved adapter's scores). An adapter
directory may also be named directly; its scores are then looked for beside it, then in its parent.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lora.adapter import CONFIG_NAME as ADAPTER_CONFIG  # PEFT's adapter_config.json

from .errors import UserError
from .rundir import ADAPTER as ADAPTER_DIR
from .rundir import EVAL as EVAL_REPORT
from .rundir import RUN_INFO, parse_record, read_json

CARD = "README.md"


@dataclass
class Run:
    adapter_dir: Path
    info: dict  # {"train": TrainConfig dict, "labels": [...]}
    report: dict | None  # eval.json: accuracy, macro_f1, per_class, examples, trainable_params, ...


def read_run_info(adapter_dir: str | Path) -> dict:
    """train_config.json of an adapter written by `python -m train`: {"train": flat settings, "labels": [...]}."""
    path = Path(adapter_dir) / RUN_INFO
    if not path.is_file():
        raise UserError(f"{adapter_dir} is not an adapter written by python -m train (no {RUN_INFO})")
    cfg, labels = parse_record(read_json(path, "run config"), path)
    return {"train": cfg.to_flat(), "labels": labels}


def find_run(path: str | Path) -> Run:
    """A run directory (with adapter/) or an adapter directory, with its run info and scores."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path} does not exist")
    if (p / ADAPTER_CONFIG).is_file():
        adapter, places = p, (p, p.parent)
    elif (p / ADAPTER_DIR / ADAPTER_CONFIG).is_file():
        adapter, places = p / ADAPTER_DIR, (p / ADAPTER_DIR, p)
    else:
        raise UserError(f"{path} is neither a run directory (with {ADAPTER_DIR}/) nor an adapter directory "
                        f"(with {ADAPTER_CONFIG})")
    info = read_run_info(adapter)
    report = None
    for place in places:
        if (place / EVAL_REPORT).is_file():
            report = json.loads((place / EVAL_REPORT).read_text())
            break
    return Run(adapter, info, report)


def is_merged_export(path: str | Path) -> bool:
    """A directory written by `train.export --format hf`: a transformers model, no adapter."""
    p = Path(path)
    return (p / "config.json").is_file() and not (p / ADAPTER_CONFIG).is_file() and any(
        (p / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))


def load_merged(path: str | Path, device: torch.device) -> tuple[nn.Module, object, list[str], int]:
    """A merged export as plain transformers loads it. Returns (model, tokenizer, labels, max_length):
    max_length is the tokenizer's model_max_length, which the export sets to the training max_length."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not is_merged_export(path):
        raise UserError(f"{path} is not a merged model directory (config.json and model.safetensors)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load model '{path}': {str(e).splitlines()[0]}") from None
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    limit = tokenizer.model_max_length
    return model.to(device).eval(), tokenizer, labels, limit if limit < 1_000_000 else 512
