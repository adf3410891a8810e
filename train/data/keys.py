"""What names a split's rows and their tokens: the fingerprint of the rows (Fingerprint, content_key), the parts
of a tokenizer that decide its ids (tokenizer_parts), and the data key made of both (data_key), which a token
cache entry holds and a checkpoint keeps, so that a resume on other data is refused."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator

KEY_FORMAT = "2"  # how data_key is made: unchanged, so a checkpoint made before still resumes on the same data


def tokenizer_parts(tokenizer, max_length: int) -> list[str]:
    """What decides the token ids of a text: the tokenizer's name, size and whole definition, and max_length."""
    return [type(tokenizer).__name__, str(tokenizer.name_or_path), str(len(tokenizer)), str(max_length),
            str(getattr(tokenizer, "truncation_side", "")), _tokenizer_fingerprint(tokenizer)]


def hash_parts(parts: list[str], last: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    h.update(last.encode())
    return h.hexdigest()[:32]


def data_key(content: str, parts: list[str]) -> str:
    """What a run trained on: the rows (content: "key:" and a hub dataset's fingerprint, or "rows:" and the
    sha256 of every row, sources.Fingerprint) as this tokenizer and max_length (tokenizer_parts) make them. A
    checkpoint keeps it, so that a resume on other data is refused."""
    return hash_parts([KEY_FORMAT, *parts], content)


def content_of(rows, digest: Callable[[], str]) -> str:
    """data_key's `content` of `rows`: their cheap key if they have one, else the digest of their pass."""
    key = getattr(rows, "key", None)
    return f"key:{key()}" if key else f"rows:{digest()}"


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


class Fingerprint:
    """Rows passed through while they are hashed and counted: the one pass over a split checks it (the reader
    stops at a bad row), names its content and feeds the tokenizer. sha256 over every (text, label), fed a chunk
    of rows at a time; `digest` is whole once the iteration has ended."""

    def __init__(self, rows: Iterable[tuple[str, int]], chunk: int = 4096):
        self.rows, self.chunk, self.hash, self.n, self.pairs = rows, chunk, hashlib.sha256(), 0, False

    def __iter__(self) -> Iterator[tuple[str, int]]:
        part = []
        for text, label in self.rows:
            self.pairs |= isinstance(text, tuple)  # digest() marks a split of pairs; JSON holds no raw NUL
            part.append(f"{label}\0{json.dumps(text) if isinstance(text, tuple) else text}\0")
            self.n += 1
            if len(part) == self.chunk:
                self.hash.update("".join(part).encode("utf-8", "surrogatepass"))
                part.clear()
            yield text, label
        self.hash.update("".join(part).encode("utf-8", "surrogatepass"))

    def digest(self) -> str:
        """The hex digest; 'pairs-' before it for rows of text pairs, so no split of single texts shares it."""
        return ("pairs-" if self.pairs else "") + self.hash.hexdigest()


def content_key(rows: Iterable[tuple[str, int]], chunk: int = 4096) -> tuple[str, int]:
    """sha256 over every (text, label), fed a chunk of rows at a time; and the number of rows."""
    seen = Fingerprint(rows, chunk)
    for _ in seen:
        pass
    return seen.digest(), seen.n
