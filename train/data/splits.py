"""A run's two splits tokenized in one pass over their rows, before the model loads: the model's tokenizer and
config are loaded alone (no weights: cheap), so that a bad row still stops the run before the slow part, and the
row counts the plan prints come from that pass, or from the token cache, which a run finds without reading a row."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig
from ..distributed import Dist, on_main
from ..families import usable_length
from .batches import Encoded, encode
from .corpus import RowCorpus, check_classes, check_rows
from .hub import hub_reachable


@dataclass
class Tokenized:
    train: Encoded
    eval: Encoded
    max_length: int  # what the rows were cut to: --max-length, capped at what the model's positions take


def tokenize_early(corpus: RowCorpus, cfg: TrainConfig, d: Dist) -> Tokenized | None:
    """Both splits, each read once (checked, fingerprinted and tokenized together) or found in the cache, and
    their classes checked, all before the model loads. None when the tokenizer cannot be loaded alone (a missing
    model, say): the rows are then only checked, so a data mistake is still named first, and the model's own
    loading says what is wrong with it."""
    found = _tokenizer(cfg.model, cfg.max_length)
    if found is None:
        on_main(lambda: check_rows(corpus), d)
        return None
    tokenizer, length = found
    train, held = (encode(split, tokenizer, length, cfg.cache_dir, d) for split in (corpus.train, corpus.eval))
    check_classes(train.labels, corpus.label_names, cfg, held.labels)
    return Tokenized(train, held, length)


def tokenized(early: Tokenized | None, corpus: RowCorpus, tokenizer, cfg: TrainConfig,
              d: Dist) -> tuple[Encoded, Encoded]:
    """tokenize_early's splits; or, where it had none or the model took another length than it expected
    (cfg: as prepared, max_length resolved), both splits tokenized now by the model's tokenizer."""
    if early is not None and early.max_length == cfg.max_length:
        return early.train, early.eval
    train, held = (encode(split, tokenizer, cfg.max_length, cfg.cache_dir, d) for split in (corpus.train, corpus.eval))
    check_classes(train.labels, corpus.label_names, cfg, held.labels)
    return train, held


def _tokenizer(name: str, max_length: int) -> tuple[object, int] | None:
    """(model `name`'s tokenizer, max_length capped as train.families.usable_length caps it), loaded as
    train.model.load_pretrained loads them (a local directory, else the hub's cache, else the hub), or None."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    name = str(Path(name).expanduser()) if name.startswith("~") else name
    for local_only in [True] if Path(name).is_dir() else [True, False]:
        if not local_only and not hub_reachable():
            return None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            config = AutoConfig.from_pretrained(name, local_files_only=local_only)
        except Exception:  # noqa: BLE001  (every way of failing means "not from here"; the model's loading says why)
            continue
        return tokenizer, usable_length(max_length, config)
    return None
