"""Frozen-prefix cache: when LoRA starts at layer s, the embeddings and layers 0..s-1 are frozen and
(without dropout) give the same output every epoch. Compute it once per example, keep it on disk,
memory-mapped, and train and evaluate only layers s..L-1 and the head from it.

Layout on disk, beside the token cache: prefix-<key>.bin holds the hidden states flat, row i at
[offsets[i], offsets[i + 1]) like batches.Encoded, (total_tokens, hidden) in the storage dtype;
prefix-<key>.safetensors holds the offsets and is written last, so its presence means the .bin is whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from lora import LoRALinear
from lora.adapter import atomic_write

from .batches import Encoded, collate, eval_batches
from .distributed import Dist, barrier
from .device import inference_attention
from .errors import UserError
from .families import FAMILIES, Family, family_of

FORMAT = 1  # bump when the layout or what is stored changes, so old caches are never read
_NOT_PREFIX = ("id2label", "label2id", "num_labels", "problem_type", "_name_or_path", "classifier_dropout",
               "hidden_dropout_prob", "attention_probs_dropout_prob")  # config keys the prefix output ignores


def start_layer(layers: tuple[int, ...] | None, num_layers: int) -> int:
    """The first layer that gets LoRA: everything below it is frozen and LoRA-free. 0 = no prefix."""
    if not layers:
        return 0
    if max(layers) >= num_layers or min(layers) < 0:
        raise ValueError(f"layers {sorted(layers)} are not all in 0..{num_layers - 1}")
    return min(layers)


def _encoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, Family]:
    """(base model, its layer list, family) of a classifier whose encoder the cache can split; UserError else."""
    family = family_of(model)
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if family is None or not family.splits or not isinstance(layers, nn.ModuleList):
        raise UserError(f"the frozen-prefix cache cannot split {type(model).__name__} (it splits "
                        f"{', '.join(f.name for f in FAMILIES if f.splits)}); run with --no-prefix-cache")
    return base, layers, family


def _embedding(base: nn.Module) -> list[nn.Module]:
    """The modules before the first layer: the embeddings, and ELECTRA's projection to the hidden size."""
    return [base.embeddings, *([base.embeddings_project] if hasattr(base, "embeddings_project") else [])]


