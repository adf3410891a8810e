"""Tokenize once (cached on disk and memory-mapped), then cut into length-grouped, dynamically padded
batches: all at once for an epoch (epoch_batches), or a window at a time (EpochBatches)."""
from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import CacheReader, cache_file, cache_key, open_cached, token_chunks
from .cache import build as build_cache
from .distributed import Dist, barrier, broadcast_object_from_main
from .errors import UserError
from .sources import Rows


@dataclass
class Encoded:
    """Token ids of a split, flat: row i is ids[offsets[i]:offsets[i + 1]]. From the cache, all three
    are views of one read-only memory mapping, and `reader` reads rows by pread, which collate,
    EpochBatches and eval_windows use so that a process holds only the bytes of its batches."""
    ids: torch.Tensor  # (total_tokens,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64
    reader: CacheReader | None = field(default=None, repr=False, compare=False)  # set when from the cache

    @property
    def lengths(self) -> torch.Tensor:
        """(n,) int64, computed afresh from every offset: per-batch code should not call it."""
        out = self.offsets[1:] - self.offsets[:-1]
        self.release()
        return out

    def __len__(self) -> int:
        return len(self.labels)

    def release(self) -> None:
        """Unmap the pages of the cache this process has read through the tensors; they stay in the
        page cache, shared, and a later read maps them again. Without it, reading all offsets (for
        lengths, say) would leave the whole offsets array resident in every process."""
        if self.reader is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.reader.mapping.madvise(mmap.MADV_DONTNEED)  # safe: the mapping is only ever read

    def offsets_range(self, start: int, stop: int) -> torch.Tensor:
        """offsets[start:stop], read without mapping the file."""
        return self.reader.offsets(start, stop) if self.reader is not None else self.offsets[start:stop]


def encode(rows: Iterable[tuple[str, int]], tokenizer, max_length: int, cache_dir: str | os.PathLike | None,
           d: Dist = Dist()) -> Encoded:
    """Tokenize a split (a Split, a Rows stream, or any re-iterable of (text, label)), truncated and
    unpadded, a chunk of rows at a time.

    Without cache_dir the result is built in memory. With it, this machine's local rank 0 finds the
    entry or builds it while every other rank waits at a barrier; all then take rank 0's key and
    memory-map the entry, so no rank's memory grows with the corpus and non-zero local ranks never
    read it. Under torchrun pass the run's Dist: every rank must call this, in the same order."""
    if not cache_dir:
        return _in_memory(rows, tokenizer, max_length)
    key = None
    if d.local_rank == 0:
        key = cache_key(rows, tokenizer, max_length)
        path = cache_file(cache_dir, key)
        if open_cached(path) is None:  # missing, torn or of an older format
            build_cache(path, token_chunks(rows, tokenizer, max_length))
    barrier(d)  # every machine's local rank 0 has its entry
    main_key = broadcast_object_from_main(key, d)
    if key is not None and key != main_key:
        raise UserError(f"rank {d.rank} sees other data or another tokenizer than rank 0; every machine needs "
                        "the same files")
    opened = open_cached(cache_file(cache_dir, main_key))
    if opened is None:
        raise UserError(f"rank {d.rank}: the token cache {cache_file(cache_dir, main_key)} is missing or torn "
                        "on this machine; is --cache-dir the same path on every machine?")
    return _checked(Encoded(**opened[0], reader=opened[1]), rows)


def _in_memory(rows: Iterable[tuple[str, int]], tokenizer, max_length: int) -> Encoded:
    parts = list(token_chunks(rows, tokenizer, max_length))
    ids, lengths, labels = (torch.from_numpy(np.concatenate([np.zeros(0, dtype), *(p[i] for p in parts)]))
                            for i, dtype in enumerate((np.int32, np.int64, np.int64)))
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return _checked(Encoded(ids, offsets, labels), rows)


def _checked(data: Encoded, rows) -> Encoded:
    if len(data) == 0 and isinstance(rows, Rows):  # a file or dataset with no rows is a mistake
        raise UserError(f"{rows.name} has no rows")
    return data


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


