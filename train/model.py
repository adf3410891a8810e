"""Load the encoder and tokenizer, shape the head, plan the LoRA budget."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from lora import LoRAConfig, inject_lora, lora_targets

from .config import TrainConfig
from .errors import UserError
from .families import family_of, matches, resolve_targets
from .hub import hub_reachable, unreachable


def load_pretrained(name: str, num_labels: int, label_names: list[str],
                    attention: str = "sdpa") -> tuple[nn.Module, object]:
    """(AutoModelForSequenceClassification with `attention` ("sdpa" or "eager"), tokenizer), from a
    directory or the hub."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized head" is expected: we train it
    hf_logging.disable_progress_bar()
    name = str(Path(name).expanduser()) if name.startswith("~") else name
    local = Path(name).is_dir()
    if not local and (Path(name).exists() or name.startswith((".", "/", "~"))):
        raise UserError(f"model not found: {name} is not a model directory")
    kwargs = dict(num_labels=num_labels, id2label=dict(enumerate(label_names)),
                  label2id={n: i for i, n in enumerate(label_names)},
                  ignore_mismatched_sizes=True)  # a saved head for another label count is replaced, as it is trained
    attempts = [True] if local else [True, False]  # cache first; the network only if it answers
    for local_only in attempts:
        if not local_only and not hub_reachable():
            raise unreachable("model", name, "--model PATH")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            kernel = attention if attention != "sdpa" or supports_sdpa(name, local_only) else "eager"
            model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=local_only,
                                                                       attn_implementation=kernel, **kwargs)
            # transformers 5 keeps a checkpoint's stored dtype; fp32 weights are what the LoRA factors, the
            # optimizer and autocast expect (a half-precision checkpoint would fail on CPU, or train fp16 params)
            return model.float(), tokenizer
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            if local or not local_only:
                raise UserError(f"cannot load model '{name}': {str(e).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def supports_sdpa(name: str, local_only: bool = True) -> bool:
    """Whether transformers has an SDPA attention for this model's classifier (MPNet and DeBERTa-v2 have
    eager attention only: they are loaded with it)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    return bool(getattr(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None), "_supports_sdpa", False))


class LinearHead(nn.Module):
    """The lean head of adapters saved before the stock-head change: one Linear on the first token's
    features, (b, t, h) -> (b, K). Kept only to load those adapters; nothing is trained with it any more,
    because it has no place in the stock *ForSequenceClassification class (PEFT, transformers, ONNX)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, features: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.out_proj(self.dropout(features[:, 0, :]))


def head_modules(model: nn.Module) -> tuple[str, str | None, tuple[str, ...], tuple[str, ...]]:
    """(output layer, hidden dense layer or None, what `--head full` trains, what is stored though frozen) of
    the classification head: from the family table, else guessed from RoBERTa's and BERT's layouts."""
    family = family_of(model)
    names = dict(model.named_modules())
    if family is not None:  # the dense layer by its full name (BERT's is bert.pooler.dense)
        dense = next((n for n in names if family.head_dense and matches(n, family.head_dense)), None)
        return family.head_out, dense, family.head_full, family.head_saved
    if "classifier.out_proj" in names:  # RoBERTa-like: classifier = dense -> tanh -> out_proj
        dense = "classifier.dense" if "classifier.dense" in names else None
        return "classifier.out_proj", dense, ("classifier",), ("classifier",) if dense else ()
    dense = next((n for n in names if n.endswith("pooler.dense")), None)  # BERT-like: pooler -> classifier
    return "classifier", dense, ("classifier",), ()


def lora_config(cfg: TrainConfig, model: nn.Module, rank: int) -> LoRAConfig:
    """The LoRAConfig that `cfg` implies for this model: its targets resolved to this family's module names
    (train.families), and what trains and is stored for `cfg.head`; every head is the model's stock one.

    full: the whole head trains. linear: only the output layer trains. lora: the output layer trains and the
    hidden dense layer gets LoRA. A head layer that a pretrained checkpoint lacks (RoBERTa's classifier.dense)
    stays frozen at its init under linear and lora, so it is stored in the adapter (saved_modules). BERT's
    dense layer is the pretrained pooler: nothing extra is stored, and linear equals full."""
    out, dense, full, saved = head_modules(model)
    try:
        targets = resolve_targets(model, cfg.lora.targets, cfg.lora.layers)
    except ValueError as e:
        raise UserError(str(e)) from None
    trainable, stored = full, ()
    if cfg.head in ("linear", "lora"):
        trainable, stored = (out,), saved
    if cfg.head == "lora":
        if dense is None:
            raise UserError("--head lora needs a head with a hidden dense layer; this model has none")
        targets = (*targets, dense)
    return replace(cfg.lora, rank=rank, targets=targets, trainable_modules=trainable, saved_modules=stored)


def apply_head(cfg: TrainConfig, model: nn.Module) -> None:
    """Initialise the stock head for `cfg.head` (lora_config says what trains). With head='linear', a hidden
    dense layer that the checkpoint lacks (RoBERTa's) starts as the identity, so out_proj sees tanh(features) at
    their own scale: at its random init (std 0.02) the dense layer shrinks them (6x at hidden 64, 2x on
    roberta-base) and the same recipe learns slower. The identity is stored in the adapter like any other head
    weight."""
    _, dense, _, saved = head_modules(model)
    if cfg.head == "linear" and dense is not None and saved:
        layer = model.get_submodule(dense)
        with torch.no_grad():
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)


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


