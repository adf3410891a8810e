"""The reference recipe, as the reference project ran it: PEFT LoRA + Hugging Face Trainer.

r=4, alpha=16, dropout 0 on query/value, classifier trained in full (modules_to_save), AdamW at
lr 4e-4 with a cosine schedule, label smoothing 0.1, batch 32, max_length 128, dynamic padding
(DataCollatorWithPadding), seed 0, fp32. No checkpoints, no logging integrations, one evaluation
at the end. This is the contestant our `python -m train` is measured against in accuracy.py.

--variant picks what Trainer runs (`specified` is the default):
- tuned: the same recipe as a strong PEFT + Trainer user would run it: length-grouped sampling
  (`train_sampling_strategy="group_by_length"` in transformers 5, `group_by_length=True` in 4.x), and
  `bf16=True` where the device has native bf16 (CUDA with bf16 support, or a CPU with avx512_bf16/amx,
  where Trainer also needs `use_cpu=True`); on CUDA, SDPA without cuDNN's attention, as our app runs.
  Nothing else changes: same LoRA, optimizer, schedule, batch size and seed.
- engine: our fast recipe (train.config) in PEFT + Trainer, with every engine-independent choice a Trainer
  user can make: its layers (`layers_to_transform`), targets in the model's own names, rank, alpha, epochs,
  lr, warmup, weight decay, the linear head (only its output layer trained, the dense layer frozen as the
  identity), no dropout inside the model, eager attention, plus the tuned variant's grouping and bf16. What
  is left between it and `python -m train --recipe fast` is the engine (frozen-prefix cache, batching).
- ceiling: full fine-tuning, every parameter of the model trained (lr 2e-5, 6% warmup, weight decay 0.01),
  with the tuned variant's grouping and bf16: how far an under-1M LoRA is from the model's own limit.

    python -m benchmarks.reference --model PATH --train-file train.csv --eval-file test.csv \\
        --epochs 1 --max-train-samples 64 [--variant tuned] [--seed 1] [--out metrics.json]

The last printed line is the result as one JSON object; --out also writes it to a file (atomically),
which is how benchmarks/accuracy.py reads a child process's final metrics.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings; we tokenize once, up front

import torch

from benchmarks.common import write_json
from benchmarks.variants import RECIPE, VARIANTS, model_for, tuned_arguments, tuned_kernels, variant_recipe
from train.errors import UserError
from train.data.corpus import Corpus, Split, load_corpus
from train.data.splits import stratified_subset
from train.metrics import classification_report  # the same metric code scores both contestants

def _dataset(split: Split, tokenizer, max_length: int):
    """A datasets.Dataset of unpadded token ids and labels; padding happens per batch in the collator."""
    from datasets import Dataset

    encoded = tokenizer(split.texts, truncation=True, max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": split.labels})


# What `loop_seconds` covers, on both sides of the race: python -m train's eval.json train_seconds
# sums, per optimizer step, collating the batch, moving it to the device, forward, loss, backward,
# clipping, the optimizer step, the lr update and zero_grad. Here: the same, as the sum of each
# step's on_step_begin..on_step_end (which starts after Trainer fetched the batch) plus the time the
# collator took to build that batch. Neither includes evaluation, checkpoints or per-epoch setup.
LOOP_INCLUDES = ("per optimizer step: collate the batch, move it to the device, forward, loss, backward, "
                 "clip, optimizer step, lr update, zero_grad; summed over steps (no evaluation, no checkpoints, "
                 "no per-epoch setup)")


class _LoopTimer:
    """Trainer callback + collator wrapper that measure the training loop with the same start and end
    points as our app's train_seconds (see LOOP_INCLUDES). Collation during predict() is not counted."""

    def __init__(self, collator) -> None:
        from transformers import TrainerCallback

        self.collator, self.training = collator, False
        self.step_seconds = self.collate_seconds = 0.0
        self.steps, self._started = 0, 0.0
        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                timer.training = True

            def on_train_end(self, args, state, control, **kwargs):
                timer.training = False

            def on_step_begin(self, args, state, control, **kwargs):
                timer._started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.step_seconds += time.perf_counter() - timer._started
                timer.steps += 1

        self.callback = Callback()

    def __call__(self, features):
        start = time.perf_counter()
        batch = self.collator(features)
        if self.training:
            self.collate_seconds += time.perf_counter() - start
        return batch


def _training_args(out: str, epochs: int, eval_batch_size: int, seed: int, recipe: dict, extra: dict):
    import dataclasses

    from transformers import TrainingArguments

    # transformers 5 reads a float warmup_steps below 1 as a ratio; 4.x had warmup_ratio for it
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    warmup = {"warmup_ratio" if "warmup_ratio" in names else "warmup_steps": float(recipe["warmup_ratio"])}
    return TrainingArguments(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=recipe["batch_size"],
        per_device_eval_batch_size=eval_batch_size, learning_rate=recipe["learning_rate"],
        lr_scheduler_type=recipe["lr_scheduler_type"], label_smoothing_factor=recipe["label_smoothing_factor"],
        weight_decay=recipe["weight_decay"], **warmup,
        seed=seed, save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
        label_names=["labels"],  # PeftModel hides the wrapped forward's signature from Trainer
        **extra)


