"""Tokenize once (cached on disk and memory-mapped), then cut into dynamically padded batches: one planner
for training (EpochBatches: length-grouped, shuffled, a window at a time) and one for evaluation
(eval_windows: sorted by length, a window at a time), so no planner holds more than a window of row indices.
Both read a batch source, token rows (Encoded) or frozen-prefix rows (train.prefix.PrefixCache) alike:
`len(source)`, `source.offsets_range(start, stop)` and `source.batch(rows)`."""
from __future__ import annotations

import hashlib
import mmap
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..distributed import Dist, barrier, broadcast_object_from_main
from ..errors import UserError
from .cache import CacheReader, cache_file, cache_state, lookup_key, open_cached, token_chunks
from .cache import build as build_cache
from .keys import Fingerprint, content_of, data_key, tokenizer_parts
from .sources import Rows


@dataclass
class Encoded:
    """Token ids of a split, flat: row i is ids[offsets[i]:offsets[i + 1]]. From the cache, all three
    are views of one read-only memory mapping, and `reader` reads rows by pread, which collate,
    EpochBatches and eval_windows use so that a process holds only the bytes of its batches."""
    ids: torch.Tensor  # (total_tokens,) int32
    offsets: torch.Tensor  # (n + 1,) int64
    labels: torch.Tensor  # (n,) int64 class ids, (n,) float64 scores or (n, K) uint8 multi-hot (the task's kind)
    pad_id: int = 0  # the tokenizer's padding id, which batch() pads with
    key: str = ""  # the rows' data key (keys.data_key: rows, tokenizer, max_length); a checkpoint keeps it
    pairs: bool = False  # each row is a pair of texts
    type_sep: int | None = None  # pairs for a tokenizer with token types: the id after whose first use they are 1
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

    def batch(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """Rows as a padded batch: input_ids, attention_mask (b, longest row) and labels (b,)."""
        return collate(self, rows, self.pad_id)


def encode(rows: Iterable[tuple[str, int]], tokenizer, max_length: int, cache_dir: str | os.PathLike | None,
           d: Dist = Dist()) -> Encoded:
    """Tokenize a split (a Split, a Rows stream, or any re-iterable of (text, label)), truncated and
    unpadded, a chunk of rows at a time, in the one pass over the rows that also checks them (a reader stops
    at a bad row) and fingerprints them (Encoded.key, which a checkpoint records).

    Without cache_dir the result is built in memory. With it, this machine's local rank 0 looks the entry up
    by a name made without reading the rows (cache.lookup_key), and builds it on a miss, while every other
    rank waits at a barrier; the entry holds the rows' key, so a hit reads no row. All then take rank 0's key
    and memory-map the entry, so no rank's memory grows with the corpus and non-zero local ranks never read
    it. Under torchrun pass the run's Dist: every rank must call this, in the same order."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = 0 if pad_id is None else pad_id
    parts = tokenizer_parts(tokenizer, max_length)
    if not cache_dir:
        seen = Fingerprint(rows)
        data = _in_memory(seen, tokenizer, max_length, pad_id)
        data = replace(data, key=data_key(content_of(rows, seen.digest), parts), pairs=seen.pairs)
        return _checked(_with_types(data, tokenizer), rows)
    lookup, mine = lookup_key(rows, parts), None  # lookup None: a stream, named once its pass has hashed it
    if d.local_rank == 0:
        try:
            mine = ("ok", _find_or_build(rows, tokenizer, max_length, parts, cache_dir, lookup))
        except UserError as e:  # a bad row: every rank stops on it, and none waits at the barrier for ever
            mine = ("refused", str(e))
    barrier(d)  # every machine's local rank 0 has its entry
    main = broadcast_object_from_main(mine, d)
    for answer in (main, mine):
        if answer is not None and answer[0] == "refused":
            raise UserError(answer[1])
    key = main[1]
    if mine is not None and mine[1] != key:
        raise UserError(f"rank {d.rank} sees other data or another tokenizer than rank 0; every machine needs "
                        "the same files")
    path = cache_file(cache_dir, lookup or key)
    opened = open_cached(path)
    if opened is None or opened[1].meta.get("key") != key:
        raise UserError(f"rank {d.rank}: the token cache {path} is missing or torn on this machine; is "
                        "--cache-dir the same path on every machine?")
    data = Encoded(**opened[0], pad_id=pad_id, key=key, reader=opened[1], pairs=opened[1].meta.get("pairs") == "1")
    return _checked(_with_types(data, tokenizer), rows)


def _with_types(data: Encoded, tokenizer) -> Encoded:
    """Pairs for a tokenizer that gives token type ids (BERT's: 0 for the first text, 1 for the second), as
    run_glue.py passes them, so that a batch carries them too (collate); other tokenizers' pairs need none."""
    if data.pairs and "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        return replace(data, type_sep=tokenizer.sep_token_id)
    return data


def _find_or_build(rows, tokenizer, max_length: int, parts: list[str], cache_dir, lookup: str | None) -> str:
    """The data key of the rows' cache entry: read from the entry `lookup` names, or made by the one pass
    that builds it."""
    path = cache_file(cache_dir, lookup or "stream")  # a stream's entry is named after its pass
    if lookup is not None:
        state = cache_state(path)
        if state == "damaged":
            print(f"note: the token cache {path} is damaged (its bytes differ from its checksum); rebuilding it",
                  file=sys.stderr, flush=True)
        opened = open_cached(path) if state == "ok" else None  # else missing, torn, damaged or of an older format
        if opened is not None and opened[1].meta.get("key"):
            return opened[1].meta["key"]
    seen = Fingerprint(rows)
    key = lambda: data_key(content_of(rows, seen.digest), parts)  # noqa: E731  (whole once the pass has ended)
    meta = lambda: {"key": key(), "pairs": str(int(seen.pairs))}  # noqa: E731  (the pass has ended by then)
    build_cache(path, token_chunks(seen, tokenizer, max_length), meta=meta,
                final=None if lookup else lambda: cache_file(cache_dir, key()))
    return key()


def _in_memory(rows: Iterable[tuple[str, int]], tokenizer, max_length: int, pad_id: int) -> Encoded:
    parts = list(token_chunks(rows, tokenizer, max_length))
    ids, lengths, labels = (torch.from_numpy(np.concatenate([p[i] for p in parts] or [np.zeros(0, dtype)]))
                            for i, dtype in enumerate((np.int32, np.int64, np.int64)))
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return Encoded(ids, offsets, labels, pad_id)


def _checked(data: Encoded, rows) -> Encoded:
    if len(data) == 0 and isinstance(rows, Rows):  # a file or dataset with no rows is a mistake
        raise UserError(f"{rows.name} has no rows")
    return data


def _seed(*parts: int) -> int:
    """A generator seed from integers, the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class EpochBatches:
    """One epoch's length-grouped batches, made a window at a time so that at most `buffer_rows` row
    indices are held at once, whatever the corpus size.

    Consecutive rows form blocks of batch_size × mega, and the block order is shuffled. Each window
    of blocks (buffer_rows // block of them) is shuffled row by row, sorted by length inside each run
    of batch_size × mega rows, cut into batches, and those batches are shuffled within the window.
    A corpus of at most buffer_rows rows is one window: a full shuffle. Window w
    draws from its own generator seeded by (seed, epoch, w), so batch k is reached without making the
    batches before it, and the order is a pure function of (lengths, batch_size, seed, epoch, mega,
    buffer_rows): a resumed run and every rank compute the very same batches. At most one batch,
    the one holding the corpus's last rows, is short."""

    def __init__(self, data, batch_size: int, seed: int, epoch: int, mega: int = 50, buffer_rows: int = 1 << 17):
        """data: a batch source (Encoded, read by pread when it comes from the cache, or a PrefixCache), or
        offsets (n + 1,)."""
        self.data = _source(data)
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.n, self.block = len(self.data), batch_size * mega
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


def ready_batches(batches: EpochBatches, make: Callable[[list[int]], dict], start: int, ahead: bool):
    """A context giving (rows, batch) for each batch from `start` on: made ahead on a thread, pinned (`ahead`, on
    CUDA: train.data.prefetch), or inline, where a thread beside the step would only slow it (CPU)."""
    if ahead:
        from .prefetch import Prefetcher

        return Prefetcher(batches, make, start=start, depth=2, pin=True)
    return nullcontext((rows, make(rows)) for rows in batches.iter_from(start))


class _Offsets:
    """Bare offsets (n + 1,) as a batch source the planners can read (tests, benchmarks/work.py)."""

    def __init__(self, offsets: torch.Tensor) -> None:
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def offsets_range(self, start: int, stop: int) -> torch.Tensor:
        return self.offsets[start:stop]


def _source(data):
    return _Offsets(data) if isinstance(data, torch.Tensor) else data


def _lengths(data, start: int, stop: int) -> torch.Tensor:
    """Lengths of rows start..stop-1 of a batch source."""
    offsets = data.offsets_range(start, stop + 1)
    return offsets[1:] - offsets[:-1]


def eval_windows(data, batch_size: int, buffer_rows: int = 1 << 17) -> Iterator[list[int]]:
    """Evaluation batches for corpora of any size: rows sorted by length (longest first) within each run of
    buffer_rows consecutive rows, so padding stays small while only buffer_rows indices are held. data: a
    batch source or its offsets. Deterministic; shard it with itertools.islice(..., rank, None, world)."""
    data = _source(data)
    n = len(data)
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
    batch = {"input_ids": ids.masked_fill_(~mask, pad_id), "attention_mask": mask.to(torch.int64), "labels": labels}
    if data.type_sep is not None:  # 1 after the first separator (the second text and its end), 0 before and on pads
        sep = batch["input_ids"] == data.type_sep
        batch["token_type_ids"] = ((sep.cumsum(-1) - sep.long()) > 0).long() * mask
    return batch
