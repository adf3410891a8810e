"""Load the encoder and tokenizer, shape the head, plan the LoRA budget, pick device and precision."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from lora import LoRAConfig, inject_lora, lora_targets

from .config import TrainConfig
from .errors import UserError
from .hub import hub_reachable, unreachable


def load_pretrained(name: str, num_labels: int, label_names: list[str]) -> tuple[nn.Module, object]:
    """(AutoModelForSequenceClassification with SDPA attention, tokenizer), from a directory or the hub."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized head" is expected: we train it
    hf_logging.disable_progress_bar()
    name = str(Path(name).expanduser()) if name.startswith("~") else name
    local = Path(name).is_dir()
    if not local and (Path(name).exists() or name.startswith((".", "/", "~"))):
        raise UserError(f"model not found: {name} is not a model directory")
    kwargs = dict(num_labels=num_labels, id2label=dict(enumerate(label_names)),
                  label2id={n: i for i, n in enumerate(label_names)}, attn_implementation="sdpa",
                  ignore_mismatched_sizes=True)  # a saved head for another label count is replaced, as it is trained
    attempts = [True] if local else [True, False]  # cache first; the network only if it answers
    for local_only in attempts:
        if not local_only and not hub_reachable():
            raise unreachable("model", name, "--model PATH")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local_only, **kwargs)
            return model, tokenizer
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            if local or not local_only:
                raise UserError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    raise AssertionError("unreachable")


