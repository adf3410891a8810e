"""The model: the encoder and its tokenizer loaded (a local directory or the hub), what trains (the head for
--head, the LoRA targets in this family's names, the rank under the budget, the count per module group printed as
the plan), the optimizer's parameter groups, the EMA of the weights, and a trained classifier rebuilt from its
adapter."""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from lora import LoRAConfig, fuse, inject_lora, lora_layers, lora_targets

from .config import TrainConfig
from .data.labels import SINGLE
from .device import forward_batch_size, pick_attention, set_model_dropout
from .errors import UserError
from .families import head_modules, resolve_targets, usable_length
from .tasks import pick_metric, task_kind


def load_pretrained(name: str, num_labels: int, label_names: list[str], attention: str = "sdpa",
                    tokenizer=None, problem_type: str | None = None) -> tuple[nn.Module, object]:
    """(AutoModelForSequenceClassification with `attention` ("sdpa" or "eager"), tokenizer), from a
    directory or the hub, its head of num_labels outputs named by label_names, for transformers' problem_type
    (None: single-label); `tokenizer`, when given, is this model's already loaded. Refused unless every weight but
    the head's comes from the checkpoint and the tokenizer is the model's own (check_weights, check_tokenizer)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report is read below (check_weights), not printed
    hf_logging.disable_progress_bar()
    name = str(Path(name).expanduser()) if name.startswith("~") else name
    local = Path(name).is_dir()
    if not local and (Path(name).exists() or name.startswith((".", "/", "~"))):
        raise UserError(f"model not found: {name} is not a model directory")
    kwargs = dict(num_labels=num_labels, id2label=dict(enumerate(label_names)),
                  label2id={n: i for i, n in enumerate(label_names)}, output_loading_info=True,
                  **({"problem_type": problem_type} if problem_type else {}),
                  ignore_mismatched_sizes=True)  # for a saved head of another label count; check_weights limits it
    attempts = [True] if local else [True, False]  # cache first; the network only if it answers
    for local_only in attempts:
        if not local_only and not _hub_reachable():
            from .data.hub import unreachable
            raise unreachable("model", name, "--model PATH")
        try:
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(name, local_files_only=local_only)
            kernel = attention if attention != "sdpa" or supports_sdpa(name, local_only) else "eager"
            model, report = AutoModelForSequenceClassification.from_pretrained(
                name, local_files_only=local_only, attn_implementation=kernel, **kwargs)
            break
        except Exception as e:  # OSError, a truncated safetensors file, a pickle refused: all "cannot load it"
            if local or not local_only:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                if "weights_only" in str(e) or "pickle" in str(e).lower():  # never advise weights_only=False
                    first = "its weights are a pickle file, which is never loaded; save them as model.safetensors"
                raise UserError(f"cannot load model '{name}': {first[:200]}") from None
    else:
        raise AssertionError("unreachable")
    check_weights(name, report, head_keys(model))
    check_tokenizer(name, model, tokenizer, local)
    # transformers 5 keeps a checkpoint's stored dtype; fp32 weights are what the LoRA factors, the
    # optimizer and autocast expect (a half-precision checkpoint would fail on CPU, or train fp16 params)
    return model.float(), tokenizer


def head_keys(model: nn.Module) -> tuple[str, ...]:
    """The module names of the classification head (head_modules): the only weights that may start new."""
    out, dense, full, saved = head_modules(model)
    return tuple(dict.fromkeys((out, *full, *saved, *([dense] if dense else []))))


# Files that hold a tokenizer's vocabulary, in the formats transformers reads.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spm.model", "sentencepiece.bpe.model",
                   "spiece.model", "tokenizer.model")
# Lowercase news words, the kind of text this tool classifies: every subword vocabulary covers them, and so
# does a word-level vocabulary built for news (the tests' tiny model knows most of them).
SAMPLE = "the market said on a new report today that shares rose after the election in a big week for the league"


def check_weights(name: str, report: dict, head: tuple[str, ...]) -> None:
    """Refuse a load (transformers' loading info: `report`) that left a weight outside the `head` modules at a
    random init: a tensor whose shape in config.json differs from the checkpoint's (ignore_mismatched_sizes
    re-draws it), or one the checkpoint lacks. Keys a model declares optional (position_ids buffers and the like)
    transformers leaves out of the report; unexpected keys (a pretraining head, a pooler no head reads) are
    simply not loaded."""
    def outside(key: str) -> bool:
        return not any(key == h or key.startswith(h + ".") for h in head)

    if report.get("error_msgs"):
        raise UserError(f"cannot load model '{name}': {str(report['error_msgs'][0]).strip().splitlines()[0][:200]}")
    wrong = sorted((k, list(a), list(b)) for k, a, b in report.get("mismatched_keys", []) if outside(k))
    if wrong:
        key, stored, wanted = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors)" if len(wrong) > 1 else ""
        raise UserError(f"cannot load model '{name}': {key} is {stored} in its weights but {wanted} in its "
                        f"config.json{more}; the config does not describe these weights")
    missing = sorted(k for k in report.get("missing_keys", []) if outside(k))
    if missing:
        listed = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"cannot load model '{name}': its weights lack {listed}, which would start at random")


def check_tokenizer(name: str, model: nn.Module, tokenizer, local: bool) -> None:
    """Refuse a tokenizer that is not this model's: for a directory with no tokenizer files AutoTokenizer
    builds a 5-token one, and the run trains to chance with every word unknown or dropped."""
    if local and not any((Path(name) / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"cannot use model '{name}': no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                        "save the model's tokenizer in that directory")
    rows, size = model.get_input_embeddings().num_embeddings, len(tokenizer)
    # Embeddings may have spare rows (padded to a round number), never fewer than the ids the tokenizer makes;
    # a vocabulary of special tokens alone reads no text.
    if size > rows or 2 * size < rows or size <= len(set(tokenizer.all_special_ids)):
        raise UserError(f"cannot use model '{name}': its tokenizer has a vocabulary of {size} tokens for an "
                        f"embedding of {rows} rows; it is not this model's tokenizer")
    ids = tokenizer(SAMPLE, add_special_tokens=False)["input_ids"]
    unknown = sum(i == tokenizer.unk_token_id for i in ids) if tokenizer.unk_token_id is not None else 0
    if not ids or 2 * unknown > len(ids):
        raise UserError(f"cannot use model '{name}': its tokenizer reads {unknown} of the {len(ids)} tokens of an "
                        "English sample sentence as unknown; it is not this model's tokenizer")


def _hub_reachable() -> bool:
    from .data.hub import hub_reachable  # the hub's client is loaded only for a model that is not local

    return hub_reachable()


def supports_sdpa(name: str, local_only: bool = True) -> bool:
    """Whether transformers has an SDPA attention for this model's classifier (MPNet and DeBERTa-v2 have
    eager attention only: they are loaded with it)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    config = AutoConfig.from_pretrained(name, local_files_only=local_only)
    return bool(getattr(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None), "_supports_sdpa", False))


