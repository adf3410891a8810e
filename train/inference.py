"""Predict over encoded data: LoRA merged for speed (and unmerged exactly after), batches sorted by length."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from lora import merge_lora, unmerge_lora

from .batches import Encoded, collate, eval_batches
from .distributed import Dist, gather_rows


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for `dtype`, or nothing for plain fp32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def predict(model: nn.Module, data: Encoded, pad_id: int, batch_size: int, device: torch.device,
            amp: torch.dtype | None, d: Dist = Dist()) -> torch.Tensor:
    """Class probabilities (n, K) in data order. Batches are shared out across processes, each row scored once."""
    was_training = model.training
    model.eval()
    merge_lora(model)  # outside inference_mode: the saved base weight must stay a normal tensor
    try:
        index, probs = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, model.config.num_labels)]
        with torch.inference_mode():
            for rows in eval_batches(data.lengths, batch_size)[d.rank::d.world]:
                batch = collate(data, rows, pad_id)
                with autocast(device, amp):
                    logits = model(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device)).logits
                index.append(torch.tensor(rows))
                probs.append(logits.float().softmax(-1).cpu())
        return gather_rows(torch.cat(index), torch.cat(probs), len(data), d)
    finally:
        unmerge_lora(model)
        model.train(was_training)
