"""PEFT + Hugging Face Trainer on SST-2, MRPC, RTE, STS-B and GoEmotions: the task race's Trainer contestants.

peft: the LoRA paper's RoBERTa-base GLUE recipe (Hu et al. 2021, table 9): r=8, alpha 8 on the attention's query
and value (the model's own names), the classifier trained in full (modules_to_save), the paper's lr per task,
linear schedule, 6% warmup, batch 16, weight decay 0.1 (its released scripts); max_length 128 as ours (paper: 512).
full: every parameter, lr 2e-5, weight decay 0.01, the rest alike. Both as a skilled user tunes Trainer:
length-grouped sampling, bf16 where the device has it natively (benchmarks.variants.tuned_arguments).

    python -m benchmarks.task_reference --model DIR --data DIR --task mrpc --epochs 3 --seed 0 --out RUN

Writes RUN/metrics.json and RUN/predictions.npz: the predictions with the label_ids trainer.predict returned
beside them (length-grouped, not the file's order), which the race scores (read_run). Also the data, subsets,
metrics and trivial baselines the race shares."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings; we tokenize once, up front

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"  # as eval.json's "task" names them
PROBLEM_TYPE = {SINGLE: "single_label_classification", MULTI: "multi_label_classification", REGRESSION: "regression"}
METRICS = {SINGLE: ("accuracy", "macro_f1", "mcc", "f1"), REGRESSION: ("pearson", "spearman", "mse"),
           MULTI: ("micro_f1", "macro_f1", "exact_match")}
MAX_LENGTH, BATCH, EVAL_BATCH = 128, 16, 64
# Attention projections by family: BERT/RoBERTa/ELECTRA, MPNet, DistilBERT, DeBERTa.
QUERY_VALUE = (("query", "value"), ("q", "v"), ("q_lin", "v_lin"), ("query_proj", "value_proj"))


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    columns: tuple[str, ...]  # one text column or a pair
    label: str
    lr: float  # the LoRA paper's RoBERTa-base lr for it (GoEmotions, not in the paper: 5e-4)
    headline: tuple[str, ...]  # the metrics the race's table shows, first the paper's
    paper: tuple[float, float] | None  # the paper's RoBERTa-base (LoRA 0.3M, full fine-tuning), table 2, ×100


TASKS = {t.name: t for t in (
    Task("sst2", SINGLE, ("sentence",), "label", 5e-4, ("accuracy",), (95.1, 94.8)),
    Task("mrpc", SINGLE, ("sentence1", "sentence2"), "label", 4e-4, ("accuracy", "f1"), (89.7, 90.2)),
    Task("rte", SINGLE, ("sentence1", "sentence2"), "label", 5e-4, ("accuracy",), (86.6, 78.7)),
    Task("stsb", REGRESSION, ("sentence1", "sentence2"), "label", 4e-4, ("pearson", "spearman", "mse"),
         (91.5, 91.2)),  # MSE: the mean score's has no correlation, only an error to compare
    Task("goemotions", MULTI, ("text",), "labels", 5e-4, ("macro_f1", "micro_f1"), None),
)}
PAPER_NOTE = ("LoRA paper rows: RoBERTa-base on GPUs at the paper's full budget (max_length 512, 30-80 epochs; "
              "its LoRA on MRPC, RTE and STS-B starts from an MNLI-tuned adapter), not this model on this machine "
              "at these epochs: context, not a target.")


@dataclass
class Rows:
    texts: list[tuple[str, ...]]
    labels: np.ndarray  # (n,) class ids, (n,) floats, or (n, K) 0/1 floats for multi-label


def read_split(task: Task, path: Path, num_labels: int) -> Rows:
    """One JSONL file of the task, with the hub's column names."""
    with path.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    texts, labels = [tuple(r[c] for c in task.columns) for r in rows], [r[task.label] for r in rows]
    if task.kind == MULTI:
        hot = np.zeros((len(labels), num_labels), dtype=np.float32)
        for i, ids in enumerate(labels):
            hot[i, ids] = 1.0
        return Rows(texts, hot)
    return Rows(texts, np.asarray(labels, dtype=np.float32 if task.kind == REGRESSION else np.int64))


def label_names(task: Task, data: Path) -> list[str]:
    """classes.txt in label order (multi-label needs it: its width); regression has none."""
    file = data / "classes.txt"
    if task.kind == REGRESSION or not file.is_file():
        if task.kind == MULTI:
            raise ValueError(f"{data} has no classes.txt: a multi-label task needs its label names")
        return []
    return [x.strip() for x in file.read_text().splitlines() if x.strip()]


