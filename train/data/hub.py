"""The Hugging Face hub: whether it answers (fail fast, instead of a minute of retries), and a hub dataset's
splits as row streams."""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

from ..errors import HubUnreachable, UserError, note
from .labels import MULTI, REGRESSION, SINGLE, case_twins, label_column, multi_hot, row_text, score, text_columns
from .sources import Rows


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the hub endpoint accepts a TCP connection within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return False
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:  # a port that is not a number
        return False
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


OFFLINE_RUN = "with no network at all: --data ag_news_sample and the MiniLM package (README, 'The offline first run')"


def unreachable(what: str, name: str, local_flag: str) -> HubUnreachable:
    return HubUnreachable(f"cannot fetch {what} '{name}': the Hugging Face hub is unreachable and it is not in the "
                          f"local cache; pass a local one instead ({local_flag}), or run {OFFLINE_RUN}")


def model_needs_hub(name: str) -> bool:
    """Whether loading model `name` would need the hub: not a local directory, nor in the local hub cache."""
    from pathlib import Path

    if Path(name).expanduser().is_dir():
        return False
    try:
        from huggingface_hub import try_to_load_from_cache

        return not isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a repo id at all: the loader says what is wrong with it
        return False


# ORG/NAME-shaped short names that mean a hub dataset's configuration: glue/mrpc is nyu-mll/glue, config mrpc.
ALIASES = {"glue": "nyu-mll/glue", "super_glue": "aps/super_glue", "go_emotions": "go_emotions"}


def resolve(name: str, config: str | None) -> tuple[str, str | None]:
    """(hub id, configuration) of `name`, an alias (ALIASES) or a hub id, and `config` (--data-config)."""
    org, _, rest = name.partition("/")
    if org not in ALIASES or not rest:
        return name, config
    if config and config != rest:
        raise UserError(f"--data {name} means {ALIASES[org]} with configuration {rest}, but --data-config is {config}")
    return ALIASES[org], rest


def hub_corpus(name: str, streaming: bool, eval_names: tuple[str, ...], config: str | None = None,
               task: str | None = None) -> tuple[Rows, Rows, list[str], str]:
    """(train rows, evaluation rows, label names, task kind) of hub dataset `name` (configuration `config`): its
    train split and the first of `eval_names` it has whose labels are not all -1 (GLUE's test split has none). The
    kind is `task` (--task), else the label feature's: a list of classes is multi-label, a float a regression."""
    import datasets

    name, config = resolve(name, config)
    shown = f"{name}' configuration '{config}" if config else name  # in quotes: 'nyu-mll/glue' configuration 'mrpc'
    if not hub_reachable():
        datasets.config.HF_HUB_OFFLINE = True  # the cache may still have it
    try:
        ds = datasets.load_dataset(*(name, config) if config else (name,), streaming=streaming)
    except Exception as e:  # datasets raises many types; all mean "cannot get it"
        if datasets.config.HF_HUB_OFFLINE:
            raise unreachable("dataset", shown,
                              "--data DIR (train.csv + test.csv) or --train-file/--eval-file") from None
        hint = "; pick one with --data-config" if not config and "config" in str(e).lower() else ""
        raise UserError(f"cannot load dataset '{shown}': {str(e).splitlines()[0]}{hint}") from None
    if config:
        name = f"{name}:{config}"  # in row names and cache keys
    labelled = [s for s in eval_names if s in ds]
    evalname = next((s for s in labelled if _labelled(ds[s])), None)
    if labelled and evalname is None:
        raise UserError(f"dataset '{name}': its {'/'.join(labelled)} split has no labels (all -1), so nothing "
                        "can be scored; pass a local copy with labelled evaluation rows (--data DIR)")
    features = ds["train"].features if "train" in ds else None  # a streaming dataset may not know them
    column = label_column(features or {})
    if "train" not in ds or evalname is None or (features is not None and not (
            column in features and text_columns(features, f"dataset '{name}'"))):
        raise UserError(f"dataset '{name}' needs a train split, a test/validation split and text/label columns")
    feature = features.get(column) if features else None
    inner = getattr(feature, "feature", None)  # a Sequence or List of ClassLabel: multi-label
    dtype = str(getattr(feature, "dtype", ""))
    task = task or (MULTI if inner is not None else REGRESSION if dtype.startswith("float") else SINGLE)
    names = ["score"] if task == REGRESSION else getattr(inner if task == MULTI else feature, "names", None)
    index = None
    if task == MULTI and not names:
        raise UserError(f"dataset '{name}': its '{column}' lists are not of named classes (ClassLabel); pass a local "
                        "copy with a classes.txt (--data DIR)")
    if not names:  # no ClassLabel: the distinct labels, sorted, from one pass over the training split
        first: dict = {}  # each distinct label, and the row where it first appears
        for row, (_, y) in enumerate(_hub_read(ds["train"], f"{name}[train]"), start=1):
            first.setdefault(y, f"{name}[train] row {row}")
        values = sorted(first)
        names, index = [str(v) for v in values], {v: i for i, v in enumerate(values)}
        for line in case_twins({v: w for v, w in first.items() if isinstance(v, str)}):
            note(line)
    train, evaluation = (_hub_rows(ds[s], f"{name}[{s}]", names, index, task) for s in ("train", evalname))
    return train, evaluation, [str(n) for n in names], task


def _labelled(split) -> bool:
    """False for a split whose first rows all have label -1: the hub's mark of a withheld label."""
    for batch in split.iter(batch_size=1000):
        return not ("label" in batch and batch["label"] and all(y == -1 for y in batch["label"]))
    return True


def _hub_read(split, name: str) -> Iterator[tuple[object, object]]:
    """(text, or a pair of texts, label) per row."""
    for batch in split.iter(batch_size=1000):
        texts, column = text_columns(batch, name), label_column(batch)
        if not texts or column not in batch:
            raise UserError(f"{name} needs text and label columns, has {sorted(batch)}")
        yield from zip(row_text(batch, texts) if len(texts) == 1 else zip(*row_text(batch, texts)), batch[column])


def _hub_rows(split, name: str, names: list[str], index: dict | None, task: str = SINGLE) -> Rows:
    def read() -> Iterator[tuple[object, object]]:
        for row, (text, label) in enumerate(_hub_read(split, name), start=1):
            is_text = all(isinstance(t, str) for t in (text if isinstance(text, tuple) else [text]))
            if task == REGRESSION and is_text:
                yield text, score(label, f"{name} row {row}")
                continue
            if task == MULTI and is_text and isinstance(label, list) and all(
                    type(y) is int and 0 <= y < len(names) for y in label):
                yield text, multi_hot(label, len(names))
                continue
            y = index.get(label, -1) if index is not None else label if type(label) is int else -1  # not int(): "²"
            if task != SINGLE or not is_text or not 0 <= y < len(names):
                raise UserError(f"{name} row {row}: needs a string text and a label in {', '.join(names)}, "
                                f"got {type(text).__name__} and {label!r}")
            yield text, y
    fingerprint = getattr(split, "_fingerprint", None)  # a downloaded dataset's content id; not when streaming
    return Rows(read, name, (lambda: f"hub:{name}:{fingerprint}") if fingerprint else None)
