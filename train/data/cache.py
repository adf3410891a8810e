"""The token cache: one safetensors file per (rows, tokenizer, max_length). It is named without reading the rows
(lookup_key) and holds their data key (data_key: their content's fingerprint) in its metadata, so a run that finds
it reads no row. It is built a chunk of rows at a time, so memory is bounded by the chunk and never by the corpus;
it gets its final name only by an atomic rename once whole and synced, and a checksum file (KEY.sum) written last
vouches for it: a damaged entry is rebuilt, never read. Every process memory-maps it rather than loading it."""
from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from train.files import atomic_write, sweep_temps, temp_name

from ..errors import UserError, progress
from .keys import content_key, content_of, data_key, hash_parts
from .sources import Rows

# The layout written below, its metadata included. A file of any other format (one without the rows' key,
# say) is not trusted: it is rebuilt.
TOKEN_FORMAT = "4"
CHUNK_ROWS = 8192  # rows tokenized per call: ~10 MB of Python token lists at AG News lengths
_DTYPES = {"I32": np.int32, "I64": np.int64, "F64": np.float64, "U8": np.uint8}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def lookup_key(rows, parts: list[str]) -> str | None:
    """The name of the cache entry for `rows`, made without reading a file: their data key when their key names
    them (a hub dataset's fingerprint) or they are held in memory (hashed there); else a hash of their origin
    (the files' paths, sizes and times, the settings that pick the rows). None for a stream that only its
    content names: it is hashed as it is tokenized, and the entry named after."""
    if getattr(rows, "key", None) or not isinstance(rows, Rows):
        return data_key(content_of(rows, lambda: content_key(rows)[0]), parts)
    if rows.origin:
        return hash_parts([TOKEN_FORMAT, *parts], f"origin:{rows.origin()}")
    return None


def token_chunks(rows: Iterable[tuple[str, int]], tokenizer, max_length: int,
                 chunk_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per chunk of rows (a text, or a pair of texts, and a label): ids (tokens,) int32 flat, lengths (rows,)
    int64, labels as label_array makes them."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    texts: list[str] = []
    labels: list[int] = []
    for text, label in progress(rows, "tokenizing"):
        texts.append(text)
        labels.append(label)
        if len(texts) == chunk_rows:
            yield _tokenize(texts, labels, tokenizer, max_length)
            texts, labels = [], []
    if texts:
        yield _tokenize(texts, labels, tokenizer, max_length)


def _tokenize(texts: list, labels: list[int], tokenizer, max_length: int):
    """A chunk's ids; pairs of texts as the tokenizer pairs them (HF run_glue.py: truncation longest_first)."""
    if texts and isinstance(texts[0], tuple):
        ids = tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=True,
                        max_length=max_length)["input_ids"]
    else:
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return flat, lengths, label_array(labels)


def label_array(labels: list) -> np.ndarray:
    """A chunk's labels as arrays: (n,) int64 class ids, (n,) float64 scores, or (n, K) uint8 multi-hot."""
    if labels and isinstance(labels[0], bytes):
        return np.frombuffer(b"".join(labels), np.uint8).reshape(len(labels), len(labels[0]))
    return np.asarray(labels, np.float64 if labels and isinstance(labels[0], float) else np.int64)


def cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"{key}.safetensors"


def checksum(path: Path) -> str:
    """blake2b of the whole file (~1 GB/s): what a cache entry must still hash to when it is opened."""
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _sum_file(path: Path) -> Path:
    return path.with_suffix(".sum")


def cache_state(path: Path) -> str:
    """"ok" (whole and unchanged since it was built), "missing" (never finished, or from before checksums) or
    "damaged" (its bytes differ from the checksum written last, after the file was whole)."""
    if not path.is_file() or not _sum_file(path).is_file():
        return "missing"
    try:
        return "ok" if _sum_file(path).read_text().strip() == checksum(path) else "damaged"
    except OSError:
        return "damaged"