def run_reference(model_path: str, corpus: Corpus, epochs: int, max_train_samples: int | None = None,
                  max_eval_samples: int | None = None, seed: int = RECIPE["seed"],
                  eval_batch_size: int = RECIPE["batch_size"], variant: str = "specified") -> dict:
    """Train and evaluate `variant` (VARIANTS; the engine variant keeps our fast recipe's epochs) on `corpus`
    with PEFT + Trainer; returns its metrics and timings.

    Subsets are stratified with train.data.stratified_subset(seed), the same helper our app uses,
    so both contestants see the same rows. train_seconds and eval_seconds are wall-clock around
    trainer.train() and trainer.predict(); loop_seconds has the same start and end points as our
    app's train_seconds (LOOP_INCLUDES). Tokenization is excluded from all three."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer

    train_split = stratified_subset(corpus.train, max_train_samples, seed)
    eval_split = stratified_subset(corpus.eval, max_eval_samples, seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    names, recipe, tuned = corpus.label_names, variant_recipe(variant), variant != "specified"
    epochs = recipe.get("epochs", epochs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where Trainer will put the model
    # The engine variant trains as our CPU runs do: eager attention (SDPA's CPU backward is slow).
    attention = "eager" if variant == "engine" and device.type == "cpu" else None
    model, layers = model_for(model_path, names, seed, recipe, attention)
    train_ds = _dataset(train_split, tokenizer, recipe["max_length"])
    eval_ds = _dataset(eval_split, tokenizer, recipe["max_length"])
    extra = tuned_arguments(device) if tuned else {}
    kernels = tuned_kernels(device) if tuned else {}
    timer = _LoopTimer(DataCollatorWithPadding(tokenizer))
    with tempfile.TemporaryDirectory(prefix="reference-") as out:
        args = _training_args(out, epochs, eval_batch_size, seed, recipe, extra)
        trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=timer,
                          processing_class=tokenizer, callbacks=[timer.callback])
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pred = trainer.predict(eval_ds)
        eval_seconds = time.perf_counter() - start

    labels = torch.as_tensor(pred.label_ids)
    report = classification_report(torch.as_tensor(pred.predictions).argmax(-1), labels, names)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "train_seconds": train_seconds, "eval_seconds": eval_seconds,
            "loop_seconds": timer.step_seconds + timer.collate_seconds, "loop_collate_seconds": timer.collate_seconds,
            "loop_includes": LOOP_INCLUDES, "steps": timer.steps,
            "train_examples_per_s": len(train_split.labels) * epochs / train_seconds,
            "eval_examples_per_s": len(labels) / eval_seconds,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "train_examples": len(train_split.labels), "eval_examples": len(labels), "epochs": epochs,
            "device": str(args.device),
            # transformers' default AdamW flavour, recorded since it changes between versions
            "optim": str(getattr(args.optim, "value", args.optim)), "torch_threads": torch.get_num_threads(),
            "recipe": recipe, "variant": variant, "layers": layers, "tuned": tuned, "tuned_arguments": extra,
            "tuned_kernels": kernels, "precision": "bf16" if extra.get("bf16") else "fp32", "seed": seed}


def main(argv: list[str] | None = None) -> dict:
    """CLI: load the data, run the recipe, write --out, print the result JSON as the last line."""
    p = argparse.ArgumentParser(description="Run the reference PEFT + Trainer recipe once.")
    p.add_argument("--model", required=True, help="local model directory or hub name")
    p.add_argument("--data", default="ag_news", help="directory or hub dataset, when no files are given")
    p.add_argument("--train-file")
    p.add_argument("--eval-file")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--seed", type=int, default=RECIPE["seed"], help="data subset, head init and order (default 0)")
    p.add_argument("--variant", choices=VARIANTS, default="specified",
                   help="specified (default), tuned (length-grouped, bf16 where native), engine (our fast recipe in "
                        "PEFT + Trainer) or ceiling (full fine-tuning)")
    p.add_argument("--out", help="also write the result JSON to this file (atomically)")
    args = p.parse_args(argv)
    try:
        corpus = load_corpus(args.data, args.train_file, args.eval_file)
    except UserError as e:  # a bad file or unreachable hub: one line, as our own CLI does
        raise SystemExit(f"error: {e}") from None
    result = run_reference(args.model, corpus, args.epochs, args.max_train_samples, args.max_eval_samples,
                           seed=args.seed, variant=args.variant)
    if args.out:
        write_json(Path(args.out), result)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