def subset(rows: Rows, n: int | None, seed: int, kind: str) -> Rows:
    """n rows in file order: single-label stratified as our app picks them (train.data.stratified_subset),
    the other kinds uniformly at random (seeded)."""
    if n is None or n >= len(rows.texts):
        return rows
    if kind == SINGLE:
        from train.data.corpus import Split
        from train.data.splits import stratified_subset

        tagged = stratified_subset(Split([str(i) for i in range(len(rows.texts))], rows.labels.tolist()), n, seed)
        keep = np.asarray([int(t) for t in tagged.texts])
    else:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows.texts), n, replace=False))
    return Rows([rows.texts[i] for i in keep], rows.labels[keep])


def load(task: Task, data: Path, max_train: int | None, max_eval: int | None,
         seed: int) -> tuple[Rows, Rows, int]:
    """The (subset) training and evaluation rows, and the label count (1 for regression)."""
    names = label_names(task, data)
    train, dev = (read_split(task, data / f"{s}.jsonl", len(names)) for s in ("train", "dev"))
    count = 1 if task.kind == REGRESSION else len(names) or int(max(train.labels.max(), dev.labels.max())) + 1
    return subset(train, max_train, seed, task.kind), subset(dev, max_eval, seed, task.kind), count


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """2tp / (2tp + fp + fn), 0 where nothing was true or predicted (sklearn's default zero_division)."""
    den = 2 * tp + fp + fn
    return np.divide(2 * tp, den, out=np.zeros(np.shape(den), float), where=den > 0)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else None  # a constant side has no correlation


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank (as Spearman needs)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def score(kind: str, predictions, label_ids, num_labels: int | None = None) -> dict:
    """The kind's metrics from raw outputs (logits, or the predicted values) and the labels, row for row:
    single-label argmax; regression the value itself; multi-label sigmoid > 0.5, which is logit > 0."""
    out, y = np.asarray(predictions, dtype=np.float64), np.asarray(label_ids)
    if kind == REGRESSION:
        x, y = out.reshape(len(out), -1)[:, 0], y.astype(np.float64).reshape(-1)
        return {"pearson": _pearson(x, y), "spearman": _pearson(_ranks(x), _ranks(y)),
                "mse": float(((x - y) ** 2).mean())}
    if kind == MULTI:
        p, t = out > 0, y > 0.5
        tp, fp, fn = ((p & t).sum(0), (p & ~t).sum(0), (~p & t).sum(0))
        return {"micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum())), "macro_f1": float(_f1(tp, fp, fn).mean()),
                "exact_match": float((p == t).all(1).mean())}
    k = num_labels or out.shape[-1]
    pred, y = out.argmax(-1), y.astype(np.int64)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (y, pred), 1)
    tp = np.diag(confusion).astype(float)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    n, true, said = confusion.sum(), confusion.sum(1).astype(float), confusion.sum(0).astype(float)
    den = np.sqrt((n * n - (said * said).sum()) * (n * n - (true * true).sum()))
    report = {"accuracy": float(tp.sum() / n), "macro_f1": float(_f1(tp, fp, fn).mean()),
              "mcc": float((tp.sum() * n - (said * true).sum()) / den) if den > 0 else 0.0}
    return report | ({"f1": float(_f1(tp[1], fp[1], fn[1]))} if k == 2 else {})


def trivial(task: Task, data: Path, max_train: int | None, max_eval: int | None, seed: int) -> dict:
    """The no-learning baseline, scored on the evaluation rows: the majority class; the mean training score
    (no correlation: pearson and spearman None); each label's own majority (for GoEmotions the empty set)."""
    train, dev, k = load(task, data, max_train, max_eval, seed)
    n = len(dev.texts)
    if task.kind == REGRESSION:
        return {"mse": float(((dev.labels - train.labels.mean()) ** 2).mean()), "pearson": None, "spearman": None}
    if task.kind == MULTI:
        majority = (train.labels.mean(0) > 0.5).astype(float)  # per label: on more than half the rows
        return score(MULTI, np.tile(np.where(majority > 0, 1.0, -1.0), (n, 1)), dev.labels)
    logits = np.zeros((n, k))
    logits[:, np.bincount(train.labels, minlength=k).argmax()] = 1.0
    return score(SINGLE, logits, dev.labels, k)


