"""The two nets a training step and an evaluation call, both as net(**inputs) -> logits (b, K):
Logits(model), the whole classifier on token ids, and PrefixModel(model, s), its layers s..L-1 and head on
hidden states cached from below (train.prefix_cache). Also how each family's encoder splits."""
from __future__ import annotations

from contextlib import nullcontext
from itertools import islice

import torch
from torch import nn

from lora import LoRALinear, merge_lora, unmerge_lora

from .data.batches import eval_windows
from .device import autocast, forward_batch_size, inference_attention
from .distributed import Dist, gather_rows
from .errors import UserError, progress as progress_bar
from .families import FAMILIES, Family, family_of
from .tasks import TaskKind, kind_of_model, score_rows


def start_layer(layers: tuple[int, ...] | None, num_layers: int) -> int:
    """The first layer that gets LoRA: everything below it is frozen and LoRA-free. 0 = no prefix."""
    if not layers:
        return 0
    if max(layers) >= num_layers or min(layers) < 0:
        raise ValueError(f"layers {sorted(layers)} are not all in 0..{num_layers - 1}")
    return min(layers)


def split_encoder(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, Family]:
    """(base model, its layer list, family) of a classifier whose encoder the cache can split; UserError else."""
    family = family_of(model)
    base = getattr(model, "base_model", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if family is None or not family.splits or not isinstance(layers, nn.ModuleList):
        raise UserError(f"the frozen-prefix cache cannot split {type(model).__name__} (it splits "
                        f"{', '.join(f.name for f in FAMILIES if f.splits)}); run with --no-prefix-cache")
    return base, layers, family


def embedding_modules(base: nn.Module) -> list[nn.Module]:
    """The modules before the first layer: the embeddings, and ELECTRA's projection to the hidden size."""
    return [base.embeddings, *([base.embeddings_project] if hasattr(base, "embeddings_project") else [])]


def _embed(base: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """input_ids (b, t) (and BERT's pairs' token types) -> what the first layer receives, (b, t, h)."""
    x = base.embeddings(input_ids=input_ids, **({} if token_type_ids is None else {"token_type_ids": token_type_ids}))
    return base.embeddings_project(x) if hasattr(base, "embeddings_project") else x


def _extended_mask(base: nn.Module, attention_mask: torch.Tensor, hidden: torch.Tensor):
    """The mask the model's own forward builds from the (b, t) mask: (b, 1, t, t), or None when nothing is
    padded under SDPA. The same transformers helper with the same arguments, so eager and SDPA rules carry over."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)


def _run_layers(base: nn.Module, family: Family, layers, x: torch.Tensor, mask) -> torch.Tensor:
    """x (b, t, h) through `layers` as the encoder runs them; MPNet's encoder computes one relative position
    bias from the shape and hands it to every layer."""
    extra = {"position_bias": base.encoder.compute_position_bias(x)} if family.position_bias else {}
    for layer in layers:
        out = layer(x, mask, **extra)
        x = out[0] if isinstance(out, tuple) else out
    return x


class Logits(nn.Module):
    """The whole classifier as net(input_ids, attention_mask) -> logits (b, K), the interface PrefixModel
    shares, so the loop, evaluation and the ONNX graph call either the same way; BERT's pairs add token_type_ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **types).logits


class PrefixModel(nn.Module):
    """Layers start..L-1 and the head of `model` (the very same modules, so LoRA in them, DDP over
    the trainable parameters, merge_lora and save_adapter on `model` all apply), fed cached hidden states."""

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        base, layers, _ = split_encoder(model)
        if not 0 < start <= len(layers):
            raise ValueError(f"start must be in 1..{len(layers)}, got {start}")
        for i, module in enumerate([nn.ModuleList(embedding_modules(base)), *layers[:start]]):
            where = "the embeddings" if i == 0 else f"layer {i - 1}"
            if any(p.requires_grad for p in module.parameters()) or any(
                    isinstance(m, LoRALinear) for m in module.modules()):
                raise ValueError(f"{where} has trainable parameters or LoRA, so it cannot be cached")
        self.model, self.start = model, start
        # The dtype the model's own layer `start` receives: LayerNorm output, fp32 under autocast for an fp32 model.
        self.input_dtype = next(p.dtype for p in base.embeddings.parameters() if p.is_floating_point())

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden_states (b, t, h) as PrefixCache.batch gives them, attention_mask (b, t) -> logits (b, K)."""
        base, layers, family = split_encoder(self.model)
        x = hidden_states.to(self.input_dtype)  # cached in bf16: upcast like the uncached residual stream
        x = _run_layers(base, family, layers[self.start:], x, _extended_mask(base, attention_mask, x))
        if getattr(base, "pooler", None) is not None:  # BERT: classifier(dropout(pooler(first token)))
            return self.model.classifier(self.model.dropout(base.pooler(x)))
        return self.model.classifier(x)  # RoBERTa: the head reads the first token itself


def run_prefix(model: nn.Module, data, start: int, amp: torch.dtype | None, batch_size: int,
               out: torch.Tensor) -> None:
    """Fill `out` (total_tokens, h) with the embeddings + layers 0..start-1 output, in eval mode (no
    dropout) under inference_mode, batch by batch sorted by length so padding costs little."""
    base, layers, family = split_encoder(model)
    modules = [*embedding_modules(base), *layers[:start]]
    modes = [m.training for m in modules]
    device, lengths = next(model.parameters()).device, data.lengths
    try:
        for m in modules:
            m.eval()
        with torch.inference_mode(), progress_bar(desc=f"frozen prefix (layers 0-{start - 1})", total=len(data)) as bar:
            for rows in eval_windows(data, batch_size):
                bar.update(len(rows))
                batch = data.batch(rows)
                mask = batch["attention_mask"].to(device)
                with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
                    types = batch.get("token_type_ids")
                    x = _embed(base, batch["input_ids"].to(device), None if types is None else types.to(device))
                    x = _run_layers(base, family, layers[:start], x, _extended_mask(base, mask, x))
                x = x.to(out.dtype).cpu()
                for row, (i, n) in enumerate(zip(rows, lengths[rows].tolist())):
                    begin = int(data.offsets[i])
                    out[begin:begin + n] = x[row, :n]
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def predict(model: nn.Module, data, batch_size: int | None, device: torch.device, amp: torch.dtype | None,
            d: Dist = Dist(), net: nn.Module | None = None, progress: bool = False) -> torch.Tensor:
    """Class probabilities (n, K) in data order, on every process; `progress` shows a bar of rows on stderr."""
    index, probs = predict_rows(model, data, batch_size, device, amp, d, net, progress)
    return gather_rows(index, probs, len(data), d)


def score(model: nn.Module, data, kind: TaskKind, names: list[str], cfg, device: torch.device,
          amp: torch.dtype | None, d: Dist = Dist(), net: nn.Module | None = None) -> dict:
    """The task kind's report (train.tasks.score_rows) on `data`, a labelled batch source, as `model` is now;
    cfg: the run's settings (eval_batch_size, threshold)."""
    index, outputs = predict_rows(model, data, cfg.eval_batch_size, device, amp, d, net, True)
    return score_rows(kind, outputs, data.labels[index], index, len(data), names, cfg.threshold, d)


def predict_rows(model: nn.Module, data, batch_size: int | None, device: torch.device, amp: torch.dtype | None,
                 d: Dist = Dist(), net: nn.Module | None = None,
                 progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices (m,), outputs (m, K) as the model's task kind activates them: class probabilities, a sigmoid
    per label, or the score (m, 1)) of this process's share of `data`, a batch source (token rows, or frozen-prefix
    rows with `net` the PrefixModel over `model`; default Logits(model)). LoRA is merged in `model` while it
    scores. batch_size None: the device's (forward_batch_size)."""
    net, kind = Logits(model) if net is None else net, kind_of_model(model.config)
    batch_size = batch_size or forward_batch_size(device)
    was_training = model.training
    model.eval()
    merge_lora(model)  # outside inference_mode: the saved base weight must stay a normal tensor
    try:
        index, probs = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, model.config.num_labels)]
        bar = progress_bar(desc="scoring", total=len(data), show=progress and d.main)
        with inference_attention(model), torch.inference_mode(), bar:
            for rows in islice(eval_windows(data, batch_size), d.rank, None, d.world):
                batch = data.batch(rows)
                batch.pop("labels")
                with autocast(device, amp):
                    logits = net(**{k: v.to(device, non_blocking=True) for k, v in batch.items()})
                index.append(torch.tensor(rows))
                probs.append(kind.activation(logits.float()).cpu())
                bar.update(len(rows) * d.world)
        return torch.cat(index), torch.cat(probs)
    finally:
        unmerge_lora(model)
        model.train(was_training)
