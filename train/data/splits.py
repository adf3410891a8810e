"""A run's splits: training, evaluation and validation rows (a dev split beside a test split, or --holdout's carved
from the training rows, the same for every seed), stratified subsets, and each tokenized in one pass over its rows
before the model loads: the model's tokenizer
and config are loaded alone (no weights: cheap), so that a bad row still stops the run before the slow part, and
the row counts the plan prints come from that pass, or from the token cache, which a run finds without reading a
row."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..distributed import Dist, on_main
from ..errors import HubUnreachable, UserError
from ..families import usable_length
from .batches import Encoded, encode
from .corpus import RowCorpus, Split, check_classes, check_rows, open_corpus
from .sources import Rows


@dataclass
class Tokenized:
    train: Encoded
    eval: Encoded
    valid: Encoded | None  # the rows that pick the best epoch, when the data has them
    max_length: int  # what the rows were cut to: --max-length, capped at what the model's positions take
    tokenizer: object  # the model's, loaded once here: the model's loading takes it rather than reading it again


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
    return Tokenized(*_encoded(corpus, tokenizer, length, cfg, d), length, tokenizer)


def tokenized(early: Tokenized | None, corpus: RowCorpus, tokenizer, cfg: TrainConfig,
              d: Dist) -> tuple[Encoded, Encoded, Encoded | None]:
    """tokenize_early's (train, eval, valid); or, where it had none or the model took another length than it
    expected (cfg: as prepared, max_length resolved), the splits tokenized now by the model's tokenizer."""
    if early is not None and early.max_length == cfg.max_length:
        return early.train, early.eval, early.valid
    return _encoded(corpus, tokenizer, cfg.max_length, cfg, d)


def _encoded(corpus: RowCorpus, tokenizer, length: int, cfg: TrainConfig,
             d: Dist) -> tuple[Encoded, Encoded, Encoded | None]:
    train, held, valid = (split and encode(split, tokenizer, length, cfg.cache_dir, d)
                          for split in (corpus.train, corpus.eval, corpus.valid))
    check_classes(train.labels, corpus.label_names, cfg, valid.labels if cfg.holdout and valid else held.labels)
    return train, held, valid


def _tokenizer(name: str, max_length: int) -> tuple[object, int] | None:
    """(model `name`'s tokenizer, max_length capped as train.families.usable_length caps it), loaded as
    train.model.load_pretrained loads them (a local directory, else the hub's cache, else the hub), or None."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    name = str(Path(name).expanduser()) if name.startswith("~") else name
    for local_only in [True] if Path(name).is_dir() else [True, False]:
        if not local_only and not _hub_reachable():
            return None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            config = AutoConfig.from_pretrained(name, local_files_only=local_only)
        except Exception:  # noqa: BLE001  (every way of failing means "not from here"; the model's loading says why)
            continue
        return tokenizer, usable_length(max_length, config)
    return None


def load_data(cfg: TrainConfig) -> RowCorpus:
    """The splits as row streams (read again whenever iterated, never all held), --holdout's validation rows
    carved out of the training rows, subsets applied. Reads no rows: the first record of each file, and
    classes.txt (the training labels where no classes.txt names the classes)."""
    try:
        corpus = open_corpus(cfg.data, cfg.train_file, cfg.train_file if cfg.holdout and cfg.train_file
                             else cfg.eval_file, streaming=cfg.streaming, cache_dir=cfg.cache_dir,
                             text_columns=cfg.text_columns, data_config=cfg.data_config,
                             task=None if cfg.task == "auto" else cfg.task)
    except HubUnreachable:
        from .hub import OFFLINE_RUN, model_needs_hub

        if not model_needs_hub(cfg.model):
            raise
        raise HubUnreachable(f"cannot fetch dataset '{cfg.data}' nor model '{cfg.model}': the Hugging Face hub is "
                             "unreachable and they are not in the local cache; pass local ones (--data DIR or "
                             f"--train-file/--eval-file, and --model DIR), or run {OFFLINE_RUN}") from None
    train, held, valid = corpus.train, corpus.eval, corpus.valid
    if cfg.holdout:  # held-out rows pick the epoch; without an evaluation file they are scored too, the last epoch's
        train, valid = holdout_rows(corpus.train, cfg.holdout)
        held, valid = (held, valid) if cfg.eval_file or not cfg.train_file else (valid, None)
    pick = lambda rows, n: rows and subset_rows(rows, n, cfg.seed)  # noqa: E731
    return RowCorpus(pick(train, cfg.max_train_samples), pick(held, cfg.max_eval_samples), corpus.label_names,
                     corpus.task, pick(valid, cfg.max_eval_samples))


def stratified_subset(split: Split, n: int | None, seed: int) -> Split:
    """Exactly n rows (all of them if n is None or larger) with the class mix of `split`: each class
    gets its share rounded by largest remainder, and at least one row while n allows. Rows keep
    their order; which rows is a pure function of (split, n, seed)."""
    if n is None or n >= len(split.labels):
        return split
    keep = _stratified_keep(_strata(split), n, seed).tolist()
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def picked_origin(rows: Rows, how: str) -> Callable[[], str] | None:
    """The origin of the rows that `how` (a subset, a holdout) picks from `rows`: theirs, or their key, and how."""
    base = rows.origin or (rows.key and (lambda: f"key:{rows.key()}"))
    return (lambda: f"{base()}:{how}") if base else None


def subset_rows(rows: Rows, n: int | None, seed: int) -> Rows:
    """The rows stratified_subset would keep, as a stream. The pick is made on first use (one pass
    that holds the labels, 8 bytes a row), so a run whose token cache already holds them never reads
    the corpus: the cache knows them by their origin, the pick's settings included."""
    if n is None:
        return rows
    if n < 1:
        raise UserError(f"a subset needs at least 1 row, got {n}")
    picked: list[np.ndarray] = []

    def mask() -> np.ndarray:
        if not picked:
            labels = _strata(rows)
            keep = np.ones(len(labels), bool)
            if n < len(labels):
                keep[:] = False
                keep[_stratified_keep(labels, n, seed)] = True
            picked.append(keep)
        return picked[0]

    def read() -> Iterator[tuple[str, int]]:
        keep = mask()
        return (row for i, row in enumerate(rows) if keep[i])

    return Rows(read, rows.name, origin=picked_origin(rows, f"subset:{n}:{seed}"))


