"""python -m train.evaluate --adapter DIR: re-score a saved adapter on any labelled data."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .__main__ import Parser
from .config import PRECISIONS
from .batches import encode
from .data import load_corpus, read_split, stratified_subset
from .errors import UserError
from .loop import predict
from .metrics import classification_report, format_report
from .model import load_for_inference, pick_device, pick_precision


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m train.evaluate", description="Score a saved adapter on labelled data.")
    p.add_argument("--adapter", required=True, help="adapter directory written by python -m train")
    p.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    p.add_argument("--data", help="hub dataset or directory; its test/dev/validation split is scored")
    p.add_argument("--eval-file", help="CSV/JSONL file to score")
    p.add_argument("--max-eval-samples", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        if args.max_eval_samples is not None and args.max_eval_samples < 1:
            raise UserError(f"--max-eval-samples must be >= 1, got {args.max_eval_samples}")
        device = pick_device(args.device)
        model, tokenizer, info = load_for_inference(args.adapter, args.model, device)
        train = info["train"]
        if args.eval_file:
            split = read_split(Path(args.eval_file), info["labels"])
        else:
            corpus = load_corpus(args.data or train["data"], None if args.data else train["train_file"],
                                 None if args.data else train["eval_file"])
            if corpus.label_names != info["labels"]:
                raise UserError(f"the data's labels {corpus.label_names} differ from the adapter's {info['labels']}")
            split = corpus.eval
        split = stratified_subset(split, args.max_eval_samples, 0)
        data = encode(split, tokenizer, train["max_length"], None)
        started = time.perf_counter()
        probs = predict(model, data, tokenizer.pad_token_id or 0, args.batch_size, device,
                        pick_precision(args.precision, device))
        report = classification_report(probs.argmax(-1), data.labels, info["labels"])
        report["eval_seconds"] = time.perf_counter() - started
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
