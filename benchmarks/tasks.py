"""The task race: our app against PEFT + Trainer on the LoRA paper's GLUE recipe, on pairs, regression and
multi-label (SST-2, MRPC, RTE, STS-B, GoEmotions in ../shared/data), whole process against whole process.

    python -m benchmarks.tasks                                      # MPNet (tools/get_mpnet.py), every task, seeds 0,1
    python -m benchmarks.tasks --tasks mrpc,rte --seeds 0 --resume  # more of the same race, in a later session
    python -m benchmarks.tasks --markdown                           # --out's tables as markdown; runs nothing

Contestants: default (`python -m train`, --epochs), fast (`--recipe fast`, its own epochs), peft and full
(benchmarks/task_reference.py at --epochs; full in seed 0's round only), trivial (no process). Per task a round per
seed, contestants alternating, each a fresh child with an empty cache timed launch to exit (CPU, peak RSS: wait4);
Trainer runs scored here from their predictions, ours from eval.json's final epoch; --out rewritten after each."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, abba_order, machine_info, median, paired_ratio, write_json
from benchmarks.contestants import RaceError, ours_precision, race_main, run_child
from benchmarks.task_reference import METRICS, PAPER_NOTE, SINGLE, TASKS, Task, read_run, trivial

CONTESTANTS = ("default", "fast", "peft", "full", "trivial")
OURS, TRAINER = ("default", "fast"), ("peft", "full")
LABELS = {"default": "ours, default recipe", "fast": "ours, fast recipe", "peft": "PEFT + Trainer, LoRA paper recipe",
          "full": "full fine-tuning (Trainer)", "trivial": "trivial baseline"}
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"


@dataclass
class Setup:
    model: str
    data_root: Path
    epochs: int
    max_train: int | None = None
    max_eval: int | None = None

    def settings(self) -> dict:
        """What a resumed race shares with the runs it keeps: the model by its directory's name (its package's for
        a directory called `model`), as its path differs by machine."""
        where = Path(self.model)
        return {"model": where.parent.name if where.name == "model" else where.name, "epochs": self.epochs,
                "max_train_samples": self.max_train, "max_eval_samples": self.max_eval}


def command(name: str, task: str, seed: int, run_dir: Path, setup: Setup) -> list[str]:
    """The child's command line: ours with a fresh cache dir, or the Trainer contestant."""
    samples = [x for flag, n in (("--max-train-samples", setup.max_train), ("--max-eval-samples", setup.max_eval))
               if n for x in (flag, str(n))]
    common = ["--model", setup.model, "--data", str(setup.data_root / task), "--seed", str(seed), *samples]
    if name in TRAINER:
        return [sys.executable, "-m", "benchmarks.task_reference", *common, "--task", task, "--variant", name,
                "--epochs", str(setup.epochs), "--out", str(run_dir)]
    recipe = ["--epochs", str(setup.epochs)] if name == "default" else ["--recipe", "fast"]
    return [sys.executable, "-m", "train", *common, *recipe, "--output-dir", str(run_dir / "out"),
            "--cache-dir", str(run_dir / "cache")]


def read_ours(run_dir: Path, task: Task, setup: Setup) -> dict:
    """Our run's scores from eval.json: the final epoch's, as the Trainer contestants are scored once at the end
    (with no validation rows, as here, the kept epoch is the final one). Work: rows × epochs, padding uncounted."""
    out = run_dir / "out"  # train.rundir's layout: eval.json, written last, and config.json
    ev = json.loads((out / "eval.json").read_text())
    kind = ev.get("task", SINGLE)  # eval.json without "task" predates the other kinds: single-label
    if kind != task.kind:
        raise RaceError(f"ours' {out / 'eval.json'} says task {kind!r}, but {task.name} is {task.kind}")
    last = (ev.get("history") or [{}])[-1]
    final = {k: ev.get(f"final_{k}", last.get(k, ev.get(k))) for k in METRICS[kind] if k in ev}
    config = json.loads((out / "config.json").read_text())["train"]
    with (setup.data_root / task.name / "train.jsonl").open() as f:
        rows = min(sum(1 for line in f if line.strip()), setup.max_train or 1 << 62)
    return {"metrics": final, "best_epoch_metrics": {k: ev[k] for k in METRICS[kind] if k in ev},
            "selection_metric": ev.get("metric"), "trainable_params": ev.get("trainable_params"),
            "epochs": config["epochs"], "precision": ours_precision(config), "loop_seconds": ev.get("train_seconds"),
            "work": {"train_rows": rows, "epochs": config["epochs"], "rows_x_epochs": rows * config["epochs"],
                     "train_padded_tokens": None, "layers": None, "token_layer_passes": None}}