class LinearHead(nn.Module):
    """The lean head: one Linear on the first token's features, (b, t, h) -> (b, K)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(features[:, 0, :]))


def head_modules(model: nn.Module) -> tuple[str, str | None]:
    """(output layer, hidden dense layer or None) of the classification head, by architecture."""
    names = dict(model.named_modules())
    if "classifier.out_proj" in names:  # RoBERTa family: classifier = dense -> tanh -> out_proj
        return "classifier.out_proj", ("classifier.dense" if "classifier.dense" in names else None)
    dense = next((n for n in names if n.endswith("pooler.dense")), None)  # BERT: pooler -> classifier
    return "classifier", dense


def lora_config(cfg: TrainConfig, model: nn.Module, rank: int) -> LoRAConfig:
    """The LoRAConfig that `cfg.head` implies for this model. The linear head must already be in place."""
    out, dense = head_modules(model)
    targets, trainable = cfg.lora.targets, ("classifier",)
    if cfg.head == "lora":
        if dense is None:
            raise UserError("--head lora needs a head with a hidden dense layer; this model has none")
        targets, trainable = (*cfg.lora.targets, dense), (out,)
    return replace(cfg.lora, rank=rank, targets=targets, trainable_modules=trainable)


def apply_head(cfg: TrainConfig, model: nn.Module) -> None:
    """Swap in the lean head for head='linear' on RoBERTa-style models (BERT's head is linear already)."""
    if cfg.head == "linear" and "classifier.out_proj" in dict(model.named_modules()):
        hidden = model.config.hidden_size
        drop = model.config.classifier_dropout or model.config.hidden_dropout_prob
        old = model.classifier.out_proj
        model.classifier = LinearHead(hidden, model.config.num_labels, drop).to(old.weight.device, old.weight.dtype)


def resolve_top_layers(cfg: TrainConfig, model: nn.Module) -> TrainConfig:
    """top_layers=K becomes lora.layers = the last K encoder layers of this model."""
    if cfg.top_layers is None:
        return cfg
    total = model.config.num_hidden_layers
    if cfg.top_layers > total:
        raise UserError(f"--top-layers {cfg.top_layers}: {cfg.model} has only {total} encoder layers")
    return replace(cfg, top_layers=None, lora=replace(cfg.lora, layers=tuple(range(total - cfg.top_layers, total))))


def plan(cfg: TrainConfig, model: nn.Module) -> tuple[int, LoRAConfig, list[tuple[str, int]]]:
    """Choose the rank (largest under the budget for 'auto') and count what will train, per module group.
    Counts come from the model as loaded, before injection, so nothing is modified."""
    cfg = resolve_top_layers(cfg, model)
    probe = lora_config(cfg, model, 1)
    try:
        names = lora_targets(model, probe)
    except ValueError as e:
        raise UserError(str(e)) from None
    modules = dict(model.named_modules())
    per_rank = sum(modules[n].in_features + modules[n].out_features for n in names)
    head = sum(p.numel() for n, p in model.named_parameters()
               if any(n.startswith(t + ".") or f".{t}." in f".{n}" for t in probe.trainable_modules))
    rank = cfg.lora.rank
    if cfg.auto_rank:
        rank = (cfg.max_trainable_params - 1 - head) // per_rank
        if rank < 1:
            raise UserError(f"no rank fits under {cfg.max_trainable_params:,} trainable parameters: the head alone "
                            f"has {head:,}; use --head linear or fewer targets")
    groups: dict[str, int] = {}
    for n in names:
        key = re.sub(r"\.\d+\.", ".*.", n)
        groups[key] = groups.get(key, 0) + rank * (modules[n].in_features + modules[n].out_features)
    rows = [(f"LoRA {k}", v) for k, v in groups.items()] + [(f"trained {', '.join(probe.trainable_modules)}", head)]
    return rank, lora_config(cfg, model, rank), rows


def prepare(cfg: TrainConfig, model: nn.Module) -> tuple[LoRAConfig, list[tuple[str, int]], int]:
    """Apply the head choice, plan, enforce the budget and inject LoRA. Returns (config, plan rows, total)."""
    apply_head(cfg, model)
    _, config, rows = plan(cfg, model)
    total = sum(v for _, v in rows)
    if total >= cfg.max_trainable_params:
        raise UserError(f"{total:,} trainable parameters reach the budget of {cfg.max_trainable_params:,}; "
                        f"fit it with a lower --rank (or --rank auto), fewer --targets or --layers, or --head linear")
    inject_lora(model, config)
    return config, rows, total


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device") from None


def cpu_has_bf16() -> bool:
    """bf16 matmul instructions (AVX512-BF16 or AMX), where bf16 autocast is a real speedup."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 on a CPU is slow and loses accuracy (no fp16 matmul units); use "
                        + ("--precision bf16 (native on this CPU)" if cpu_has_bf16() else "--precision fp32"))
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this GPU does not support bfloat16; use fp16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def usable_length(max_length: int, model: nn.Module) -> int:
    """max_length capped at what the model's position embeddings can take, whatever the data's lengths."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is None:
        return max_length
    # RoBERTa numbers positions from pad_token_id + 1, so it has that many fewer usable slots.
    roberta = model.config.model_type in ("roberta", "xlm-roberta", "camembert")
    return min(max_length, positions - (model.config.pad_token_id + 1 if roberta else 0))


def load_for_inference(adapter_dir: str, model_name: str | None, device: torch.device) -> tuple[nn.Module, object, dict]:
    """Rebuild a trained classifier from an adapter directory written by `python -m train`:
    the base model (or `model_name`), the head choice, then the adapter. Returns (model, tokenizer, run info)
    where run info is {"train": TrainConfig, "labels": [...]}."""
    from lora import load_adapter

    from .rundir import ADAPTER_CONFIG, parse_record, read_json

    info_path = Path(adapter_dir) / ADAPTER_CONFIG
    if not info_path.is_file():
        raise UserError(f"{adapter_dir} is not an adapter written by python -m train (no {ADAPTER_CONFIG})")
    cfg, labels = parse_record(read_json(info_path, "run config"), info_path)
    model, tokenizer = load_pretrained(model_name or cfg.model, len(labels), labels)
    cfg = replace(cfg, max_length=usable_length(cfg.max_length, model))  # a saved length is capped already
    apply_head(cfg, model)
    try:
        load_adapter(model, adapter_dir)
    except Exception as e:  # a wrong, truncated or foreign file: safetensors and our checks raise various types
        raise UserError(f"cannot load adapter {adapter_dir}: {str(e).splitlines()[0] if str(e) else e}") from None
    return model.to(device).eval(), tokenizer, {"train": cfg, "labels": labels}
