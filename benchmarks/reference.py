"""The reference recipe, as the reference project ran it: PEFT LoRA + Hugging Face Trainer.

r=4, alpha=16, dropout 0 on query/value, classifier trained in full (modules_to_save), AdamW at
lr 4e-4 with a cosine schedule, label smoothing 0.1, batch 32, max_length 128, dynamic padding
(DataCollatorWithPadding), seed 0, fp32. No checkpoints, no logging integrations, one evaluation
at the end. This is the contestant our `python -m train` is measured against in accuracy.py.

    python -m benchmarks.reference --model PATH --train-file train.csv --eval-file dev.csv \\
        --epochs 1 --max-train-samples 64

The last printed line is the result as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings; we tokenize once, up front

import torch

from train.data import Corpus, Split, load_corpus, stratified_subset
from train.metrics import classification_report  # the same metric code scores both contestants

RECIPE = {"r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query", "value"],
          "modules_to_save": ["classifier"], "learning_rate": 4e-4, "label_smoothing_factor": 0.1,
          "lr_scheduler_type": "cosine", "batch_size": 32, "max_length": 128, "seed": 0}


def _dataset(split: Split, tokenizer, max_length: int):
    """A datasets.Dataset of unpadded token ids and labels; padding happens per batch in the collator."""
    from datasets import Dataset

    encoded = tokenizer(split.texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": split.labels})


def run_reference(model_path: str, corpus: Corpus, epochs: int, max_train_samples: int | None = None,
                  max_eval_samples: int | None = None, seed: int = RECIPE["seed"],
                  eval_batch_size: int = RECIPE["batch_size"]) -> dict:
    """Train and evaluate the reference recipe on `corpus`; returns its metrics and timings.

    Subsets are stratified with train.data.stratified_subset(seed), the same helper our app uses,
    so both contestants see the same rows. Times are wall-clock around trainer.train() and
    trainer.predict(); tokenization is excluded, as it is in our app's train_seconds."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments, set_seed)

    train_split = stratified_subset(corpus.train, max_train_samples, seed)
    eval_split = stratified_subset(corpus.eval, max_eval_samples, seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    set_seed(seed)  # before the model exists, so the new classifier head is the same every run
    names = corpus.label_names
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    model = get_peft_model(model, LoraConfig(
        task_type=TaskType.SEQ_CLS, r=RECIPE["r"], lora_alpha=RECIPE["lora_alpha"],
        lora_dropout=RECIPE["lora_dropout"], target_modules=list(RECIPE["target_modules"]),
        modules_to_save=list(RECIPE["modules_to_save"])))  # copies: PEFT appends to these lists in place
    train_ds = _dataset(train_split, tokenizer, RECIPE["max_length"])
    eval_ds = _dataset(eval_split, tokenizer, RECIPE["max_length"])

    with tempfile.TemporaryDirectory(prefix="reference-") as out:
        args = TrainingArguments(
            output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=RECIPE["batch_size"],
            per_device_eval_batch_size=eval_batch_size, learning_rate=RECIPE["learning_rate"],
            lr_scheduler_type=RECIPE["lr_scheduler_type"], label_smoothing_factor=RECIPE["label_smoothing_factor"],
            seed=seed, save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
            label_names=["labels"])  # PeftModel hides the wrapped forward's signature from Trainer
        trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pred = trainer.predict(eval_ds)
        eval_seconds = time.perf_counter() - start

    preds = torch.as_tensor(pred.predictions).argmax(-1)
    labels = torch.as_tensor(pred.label_ids)
    report = classification_report(preds, labels, names)
    return {
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "train_examples_per_s": len(train_split.labels) * epochs / train_seconds,
        "eval_examples_per_s": len(labels) / eval_seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_examples": len(train_split.labels),
        "eval_examples": len(labels),
        "epochs": epochs,
        "device": str(args.device),
        "optim": str(getattr(args.optim, "value", args.optim)),  # transformers' default AdamW flavour, recorded since it changes between versions
        "torch_threads": torch.get_num_threads(),
        "recipe": RECIPE,
    }


def main(argv: list[str] | None = None) -> dict:
    """CLI: load the data, run the recipe, print the result JSON as the last line."""
    p = argparse.ArgumentParser(description="Run the reference PEFT + Trainer recipe once.")
    p.add_argument("--model", required=True, help="local model directory or hub name")
    p.add_argument("--data", default="ag_news", help="directory or hub dataset, when no files are given")
    p.add_argument("--train-file")
    p.add_argument("--eval-file")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--max-eval-samples", type=int)
    args = p.parse_args(argv)
    corpus = load_corpus(args.data, args.train_file, args.eval_file)
    result = run_reference(args.model, corpus, args.epochs, args.max_train_samples, args.max_eval_samples)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
