"""python -m train.evaluate --adapter DIR: re-score a saved adapter on any labelled data."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from ..cli import Parser, add_scoring_flags, positive, run_main
from ..data import encode
from ..data.corpus import class_names, load_corpus, read_split
from ..data.splits import stratified_subset
from ..device import pick_device, pick_precision
from ..errors import UserError
from ..metrics import format_report
from ..prefix import predict
from ..tasks import score_rows, task_kind
from .runs import adapter_dir, check_finished, load_for_inference


def parser() -> Parser:
    p = Parser(prog="python -m train.evaluate", description="Score a saved adapter on labelled data.")
    p.add_argument("--adapter", required=True, help="adapter (or run) directory written by python -m train")
    p.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    p.add_argument("--data", help="hub dataset or directory; its test/dev/validation split is scored")
    p.add_argument("--eval-file", help="CSV/JSONL file to score")
    p.add_argument("--max-eval-samples", type=int, help="stratified subset, drawn as the training run drew it")
    p.add_argument("--seed", type=int, help="seed of the subset (default: the training run's seed)")
    add_scoring_flags(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--allow-unfinished", action="store_true", help="score the adapter of a run that has not "
                   "finished (its best epoch so far)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main(lambda: _evaluate(args), argv)


def _evaluate(args) -> int:
    positive("--batch-size", args.batch_size)
    positive("--max-eval-samples", args.max_eval_samples)
    adapter = adapter_dir(args.adapter)
    check_finished(args.adapter, adapter, args.allow_unfinished)
    device = pick_device(args.device)
    model, tokenizer, info = load_for_inference(str(adapter), args.model, device)
    cfg, labels = info["train"], info["labels"]
    if args.eval_file:
        theirs = class_names(Path(args.eval_file))
        if theirs is not None and theirs != labels:  # the same check python -m train makes: never remap silently
            raise UserError(f"{Path(args.eval_file).parent / 'classes.txt'} lists {theirs}, but the adapter was "
                            f"trained on {labels}; both must list the same classes in the same order")
        split = read_split(Path(args.eval_file), labels, cfg.text_columns, cfg.task)
    else:
        corpus = load_corpus(args.data or cfg.data, None if args.data else cfg.train_file,
                             None if args.data else cfg.eval_file, cfg.text_columns, cfg.task)
        if corpus.label_names != labels:
            raise UserError(f"the data's labels {corpus.label_names} differ from the adapter's {labels}")
        split = corpus.eval
    seed = cfg.seed if args.seed is None else args.seed
    subset = stratified_subset(split, args.max_eval_samples, seed)
    if args.max_eval_samples is not None and len(subset.labels) < len(split.labels):
        # Same draw as the training run's --max-eval-samples with the same seed and data.
        print(f"scoring a stratified subset of {len(subset.labels):,} of {len(split.labels):,} rows (seed {seed})",
              file=sys.stderr)
    data = encode(subset, tokenizer, cfg.max_length, None)
    started = time.perf_counter()
    outputs = predict(model, data, args.batch_size, device, pick_precision(args.precision, device))
    report = score_rows(task_kind(cfg.task), outputs, data.labels, torch.arange(len(data)), len(data), labels,
                        cfg.threshold)
    report["eval_seconds"] = time.perf_counter() - started
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