def lora_config(cfg: TrainConfig, model: nn.Module, rank: int) -> LoRAConfig:
    """The LoRAConfig that `cfg` implies for this model: its targets resolved to this family's module names
    (train.families), and what trains and is stored for `cfg.head`; every head is the model's stock one.

    full: the whole head trains. linear: only the output layer trains. lora: the output layer trains and the
    hidden dense layer gets LoRA. A head layer that a pretrained checkpoint lacks (RoBERTa's classifier.dense)
    stays frozen at its init under linear and lora, so it is stored in the adapter (saved_modules). BERT's
    dense layer is the pretrained pooler: nothing extra is stored, and linear equals full."""
    out, dense, full, saved = head_modules(model)
    try:
        targets = resolve_targets(model, cfg.lora.targets, cfg.lora.layers)
    except ValueError as e:
        raise UserError(str(e)) from None
    trainable, stored = full, ()
    if cfg.head in ("linear", "lora"):
        trainable, stored = (out,), saved
    if cfg.head == "lora":
        if dense is None:
            raise UserError("--head lora needs a head with a hidden dense layer; this model has none")
        targets = (*targets, dense)
    return replace(cfg.lora, rank=rank, targets=targets, trainable_modules=trainable, saved_modules=stored)


def set_head_bias(model: nn.Module, bias: torch.Tensor | None) -> None:
    """Start the head's output layer from `bias` (train.tasks.head_prior; None leaves it)."""
    if bias is not None:
        with torch.no_grad():
            model.get_submodule(head_modules(model)[0]).bias.copy_(bias)


def apply_head(cfg: TrainConfig, model: nn.Module) -> None:
    """Initialise the stock head for `cfg.head` (lora_config says what trains). With head='linear', a hidden
    dense layer that the checkpoint lacks (RoBERTa's) starts as the identity, so out_proj sees tanh(features) at
    their own scale: at its random init (std 0.02) the dense layer shrinks them and the same recipe learns
    slower. The identity is stored in the adapter like any other head weight."""
    _, dense, _, saved = head_modules(model)
    if cfg.head == "linear" and dense is not None and saved:
        layer = model.get_submodule(dense)
        with torch.no_grad():
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)


