"""Tokenize once (cached on disk), then cut into length-grouped, dynamically padded batches."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .data import Split


@dataclass
class Encoded:
    """Token ids of a split, flat: row i is ids[offsets[i]:offsets[i + 1]]."""
    ids: torch.Tensor  # (total_tokens,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.labels)


def encode(split: Split, tokenizer, max_length: int, cache_dir: str | None) -> Encoded:
    """Tokenize once (truncated, unpadded); reuse the cached result when texts and tokenizer match."""
    key = hashlib.sha256()
    for part in (type(tokenizer).__name__, str(tokenizer.name_or_path), str(len(tokenizer)), str(max_length),
                 str(getattr(tokenizer, "truncation_side", "")), _tokenizer_fingerprint(tokenizer)):
        key.update(part.encode() + b"\0")
    for text in split.texts:
        key.update(text.encode() + b"\0")
    cache = Path(cache_dir) / f"{key.hexdigest()[:32]}.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        t = load_file(str(cache))
        return Encoded(t["ids"], t["offsets"], torch.tensor(split.labels))
    rows = tokenizer(split.texts, truncation=True, max_length=max_length)["input_ids"]
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([len(r) for r in rows]), 0)
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.int32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        save_file({"ids": ids, "offsets": offsets}, str(tmp))
        os.replace(tmp, cache)
    return Encoded(ids, offsets, torch.tensor(split.labels))


def _tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's full definition (vocabulary, merges, special tokens, templates) as text, so a
    changed tokenizer saved under the same name never reuses stale token ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for state in ("truncation", "padding"):  # set by the last call, not part of the definition
            spec.pop(state, None)
        return json.dumps(spec, sort_keys=True)
    try:
        return json.dumps(sorted(tokenizer.get_vocab().items()))
    except (AttributeError, NotImplementedError, TypeError):
        return ""


def epoch_batches(lengths: torch.Tensor, batch_size: int, seed: int, epoch: int,
                  mega: int = 50) -> list[list[int]]:
    """Length-grouped batches for one epoch: shuffle, sort by length inside mega-batches of
    `mega` batches, then shuffle the batch order. A pure function of (seed, epoch), so a resumed
    run or another process computes the very same list."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g)
    batches = []
    for chunk in perm.split(batch_size * mega):
        order = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        batches += [b.tolist() for b in order.split(batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def eval_batches(lengths: torch.Tensor, batch_size: int) -> list[list[int]]:
    """Batches sorted by length, so padding is minimal; order does not matter for metrics."""
    order = torch.argsort(lengths, descending=True, stable=True)
    return [b.tolist() for b in order.split(batch_size)]


def collate(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (b, longest row in the batch), labels (b,)."""
    lengths = data.lengths[indices]
    width = int(lengths.max()) if len(indices) else 1
    ids = torch.full((len(indices), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(indices), width), dtype=torch.int64)
    for row, (i, n) in enumerate(zip(indices, lengths.tolist())):
        start = int(data.offsets[i])
        ids[row, :n] = data.ids[start:start + n]
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": data.labels[indices]}
