"""The frozen-prefix cache: when LoRA starts at layer s, the embeddings and layers 0..s-1 are frozen and
(without dropout) give the same output every epoch. Compute it once per example, keep it on disk,
memory-mapped, and train and evaluate only layers s..L-1 and the head from it.

Layout on disk, beside the token cache: prefix-<key>.bin holds the hidden states flat, row i at
[offsets[i], offsets[i + 1]) like batches.Encoded, (total_tokens, hidden) in the storage dtype;
prefix-<key>.safetensors holds the offsets and the .bin's checksum, and is written last: its presence
means the .bin was whole, and the checksum that it is unchanged since (a damaged cache is rebuilt, never read).
The .bin's blocks are allocated before it is mapped, so a full disk is one line, never a SIGBUS.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from train.files import atomic_write, sweep_temps

from .data.batches import Encoded
from .data.cache import checksum
from .device import inference_attention
from .distributed import Dist, barrier
from .errors import UserError
from .prefix import Logits, PrefixModel, embedding_modules, run_prefix, split_encoder, start_layer

PREFIX_FORMAT = 2  # bump when the layout or what is stored changes, so old caches are never read
_NOT_PREFIX = ("id2label", "label2id", "num_labels", "problem_type", "_name_or_path", "classifier_dropout",
               "hidden_dropout_prob", "attention_probs_dropout_prob")  # config keys the prefix output ignores


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

    def offsets_range(self, start: int, stop: int) -> torch.Tensor:
        return self.offsets[start:stop]

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """hidden_states (b, t, h) zero-padded to the longest row, attention_mask (b, t) int64 and labels (b,):
        the same mask and labels Encoded.batch gives for these rows. Padding values never reach a real
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


