"""Running the race: contestants alternate within rounds (one round per seed), every finished run is appended to
runs.jsonl at once, and a race cut off (a session's end, a reboot) resumes where it stopped with --resume."""
from __future__ import annotations

import json
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import abba_order
from benchmarks.contestants import RaceError, Setup, child_env, command, metrics_path, read_result, run_child
from benchmarks.work import Lengths, work_of
from train.rundir import CHECKPOINT, RunDir


def race_key(setup: Setup, names: list[str], seeds: list[int], once: tuple[str, ...]) -> dict:
    """What a resumed race must share with the race it continues (race-setup.json in the work directory)."""
    return {"model": setup.model, "data": setup.data_args, "epochs": setup.epochs, "seeds": seeds,
            "contestants": names, "once": list(once), "recipe_args": setup.recipe_args, "extra_args": setup.extra,
            "threads": setup.threads, "max_train_samples": setup.max_train, "max_eval_samples": setup.max_eval}


def run_race(setup: Setup, names: list[str], seeds: list[int], work_dir: Path, lengths: Lengths, layers: int,
             prefix_cache: bool, once: tuple[str, ...] = (), done: list[dict] | None = None,
             after_each: Callable[[list[dict]], None] = lambda runs: None) -> list[dict]:
    """Every contestant once per seed, in alternating order (those in `once`, the slowest, in the first round
    only); returns one record per run. Each record is also appended to work_dir/runs.jsonl as it is made, so a
    race cut off by a time limit keeps what it measured; `done` (a resumed race's records) are not run again.
    `after_each` sees every record so far after each run (main writes the partial result)."""
    env = child_env(setup)
    runs = list(done or [])
    finished = {(r["contestant"], r["seed"]) for r in runs}
    log = work_dir / "runs.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    # This race's runs only; a resumed race's are written back whole (a torn last line would glue onto the next).
    log.write_text("".join(json.dumps(r) + "\n" for r in runs))
    for round_, (seed, order) in enumerate(zip(seeds, abba_order(names, len(seeds)))):
        for position, name in enumerate(n for n in order if round_ == 0 or n not in once):
            if (name, seed) in finished:
                continue
            run_dir = work_dir / f"seed{seed}-{name}"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = command(name, setup, seed, run_dir)
            print(f"[race] round {round_ + 1}/{len(seeds)}, seed {seed}: {name} ...", file=sys.stderr, flush=True)
            timing = run_child(cmd, run_dir / "log.txt", metrics_path(name, run_dir), env)
            shutil.rmtree(run_dir / "cache", ignore_errors=True)  # cold next time; prefix caches can be large
            (RunDir(run_dir / "out") / CHECKPOINT).unlink(missing_ok=True)
            result = read_result(name, run_dir)
            work = work_of(name, result, lengths, seed, layers, prefix_cache)
            runs.append({"contestant": name, "seed": seed, "round": round_, "position": position,
                         "command": shlex.join(cmd[1:]), "run_dir": str(run_dir), **timing, **result, "work": work})
            with log.open("a") as f:  # a line at a time: a kill mid-write loses at most this run
                f.write(json.dumps(runs[-1]) + "\n")
            print(f"[race]   {timing['wall_seconds']:.1f} s wall, {timing['cpu_seconds']:.1f} s CPU, loop "
                  f"{result['loop_seconds']:.1f} s, accuracy {result['accuracy']:.4f}, {result['precision']}",
                  file=sys.stderr, flush=True)
            after_each(runs)
    return runs


def resumed_runs(work_dir: Path, key: dict) -> list[dict]:
    """The finished runs of the race in `work_dir`, which must have been started with the same `key` (model, data,
    seeds, contestants, recipes: see main); a torn last line (a kill mid-write) is dropped."""
    setup_file, log = work_dir / "race-setup.json", work_dir / "runs.jsonl"
    if not setup_file.is_file():
        raise RaceError(f"--resume: {work_dir} holds no race (no race-setup.json); start it without --resume")
    try:
        before = json.loads(setup_file.read_text())
    except (OSError, ValueError) as e:
        raise RaceError(f"--resume: cannot read {setup_file}: {e}") from None
    changed = sorted(k for k in set(before) | set(key) if before.get(k) != key.get(k))
    if changed:
        raise RaceError(f"--resume: {work_dir} is a race with other settings ({', '.join(changed)}); give the same "
                        f"arguments, or another --work-dir")
    runs = []
    for line in (log.read_text().splitlines() if log.is_file() else []):
        try:
            runs.append(json.loads(line))
        except ValueError:
            break  # the torn last line; that run is run again
    return runs