def _strata(rows) -> np.ndarray:
    """(rows,) int64: each row's class, which subsets and holdouts keep in proportion; multi-label and regression
    rows are one stratum (0), so they are picked at random."""
    return np.fromiter((y if isinstance(y, int) else 0 for _, y in rows), dtype=np.int64)


def _stratified_keep(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted row indices of the stratified subset; labels: (rows,) ints."""
    if n < 1:
        raise UserError(f"a subset needs at least 1 row, got {n}")
    by_class = {int(y): np.flatnonzero(labels == y) for y in np.unique(labels)}
    total = len(labels)
    quota = {y: n * len(idx) // total for y, idx in by_class.items()}
    by_remainder = sorted(by_class, key=lambda y: (-(n * len(by_class[y]) % total), y))
    for y in by_remainder[: n - sum(quota.values())]:
        quota[y] += 1
    if n >= len(by_class):  # no class present in the data vanishes from the subset
        for y in sorted(by_class):
            if quota[y] == 0:
                quota[max(quota, key=lambda c: (quota[c], -c))] -= 1
                quota[y] = 1
    rng = random.Random(seed)
    # Sampling positions in range(len(idx)) draws exactly what sampling the list idx itself would.
    keep = [idx[rng.sample(range(len(idx)), quota[y])] for y, idx in sorted(by_class.items())]
    return np.sort(np.concatenate(keep))


HOLDOUT_SEED = 0  # not the run's seed: every run of a sweep must be scored on the same held-out rows


def carve_holdout(split: Split, n: int) -> tuple[Split, Split]:
    """(the rest, n held-out rows): stratified by class, the same rows whatever the run's seed."""
    if n >= len(split.labels):
        raise UserError(f"--holdout {n} leaves no training rows (the training data has {len(split.labels)})")
    tagged = Split([str(i) for i in range(len(split.labels))], split.labels)
    held = {int(t) for t in stratified_subset(tagged, n, HOLDOUT_SEED).texts}
    pick = lambda keep: Split([t for i, t in enumerate(split.texts) if (i in held) == keep],  # noqa: E731
                              [y for i, y in enumerate(split.labels) if (i in held) == keep])
    return pick(False), pick(True)


def holdout_rows(rows: Rows, n: int) -> tuple[Rows, Rows]:
    """carve_holdout's (rest, held-out rows) as streams. The pick is made on first use, by one pass that
    holds the labels (8 bytes a row), so a run whose token cache already holds both never reads the rows. A
    pass over the rest keeps the n held-out rows it passes, and the held-out split is read from them."""
    picked: list[np.ndarray] = []
    kept: list[list[tuple[str, int]]] = []  # the held-out rows, once a pass over the rest has ended

    def held() -> np.ndarray:
        if not picked:
            labels = _strata(rows)
            if n >= len(labels):
                raise UserError(f"--holdout {n} leaves no training rows (the training data has {len(labels)})")
            mask = np.zeros(len(labels), bool)
            mask[_stratified_keep(labels, n, HOLDOUT_SEED)] = True
            picked.append(mask)
        return picked[0]

    def rest() -> Iterator[tuple[str, int]]:
        mask, aside = held(), []
        for i, row in enumerate(rows):
            if mask[i]:
                aside.append(row)
            else:
                yield row
        kept[:] = [aside]

    def held_out() -> Iterator[tuple[str, int]]:
        if kept:
            return iter(kept[0])
        mask = held()
        return (row for i, row in enumerate(rows) if mask[i])
    origin = lambda keep: picked_origin(rows, f"holdout:{n}:{HOLDOUT_SEED}:{keep}")  # noqa: E731
    return Rows(rest, rows.name, origin=origin(False)), Rows(held_out, f"{rows.name} (held out)", origin=origin(True))


def _hub_reachable() -> bool:
    from .hub import hub_reachable  # the hub's client is loaded only for a model that is not local

    return hub_reachable()
