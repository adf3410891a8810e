"""Counted work: padded tokens × encoder-layer passes, forward and backward counted separately.

It is computed from the data's token lengths and each contestant's batching, so unlike a time it
has no noise. One unit is one token (padding included) through one encoder layer, forward or
backward; embeddings, the head, attention's quadratic term and precision are not counted. Backward
through a frozen layer with LoRA is about as costly as its forward (activation gradients only), so
the total weighs both alike.

    ours       train.data.EpochBatches (length-grouped), one evaluation per epoch
               (train.data.eval_windows: sorted by length): the planners the loop itself uses.
               With LoRA only from layer s, no backward runs below s; with the frozen-prefix cache
               layers 0..s-1 run once per example (train and eval), not per epoch.
    reference  uniformly shuffled batches, each padded to its longest row (DataCollatorWithPadding),
               one evaluation at the end in file order (SequentialSampler).
    tuned      Trainer's length-grouped sampler (transformers' own get_length_grouped_indices), for
               training and for the final evaluation; engine and ceiling likewise. The engine's LoRA is
               in the top layers only: every layer runs forward every epoch, backward stops below them.

The shuffles are drawn with a fixed generator per (seed, epoch): the same distribution as the
contestant's own, not necessarily its exact permutation, which moves the padding by a fraction of
a percent.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

PARTS = ("forward_train", "backward_train", "forward_eval", "forward_prefix")


def padded_tokens(lengths: Sequence[int], batches: Iterable[Sequence[int]]) -> int:
    """Tokens the encoder sees when each batch is padded to its longest row."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if len(b))


def count_work(train_lengths: Sequence[int], train_epochs: list[list[list[int]]], eval_lengths: Sequence[int],
               evals: list[list[list[int]]], layers: int, start: int = 0, prefix_cache: bool = False,
               prefix_batch_size: int = 128) -> dict:
    """Token-layer passes of one run: `train_epochs` holds each epoch's batches, `evals` each
    evaluation's batches (index lists into the lengths). LoRA starts at layer `start`, so backward
    covers layers start..layers-1; with `prefix_cache` the layers below `start` run once per example,
    in length-sorted batches of `prefix_batch_size`, and every later pass covers only the rest."""
    if not 0 <= start < layers:
        raise ValueError(f"LoRA start layer {start} is outside 0..{layers - 1}")
    cached = prefix_cache and start > 0
    above = layers - start
    forward_layers = above if cached else layers
    train = [padded_tokens(train_lengths, batches) for batches in train_epochs]
    evaluated = [padded_tokens(eval_lengths, batches) for batches in evals]
    prefix = 0
    if cached:
        prefix = start * sum(padded_tokens(lengths, sorted_batches(lengths, prefix_batch_size))
                             for lengths in (train_lengths, eval_lengths))
    work = {"forward_train": sum(train) * forward_layers, "backward_train": sum(train) * above,
            "forward_eval": sum(evaluated) * forward_layers, "forward_prefix": prefix}
    return work | {"total": sum(work[k] for k in PARTS), "train_padded_tokens": sum(train),
                   "eval_padded_tokens": sum(evaluated), "layers": layers, "start_layer": start,
                   "prefix_cache": cached}


def sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Longest first, cut into batches: the least padding any batching can reach."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def ours_batches(train_lengths: Sequence[int], eval_lengths: Sequence[int], batch_size: int,
                 eval_batch_size: int, epochs: int, seed: int) -> tuple[list, list]:
    """(batches per epoch, batches per evaluation) exactly as python -m train draws them."""
    import torch

    from train.data import EpochBatches, eval_windows

    train_o, eval_o = (torch.tensor([0, *lengths]).cumsum(0) for lengths in (train_lengths, eval_lengths))
    return ([list(EpochBatches(train_o, batch_size, seed, epoch)) for epoch in range(epochs)],
            [list(eval_windows(eval_o, eval_batch_size))] * epochs)


def reference_batches(train_lengths: Sequence[int], eval_lengths: Sequence[int], batch_size: int,
                      eval_batch_size: int, epochs: int, seed: int, grouped: bool) -> tuple[list, list]:
    """(batches per epoch, [the final evaluation's batches]) as Trainer draws them: random order, or
    with `grouped` its LengthGroupedSampler's order (for training and evaluation alike)."""
    import torch

    def cut(order: list[int], size: int) -> list[list[int]]:
        return [order[i:i + size] for i in range(0, len(order), size)]

    def grouped_order(lengths: Sequence[int], size: int, g: torch.Generator) -> list[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        return list(get_length_grouped_indices(list(lengths), size, generator=g))

    train = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = (grouped_order(train_lengths, batch_size, g) if grouped
                 else torch.randperm(len(train_lengths), generator=g).tolist())
        train.append(cut(order, batch_size))
    g = torch.Generator().manual_seed(seed)
    order = grouped_order(eval_lengths, eval_batch_size, g) if grouped else list(range(len(eval_lengths)))
    return train, [cut(order, eval_batch_size)]


class Lengths:
    """Token lengths of the data, per seed's stratified subsets, for the work count (tokenized once,
    untruncated, then clipped per contestant's max_length: truncation keeps the first max_length tokens)."""

    def __init__(self, model: str, corpus_args: tuple, max_train: int | None, max_eval: int | None) -> None:
        from transformers import AutoTokenizer

        from train.data.corpus import load_corpus

        self.corpus = load_corpus(*corpus_args)
        self.max_train, self.max_eval = max_train, max_eval
        tokenizer = AutoTokenizer.from_pretrained(model)
        texts = sorted(set(self.corpus.train.texts) | set(self.corpus.eval.texts))
        ids = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        self.of = {t: len(x) for t, x in zip(texts, ids)}

    def split(self, seed: int, max_length: int) -> tuple[list[int], list[int]]:
        from train.data.splits import stratified_subset

        subsets = (stratified_subset(self.corpus.train, self.max_train, seed),
                   stratified_subset(self.corpus.eval, self.max_eval, seed))
        return tuple([min(self.of[t], max_length) for t in s.texts] for s in subsets)


def work_of(name: str, result: dict, lengths: Lengths, seed: int, layers: int, prefix_cache: bool) -> dict:
    """Counted work of one finished run of contestant `name`, from its own settings."""
    from benchmarks.contestants import OURS, start_layer  # here: contestants imports torch and train

    train_lengths, eval_lengths = lengths.split(seed, result["max_length"])
    args = (train_lengths, eval_lengths, result["batch_size"], result["eval_batch_size"], result["epochs"], seed)
    if name in OURS:
        train, evals = ours_batches(*args)
        return count_work(train_lengths, train, eval_lengths, evals, layers, start_layer(result["layers"]),
                          prefix_cache, result["eval_batch_size"])
    # Trainer: no prefix cache, so every layer runs forward every epoch; backward stops at LoRA's lowest layer.
    train, evals = reference_batches(*args, grouped=name != "reference")
    return count_work(train_lengths, train, eval_lengths, evals, layers, start_layer(result["layers"]))
