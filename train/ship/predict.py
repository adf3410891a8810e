"""python -m train.predict: classify texts with a saved adapter or a merged export.

    python -m train.predict --adapter DIR "text" ...          the label and its probability per text
    python -m train.predict --adapter DIR --input rows.csv --output preds.jsonl   a whole file
    python -m train.predict --model MERGED_DIR ...            a `train.export --format hf` directory

Every text is held to one rule, wherever it comes from (arguments, stdin lines, --input rows): an empty or
whitespace-only one stops the run naming its place, or with --on-bad-row skip is reported and left out.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from lora.adapter import CONFIG_NAME as ADAPTER_CONFIG

from ..cli import Parser, add_scoring_flags, positive, run_main
from ..data import encode
from ..data.corpus import Split
from ..device import pick_device, pick_precision
from ..errors import UserError
from ..files import check_output, read_json_as
from ..rundir import read_run_info
from ..model import check_tokenizer, check_weights
from ..prefix import predict
from ..tasks import kind_of_model
from .runs import adapter_dir, check_finished, load_for_inference
from .scoring import file_format, given_texts, prediction, read_rows, write_predictions


def load_classifier(adapter: str | None, model: str | None, device):
    """(model, tokenizer, labels, max_length, multi-label threshold) from an adapter (on its base, or on `model`),
    or from a merged export named by `model` alone (threshold 0.5)."""
    if adapter is None:
        if model is None:
            raise UserError("pass --adapter DIR (a trained adapter or run), or --model DIR (a merged export)")
        return *load_merged(model, device), 0.5
    net, tokenizer, info = load_for_inference(str(adapter_dir(adapter)), model, device)
    return net, tokenizer, info["labels"], info["train"].max_length, info["train"].threshold


def recorded(adapter: str | None) -> tuple[tuple[str, ...] | None, bool]:
    """(the text column(s) the adapter's run was trained on (--text-columns), whether it trained on pairs), read
    before any model loads; (None, False) for a merged export or no adapter at all (the loader says what is wrong)."""
    found = adapter_dir(adapter) if adapter is not None else None
    record = read_run_info(found) if found and (found / ADAPTER_CONFIG).is_file() else None
    return (record.train.text_columns, record.pairs) if record else (None, False)


def is_merged_export(path: str | Path) -> bool:
    """A directory written by `train.export --format hf`: a transformers model, no adapter."""
    p = Path(path)
    return (p / "config.json").is_file() and not (p / ADAPTER_CONFIG).is_file() and any(
        (p / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))


def load_merged(path: str | Path, device: torch.device) -> tuple[nn.Module, object, list[str], int]:
    """A merged export as plain transformers loads it. Returns (model, tokenizer, labels, max_length):
    max_length is the tokenizer's model_max_length, which the export sets to the training max_length."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if not is_merged_export(path):
        raise UserError(f"{path} is not a merged model directory (config.json and model.safetensors)")
    config = read_json_as(Path(path) / "config.json", "a model config")
    names = config.get("id2label") if isinstance(config, dict) else None
    if not isinstance(names, dict) or sorted(map(str, names)) != sorted(map(str, range(len(names)))):
        raise UserError(f"{path}/config.json must name each class in id2label, numbered 0..K-1; it has "
                        f"{sorted(names, key=str) if isinstance(names, dict) else 'none'}")
    try:
        model, report = AutoModelForSequenceClassification.from_pretrained(str(path), output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # safetensors, pickle refusals, a foreign config: many types, one meaning
        raise UserError(f"cannot load model '{path}': {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
                        ) from None
    check_weights(str(path), report, ())  # an export holds every weight, its head's too
    check_tokenizer(str(path), model, tokenizer, local=True)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    limit = tokenizer.model_max_length
    return model.to(device).eval(), tokenizer, labels, limit if limit < 1_000_000 else 512


def parser() -> Parser:
    p = Parser(prog="python -m train.predict", description="Classify texts with a saved adapter or merged export.")
    p.add_argument("texts", nargs="*", help="texts to classify; none (and no --input) = one per line on stdin")
    p.add_argument("--adapter", help="adapter (or run) directory written by python -m train")
    p.add_argument("--model", help="with --adapter: its base model (default: the one it was trained on); "
                                   "alone: a merged export (python -m train.export --format hf)")
    p.add_argument("--input", help="score a file: CSV with a header holding 'text' (and maybe 'id') or in AG News' "
                                   "headerless layout (class, title, description), JSONL objects with \"text\" (and "
                                   "maybe \"id\"), or Parquet with those columns")
    p.add_argument("--output", help="with --input: predictions as .jsonl or .csv, one per row, in input order")
    p.add_argument("--overwrite", action="store_true", help="replace an --output file that already exists")
    p.add_argument("--on-bad-row", choices=("stop", "skip"), default="stop",
                   help="a malformed input row, or an empty text anywhere, stops the run (default), or is reported "
                        "and skipped")
    p.add_argument("--allow-unfinished", action="store_true", help="use the adapter of a run that has not finished "
                   "(its best epoch so far)")
    add_scoring_flags(p)
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    p.add_argument("--pair", action="store_true", help="for a model trained on sentence pairs: the texts come two "
                   "by two (arguments), or as two tab-separated texts per stdin line")
    return p


def pairs(given: list[str], arguments: bool) -> list[tuple[str, str]]:
    """--pair's texts: arguments two by two, or each stdin line split at its one tab; else one line naming it."""
    if arguments:
        if len(given) % 2:
            raise UserError(f"--pair takes texts two by two; {len(given)} were given")
        return list(zip(given[0::2], given[1::2]))
    found = [line.split("\t") for line in given]
    bad = next((n for n, parts in enumerate(found, start=1) if len(parts) != 2), None)
    if bad is not None:
        raise UserError(f"stdin line {bad}: --pair needs two texts separated by one tab")
    return [tuple(parts) for parts in found]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main(lambda: _predict(args), argv)


def _predict(args) -> int:
    positive("--batch-size", args.batch_size)
    skip = args.on_bad_row == "skip"
    if args.input:
        if args.texts:
            raise UserError("give texts or --input, not both")
        if not args.output:
            raise UserError("--input needs --output (a .jsonl or .csv file)")
        file_format(args.output, "--output")
        check_output(args.output, inputs=[args.input], overwrite=args.overwrite, flag="--output")
        rows = read_rows(args.input, skip_bad=skip, columns=recorded(args.adapter)[0])
    else:
        if args.output:
            raise UserError("--output goes with --input")
        given = args.texts or [line.rstrip("\r\n") for line in sys.stdin]
        if not given:
            raise UserError("no texts: pass them as arguments, one per line on stdin, or --input FILE")
        if recorded(args.adapter)[1] and not args.pair:
            raise UserError(f"{args.adapter} was trained on pairs of texts: give each pair with --pair (two "
                            "arguments, or two tab-separated texts a line)")
        where = ("pair" if args.pair else "text argument") if args.texts else "stdin line"
        rows = given_texts(pairs(given, bool(args.texts)) if args.pair else given, where, skip_bad=skip)
    if args.adapter is not None:
        check_finished(args.adapter, adapter_dir(args.adapter), args.allow_unfinished)
    device = pick_device(args.device)
    model, tokenizer, labels, max_length, threshold = load_classifier(args.adapter, args.model, device)
    texts, kind = rows.texts, kind_of_model(model.config).name
    data = encode(Split(texts, [0] * len(texts)), tokenizer, max_length, None)
    outputs = predict(model, data, args.batch_size, device, pick_precision(args.precision, device),
                      progress=bool(args.input))
    if args.input:
        write_predictions(args.output, rows, outputs, labels, kind, threshold)
        skipped = f"; skipped {rows.skipped} malformed" if rows.skipped else ""
        print(f"scored {len(rows.texts):,} rows of {args.input} into {args.output}{skipped}", file=sys.stderr)
        return 0
    for text, row in zip(texts, outputs.tolist()):
        p = prediction(kind, row, labels, threshold)
        if args.json:
            print(json.dumps({"text": list(text) if isinstance(text, tuple) else text, **p}))
            continue
        shown = (f"{p['label']}\t{p['probability']:.4f}" if "label" in p else f"{p['score']:.4f}" if "score" in p
                 else ",".join(p["labels"]) or "-")
        print(f"{shown}\t" + ("\t".join(text) if isinstance(text, tuple) else text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
