"""The token cache: one safetensors file per (rows, tokenizer, max_length). It is built a chunk of rows
at a time, so memory is bounded by the chunk and never by the corpus; it gets its final name only by
an atomic rename once whole and synced; and every process memory-maps it rather than loading it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from .sources import content_key

# The layout written below. A file of any other format (the old ids+offsets cache, say) is not
# trusted: it is rebuilt.
FORMAT = "2"
CHUNK_ROWS = 8192  # rows tokenized per call: ~10 MB of Python token lists at AG News lengths
_DTYPES = {"I32": np.int32, "I64": np.int64}
STALE_SECONDS = 24 * 3600  # a partial build this old, from any machine, is abandoned


def cache_key(rows: Iterable[tuple[str, int]], tokenizer, max_length: int) -> str:
    """Names the cache entry: tokenizer, max_length and the rows. Rows with a cheap `key` (a hub
    dataset's fingerprint) give it; others are hashed a chunk at a time, never held whole."""
    h = hashlib.sha256()
    for part in (FORMAT, type(tokenizer).__name__, str(tokenizer.name_or_path), str(len(tokenizer)),
                 str(max_length), str(getattr(tokenizer, "truncation_side", "")), _tokenizer_fingerprint(tokenizer)):
        h.update(part.encode() + b"\0")
    key = getattr(rows, "key", None)
    h.update((f"key:{key()}" if key else f"rows:{content_key(rows)[0]}").encode())
    return h.hexdigest()[:32]


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


def token_chunks(rows: Iterable[tuple[str, int]], tokenizer, max_length: int,
                 chunk_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per chunk of rows: ids (tokens,) int32 flat, lengths (rows,) int64, labels (rows,) int64."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    texts: list[str] = []
    labels: list[int] = []
    for text, label in rows:
        texts.append(text)
        labels.append(label)
        if len(texts) == chunk_rows:
            yield _tokenize(texts, labels, tokenizer, max_length)
            texts, labels = [], []
    if texts:
        yield _tokenize(texts, labels, tokenizer, max_length)


def _tokenize(texts: list[str], labels: list[int], tokenizer, max_length: int):
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), np.int32, int(lengths.sum()))
    return flat, lengths, np.asarray(labels, np.int64)


def cache_file(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"{key}.safetensors"


def build(path: Path, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> int:
    """Write the chunks into `path`, whole or not at all; returns the row count. The parts go to a
    folder named for this machine and process; a kill leaves only that folder, which sweep() clears."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    partial = path.parent / f".{path.stem}.{socket.gethostname()}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        n = tokens = 0
        with (partial / "ids").open("wb") as fi, (partial / "offsets").open("wb") as fo, \
                (partial / "labels").open("wb") as fl:
            fo.write(np.zeros(1, np.int64).tobytes())
            for ids, lengths, labels in chunks:
                fi.write(ids.tobytes())
                fo.write((tokens + np.cumsum(lengths)).tobytes())
                fl.write(labels.tobytes())
                n, tokens = n + len(lengths), tokens + int(lengths.sum())
        header = _header(n, tokens)
        whole = partial / "whole.safetensors"
        with whole.open("wb") as out:
            out.write(len(header).to_bytes(8, "little") + header)
            for part in ("offsets", "labels", "ids"):
                with (partial / part).open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
            out.flush()
            os.fsync(out.fileno())
        os.replace(whole, path)  # the name appears only now, on a whole file
        return n
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _header(n: int, tokens: int) -> bytes:
    """safetensors header: offsets, labels, ids, back to back; padded with spaces (the format allows
    it) so the data start at a multiple of 8 bytes and every array maps aligned."""
    a, b, c = 8 * (n + 1), 8 * (2 * n + 1), 8 * (2 * n + 1) + 4 * tokens
    spec = {"__metadata__": {"format": FORMAT, "rows": str(n), "tokens": str(tokens)},
            "offsets": {"dtype": "I64", "shape": [n + 1], "data_offsets": [0, a]},
            "labels": {"dtype": "I64", "shape": [n], "data_offsets": [a, b]},
            "ids": {"dtype": "I32", "shape": [tokens], "data_offsets": [b, c]}}
    raw = json.dumps(spec).encode()
    return raw + b" " * (-(8 + len(raw)) % 8)


def open_cached(path: Path) -> dict[str, torch.Tensor] | None:
    """ids, offsets, labels memory-mapped (copy-on-write: pages load on use, writes stay private), or
    None when the file is missing, torn, or of another format."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            hlen = int.from_bytes(f.read(8), "little")
            if not 0 < hlen <= min(size - 8, 1 << 20):
                return None
            spec = json.loads(f.read(hlen))
        if spec.get("__metadata__", {}).get("format") != FORMAT or spec["ids"]["data_offsets"][1] != size - 8 - hlen:
            return None
        tensors = {name: _map(path, spec[name], 8 + hlen) for name in ("ids", "offsets", "labels")}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    offsets = tensors["offsets"]
    if len(offsets) != len(tensors["labels"]) + 1 or int(offsets[-1]) != len(tensors["ids"]):
        return None
    return tensors


def _map(path: Path, entry: dict, base: int) -> torch.Tensor:
    dtype = np.dtype(_DTYPES[entry["dtype"]])
    start, end = entry["data_offsets"]
    count = (end - start) // dtype.itemsize
    if count != int(np.prod(entry["shape"])):
        raise ValueError("shape and byte range disagree")
    if count == 0:  # mmap cannot map nothing
        return torch.from_numpy(np.zeros(0, dtype))
    return torch.from_numpy(np.memmap(path, dtype=dtype, mode="c", offset=base + start, shape=(count,)))


def sweep(path: Path) -> None:
    """Remove partial builds of `path` whose process is gone (same machine) or that are stale."""
    host = socket.gethostname()
    for partial in path.parent.glob(f".{path.stem}.*.partial"):
        owner_host, _, pid = partial.name[len(path.stem) + 2:-len(".partial")].rpartition(".")
        try:
            if owner_host == host:
                gone = not (pid.isdigit() and _alive(int(pid)))
            else:  # another machine's (a shared cache folder): only its age tells
                gone = time.time() - partial.stat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if gone:
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
