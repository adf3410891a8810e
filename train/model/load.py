"""Load an encoder and its tokenizer (local directory or hub), and rebuild a trained classifier from its adapter."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..cli import UserError
from ..config import TrainConfig
from ..data.hub import hub_reachable, unreachable
from .families import family_of
from .plan import head_modules, plan


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
        except Exception as e:  # OSError, a truncated safetensors file, a pickle refused: all "cannot load it"
            if local or not local_only:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                if "weights_only" in str(e) or "pickle" in str(e).lower():  # never advise weights_only=False
                    first = "its weights are a pickle file, which is never loaded; save them as model.safetensors"
                raise UserError(f"cannot load model '{name}': {first[:200]}") from None
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

    from ..rundir import read_run_info

    cfg, labels = read_run_info(adapter_dir)
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
    try:
        info["legacy"] = _legacy_head(cfg, model, Path(adapter_dir))
        if info["legacy"] and cfg.head == "linear":
            old = model.classifier.out_proj
            drop = model.config.classifier_dropout or model.config.hidden_dropout_prob
            head = LinearHead(model.config.hidden_size, model.config.num_labels, drop)
            model.classifier = head.to(old.weight.device, old.weight.dtype)
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