def build(path: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
          meta: Callable[[], dict[str, str]] | None = None, final: Callable[[], Path] | None = None) -> int:
    """Write the chunks into `path`, whole or not at all; returns the row count. `meta()`, called once every
    chunk is written, adds to the file's metadata; `final()`, when given, names the entry then instead of `path`
    (rows that only their content names). The parts go to a folder named for this machine and process
    (train.files.temp_name); a kill leaves only that folder, which the next build sweeps once its process is
    gone (or, from another machine, after a day). A full disk is one line that names the entry."""
    try:
        return _build(path, chunks, meta or dict, final or (lambda: path))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"no space left on the device for the token cache {path} ({e.strerror or e}): free some, "
                        "or give --cache-dir a folder on another disk (--cache-dir '' keeps the tokens in memory)"
                        ) from None


def _build(path: Path, chunks, meta: Callable[[], dict[str, str]], final: Callable[[], Path]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temps(path.parent, path.name)
    partial = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_name(path)[0], suffix=temp_name(path)[1]))
    try:
        n, tokens, classes = 0, 0, {}
        shape = np.zeros(0, np.int64)  # an empty split's labels: class ids
        with (partial / "ids").open("wb") as fi, (partial / "offsets").open("wb") as fo, \
                (partial / "labels").open("wb") as fl:
            fo.write(np.zeros(1, np.int64).tobytes())
            for ids, lengths, labels in chunks:
                if labels.ndim == 2:  # multi-hot: K padded to a multiple of 8 (zeros), so the ids after stay aligned
                    classes = {"classes": str(labels.shape[1])}
                    labels = np.pad(labels, ((0, 0), (0, -labels.shape[1] % 8)))
                fi.write(ids.tobytes())
                fo.write((tokens + np.cumsum(lengths)).tobytes())
                fl.write(labels.tobytes())
                n, tokens, shape = n + len(lengths), tokens + int(lengths.sum()), labels[:0]
        header = _header(n, tokens, {**meta(), **classes}, shape)
        whole = partial / "whole.safetensors"
        with whole.open("wb") as out:
            out.write(len(header).to_bytes(8, "little") + header)
            for part in ("offsets", "labels", "ids"):
                with (partial / part).open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        digest, path = checksum(whole), final()
        _sum_file(path).unlink(missing_ok=True)  # an older entry's sum never vouches for the new file
        os.replace(whole, path)  # the name appears only now, on a whole file
        atomic_write(_sum_file(path), lambda tmp: Path(tmp).write_text(digest + "\n"))  # written last
        return n
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _header(n: int, tokens: int, meta: dict[str, str], labels: np.ndarray) -> bytes:
    """safetensors header: offsets, labels (of `labels`' dtype and row shape), ids, back to back; padded with
    spaces (the format allows it) so the data start at a multiple of 8 bytes and every array maps aligned."""
    row = labels.shape[1:]
    a = 8 * (n + 1)
    b = a + n * int(np.prod(row, dtype=np.int64)) * labels.itemsize
    c = b + 4 * tokens
    spec = {"__metadata__": {**meta, "format": TOKEN_FORMAT, "rows": str(n), "tokens": str(tokens)},
            "offsets": {"dtype": "I64", "shape": [n + 1], "data_offsets": [0, a]},
            "labels": {"dtype": _CODES[labels.dtype], "shape": [n, *row], "data_offsets": [a, b]},
            "ids": {"dtype": "I32", "shape": [tokens], "data_offsets": [b, c]}}
    raw = json.dumps(spec).encode()
    return raw + b" " * (-(8 + len(raw)) % 8)


