"""Shared fixtures: a fixed seed and tiny randomly initialised RoBERTa / BERT classifiers.

Nothing here touches the network: every model is built from a config with random weights.
"""
from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers/peft import huggingface_hub

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=64, num_labels=4)


@pytest.fixture
def seed() -> int:
    """Seed every RNG the suite uses; returns the seed."""
    random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture
def tiny_roberta_config() -> RobertaConfig:
    return RobertaConfig(**TINY)


@pytest.fixture
def tiny_roberta(seed, tiny_roberta_config):
    """Callable: a fresh tiny RobertaForSequenceClassification in eval mode, float32 unless `dtype` says;
    keyword overrides change the config. Each call draws new random weights: deepcopy for twins."""
    def make(dtype: torch.dtype = torch.float32, **overrides) -> RobertaForSequenceClassification:
        config = RobertaConfig(**{**tiny_roberta_config.to_dict(), **overrides})
        return RobertaForSequenceClassification(config).to(dtype).eval()
    return make


@pytest.fixture
def tiny_bert(seed):
    """Callable: a fresh tiny BertForSequenceClassification in eval mode, float32 unless `dtype` says."""
    def make(dtype: torch.dtype = torch.float32) -> BertForSequenceClassification:
        return BertForSequenceClassification(BertConfig(**TINY)).to(dtype).eval()
    return make


@pytest.fixture
def batch(seed) -> dict[str, torch.Tensor]:
    """A small padded batch for the tiny models (ids avoid RoBERTa's pad id 1 except in the padding)."""
    input_ids = torch.randint(3, TINY["vocab_size"], (4, 10))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 7:], attention_mask[1, 7:] = 1, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": torch.randint(0, TINY["num_labels"], (4,))}


@pytest.fixture
def randomize(seed):
    """Callable: give every LoRA B (zero at init) and every trainable head parameter random values,
    so a test of merging, saving or parity cannot pass because the adapter is a no-op."""
    from lora import lora_layers

    def fill(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
        with torch.no_grad():
            for _, layer in lora_layers(model):
                layer.lora_B.weight.normal_(0.0, std)
            for name, param in model.named_parameters():
                if param.requires_grad and "lora_" not in name:
                    param.normal_(0.0, std)
        return model
    return fill


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved 2-layer RoBERTa with a word-level tokenizer: a local --model for CLI runs."""
    from helpers.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A learnable AG News-layout directory (train.csv 256 rows, test.csv 64, classes.txt)."""
    from helpers.tiny import write_agnews

    return write_agnews(tmp_path_factory.mktemp("tiny-data"), n_train=256, n_eval=64)


@pytest.fixture(scope="session")
def model_without_dropout(tmp_path_factory):
    """The tiny RoBERTa with dropout off: runs that draw dropout masks differently (several processes, the
    frozen-prefix cache) can then match step for step."""
    from transformers import AutoConfig

    from helpers.tiny import make_tiny_model

    directory = make_tiny_model(tmp_path_factory.mktemp("tiny-nodrop"))
    config = AutoConfig.from_pretrained(directory)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(directory)
    return directory


@pytest.fixture
def tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, counting its calls and rows (tiny.Counting)."""
    from transformers import AutoTokenizer

    from helpers.tiny import Counting

    return Counting(AutoTokenizer.from_pretrained(tiny_model_dir))