def one_run(name: str, task: Task, seed: int, setup: Setup, work_dir: Path) -> dict:
    """Run one contestant (trivial: computed here, no process) and return its record's measurements."""
    if name == "trivial":
        try:
            metrics = trivial(task, setup.data_root / task.name, setup.max_train, setup.max_eval, seed)
        except (OSError, ValueError, KeyError) as e:  # a file that is not the task's layout: one line
            raise RaceError(f"trivial baseline of {task.name}: {type(e).__name__}: {e}") from None
        return {"metrics": metrics, "wall_seconds": None, "trainable_params": 0, "epochs": 0, "work": None}
    run_dir = work_dir / f"{task.name}-seed{seed}-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = command(name, task.name, seed, run_dir, setup)
    # ru_maxrss keeps the launching process's peak across exec: this race's own, recorded as the floor.
    floor = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    timing = run_child(cmd, run_dir / "log.txt", run_dir / ("out/eval.json" if name in OURS else "metrics.json"),
                       dict(os.environ))
    shutil.rmtree(run_dir / "cache", ignore_errors=True)  # cold next time; prefix caches can be large
    (run_dir / "out" / "checkpoint.pt").unlink(missing_ok=True)
    result = read_ours(run_dir, task, setup) if name in OURS else read_run(run_dir)
    return {"command": shlex.join(cmd[1:]), "run_dir": str(run_dir), **timing, "race_rss_mib": floor, **result}


def plan(tasks: list[str], names: list[str], seeds: list[int]) -> list[tuple[str, str, int]]:
    """(task, contestant, seed) in race order: per task, one round per seed, contestants alternating; trivial
    first (no process), full in seed 0's round only."""
    racers, first = [n for n in names if n != "trivial"], ["trivial"] if "trivial" in names else []
    return [(task, n, seed) for task in tasks for seed, round_ in zip(seeds, abba_order(racers, len(seeds)))
            for n in first + round_ if n != "full" or seed == 0]


