"""Class probabilities over encoded data: LoRA merged for speed (and unmerged exactly after), batches sorted
by length a window at a time (train.data.eval_windows), each row scored once across processes."""
from __future__ import annotations

from itertools import islice

import torch
from torch import nn

from lora import merge_lora, unmerge_lora

from ..cli import progress as bar_of
from ..data.batches import eval_windows
from ..distributed import Dist, gather_rows
from .device import autocast, forward_batch_size, inference_attention
from .prefix import Logits


def predict(model: nn.Module, data, batch_size: int | None, device: torch.device, amp: torch.dtype | None,
            d: Dist = Dist(), net: nn.Module | None = None, progress: bool = False) -> torch.Tensor:
    """Class probabilities (n, K) in data order, on every process; `progress` shows a bar of rows on stderr."""
    index, probs = predict_rows(model, data, batch_size, device, amp, d, net, progress)
    return gather_rows(index, probs, len(data), d)


def predict_rows(model: nn.Module, data, batch_size: int | None, device: torch.device, amp: torch.dtype | None,
                 d: Dist = Dist(), net: nn.Module | None = None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices (m,), class probabilities (m, K)) of this process's share of `data`, a batch source
    (token rows, or frozen-prefix rows with `net` the PrefixModel over `model`; default Logits(model)).
    LoRA is merged in `model` while it scores. batch_size None: the device's (forward_batch_size)."""
    net = Logits(model) if net is None else net
    batch_size = batch_size or forward_batch_size(device)
    was_training = model.training
    model.eval()
    merge_lora(model)  # outside inference_mode: the saved base weight must stay a normal tensor
    try:
        index, probs = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, model.config.num_labels)]
        bar = bar_of(desc="scoring", total=len(data), show=progress and d.main)
        with inference_attention(model), torch.inference_mode(), bar:
            for rows in islice(eval_windows(data, batch_size), d.rank, None, d.world):
                batch = data.batch(rows)
                batch.pop("labels")
                with autocast(device, amp):
                    logits = net(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
                index.append(torch.tensor(rows))
                probs.append(logits.float().softmax(-1).cpu())
                bar.update(len(rows) * d.world)
        return torch.cat(index), torch.cat(probs)
    finally:
        unmerge_lora(model)
        model.train(was_training)