def human(n: int) -> str:
    """Bytes in the unit that shows them: 35 kB, 812 MB, 10.4 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{n} bytes"


def check_disk(directory: Path, need: int) -> None:
    """UserError, one line, when `directory`'s disk has less than `need` bytes free. Builds in flight have
    allocated their files whole already (posix_fallocate), so the free space counts them."""
    free = shutil.disk_usage(directory).free
    if need > free:
        raise UserError(f"the frozen-prefix cache needs {human(need)} in {directory}, which has only {human(free)} "
                        "free; use a --cache-dir on a larger disk, or fewer/shorter examples")


def prefix_key(model: nn.Module, data: Encoded, start: int, dtype: torch.dtype) -> str:
    """A fingerprint of everything the cached states depend on: the prefix's weights (hashed in full,
    cheap against a stale cache), the config, the token ids, start, dtype."""
    base, layers, _ = split_encoder(model)
    config = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_PREFIX}
    key = hashlib.sha256(json.dumps([PREFIX_FORMAT, type(model).__name__, config, model.config._attn_implementation,
                                     start, str(dtype)], sort_keys=True, default=str).encode())
    # The encoder's own weights outside its layers (MPNet's relative position bias) shape every layer's output.
    shared = [(n, t) for n, t in [*base.encoder.named_parameters(), *base.encoder.named_buffers()]
              if not n.startswith("layer.")]
    for tensors in ([*m.named_parameters(), *m.named_buffers()] for m in (*embedding_modules(base), *layers[:start])):
        shared += tensors
    for name, t in shared:
        key.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        key.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    for t in (data.ids, data.offsets):
        key.update(t.contiguous().view(torch.uint8).numpy())
    return key.hexdigest()[:32]


def _paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"prefix-{key}.bin", directory / f"prefix-{key}.safetensors"


def _load(directory: Path, key: str, data: Encoded, start: int, shape: tuple[int, int],
          dtype: torch.dtype, verify: bool = True) -> PrefixCache | None:
    """Map a finished cache, or None when there is none whole (no index, a short .bin, other offsets) or, with
    `verify`, when its bytes differ from the checksum the index holds (said in one line: it is rebuilt)."""
    binary, index = _paths(directory, key)
    if not index.is_file() or not binary.is_file():
        return None
    if binary.stat().st_size != shape[0] * shape[1] * dtype.itemsize:
        return None
    try:
        with safe_open(str(index), "pt") as f:
            offsets, stored = f.get_tensor("offsets"), (f.metadata() or {}).get("sum")
    except Exception:  # a torn or foreign index: safetensors raises its own error type
        return None
    if not torch.equal(offsets, data.offsets):
        return None
    if verify and stored != checksum(binary):
        print(f"note: the frozen-prefix cache {binary} is damaged (its bytes differ from its checksum); rebuilding it",
              file=sys.stderr, flush=True)
        return None
    hidden = torch.from_file(str(binary), shared=False, size=shape[0] * shape[1], dtype=dtype).view(shape)
    return PrefixCache(hidden, data.offsets, data.labels, start, binary)


def _write(directory: Path, key: str, fill, shape: tuple[int, int], dtype: torch.dtype, offsets: torch.Tensor) -> None:
    """Create the .bin through a shared mapping filled by fill(tensor), fsync it, rename it into place,
    then write the index: a killed build leaves at most a temp file, never a cache that looks whole."""
    binary, index = _paths(directory, key)

    size = shape[0] * shape[1] * dtype.itemsize

    def write_bin(tmp: str) -> None:
        with open(tmp, "r+b") as f:
            try:  # every block now: a full disk fails here, in one line, not as a SIGBUS mid-build
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno == errno.ENOSPC:  # an OSError, which atomic_write passes on and the CLI prints
                    raise OSError(errno.ENOSPC, f"the frozen-prefix cache needs {human(size)} in {directory}: no "
                                  "space left on the device; use a --cache-dir on a larger disk") from None
                f.truncate(size)  # a filesystem without fallocate
        target = torch.from_file(tmp, shared=True, size=shape[0] * shape[1], dtype=dtype).view(shape)
        fill(target)
        del target  # unmap before the fsync, so every page is written back
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())

    atomic_write(binary, write_bin)
    digest = checksum(binary)
    atomic_write(index, lambda tmp: save_file({"offsets": offsets.contiguous()}, tmp,
                                              metadata={"key": key, "sum": digest}))


def build_prefix_cache(model: nn.Module, data: Encoded, start: int, amp: torch.dtype | None,
                       cache_dir: str | os.PathLike | None, batch_size: int = 64, d: Dist = Dist(),
                       poll_seconds: float = 0.5) -> PrefixCache:
    """The hidden states entering layer `start` for every row of `data`: reused from `cache_dir` when a
    whole cache with the same key is there, else computed once (by local rank 0 under torchrun; the others
    wait, then every rank maps the same file). cache_dir None keeps them in memory, per process.
    Computed with SDPA attention, the fastest forward (train.device.inference_attention)."""
    split_encoder(model)  # refuse an unsupported architecture before any work
    with inference_attention(model):
        return _build(model, data, start, amp, cache_dir, batch_size, d, poll_seconds)


def _build(model: nn.Module, data: Encoded, start: int, amp: torch.dtype | None,
           cache_dir: str | os.PathLike | None, batch_size: int, d: Dist, poll_seconds: float) -> PrefixCache:
    dtype = storage_dtype(model, amp)
    shape = (int(data.offsets[-1]), model.config.hidden_size)

    def run(out: torch.Tensor) -> None:
        run_prefix(model, data, start, amp, batch_size, out)

    if not cache_dir or shape[0] == 0:
        hidden = torch.empty(shape, dtype=dtype)
        run(hidden)
        return PrefixCache(hidden, data.offsets, data.labels, start)
    directory = Path(cache_dir)
    key = prefix_key(model, data, start, dtype)
    if d.local_rank == 0:
        cache = _load(directory, key, data, start, shape, dtype)
        if cache is None:
            directory.mkdir(parents=True, exist_ok=True)
            sweep_temps(directory, "prefix-*")  # builds a kill left behind hold disk space: free it first
            check_disk(directory, cache_bytes(data, shape[1], dtype))
            _write(directory, key, run, shape, dtype, data.offsets)
    else:
        # Poll rather than sit in a collective: a build can outlast the process group's timeout.
        while not _paths(directory, key)[1].is_file():
            time.sleep(poll_seconds)
    barrier(d)
    cache = _load(directory, key, data, start, shape, dtype, verify=False)  # just verified, or just built
    if cache is None:
        raise RuntimeError(f"the frozen-prefix cache {_paths(directory, key)[0]} is missing or incomplete")
    return cache


def frozen_prefix(cfg, model: nn.Module, splits: tuple, amp: torch.dtype | None, d: Dist,
                  say: Callable[[str], None]) -> tuple[nn.Module, tuple]:
    """(net, splits): when LoRA starts above layer 0, the layers below run once per example of each split (token
    rows; None stays None), in eval mode, so without dropout, into the frozen-prefix cache, and net is the
    PrefixModel running the layers above from it; else Logits(model) on the token rows."""
    start = start_layer(cfg.lora.layers, model.config.num_hidden_layers) if cfg.prefix_cache else 0
    if start == 0:
        return Logits(model), splits
    began = time.perf_counter()
    splits = tuple(data and build_prefix_cache(model, data, start, amp, cfg.cache_dir, cfg.eval_batch_size, d)
                   for data in splits)
    say(f"prefix     layers 0..{start - 1} computed once per example ({time.perf_counter() - began:.1f}s, "
        + (f"cached in {cfg.cache_dir})" if cfg.cache_dir else "in memory)"))
    return PrefixModel(model, start), splits
