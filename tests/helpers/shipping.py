"""Helpers for the export, predict and model-card tests: tiny encoders saved without a classification
head (as roberta-base is, so every load draws a new random head), and adapters saved the way a run saves
them, with random trained-looking weights instead of training."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from helpers.tiny import CLASSES, make_tiny_model

SIX = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")
TEXTS = ["goal match striker league coach", "shares", "market profit bank stocks merger after the report today",
         "software chip internet robot laptop research on a new big week", "the war"]


def make_encoder_dir(directory: Path, arch: str = "roberta", layers: int = 1) -> Path:
    """A tiny pretrained-looking encoder (hidden 64, `layers` layers) with no classifier in its checkpoint,
    and a word-level tokenizer. arch 'bert' keeps BERT's pooler, part of BERT's pretrained checkpoint.
    One layer by default: every module kind is there, and the ONNX export, the slow part, takes half as long."""
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaForSequenceClassification

    make_tiny_model(directory / "full")
    tokenizer = AutoTokenizer.from_pretrained(directory / "full")
    if arch == "roberta":
        encoder = RobertaForSequenceClassification.from_pretrained(directory / "full").roberta
        encoder.encoder.layer = encoder.encoder.layer[:layers]
        encoder.config.num_hidden_layers = layers
        encoder.save_pretrained(directory)
    else:
        torch.manual_seed(1)
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=80, pad_token_id=1)
        BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


FAMILY_MODELS = {  # model_type -> (config class, bare encoder class) in transformers
    "mpnet": ("MPNetConfig", "MPNetModel"), "distilbert": ("DistilBertConfig", "DistilBertModel"),
    "deberta-v2": ("DebertaV2Config", "DebertaV2Model"), "electra": ("ElectraConfig", "ElectraModel"),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel"), "bert": ("BertConfig", "BertModel"),
    "roberta": ("RobertaConfig", "RobertaModel"),
}


def family_config(model_type: str, vocab: int = 100, layers: int = 2, **overrides):
    """A tiny config (hidden 64, 4 heads, FFN 128) of any family in the table, pad id 1 like RoBERTa."""
    import transformers

    config_class = getattr(transformers, FAMILY_MODELS[model_type][0])
    if model_type == "distilbert":
        shape = dict(dim=64, n_layers=layers, n_heads=4, hidden_dim=128, max_position_embeddings=80)
    else:
        shape = dict(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
                     max_position_embeddings=80)
        shape |= {"embedding_size": 64} if model_type == "electra" else {}
    return config_class(vocab_size=vocab, pad_token_id=1, **shape, **overrides)


def make_family_dir(directory: Path, model_type: str, layers: int = 2) -> Path:
    """A tiny pretrained-looking encoder of `model_type` with no classifier in its checkpoint (so every load
    draws a new head, as for roberta-base), and the tiny word-level tokenizer."""
    import transformers
    from transformers import AutoTokenizer

    make_tiny_model(directory / "full")
    tokenizer = AutoTokenizer.from_pretrained(directory / "full")
    torch.manual_seed(1)
    config = family_config(model_type, vocab=len(tokenizer), layers=layers)
    getattr(transformers, FAMILY_MODELS[model_type][1])(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_adapter(root: Path, model_dir: Path, head: str, targets: tuple[str, ...], **overrides):
    """A run directory as python -m train leaves it (adapter/, eval.json), with random LoRA B and head weights.
    Returns (run directory, the live trained model in eval mode, its trainable count)."""
    from lora import save_adapter
    from train.rundir import ADAPTER as ADAPTER_DIR, EVAL as EVAL_REPORT, RUN_INFO
    from train.config import TrainConfig
    from train.model import load_pretrained, prepare, resolve
    from train.rundir import run_record

    cfg = TrainConfig.from_flat(dict(model=str(model_dir), head=head, targets=targets, rank=4, alpha=8.0,
                                     max_length=32, output_dir=str(root), **overrides))
    torch.manual_seed(cfg.seed)
    model, _ = load_pretrained(cfg.model, len(CLASSES), CLASSES)
    resolved, rows = resolve(cfg, model, 32)
    prepare(resolved, model)
    lconf, total = resolved.lora, sum(v for _, v in rows)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.1)
    adapter = root / ADAPTER_DIR
    save_adapter(model, adapter, lconf, base_model_name=cfg.model)
    (adapter / RUN_INFO).write_text(json.dumps(run_record(resolved, cfg, CLASSES, rows)))
    per_class = [{"label": c, "precision": 0.5, "recall": 0.25, "f1": 1 / 3, "support": 10} for c in CLASSES]
    (root / EVAL_REPORT).write_text(json.dumps({"accuracy": 0.25, "macro_f1": 1 / 3, "per_class": per_class,
                                                "examples": 40, "best_epoch": 1, "trainable_params": total}))
    return root, model.eval(), total


def logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    """(len(texts), K) fp32 logits of a padded batch."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