def usable_length(max_length: int, model: nn.Module) -> int:
    """max_length capped at what the model's position embeddings can take, whatever the data's lengths."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is None:
        return max_length
    # RoBERTa and MPNet number positions from pad_token_id + 1, so they have that many fewer usable slots.
    family = family_of(model)
    return min(max_length, positions - (model.config.pad_token_id + 1 if family and family.positions_after_pad else 0))


def load_for_inference(adapter_dir: str, model_name: str | None,
                       device: torch.device) -> tuple[nn.Module, object, dict]:
    """Rebuild a trained classifier from an adapter directory written by `python -m train`:
    the base model (or `model_name`), the head choice, then the adapter. Returns (model, tokenizer, run info):
    {"train": TrainConfig, "labels": [...], "trainable_params": the recipe's count, "legacy": None or why this
    adapter cannot be exported}. The saved max length is capped at what the model can take."""
    from lora import load_adapter

    from .rundir import RUN_INFO, parse_record, read_json

    info_path = Path(adapter_dir) / RUN_INFO
    if not info_path.is_file():
        raise UserError(f"{adapter_dir} is not an adapter written by python -m train (no {RUN_INFO})")
    cfg, labels = parse_record(read_json(info_path, "run config"), info_path)
    info = {"labels": labels}
    # Adapters from before the stock-head change did not store RoBERTa's random classifier.dense: the run's
    # seed draws the same init it trained with (same library versions), the best that can be done for them.
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_pretrained(model_name or cfg.model, len(labels), labels)
    cfg = replace(cfg, max_length=usable_length(cfg.max_length, model))
    info["train"] = cfg
    try:
        info["trainable_params"] = sum(v for _, v in plan(cfg, model)[2])
    except UserError:
        info["trainable_params"] = None
    info["legacy"] = _legacy_head(cfg, model, Path(adapter_dir))
    if info["legacy"] and cfg.head == "linear":
        old = model.classifier.out_proj
        drop = model.config.classifier_dropout or model.config.hidden_dropout_prob
        head = LinearHead(model.config.hidden_size, model.config.num_labels, drop)
        model.classifier = head.to(old.weight.device, old.weight.dtype)
    try:
        load_adapter(model, adapter_dir)
    except Exception as e:  # a wrong, truncated or foreign file: safetensors and our checks raise various types
        raise UserError(f"cannot load adapter {adapter_dir}: {str(e).splitlines()[0] if str(e) else e}") from None
    return model.to(device).eval(), tokenizer, info


def _legacy_head(cfg: TrainConfig, model: nn.Module, adapter_dir: Path) -> str | None:
    """Why an adapter saved before the stock-head change is not exactly the stock model, or None."""
    from safetensors import safe_open

    _, dense, _, saved = head_modules(model)
    weights = adapter_dir / "adapter_model.safetensors"
    if cfg.head == "full" or dense is None or not saved or not weights.is_file():
        return None
    with safe_open(str(weights), "pt") as f:  # key names only, no tensors read
        if any(k.endswith(f"{dense}.weight") for k in f.keys()):
            return None
    if cfg.head == "linear":
        return "its lean linear head (from before heads were stock) has no place in the stock classifier"
    return f"it does not store {dense} (from before heads were stored whole); its init is re-drawn from the seed"