def _embed(base: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids (b, t) -> what the first layer receives, (b, t, h)."""
    x = base.embeddings(input_ids=input_ids)
    return base.embeddings_project(x) if hasattr(base, "embeddings_project") else x


def _extended_mask(base: nn.Module, attention_mask: torch.Tensor, hidden: torch.Tensor):
    """The mask the model's own forward builds from the (b, t) mask: (b, 1, t, t), or None when nothing is
    padded under SDPA. The same transformers helper with the same arguments, so eager and SDPA rules carry over."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)


def _run_layers(base: nn.Module, family: Family, layers, x: torch.Tensor, mask) -> torch.Tensor:
    """x (b, t, h) through `layers` as the encoder runs them; MPNet's encoder computes one relative position
    bias from the shape and hands it to every layer."""
    extra = {"position_bias": base.encoder.compute_position_bias(x)} if family.position_bias else {}
    for layer in layers:
        out = layer(x, mask, **extra)
        x = out[0] if isinstance(out, tuple) else out
    return x


class PrefixModel(nn.Module):
    """Layers start..L-1 and the head of `model` (the very same modules, so LoRA in them, DDP over
    the trainable parameters, merge_lora and save_adapter on `model` all apply), fed cached hidden states."""

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        base, layers, _ = _encoder(model)
        if not 0 < start <= len(layers):
            raise ValueError(f"start must be in 1..{len(layers)}, got {start}")
        for i, module in enumerate([nn.ModuleList(_embedding(base)), *layers[:start]]):
            where = "the embeddings" if i == 0 else f"layer {i - 1}"
            if any(p.requires_grad for p in module.parameters()) or any(
                    isinstance(m, LoRALinear) for m in module.modules()):
                raise ValueError(f"{where} has trainable parameters or LoRA, so it cannot be cached")
        self.model, self.start = model, start
        # The dtype the model's own layer `start` receives: LayerNorm output, fp32 under autocast for an fp32 model.
        self.input_dtype = next(p.dtype for p in base.embeddings.parameters() if p.is_floating_point())

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden_states (b, t, h) as PrefixCache.collate gives them, attention_mask (b, t) -> logits (b, K)."""
        base, layers, family = _encoder(self.model)
        x = hidden_states.to(self.input_dtype)  # cached in bf16: upcast like the uncached residual stream
        x = _run_layers(base, family, layers[self.start:], x, _extended_mask(base, attention_mask, x))
        if getattr(base, "pooler", None) is not None:  # BERT: classifier(dropout(pooler(first token)))
            return self.model.classifier(self.model.dropout(base.pooler(x)))
        return self.model.classifier(x)  # RoBERTa: the head reads the first token itself


@dataclass
class PrefixCache:
    """Hidden states entering layer `start`, one row per example: row i is hidden[offsets[i]:offsets[i + 1]]."""
    hidden: torch.Tensor  # (total_tokens, h), memory-mapped from `path` when there is one
    offsets: torch.Tensor  # (n + 1,) int64, the token cache's offsets
    labels: torch.Tensor  # (n,) int64
    start: int
    path: Path | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def __len__(self) -> int:
        return len(self.labels)

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """hidden_states (b, t, h) zero-padded to the longest row, attention_mask (b, t) int64 and labels (b,):
        the same mask and labels batches.collate gives for these rows. Padding values never reach a real
        token: padded keys are masked and the head reads token 0."""
        lengths = self.lengths[rows]
        if not len(rows):
            return {"hidden_states": self.hidden.new_zeros((0, 1, self.hidden.shape[1])),
                    "attention_mask": torch.zeros((0, 1), dtype=torch.int64), "labels": self.labels[:0]}
        starts = self.offsets[rows].tolist()
        # Contiguous slices of the mapping, padded in one copy: faster than a per-row loop or a gather.
        hidden = pad_sequence([self.hidden[a:a + n] for a, n in zip(starts, lengths.tolist())], batch_first=True)
        mask = (torch.arange(hidden.shape[1]) < lengths[:, None]).to(torch.int64)
        return {"hidden_states": hidden, "attention_mask": mask, "labels": self.labels[rows]}


def storage_dtype(model: nn.Module, amp: torch.dtype | None) -> torch.dtype:
    """The autocast dtype, else the model's own float dtype (fp32; fp64 in exactness tests)."""
    return amp or next(p.dtype for p in model.parameters() if p.is_floating_point())


def cache_bytes(data: Encoded, hidden_size: int, dtype: torch.dtype) -> int:
    """Bytes of the .bin: total tokens × hidden × itemsize."""
    return int(data.offsets[-1]) * hidden_size * dtype.itemsize


def check_disk(directory: Path, need: int) -> None:
    """UserError, one line, when `directory`'s disk has less than `need` bytes free."""
    free = shutil.disk_usage(directory).free
    if need > free:
        raise UserError(f"the frozen-prefix cache needs {need / 1e9:.1f} GB in {directory}, which has only "
                        f"{free / 1e9:.1f} GB free; use a --cache-dir on a larger disk, or fewer/shorter examples")


def cache_key(model: nn.Module, data: Encoded, start: int, dtype: torch.dtype) -> str:
    """A fingerprint of everything the cached states depend on: the prefix's weights (hashed in full,
    ~0.3 s for roberta-base at s=8, cheap against a stale cache), the config, the token ids, start, dtype."""
    base, layers, _ = _encoder(model)
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_PREFIX}
    key = hashlib.sha256(json.dumps([FORMAT, type(model).__name__, config, model.config._attn_implementation,
                                     start, str(dtype)], sort_keys=True, default=str).encode())
    # The encoder's own weights outside its layers (MPNet's relative position bias) shape every layer's output.
    shared = [(n, t) for n, t in [*base.encoder.named_parameters(), *base.encoder.named_buffers()]
              if not n.startswith("layer.")]
    for tensors in ([*m.named_parameters(), *m.named_buffers()] for m in (*_embedding(base), *layers[:start])):
        shared += tensors
    for name, t in shared:
        key.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        key.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    for t in (data.ids, data.offsets):
        key.update(t.contiguous().view(torch.uint8).numpy())
    return key.hexdigest()[:32]