class CacheReader:
    """Reads a cache file's arrays with pread, copying just the bytes asked for into this process.
    Training reads rows at random, and a memory-mapped read maps the page cache's whole folio around
    each row: up to 2 MB on ext4 with large folios (Linux 6.16+), so 32 random rows would make ~50 MB
    resident. With pread a batch costs its own bytes. Also holds the file's memory mapping."""

    def __init__(self, path: Path, spec: dict, base: int, mapping: mmap.mmap):
        self.mapping, self.meta = mapping, spec.get("__metadata__", {})  # meta: the rows' key, their count
        self._file = path.open("rb", buffering=0)  # closed with the reader
        self._at = {name: base + spec[name]["data_offsets"][0] for name in ("ids", "offsets", "labels")}
        self._label = (np.dtype(_DTYPES[spec["labels"]["dtype"]]), tuple(spec["labels"]["shape"][1:]))

    def _into(self, out: np.ndarray, name: str, index: int) -> np.ndarray:
        want = out.nbytes
        if want and os.preadv(self._file.fileno(), [out], self._at[name] + out.itemsize * index) != want:
            raise OSError(f"{self._file.name} is shorter than its header says")
        return out

    def offsets(self, start: int, stop: int) -> torch.Tensor:
        """offsets[start:stop], (stop - start,) int64."""
        return torch.from_numpy(self._into(np.empty(stop - start, np.int64), "offsets", start))

    def spans(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each row starts in ids, and its length: (b,) int64 each."""
        pairs = np.empty((len(rows), 2), np.int64)
        for r, i in enumerate(rows):
            self._into(pairs[r], "offsets", i)
        starts = torch.from_numpy(pairs[:, 0].copy())
        return starts, torch.from_numpy(pairs[:, 1]) - starts

    def tokens(self, starts: torch.Tensor, lengths: torch.Tensor, width: int) -> torch.Tensor:
        """(b, width) int64: each row's ids, zeros after its length."""
        out = np.zeros((len(starts), width), np.int32)
        for r, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
            self._into(out[r, :n], "ids", start)
        return torch.from_numpy(out).to(torch.int64)

    def labels(self, rows: list[int]) -> torch.Tensor:
        """The rows' labels, (b,) or (b, K) multi-hot (its padding columns cut off)."""
        dtype, row = self._label
        out = np.empty((len(rows), *row), dtype)
        for r, i in enumerate(rows):
            self._into(out[r:r + 1], "labels", i * max(1, int(np.prod(row))))
        return torch.from_numpy(out)[:, :int(self.meta.get("classes", 0))] if row else torch.from_numpy(out)


def open_cached(path: Path) -> tuple[dict[str, torch.Tensor], CacheReader] | None:
    """ids, offsets, labels as tensors over one memory mapping of the file, and a CacheReader for
    random reads; or None when the file is missing, torn, or of another format. The mapping is
    copy-on-write (writes stay private) and advised random: no readahead."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            hlen = int.from_bytes(f.read(8), "little")
            if not 0 < hlen <= min(size - 8, 1 << 20):
                return None
            spec = json.loads(f.read(hlen))
            whole_file = spec["ids"]["data_offsets"][1] + 8 + hlen == size  # else cut short (or padded)
            if spec.get("__metadata__", {}).get("format") != TOKEN_FORMAT or not whole_file:
                return None
            whole = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if hasattr(mmap, "MADV_RANDOM"):
            whole.madvise(mmap.MADV_RANDOM)
        tensors = {name: _view(whole, spec[name], 8 + hlen) for name in ("ids", "offsets", "labels")}
        if tensors["labels"].ndim == 2:  # multi-hot: the padding columns cut off (a view, no copy)
            tensors["labels"] = tensors["labels"][:, :int(spec["__metadata__"]["classes"])]
        reader = CacheReader(path, spec, 8 + hlen, whole)
        last = reader.offsets(len(tensors["offsets"]) - 1, len(tensors["offsets"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(tensors["offsets"]) != len(tensors["labels"]) + 1 or int(last[0]) != len(tensors["ids"]):
        return None
    return tensors, reader


def _view(whole: mmap.mmap, entry: dict, base: int) -> torch.Tensor:
    """One array of the file, as a tensor over the mapping (no copy); it keeps the mapping alive."""
    dtype = np.dtype(_DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    count = (end - start) // dtype.itemsize
    if count != int(np.prod(entry["shape"])):
        raise ValueError("shape and byte range disagree")
    if count == 0:
        return torch.from_numpy(np.zeros(entry["shape"], dtype))
    return torch.from_numpy(np.frombuffer(whole, dtype=dtype, count=count, offset=base + start).reshape(entry["shape"]))