def resolve(cfg: TrainConfig, model: nn.Module, eval_batch_size: int,
            say=lambda line: None) -> tuple[TrainConfig, list[tuple[str, int]]]:
    """The run's settings, resolved once from what was asked and the loaded model, as config.json records them:
    lora in this family's module names with the head's modules (the adapter's LoRAConfig), the layers --top-layers
    names, the rank (the largest under the budget for --rank auto), the length the model can take, the evaluation
    batch. Also the plan: what trains, per module group (rows of (what, count)). Nothing in the model changes."""
    layers = cfg.lora.layers
    if cfg.top_layers is not None:  # K: the last K encoder layers; a share (0 < K < 1): the last ceil(K × L)
        total = model.config.num_hidden_layers
        top = math.ceil(cfg.top_layers * total) if isinstance(cfg.top_layers, float) else cfg.top_layers
        if top > total:
            raise UserError(f"--top-layers {cfg.top_layers}: {cfg.model} has only {total} encoder layers")
        layers = tuple(range(total - top, total))
    probe = lora_config(replace(cfg, top_layers=None, lora=replace(cfg.lora, layers=layers)), model, 1)
    try:
        names = lora_targets(model, probe)
    except ValueError as e:
        raise UserError(str(e)) from None
    modules = dict(model.named_modules())
    per_rank = sum(modules[n].in_features + modules[n].out_features for n in names)
    head = sum(p.numel() for n, p in model.named_parameters()
               if any(n.startswith(t + ".") or f".{t}." in f".{n}" for t in probe.trainable_modules))
    largest = (cfg.max_trainable_params - 1 - head) // per_rank
    rank = cfg.lora.rank if cfg.rank is None else min(largest, cfg.max_rank or largest)
    if rank < 1:
        raise UserError(f"no rank fits under {cfg.max_trainable_params:,} trainable parameters: the head alone "
                        f"has {head:,}; use --head linear or fewer targets")
    if cfg.rank is not None and cfg.max_rank and rank < cfg.max_rank:
        say(f"note: LoRA rank {rank}, under its ceiling of {cfg.max_rank}: the head's {head:,} trainable parameters "
            f"leave no room for more under the budget of {cfg.max_trainable_params:,}")
    groups: dict[str, int] = {}
    for n in names:
        key = re.sub(r"\.\d+\.", ".*.", n)
        groups[key] = groups.get(key, 0) + rank * (modules[n].in_features + modules[n].out_features)
    rows = [(f"LoRA {k}", v) for k, v in groups.items()] + [(f"trained {', '.join(probe.trainable_modules)}", head)]
    if sum(v for _, v in rows) >= cfg.max_trainable_params:
        raise UserError(f"{sum(v for _, v in rows):,} trainable parameters reach the budget of "
                        f"{cfg.max_trainable_params:,}; fit it with a lower --rank (or --rank auto), fewer --targets "
                        "or --layers, or --head linear")
    length = usable_length(cfg.max_length, model.config)
    if length < cfg.max_length:
        say(f"note: --max-length {cfg.max_length} is more than {cfg.model} can take; using {length}")
    task = SINGLE if cfg.task == "auto" else cfg.task  # model_for sets the data's kind
    return replace(cfg, rank=None, max_rank=None, top_layers=None, max_length=length, eval_batch_size=eval_batch_size,
                   task=task, lora=replace(probe, rank=rank),
                   metric=pick_metric(task, cfg.metric, model.config.num_labels)), rows


def prepare(cfg: TrainConfig, model: nn.Module) -> None:
    """Give `model` what a resolved `cfg` says: the head's init, then LoRA, on the fused path."""
    apply_head(cfg, model)
    inject_lora(model, cfg.lora)
    fuse(model)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: LoRA B gets lr × lora_plus_ratio (LoRA+); biases and norms get no weight decay."""
    b_ids = {id(layer.lora_B.weight) for _, layer in lora_layers(model)}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in b_ids, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (cfg.lora_plus_ratio if is_b else 1.0),
             "weight_decay": cfg.weight_decay if decays else 0.0}
            for (is_b, decays), ps in sorted(groups.items())]


def model_for(cfg: TrainConfig, labels: list[str], device: torch.device, record=None, say=lambda line: None,
              tokenizer=None, task: str = SINGLE) -> tuple[TrainConfig, nn.Module, object, list[tuple[str, int]]]:
    """The encoder as the run trains it on `device`: loaded (with `tokenizer` when one is loaded already), its own
    dropout set, the settings resolved once here (or, for a resumed run, its `record`'s, run where this process
    runs), the head's init, LoRA injected; the head has the task kind's outputs (K, or 1 for a regression).
    Returns (settings, model, tokenizer, the plan's rows)."""
    eval_batch_size, kind = cfg.eval_batch_size or forward_batch_size(device), task_kind(task)
    model, tokenizer = load_pretrained(cfg.model, kind.outputs(len(labels)), labels,
                                       pick_attention(cfg.attention, device), tokenizer, kind.problem_type)
    set_model_dropout(model, cfg.model_dropout)
    if record is None:
        settings, rows = resolve(replace(cfg, task=task), model, eval_batch_size, say)
    else:
        settings, rows = replace(record.train, output_dir=cfg.output_dir, device=cfg.device, cache_dir=cfg.cache_dir,
                                 stop_after=cfg.stop_after, eval_batch_size=eval_batch_size), record.plan
    prepare(settings, model)
    return settings, model, tokenizer, rows


class EMA:
    """An exponential moving average of the trainable weights (--ema-decay), swapped in for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone().float() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1 - self.decay)

    @contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; the trained ones come back after."""
        saved = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(saved[n])
