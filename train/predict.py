"""python -m train.predict --adapter DIR "text" ...: the label and its probability for each text."""
from __future__ import annotations

import json
import sys

from .cli import Parser, positive, run_main
from .config import PRECISIONS
from .batches import encode
from .data import Split
from .errors import UserError
from .inference import predict
from .model import load_for_inference, pick_device, pick_precision


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m train.predict", description="Classify texts with a saved adapter.")
    p.add_argument("--adapter", required=True, help="adapter directory written by python -m train")
    p.add_argument("texts", nargs="*", help="texts to classify; none = one per line on stdin")
    p.add_argument("--model", help="base model (default: the one the adapter was trained on)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    args = p.parse_args(argv)
    return run_main(lambda: _predict(args), argv)


def _predict(args) -> int:
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise UserError("no texts: pass them as arguments or one per line on stdin")
    positive("--batch-size", args.batch_size)
    device = pick_device(args.device)
    model, tokenizer, info = load_for_inference(args.adapter, args.model, device)
    data = encode(Split(texts, [0] * len(texts)), tokenizer, info["train"].max_length, None)
    probs = predict(model, data, tokenizer.pad_token_id or 0, args.batch_size, device,
                    pick_precision(args.precision, device))
    labels = info["labels"]
    for text, row in zip(texts, probs):
        k = int(row.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": labels[k], "probability": float(row[k]),
                              "probabilities": {n: float(v) for n, v in zip(labels, row)}}))
        else:
            print(f"{labels[k]}\t{float(row[k]):.4f}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
