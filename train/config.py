"""TrainConfig: one frozen, validated record of a whole run; config.json is its dict."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

HEADS = ("full", "lora", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    # encoder: hub id or local directory; needs query/value nn.Linear layers
    model: str = "roberta-base"
    # hub dataset name, or a directory with train.csv and test/dev/validation.csv
    data: str = "ag_news"
    # explicit training file (CSV or JSONL); overrides --data, needs eval_file
    train_file: str | None = None
    # explicit evaluation file (CSV or JSONL)
    eval_file: str | None = None
    # stratified subset sizes; None keeps everything
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # tokens per text after truncation; batches are padded only to their longest row
    max_length: int = 128
    # LoRA rank, or "auto" for the largest rank that fits max_trainable_params
    rank: int | str = 4
    # LoRA alpha: the update is scaled by alpha/rank (alpha/sqrt(rank) with use_rslora)
    alpha: float = 16.0
    # dropout on the LoRA input
    dropout: float = 0.0
    # module-name suffixes that get LoRA, PEFT's matching rule
    targets: tuple[str, ...] = ("query", "value")
    # encoder layers that get LoRA; None = all
    layers: tuple[int, ...] | None = None
    # classification head: full (trained whole), lora (LoRA on its dense layer), linear (one Linear)
    head: str = "full"
    # rsLoRA scaling alpha/sqrt(rank)
    use_rslora: bool = False
    # peak AdamW learning rate
    lr: float = 4e-4
    # LoRA+: learning-rate multiplier for B (1 = plain LoRA)
    lora_plus_ratio: float = 1.0
    # AdamW decoupled weight decay, on matrices only (not biases)
    weight_decay: float = 0.0
    # fraction of steps with linear warmup before the cosine decay
    warmup_ratio: float = 0.0
    # cross-entropy label smoothing
    label_smoothing: float = 0.1
    # passes over the training data
    epochs: int = 5
    # examples per optimizer step (global, across all processes)
    batch_size: int = 32
    # examples per evaluation forward pass
    eval_batch_size: int = 128
    # max gradient norm; 0 disables clipping
    grad_clip: float = 1.0
    # exponential moving average of trainable weights used at eval; 0 = off
    ema_decay: float = 0.0
    # auto: bf16 on CUDA (fp16 if unsupported) and on CPUs with bf16 instructions, else fp32
    precision: str = "auto"
    # torch.compile the model
    compile: bool = False
    # seed for LoRA init, data order and dropout
    seed: int = 0
    # where config, metrics, checkpoints, adapter and plots go
    output_dir: str = "runs/latest"
    # also checkpoint every this many steps; 0 = only at the end of each epoch
    save_every: int = 0
    # refuse runs with this many trainable parameters or more
    max_trainable_params: int = 1_000_000
    # where tokenized datasets are cached; None = no cache
    cache_dir: str | None = None
    # stop (checkpointed, resumable) after this many steps in total; None = run to the end
    stop_after: int | None = None
    # auto, cpu, cuda, cuda:N
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("targets", "layers"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.rank == "auto" or (isinstance(self.rank, int) and self.rank >= 1),
             f"rank must be >= 1 or 'auto', got {self.rank!r}")
        need(_finite(self.alpha) and self.alpha > 0, f"alpha must be > 0, got {self.alpha!r}")
        need(_finite(self.dropout) and 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout!r}")
        need(bool(self.targets) and all(t.strip(".") for t in self.targets), "targets must name at least one module")
        need(self.layers is None or (bool(self.layers) and all(i >= 0 for i in self.layers)),
             f"layers must be non-negative indices, got {self.layers!r}")
        need(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        need(_finite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(_finite(self.lora_plus_ratio) and self.lora_plus_ratio > 0,
             f"lora_plus_ratio must be > 0, got {self.lora_plus_ratio!r}")
        need(_finite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(_finite(self.warmup_ratio) and 0 <= self.warmup_ratio < 1,
             f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        need(_finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs!r}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size!r}")
        need(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length!r}")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip!r}")
        need(_finite(self.ema_decay) and 0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.save_every >= 0, f"save_every must be >= 0, got {self.save_every!r}")
        need(self.max_trainable_params >= 1, f"max_trainable_params must be >= 1, got {self.max_trainable_params!r}")
        for name in ("max_train_samples", "max_eval_samples", "stop_after"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{name} must be >= 1, got {value!r}")
        need(bool(self.train_file) == bool(self.eval_file), "train_file and eval_file go together")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
