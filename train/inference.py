"""Predict over encoded data: LoRA merged for speed (and unmerged exactly after), batches sorted by length."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from tqdm import tqdm

from lora import merge_lora, unmerge_lora

from .batches import Encoded, collate, eval_batches
from .distributed import Dist, gather_rows
from .device import inference_attention
from .prefix import PrefixCache


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or nothing for plain fp32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def rows_batch(data: Encoded | PrefixCache, rows: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows as a padded batch: input_ids from the token cache, or hidden_states from the frozen-prefix
    cache; attention_mask and labels either way."""
    return data.collate(rows) if isinstance(data, PrefixCache) else collate(data, rows, pad_id)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def logits_of(net: nn.Module, batch: dict) -> torch.Tensor:
    """(b, K) logits of the whole model, or of a PrefixModel fed cached hidden states."""
    if "hidden_states" in batch:
        return net(batch["hidden_states"], batch["attention_mask"])
    return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def predict(model: nn.Module, data: Encoded | PrefixCache, pad_id: int, batch_size: int, device: torch.device,
            amp: torch.dtype | None, d: Dist = Dist(), net: nn.Module | None = None,
            progress: bool = False) -> torch.Tensor:
    """Class probabilities (n, K) in data order, on every process; `progress` shows a bar of rows on stderr."""
    index, probs = predict_rows(model, data, pad_id, batch_size, device, amp, d, net, progress)
    return gather_rows(index, probs, len(data), d)


def predict_rows(model: nn.Module, data: Encoded | PrefixCache, pad_id: int, batch_size: int,
                 device: torch.device, amp: torch.dtype | None, d: Dist = Dist(),
                 net: nn.Module | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices (m,), class probabilities (m, K)) of this process's share of `data`: batches are sorted
    by length and shared out, each row scored once over all processes. `net` is what to call when it is
    not `model` itself (a PrefixModel over it); LoRA is merged in `model`."""
    net = model if net is None else net
    was_training = model.training
    model.eval()
    merge_lora(model)  # outside inference_mode: the saved base weight must stay a normal tensor
    try:
        index, probs = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, model.config.num_labels)]
        mine = eval_batches(data.lengths, batch_size)[d.rank::d.world]
        bar = tqdm(total=sum(map(len, mine)), unit="rows", desc="scoring", leave=False,
                   disable=not progress or None, dynamic_ncols=True)
        with inference_attention(model), torch.inference_mode(), bar:
            for rows in mine:
                with autocast(device, amp):
                    logits = logits_of(net, to_device(rows_batch(data, rows, pad_id), device))
                index.append(torch.tensor(rows))
                probs.append(logits.float().softmax(-1).cpu())
                bar.update(len(rows))
        return torch.cat(index), torch.cat(probs)
    finally:
        unmerge_lora(model)
        model.train(was_training)