def _seed(*parts: int) -> int:
    """A generator seed from integers, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class EpochBatches:
    """One epoch's length-grouped batches, made a window at a time so that at most `buffer_rows` row
    indices are held at once, whatever the corpus size.

    Consecutive rows form blocks of batch_size × mega, and the block order is shuffled. Each window
    of blocks (buffer_rows // block of them) is shuffled row by row, sorted by length inside each run
    of batch_size × mega rows, cut into batches, and those batches are shuffled within the window.
    A corpus of at most buffer_rows rows is one window: a full shuffle, like epoch_batches. Window w
    draws from its own generator seeded by (seed, epoch, w), so batch k is reached without making the
    batches before it, and the order is a pure function of (lengths, batch_size, seed, epoch, mega,
    buffer_rows): a resumed run and every rank compute the very same batches. At most one batch,
    the one holding the corpus's last rows, is short."""

    def __init__(self, data: Encoded | torch.Tensor, batch_size: int, seed: int, epoch: int, mega: int = 50,
                 buffer_rows: int = 1 << 17):
        """data: an Encoded (read by pread when it comes from the cache) or its offsets, (n + 1,)."""
        self.data = data if isinstance(data, Encoded) else Encoded(data[:0], data, data[:0])
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.n, self.block = len(self.data.offsets) - 1, batch_size * mega
        blocks = -(-self.n // self.block)
        order = torch.randperm(blocks, generator=torch.Generator().manual_seed(_seed(seed, epoch)))
        self.windows = order.split(max(1, buffer_rows // self.block))
        sizes = torch.full((blocks,), self.block)
        if blocks:
            sizes[-1] = self.n - self.block * (blocks - 1)  # only the last block may be short
        self.counts = [-(-int(sizes[w].sum()) // batch_size) for w in self.windows]

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[list[int]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[list[int]]:
        """Batches start, start + 1, ... of the epoch; only the window holding `start` is made early."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start {start} is outside 0..{len(self)}")
        for w, count in enumerate(self.counts):
            if start >= count:
                start -= count
                continue
            yield from self._window(w)[start:]
            start = 0

    def _window(self, w: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch, w + 1))
        spans = [(b * self.block, min((b + 1) * self.block, self.n)) for b in self.windows[w].tolist()]
        rows = torch.cat([torch.arange(a, b) for a, b in spans])
        lengths = torch.cat([_lengths(self.data, a, b) for a, b in spans])  # read a block at a time
        perm = torch.randperm(len(rows), generator=g)
        rows, lengths = rows[perm], lengths[perm]
        batches = []
        for chunk, size in zip(rows.split(self.block), lengths.split(self.block)):
            order = chunk[torch.argsort(size, descending=True, stable=True)]
            batches += [b.tolist() for b in order.split(self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def _lengths(data: Encoded, start: int, stop: int) -> torch.Tensor:
    """Lengths of rows start..stop-1."""
    offsets = data.offsets_range(start, stop + 1)
    return offsets[1:] - offsets[:-1]


def eval_windows(data: Encoded | torch.Tensor, batch_size: int, buffer_rows: int = 1 << 17) -> Iterator[list[int]]:
    """eval_batches for corpora of any size: rows sorted by length within each run of buffer_rows
    consecutive rows, so padding stays small while only buffer_rows indices are held. data: an
    Encoded or its offsets. Deterministic; shard it with itertools.islice(..., rank, None, world)."""
    data = data if isinstance(data, Encoded) else Encoded(data[:0], data, data[:0])
    n = len(data.offsets) - 1
    for start in range(0, n, buffer_rows):
        stop = min(start + buffer_rows, n)
        order = torch.argsort(_lengths(data, start, stop), descending=True, stable=True) + start
        yield from (b.tolist() for b in order.split(batch_size))


def collate(data: Encoded, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (b, longest row in the batch), labels (b,). Reads only the
    batch's own offsets, tokens and labels, so its cost does not grow with the corpus."""
    index = torch.as_tensor(indices, dtype=torch.int64)
    if data.reader is not None:
        starts, lengths = data.reader.spans(indices)
    else:
        starts = data.offsets[index]
        lengths = data.offsets[index + 1] - starts
    width = int(lengths.max()) if len(indices) else 1
    mask = torch.arange(width) < lengths[:, None]  # (b, width)
    if data.reader is not None:
        ids, labels = data.reader.tokens(starts, lengths, width), data.reader.labels(indices)
    else:
        positions = torch.where(mask, starts[:, None] + torch.arange(width), 0)
        ids = data.ids[positions].to(torch.int64) if len(data.ids) else torch.zeros(mask.shape, dtype=torch.int64)
        labels = data.labels[index]
    return {"input_ids": ids.masked_fill_(~mask, pad_id), "attention_mask": mask.to(torch.int64), "labels": labels}