def race(setup: Setup, order: list[tuple[str, str, int]], runs: list[dict], work_dir: Path, machine: dict,
         save) -> list[dict]:
    """Every planned run not already in `runs` (same settings), each record saved as soon as it lands."""
    done = {(r["task"], r["contestant"], r["seed"]) for r in runs}
    for task, name, seed in (planned for planned in order if planned not in done):
        print(f"[tasks] {task}, seed {seed}: {name} ...", file=sys.stderr, flush=True)
        record = {"task": task, "kind": TASKS[task].kind, "contestant": name, "seed": seed,
                  "settings": setup.settings(), **one_run(name, TASKS[task], seed, setup, work_dir),
                  "machine": machine, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        save(runs := [*runs, record])
        wall = "" if record["wall_seconds"] is None else f"{record['wall_seconds']:.1f} s wall, "
        print(f"[tasks]   {wall}{json.dumps(record['metrics'])}", file=sys.stderr, flush=True)
    return runs


def summarize(runs: list[dict]) -> dict:
    """Per task and contestant: each metric's median [min, max] over seeds and the median wall time; per task,
    fast's wall time over peft's, paired by seed (paired_ratio: median [min, max] of the per-seed ratios)."""
    def spread(values: list[float]) -> dict | None:
        return {"median": median(values), "min": min(values), "max": max(values)} if values else None

    out: dict = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        by = {n: [r for r in runs if r["task"] == task and r["contestant"] == n] for n in CONTESTANTS}
        out[task] = {"contestants": {}}
        for name, rs in ((n, rs) for n, rs in by.items() if rs):
            walls = [r["wall_seconds"] for r in rs if r["wall_seconds"] is not None]
            out[task]["contestants"][name] = {
                "metrics": {k: spread([r["metrics"][k] for r in rs if r["metrics"].get(k) is not None])
                            for k in METRICS[TASKS[task].kind]},
                "wall_seconds": median(walls) if walls else None, "seeds": sorted(r["seed"] for r in rs),
                "epochs": rs[0]["epochs"], "trainable_params": rs[0]["trainable_params"]}
        fast, peft = ({r["seed"]: r["wall_seconds"] for r in by[n]} for n in ("fast", "peft"))
        both = sorted(set(fast) & set(peft)) or None  # paired by seed: the seeds both ran
        out[task]["fast_over_peft_wall"] = both and paired_ratio([fast[s] for s in both], [peft[s] for s in both])
    return out


UNSCALED = ("mse",)  # an error in the label's own units, shown as is; the scores are shown ×100


def _cell(stat: dict | None, key: str) -> str:
    if stat is None:
        return "—"
    x, d = (1, 3) if key in UNSCALED else (100, 2)
    lo, hi = stat["min"] * x, stat["max"] * x
    return f"{stat['median'] * x:.{d}f}" + (f" [{lo:.{d}f}–{hi:.{d}f}]" if hi > lo else "")


def table_rows(result: dict) -> list[tuple[str, list[str], list[list[str]], str]]:
    """Per task: its title, the header, the rows (contestants, then the paper's two rows) and the ratio line."""
    out = []
    for task, entry in result["summary"].items():
        keys = TASKS[task].headline
        header = ["contestant", *(f"{k} (median [range]{'' if k in UNSCALED else ', ×100'})" for k in keys),
                  "wall s (median)", "epochs", "runs"]
        rows = [[LABELS[n], *(_cell(c["metrics"][k], k) for k in keys),
                 "—" if c["wall_seconds"] is None else f"{c['wall_seconds']:.1f}", str(c["epochs"] or "—"),
                 str(len(c["seeds"]))] for n, c in entry["contestants"].items()]
        for label, value in zip(("LoRA paper: RoBERTa-base LoRA 0.3M", "LoRA paper: RoBERTa-base full FT"),
                                TASKS[task].paper or ()):  # in the paper's metric: the first column
            rows.append([label, f"{value}", *[""] * (len(header) - 2)])
        ratio = entry["fast_over_peft_wall"]
        line = (f"fast/peft wall time: {ratio['median']:.3f}× [{ratio['min']:.3f}–{ratio['max']:.3f}] over "
                f"{len(ratio['per_round'])} seed(s)" if ratio else "fast/peft wall time: — (needs both on a seed)")
        out.append((f"{task} ({TASKS[task].kind})", header, rows, line))
    return out


def render(result: dict, markdown: bool = False) -> str:
    """The tables as plain text (columns padded) or as markdown for benchmarks/README.md."""
    parts = []
    for title, header, rows, line in table_rows(result):
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = ([f"**{title}**", "", *("| " + " | ".join(r) + " |" for r in (header, ["---"] * len(header), *rows)),
                  ""] if markdown else
                 [title, *("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows))])
        parts.append("\n".join([*lines, line]))
    parts.append(f"{result['setup']['model']}, --epochs {result['setup']['epochs']} (fast: its own). {PAPER_NOTE}")
    return "\n\n".join(parts)


def _listed(text: str, what: str, choices: tuple | dict | None = None, least: int = 0, one: bool = False) -> list:
    """Distinct comma-separated names from `choices`, or whole numbers in ASCII digits (int() takes '٣', '+1')."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or len(set(parts)) != len(parts) or (one and len(parts) > 1) or not all(
            p in choices if choices else re.fullmatch(r"[0-9]+", p) for p in parts):
        kind = f"names from {','.join(choices)}" if choices else "whole numbers (0-9 digits)"
        kind = "one whole number (0-9 digits)" if one else f"distinct, comma-separated {kind}"
        raise RaceError(f"{what} takes {kind}, got {text!r}")
    if not choices and min(int(p) for p in parts) < least:
        raise RaceError(f"{what} must be at least {least}, got {text!r}")
    return parts if choices else [int(p) for p in parts]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage + message, as one `error:` line like the rest
        raise RaceError(message)


def parse(argv: list[str]) -> argparse.Namespace:
    p = _Parser(prog="python -m benchmarks.tasks", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="local model directory (default: MPNet-base from tools/get_mpnet.py)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of %(default)s")
    p.add_argument("--contestants", default=",".join(CONTESTANTS), help="comma-separated subset of %(default)s")
    p.add_argument("--seeds", default="0,1", help="comma-separated; one round per seed (default %(default)s)")
    p.add_argument("--epochs", default="3", help="ours-default's, peft's and full's epochs (default %(default)s)")
    for split in ("train", "eval"):
        p.add_argument(f"--max-{split}-samples", help=f"{split} rows per task, for smoke runs (recorded)")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="TASK/{train,dev}.jsonl (default %(default)s)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "tasks-mpnet.json", help="default %(default)s")
    p.add_argument("--work-dir", type=Path, help="run directories and logs (default runs/tasks-<out's name>)")
    p.add_argument("--resume", action="store_true", help="keep --out's runs (same settings) and run the rest")
    p.add_argument("--markdown", action="store_true", help="print --out's tables as markdown and exit")
    return p.parse_args(argv)


def setup_of(args: argparse.Namespace) -> Setup:
    """The validated shared settings; every task's files are checked before anything runs. No --model: MPNet-base
    where tools/get_mpnet.py puts it, checked as that tool checks it."""
    model = args.model
    if model is None:
        try:
            from tools.get_mpnet import DEFAULT_DIR, NAME, check
        except ImportError:
            raise RaceError("give --model DIR: tools/get_mpnet.py (the default's finder) is not importable") from None
        if problem := check(DEFAULT_DIR / NAME):
            raise RaceError(f"no --model, and no MPNet ({problem}): run python tools/get_mpnet.py, or give --model")
        model = DEFAULT_DIR / NAME
    if not (Path(model) / "config.json").is_file():
        raise RaceError(f"--model {model} is no model directory (no config.json)")
    root = args.data_root.resolve()
    for task in _listed(args.tasks, "--tasks", TASKS):
        missing = [f for f in ("train.jsonl", "dev.jsonl") if not (root / task / f).is_file()]
        if missing:
            raise RaceError(f"--data-root {root}: no {task}/{missing[0]}")
    limit = [(_listed(v, f, least=1, one=True)[0] if v is not None else None) for v, f in
             ((args.max_train_samples, "--max-train-samples"), (args.max_eval_samples, "--max-eval-samples"))]
    return Setup(str(Path(model).resolve()), root, _listed(args.epochs, "--epochs", least=1, one=True)[0], *limit)


def kept_runs(out: Path, setup: Setup, resume: bool) -> list[dict]:
    """The runs of --out that a resumed race keeps; a result is never replaced: without --resume, it is refused."""
    if not out.is_file():
        return []
    if not resume:
        raise RaceError(f"{out} exists: --resume continues it; to start over, remove it or give another --out")
    try:
        runs = json.loads(out.read_text())["runs"]
    except (OSError, ValueError, KeyError) as e:
        raise RaceError(f"--resume: cannot read the runs of {out}: {e}") from None
    other = [r.get("settings") for r in runs if r.get("settings") != setup.settings()]
    if other:
        raise RaceError(f"--resume: {out} holds runs with other settings ({other[0]}, not {setup.settings()}); give "
                        f"the same flags, or another --out")
    return runs


def main(argv: list[str] | None = None) -> dict:
    """Run the race (or, with --markdown, render --out), write --out after every run, print the tables."""
    args = parse(argv := sys.argv[1:] if argv is None else argv)
    if args.markdown:  # renders what is there, runs nothing
        if not args.out.is_file():
            raise RaceError(f"--markdown renders {args.out}, which does not exist")
        print(render(result := json.loads(args.out.read_text()), markdown=True))
        return result
    order = plan(_listed(args.tasks, "--tasks", TASKS), _listed(args.contestants, "--contestants", CONTESTANTS),
                 _listed(args.seeds, "--seeds"))
    setup = setup_of(args)
    runs = kept_runs(args.out, setup, args.resume)
    work_dir = (args.work_dir or REPO_ROOT / "runs" / f"tasks-{args.out.stem}").resolve()
    machine = machine_info()

    def result_of(runs: list[dict], complete: bool) -> dict:
        return {"benchmark": "tasks", "command": "python -m benchmarks.tasks " + shlex.join(argv),
                "complete": complete, "setup": {**setup.settings(), "model_path": setup.model,
                                                "data_root": str(setup.data_root), "paper_note": PAPER_NOTE},
                "machine": machine, "summary": summarize(runs), "runs": runs}

    runs = race(setup, order, runs, work_dir, machine, lambda rs: write_json(args.out, result_of(rs, False)))
    write_json(args.out, result := result_of(runs, True))
    print(f"{render(result)}\n\nwrote {args.out}")
    return result


if __name__ == "__main__":
    race_main(main)
