"""The named recipes, and TrainConfig: one frozen, validated record of a whole run, holding the LoRAConfig it
trains with.

RECIPES is the one table of what each recipe fixes; keys are flat setting names, as on the command line: the LoRA
ones (LORA_KEYS) go into TrainConfig.lora, the rest are TrainConfig fields. A flag the user gives always wins over
the recipe. TrainConfig's defaults are the default recipe, so TrainConfig(), the CLI and sweeps agree.
config.json stores to_dict(), with the rank already resolved.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from lora import LoRAConfig

ALL_LINEAR = ("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense")

RECIPES: dict[str, dict] = {
    # The reference project's recipe: PEFT LoRA r=4 on query/value, full head, HF Trainer defaults.
    "reference": {"rank": 4, "max_rank": None, "alpha": 16.0, "dropout": 0.0, "targets": ("query", "value"),
                  "layers": None, "head": "full", "lr": 4e-4, "warmup_ratio": 0.0, "weight_decay": 0.0,
                  "label_smoothing": 0.1, "epochs": 5, "model_dropout": None},
    # LoRA on every linear layer of every block, rank 6, lean head: 998,404 trainable on roberta-base.
    # Beat the reference by > 1 pp on the offline proxy (README, sweeps/results). Without the model's own
    # dropout: as accurate on a held-out split, and faster on CPU (sweeps/results/dropout.md). Rank 6 at most:
    # less where a wide head leaves less room under the budget (on roberta-base, 5 from 7 labels up).
    "all-linear": {"rank": "auto", "max_rank": 6, "alpha": 16.0, "dropout": 0.0, "targets": ALL_LINEAR,
                   "layers": None, "head": "linear", "lr": 5e-4, "warmup_ratio": 0.06, "weight_decay": 0.01,
                   "label_smoothing": 0.1, "epochs": 5, "model_dropout": 0.0},
    # The fastest recipe at or above the reference's accuracy, chosen at full size (sweeps/mpnet-search.json,
    # sweeps/mpnet-fast.json: MPNet-base, roberta-base's shapes, 800 held-out training rows, 2 seeds): LoRA on
    # the six targets of the top half of the layers only, so the layers below run once per example (frozen-prefix
    # cache), at the largest rank under the budget (12 on roberta-base), rsLoRA's alpha/sqrt(r) scale, 2 epochs;
    # without the model's own dropout, which cost a large share of a CPU step and no accuracy (sweeps/dropout.json).
    # On 6-layer MiniLM, where it was first chosen, it was the top 2 layers at rank 36 (sweeps/fast.json).
    "fast": {"rank": "auto", "max_rank": None, "alpha": 16.0, "dropout": 0.0, "targets": ALL_LINEAR, "layers": None,
             "top_layers": 0.5, "use_rslora": True, "head": "linear", "lr": 5e-4, "warmup_ratio": 0.06,
             "weight_decay": 0.01, "label_smoothing": 0.1, "epochs": 2, "model_dropout": 0.0},
}
DEFAULT_RECIPE = "all-linear"

# Settings that belong to lora.LoRAConfig rather than to the training run.
LORA_KEYS = ("rank", "alpha", "dropout", "targets", "layers", "use_rslora")


def recipe(name: str) -> dict:
    """The settings of recipe `name`; a KeyError names the known ones."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return dict(RECIPES[name])


def with_recipe(name: str, given: dict) -> dict:
    """Flat settings: recipe `name`'s, then `given`'s (the user's: they win). A choice the user made replaces the
    recipe's that would contradict it: layers or top_layers the other; a rank, the recipe's ceiling on auto."""
    values = {**recipe(name), **given}
    for one, other in (("layers", "top_layers"), ("top_layers", "layers"), ("rank", "max_rank")):
        if one in given and other not in given:
            values[other] = None
    return values