def query_value(model) -> list[str]:
    """The attention's query and value Linear names in this model, found by scanning its modules."""
    import torch

    found = {n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for pair in QUERY_VALUE:
        if set(pair) <= found:
            return list(pair)
    raise ValueError(f"no query/value projections among the model's Linear layers: {sorted(found)}")


def build(model_path: str, task: Task, num_labels: int, variant: str, seed: int):
    """The classifier for the task's kind, wrapped in PEFT's LoRA (peft) or bare (full); and the LoRA targets."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)  # before the model exists: the new head is the same every run of this seed
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=num_labels, problem_type=PROBLEM_TYPE[task.kind]).float()
    if variant == "full":
        return model, None
    from peft import LoraConfig, TaskType, get_peft_model

    targets = query_value(model)
    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=targets, modules_to_save=["classifier"])), targets


def recipe(task: Task, variant: str) -> dict:
    """What Trainer trains, as benchmarks.reference._training_args reads it."""
    lr, decay = (task.lr, 0.1) if variant == "peft" else (2e-5, 0.01)
    return {"batch_size": BATCH, "learning_rate": lr, "lr_scheduler_type": "linear", "label_smoothing_factor": 0.0,
            "weight_decay": decay, "warmup_ratio": 0.06, "max_length": MAX_LENGTH, "variant": variant}


def _dataset(rows: Rows, tokenizer):
    from datasets import Dataset

    # run_glue.py's way: tokenizer(s1, s2, truncation=True, max_length=...), padded per batch by the collator
    encoded = tokenizer(*zip(*rows.texts), truncation=True, max_length=MAX_LENGTH)
    return Dataset.from_dict({**encoded, "labels": rows.labels.tolist()})


def run(model_path: str, task: Task, data: Path, variant: str, epochs: int, seed: int, out: Path,
        max_train: int | None = None, max_eval: int | None = None) -> dict:
    """Train and predict with Trainer; writes out/metrics.json and out/predictions.npz, returns the metrics."""
    import tempfile

    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    from benchmarks.common import write_json
    from benchmarks.reference import _LoopTimer, _training_args
    from benchmarks.variants import tuned_arguments

    train, dev, num_labels = load(task, data, max_train, max_eval, seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model, targets = build(model_path, task, num_labels, variant, seed)
    train_ds, eval_ds = _dataset(train, tokenizer), _dataset(dev, tokenizer)
    extra = tuned_arguments(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    timer, tokens = _LoopTimer(DataCollatorWithPadding(tokenizer)), [0]

    def collate(features):  # counts the padded tokens each training batch sends through the encoder
        batch = timer(features)
        tokens[0] += batch["input_ids"].numel() if timer.training else 0
        return batch

    with tempfile.TemporaryDirectory(prefix="task-reference-") as scratch:
        args = _training_args(scratch, epochs, EVAL_BATCH, seed, recipe(task, variant), extra)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collate,
                          processing_class=tokenizer, callbacks=[timer.callback])
        start = time.perf_counter()
        trainer.train()
        train_seconds, start = time.perf_counter() - start, time.perf_counter()
        pred = trainer.predict(eval_ds)  # rows come back length-grouped: score against its label_ids
        eval_seconds = time.perf_counter() - start
    predictions, label_ids = np.asarray(pred.predictions, np.float32), np.asarray(pred.label_ids)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "predictions.npz", predictions=predictions, label_ids=label_ids)
    rows, layers = len(train.texts), model.config.num_hidden_layers
    # Work: padded training tokens through every layer, forward and backward counted alike (evaluation not counted).
    work = {"train_rows": rows, "epochs": epochs, "rows_x_epochs": rows * epochs, "train_padded_tokens": tokens[0],
            "layers": layers, "token_layer_passes": 2 * tokens[0] * layers}
    result = {"task": task.name, "kind": task.kind, "variant": variant, "seed": seed, "epochs": epochs,
              "metrics": score(task.kind, predictions, label_ids, num_labels), "train_seconds": train_seconds,
              "eval_seconds": eval_seconds, "loop_seconds": timer.step_seconds + timer.collate_seconds,
              "steps": timer.steps, "eval_examples": len(label_ids), "work": work,
              "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "recipe": recipe(task, variant) | {"target_modules": targets},
              "tuned_arguments": extra, "precision": "bf16" if extra.get("bf16") else "fp32"}
    write_json(out / "metrics.json", result)
    return result


def read_run(run_dir: Path) -> dict:
    """A finished run as the race records it, scored here from the predictions and the label_ids saved with them."""
    child = json.loads((run_dir / "metrics.json").read_text())
    saved = np.load(run_dir / "predictions.npz")
    keep = ("trainable_params", "epochs", "precision", "loop_seconds", "recipe", "work")
    return {"metrics": score(child["kind"], saved["predictions"], saved["label_ids"]), **{k: child[k] for k in keep}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Run the LoRA paper's GLUE recipe (or full fine-tuning) once.")
    p.add_argument("--model", required=True, help="local model directory")
    p.add_argument("--data", required=True, type=Path, help="the task's directory: train.jsonl, dev.jsonl")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--variant", choices=("peft", "full"), default="peft")
    for flag, default in (("--epochs", 3), ("--seed", 0), ("--max-train-samples", None), ("--max-eval-samples", None)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--out", required=True, type=Path, help="run directory: metrics.json, predictions.npz")
    args = p.parse_args(argv)
    for name in ("train.jsonl", "dev.jsonl"):
        if not (args.data / name).is_file():
            raise SystemExit(f"error: {args.data} has no {name}")
    result = run(args.model, TASKS[args.task], args.data, args.variant, args.epochs, args.seed, args.out,
                 args.max_train_samples, args.max_eval_samples)
    print(json.dumps(result["metrics"]))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