def _run_prefix(model: nn.Module, data: Encoded, start: int, pad_id: int, amp: torch.dtype | None,
                batch_size: int, out: torch.Tensor) -> None:
    """Fill `out` (total_tokens, h) with the embeddings + layers 0..start-1 output, in eval mode (no
    dropout) under inference_mode, batch by batch sorted by length so padding costs little."""
    base, layers, family = _encoder(model)
    modules = [*_embedding(base), *layers[:start]]
    modes = [m.training for m in modules]
    device, lengths = next(model.parameters()).device, data.lengths
    try:
        for m in modules:
            m.eval()
        with torch.inference_mode():
            for rows in eval_batches(lengths, batch_size):
                batch = collate(data, rows, pad_id)
                mask = batch["attention_mask"].to(device)
                with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
                    x = _embed(base, batch["input_ids"].to(device))
                    x = _run_layers(base, family, layers[:start], x, _extended_mask(base, mask, x))
                x = x.to(out.dtype).cpu()
                for row, (i, n) in enumerate(zip(rows, lengths[rows].tolist())):
                    begin = int(data.offsets[i])
                    out[begin:begin + n] = x[row, :n]
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"prefix-{key}.bin", directory / f"prefix-{key}.safetensors"


def _load(directory: Path, key: str, data: Encoded, start: int, shape: tuple[int, int],
          dtype: torch.dtype) -> PrefixCache | None:
    """Map a finished cache, or None when there is none whole (no index, a short .bin, other offsets)."""
    binary, index = _paths(directory, key)
    if not index.is_file() or not binary.is_file():
        return None
    if binary.stat().st_size != shape[0] * shape[1] * dtype.itemsize:
        return None
    if not torch.equal(load_file(str(index))["offsets"], data.offsets):
        return None
    hidden = torch.from_file(str(binary), shared=False, size=shape[0] * shape[1], dtype=dtype).view(shape)
    return PrefixCache(hidden, data.offsets, data.labels, start, binary)


def _write(directory: Path, key: str, fill, shape: tuple[int, int], dtype: torch.dtype, offsets: torch.Tensor) -> None:
    """Create the .bin through a shared mapping filled by fill(tensor), fsync it, rename it into place,
    then write the index: a killed build leaves at most a temp file, never a cache that looks whole."""
    binary, index = _paths(directory, key)

    def write_bin(tmp: str) -> None:
        with open(tmp, "r+b") as f:
            f.truncate(shape[0] * shape[1] * dtype.itemsize)
        target = torch.from_file(tmp, shared=True, size=shape[0] * shape[1], dtype=dtype).view(shape)
        fill(target)
        del target  # unmap before the fsync, so every page is written back
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())

    atomic_write(binary, write_bin)
    atomic_write(index, lambda tmp: save_file({"offsets": offsets.contiguous()}, tmp, metadata={"key": key}))


def build_prefix_cache(model: nn.Module, data: Encoded, start: int, pad_id: int, amp: torch.dtype | None,
                       cache_dir: str | os.PathLike | None, batch_size: int = 64, d: Dist = Dist(),
                       poll_seconds: float = 0.5) -> PrefixCache:
    """The hidden states entering layer `start` for every row of `data`: reused from `cache_dir` when a
    whole cache with the same key is there, else computed once (by local rank 0 under torchrun; the others
    wait, then every rank maps the same file). cache_dir None keeps them in memory, per process.
    Computed with SDPA attention, the fastest forward (train.device.inference_attention)."""
    _encoder(model)  # refuse an unsupported architecture before any work
    with inference_attention(model):
        return _build(model, data, start, pad_id, amp, cache_dir, batch_size, d, poll_seconds)


def _build(model: nn.Module, data: Encoded, start: int, pad_id: int, amp: torch.dtype | None,
           cache_dir: str | os.PathLike | None, batch_size: int, d: Dist, poll_seconds: float) -> PrefixCache:
    dtype = storage_dtype(model, amp)
    shape = (int(data.offsets[-1]), model.config.hidden_size)

    def run(out: torch.Tensor) -> None:
        _run_prefix(model, data, start, pad_id, amp, batch_size, out)

    if not cache_dir or shape[0] == 0:
        hidden = torch.empty(shape, dtype=dtype)
        run(hidden)
        return PrefixCache(hidden, data.offsets, data.labels, start)
    directory = Path(cache_dir)
    key = cache_key(model, data, start, dtype)
    if d.local_rank == 0:
        cache = _load(directory, key, data, start, shape, dtype)
        if cache is None:
            directory.mkdir(parents=True, exist_ok=True)
            check_disk(directory, shape[0] * shape[1] * dtype.itemsize)
            _write(directory, key, run, shape, dtype, data.offsets)
    else:
        # Poll rather than sit in a collective: a build can outlast the process group's timeout.
        while not _paths(directory, key)[1].is_file():
            time.sleep(poll_seconds)
    barrier(d)
    cache = _load(directory, key, data, start, shape, dtype)
    if cache is None:
        raise RuntimeError(f"the frozen-prefix cache {_paths(directory, key)[0]} is missing or incomplete")
    return cache