HEADS = ("full", "lora", "linear")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTIONS = ("auto", "sdpa", "eager")  # train.device.pick_attention
TRACKERS = ("none", "tensorboard", "mlflow", "wandb")  # train/trackers.py
TASKS = ("auto", "single_label", "multi_label", "regression")  # train.tasks.KINDS, and auto
METRICS = ("accuracy", "macro_f1", "mcc", "f1", "micro_f1", "exact_match", "pearson", "spearman", "mse")  # every kind's
_R = RECIPES[DEFAULT_RECIPE]


def _default_lora() -> LoRAConfig:  # its rank is the placeholder an "auto" rank keeps until it is resolved
    return LoRAConfig(**{k: _R[k] for k in LORA_KEYS if k in _R and k != "rank"})


@dataclass(frozen=True)
class TrainConfig:
    # LoRA rank, alpha, dropout, targets (module-name suffixes, PEFT's rule), layers, rsLoRA
    lora: LoRAConfig = field(default_factory=_default_lora)
    # Asked, and resolved once at start (train.model.resolve) into lora, then None in what config.json records:
    # "auto": lora.rank becomes the largest rank under max_trainable_params; None: lora.rank as given
    rank: str | None = _R["rank"]
    # the ceiling of an "auto" rank (None: none); resolved with it, then None
    max_rank: int | None = _R["max_rank"]
    # adapt only the top K encoder layers, or a share of them (0.5: the top half, rounded up): lora.layers becomes
    # those layers (the ones below run once per example, through the frozen-prefix cache); None: lora.layers
    top_layers: int | float | None = None
    # run the frozen layers below the first LoRA layer once per example (eval mode) and reuse their output
    prefix_cache: bool = True
    # encoder: hub id or local directory; needs query/value nn.Linear layers
    model: str = "roberta-base"
    # hub dataset name, or a directory with train.csv and test/dev/validation.csv
    data: str = "ag_news"
    # the hub dataset's configuration (GLUE's mrpc); an alias like glue/mrpc in data names it too
    data_config: str | None = None
    # read a hub dataset as it downloads instead of downloading it first
    streaming: bool = False
    # explicit training file (CSV, JSONL or Parquet, or a glob of them); overrides --data, needs eval_file
    train_file: str | None = None
    # explicit evaluation file (CSV or JSONL)
    eval_file: str | None = None
    # the file columns holding the text: one name, or a pair; None: the hub's usual names (labels.TEXT_COLUMNS)
    text_columns: tuple[str, ...] | None = None
    # hold out this many training rows (stratified, the same rows for every seed) as validation rows, which pick
    # the best epoch (recipes are chosen on them); with train_file and no eval_file they are the evaluation rows
    holdout: int | None = None
    # stratified subset sizes; None keeps everything
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # the task kind: single_label, multi_label (a list of labels per row) or regression (a number per row);
    # auto: read from the training labels (train.data.labels.kind_of_labels)
    task: str = "auto"
    # the score that picks the best epoch on the validation rows; None: the kind's (accuracy, macro_f1, pearson)
    metric: str | None = None
    # multi-label: a label is predicted when its sigmoid is above this
    threshold: float = 0.5
    # train even if some class has no training row (otherwise refused: such a class can never be learned)
    allow_empty_classes: bool = False
    # tokens per text after truncation; batches are padded only to their longest row
    max_length: int = 128
    # dropout of the pretrained model's own layers (hidden, attention probabilities, head); None keeps its
    # config's (0.1 for RoBERTa and BERT). LoRA's own dropout is lora.dropout
    model_dropout: float | None = _R.get("model_dropout")
    # classification head: full (trained whole), lora (LoRA on its dense layer), linear (one Linear)
    head: str = _R["head"]
    # peak AdamW learning rate
    lr: float = _R["lr"]
    # LoRA+: learning-rate multiplier for B (1 = plain LoRA)
    lora_plus_ratio: float = 1.0
    # AdamW decoupled weight decay, on matrices only (not biases)
    weight_decay: float = _R["weight_decay"]
    # fraction of steps with linear warmup before the cosine decay
    warmup_ratio: float = _R["warmup_ratio"]
    # cross-entropy label smoothing
    label_smoothing: float = _R["label_smoothing"]
    # passes over the training data
    epochs: int = _R["epochs"]
    # examples per optimizer step (global, across all processes)
    batch_size: int = 32
    # examples per evaluation forward pass (and frozen-prefix batch); None: by device, 32 on CPU, 128 on GPU
    eval_batch_size: int | None = None
    # max gradient norm; 0 disables clipping
    grad_clip: float = 1.0
    # exponential moving average of trainable weights used at eval; 0 = off
    ema_decay: float = 0.0
    # auto: bf16 on CUDA (fp16 if unsupported) and on CPUs with bf16 instructions, else fp32
    precision: str = "auto"
    # attention kernel; auto: eager on CPU (SDPA's CPU backward is slow under bf16), SDPA elsewhere
    attention: str = "auto"
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
    # also send every metrics.jsonl line to: none, tensorboard, mlflow or wandb (each an optional extra)
    report_to: str = "none"

    def __post_init__(self) -> None:
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(isinstance(self.lora, LoRAConfig), f"lora must be a LoRAConfig, got {type(self.lora).__name__}")
        need(self.head in HEADS, f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        for names, rule, ok in ((("lr", "lora_plus_ratio"), "> 0", lambda v: v > 0),
                                (("weight_decay", "grad_clip"), ">= 0", lambda v: v >= 0),
                                (("warmup_ratio", "label_smoothing", "ema_decay"), "in [0, 1)", lambda v: 0 <= v < 1)):
            for name, value in ((n, getattr(self, n)) for n in names):
                need(_finite(value) and ok(value), f"{name} must be {rule}, got {value!r}")
        for name in ("epochs", "batch_size", "eval_batch_size", "max_trainable_params"):
            value = getattr(self, name)  # eval_batch_size None: chosen by the device at the start of the run
            need((value is None and name == "eval_batch_size") or (_int(value) and value >= 1),
                 f"{name} must be a whole number >= 1, got {value!r}")
        need(_int(self.max_length) and self.max_length >= 2, f"max_length must be a whole number >= 2, "
             f"got {self.max_length!r}")
        need(_int(self.seed) and 0 <= self.seed < 2**63,
             f"seed must be a whole number in 0..2**63-1, got {self.seed!r}")
        need(isinstance(self.device, str) and (self.device in ("auto", "cpu", "cuda", "mps")
                                               or (self.device.startswith("cuda:") and self.device[5:].isdigit())),
             f"device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        need(self.model_dropout is None or (_finite(self.model_dropout) and 0 <= self.model_dropout < 1),
             f"model_dropout must be in [0, 1), got {self.model_dropout!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(self.attention in ATTENTIONS, f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        need(self.report_to in TRACKERS, f"report_to must be one of {', '.join(TRACKERS)}, got {self.report_to!r}")
        need(_int(self.save_every) and self.save_every >= 0, f"save_every must be a whole number >= 0, "
             f"got {self.save_every!r}")
        need(self.top_layers is None or self.lora.layers is None, "give top_layers or layers, not both")
        top = self.top_layers
        need(top is None or (_int(top) and top >= 1) or (isinstance(top, float) and 0 < top < 1),
             f"top_layers must be a whole number >= 1 or a share in (0, 1), got {top!r}")
        for name in ("max_train_samples", "max_eval_samples", "stop_after", "holdout", "max_rank"):
            value = getattr(self, name)
            need(value is None or (_int(value) and value >= 1), f"{name} must be a whole number >= 1, got {value!r}")
        need(self.rank in (None, "auto"), f"rank must be a whole number >= 1 or 'auto', got {self.rank!r}")
        for name in ("prefix_cache", "streaming", "allow_empty_classes", "compile"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("model", "data"):
            need(isinstance(getattr(self, name), str) and getattr(self, name), f"{name} must be a name or a path, "
                 f"got {getattr(self, name)!r}")
        problems += self._data_problems()
        need(bool(self.train_file) == bool(self.eval_file) or (self.train_file and self.holdout),
             "train_file and eval_file go together (or train_file with holdout)")
        if problems:
            raise ValueError("; ".join(problems))

    def _data_problems(self) -> list[str]:
        """What is wrong with the text columns, the task's settings and the hub configuration (text_columns as a
        list, as config.json holds it, becomes a tuple)."""
        cols, problems = self.text_columns, []
        if isinstance(cols, list):
            object.__setattr__(self, "text_columns", cols := tuple(cols))
        if not (cols is None or (isinstance(cols, tuple) and 1 <= len(cols) <= 2 and len(set(cols)) == len(cols)
                                 and all(isinstance(c, str) and c.strip() for c in cols))):
            problems.append(f"text_columns must be one or two distinct column names, got {cols!r}")
        if self.task not in TASKS:
            problems.append(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not (self.metric is None or self.metric in METRICS):
            problems.append(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if not (_finite(self.threshold) and 0 < self.threshold < 1):
            problems.append(f"threshold must be in (0, 1), got {self.threshold!r}")
        if not (self.data_config is None or (isinstance(self.data_config, str) and self.data_config
                                             and not (self.train_file or self.eval_file))):
            problems.append(f"data_config must be a hub dataset's configuration name, without train_file/eval_file, "
                            f"got {self.data_config!r}")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    def to_flat(self) -> dict:
        """Settings flat, as on the command line (LoRA ones beside the rest): the inverse of from_flat."""
        flat = self.to_dict()
        lora = flat.pop("lora")
        lora.pop("trainable_modules", None)
        lora.pop("saved_modules", None)
        if flat.pop("rank") == "auto":
            lora["rank"] = "auto"
        return {**lora, **flat}

    def what_it_trains(self: "TrainConfig | dict") -> dict:
        """What a run is asked to train, flat, less where and how it runs (device, folders, stop, evaluation
        batch), as JSON holds it: what --resume auto and sweeps compare. Also takes a to_flat() dict."""
        flat = self if isinstance(self, dict) else self.to_flat()
        where = ("stop_after", "device", "output_dir", "cache_dir", "eval_batch_size")
        return json.loads(json.dumps({k: v for k, v in flat.items() if k not in where}))

    @classmethod
    def from_flat(cls, values: dict) -> "TrainConfig":
        """Build from flat settings (flags, recipes, sweep files): LORA_KEYS go into `lora`.
        Missing LoRA settings keep the default recipe's values. Invalid values raise one ValueError."""
        values = dict(values)
        layout = "lora" in values  # to_dict's: "rank" is the request field, lora.rank the number
        asked = values.pop("rank", None) if layout else None
        fixed = layout or "rank" in values  # a rank given (else the default recipe's request stands)
        lora = values.pop("lora", None)
        lora = asdict(lora) if isinstance(lora, LoRAConfig) else dict(lora or asdict(_default_lora()))
        for key in LORA_KEYS:
            if key in values:
                lora[key] = values.pop(key)
        if lora.get("rank") == "auto" or asked == "auto":  # resolved at start; lora.rank keeps its default till then
            values["rank"] = "auto"
            lora["rank"] = lora["rank"] if isinstance(lora.get("rank"), int) else LoRAConfig.rank
        elif fixed:
            values["rank"] = None
        rank = lora.get("rank", LoRAConfig.rank)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be >= 1 or 'auto', got {rank!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        try:
            lora_cfg = LoRAConfig(**lora)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e).removeprefix("invalid LoRAConfig: ")) from None
        return cls(lora=lora_cfg, **values)

    from_dict = from_flat  # the inverse of to_dict: from_flat reads its layout too


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
