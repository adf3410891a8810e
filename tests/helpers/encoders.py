"""Tiny encoders of each family the frozen-prefix split supports (float64 by default, for exactness), and
token rows laid out flat like the token cache's."""
import torch
from conftest import TINY
from transformers import (BertConfig, BertForSequenceClassification, ElectraConfig, ElectraForSequenceClassification,
                          MPNetConfig, MPNetForSequenceClassification, RobertaConfig, RobertaForSequenceClassification,
                          XLMRobertaConfig, XLMRobertaForSequenceClassification)

from train.data.batches import Encoded

KINDS = {"roberta": (RobertaConfig, RobertaForSequenceClassification, 1),  # (config, class, pad id)
         "bert": (BertConfig, BertForSequenceClassification, 0),
         "mpnet": (MPNetConfig, MPNetForSequenceClassification, 1),
         "electra": (ElectraConfig, ElectraForSequenceClassification, 0),
         "xlm-roberta": (XLMRobertaConfig, XLMRobertaForSequenceClassification, 1)}


def make(kind: str, dtype=torch.float64, layers: int = 3, **overrides):
    config, cls, _ = KINDS[kind]
    torch.manual_seed(0)
    return cls(config(**{**TINY, "num_hidden_layers": layers, **overrides})).to(dtype)


def encoded(n: int = 7, seed: int = 1, pad_id: int = 1) -> Encoded:
    """Rows of 3..12 tokens (ids avoid both pad ids), flat like the token cache."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 13, (n,), generator=g)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    ids = torch.randint(3, TINY["vocab_size"], (int(offsets[-1]),), generator=g, dtype=torch.int32)
    return Encoded(ids, offsets, torch.randint(0, TINY["num_labels"], (n,), generator=g), pad_id)
