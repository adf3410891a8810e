"""The race's contestants as child processes: their commands, a launch-to-metrics timer, and readers
of what each leaves on disk. Used by benchmarks/accuracy.py.

Every contestant is a fresh `python -m ...` process with a fresh, empty cache directory, timed from
launch to exit (its final metrics are on disk by then), with the CPU time the kernel charged to it
and to the processes it waited for (os.wait4).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import REPO_ROOT
from train.rundir import CONFIG, EVAL, RunDir

NAMES = ("reference", "tuned", "default", "fast", "engine", "ceiling")
LABELS = {
    "reference": "reference as specified (PEFT + Trainer)",
    "tuned": "tuned reference (length-grouped, bf16 where native)",
    "default": "ours, default recipe",
    "fast": "ours, fast recipe",
    "engine": "PEFT + Trainer on our fast recipe (the engine alone)",
    "ceiling": "full fine-tuning (Trainer, every parameter)",
}
TRAINER = {"reference": "specified", "tuned": "tuned", "engine": "engine", "ceiling": "ceiling"}  # --variant
OURS = ("default", "fast")
OURS_LOOP_INCLUDES = ("eval.json train_seconds: per optimizer step, collate the batch, move it to the device, "
                      "forward, loss, backward, clip, optimizer step, lr update, zero_grad; summed over steps (no "
                      "evaluation, no checkpoints, no per-epoch setup)")


class RaceError(SystemExit):
    """Ends the race with one line on stderr and exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def race_main(main: Callable[[], object]) -> None:
    """A race run as a script: a RaceError ends it in one line on stderr and exit code 2, as our own CLI ends a
    user's mistake (uncaught, SystemExit would print it and exit 1)."""
    try:
        main()
    except RaceError as e:
        print(e.code, file=sys.stderr)
        sys.exit(2)


@dataclass
class Setup:
    """What every contestant shares, and how ours are configured."""
    model: str
    data_args: list[str]  # --train-file F --eval-file F, or --data NAME: the same flags on both CLIs
    epochs: int
    max_train: int | None = None
    max_eval: int | None = None
    recipe_args: dict[str, list[str]] = field(default_factory=lambda: {"default": [], "fast": ["--recipe", "fast"]})
    extra: list[str] = field(default_factory=list)  # after -- on the race's command line: ours only
    threads: int | None = None


def command(name: str, setup: Setup, seed: int, run_dir: Path) -> list[str]:
    """The child's command line. The references and our default recipe get --epochs; the fast recipe
    keeps its own epochs (one of its levers) unless its --fast-args say otherwise."""
    samples = (["--max-train-samples", str(setup.max_train)] if setup.max_train else []) + (
        ["--max-eval-samples", str(setup.max_eval)] if setup.max_eval else [])
    common = ["--model", setup.model, *setup.data_args, *samples, "--seed", str(seed)]
    if name in TRAINER:  # the engine variant keeps our fast recipe's epochs, as our fast run does
        return [sys.executable, "-m", "benchmarks.reference", *common, "--epochs", str(setup.epochs),
                "--out", str(run_dir / "metrics.json"), "--variant", TRAINER[name]]
    if name not in OURS:
        raise RaceError(f"unknown contestant {name!r}; choose from {', '.join(NAMES)}")
    epochs = ["--epochs", str(setup.epochs)] if name == "default" else []
    return [sys.executable, "-m", "train", *common, *epochs, "--output-dir", str(run_dir / "out"),
            "--cache-dir", str(run_dir / "cache"), *setup.recipe_args[name], *setup.extra]


def child_env(setup: Setup) -> dict[str, str]:
    env = dict(os.environ)
    if setup.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(setup.threads)
    return env


def preflight(name: str, cmd: list[str], env: dict[str, str]) -> None:
    """Ask our CLI to parse the contestant's full command (with --help appended), so that a recipe or
    flag it does not know ends the race in seconds with its one-line reason, not after an hour."""
    if name not in OURS:
        return
    done = subprocess.run([*cmd, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        reason = lines[-1].removeprefix("error: ") if lines else f"exit code {done.returncode}"
        flag = "--fast-args" if name == "fast" else "--default-args"
        raise RaceError(f"contestant {name} cannot start: {reason} (it runs `python -m train ... "
                        f"{shlex.join(cmd[cmd.index('--cache-dir') + 2:])}`; change that with {flag})")


def run_child(cmd: list[str], log: Path, metrics: Path, env: dict[str, str]) -> dict:
    """Run `cmd` to its exit, stdout to `log`, stderr to `log` with suffix .err. Wall time from just
    before launch to exit; CPU time (user + system) of the child and of the processes it waited for;
    when the metrics file was written."""
    log.parent.mkdir(parents=True, exist_ok=True)
    err = log.with_suffix(".err")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with log.open("w") as out, err.open("w") as errors:
        launched_at = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:  # the child's last words: stderr first, as our CLIs put their one error line there
        tail = [x for f in (log, err) for x in f.read_text(errors="replace").splitlines() if x.strip()][-1:]
        raise RaceError(f"`{shlex.join(cmd[1:])}` failed with exit code {proc.returncode}: "
                        f"{(tail or ['(no output)'])[0].strip()} (logs: {log}, {err.name})")
    if not metrics.is_file():
        raise RaceError(f"`{shlex.join(cmd[1:])}` exited 0 but wrote no {metrics} (logs: {log}, {err.name})")
    return {"wall_seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "user_seconds": usage.ru_utime,
            "system_seconds": usage.ru_stime, "max_rss_mib": usage.ru_maxrss / 1024,
            "to_metrics_seconds": metrics.stat().st_mtime - launched_at,
            "load_average_1m_before": None if load is None else round(load, 2)}


def metrics_path(name: str, run_dir: Path) -> Path:
    return (RunDir(run_dir / "out") / EVAL) if name in OURS else run_dir / "metrics.json"


def read_result(name: str, run_dir: Path) -> dict:
    """Final-epoch accuracy, loop time, precision and what the work count needs, from the files the
    contestant wrote. Ours' resolved settings come from its config.json (recipe values included)."""
    metrics = json.loads(metrics_path(name, run_dir).read_text())
    if name not in OURS:
        recipe = metrics["recipe"]
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                "loop_seconds": metrics["loop_seconds"], "loop_includes": metrics["loop_includes"],
                "precision": metrics["precision"], "epochs": metrics["epochs"], "batch_size": recipe["batch_size"],
                "eval_batch_size": recipe["batch_size"],
                "max_length": recipe["max_length"], "layers": metrics.get("layers"),
                "trainable_params": metrics["trainable_params"],
                "trainer_train_seconds": metrics["train_seconds"]}
    config = json.loads((RunDir(run_dir / "out") / CONFIG).read_text())["train"]  # {"train": TrainConfig, ...}
    lora = config["lora"]
    last = metrics["history"][-1]
    return {"accuracy": metrics.get("final_accuracy", last["accuracy"]),
            "macro_f1": metrics.get("final_macro_f1", last["macro_f1"]),
            "best_epoch_accuracy": metrics["accuracy"], "loop_seconds": metrics["train_seconds"],
            "loop_includes": OURS_LOOP_INCLUDES, "precision": ours_precision(config),
            "epochs": config["epochs"], "batch_size": config["batch_size"],
            "eval_batch_size": config["eval_batch_size"], "max_length": config["max_length"],
            "layers": lora["layers"], "trainable_params": metrics["trainable_params"]}


def ours_precision(config: dict) -> str:
    """The precision our run trained in: its --precision resolved by the app's own rule (for auto:
    bf16 on CUDA and on CPUs with native bf16, else fp32)."""
    from train.device import pick_device, pick_precision

    dtype = pick_precision(config.get("precision", "auto"), pick_device(config.get("device", "auto")))
    return {None: "fp32"}.get(dtype, str(dtype).removeprefix("torch.").replace("bfloat16", "bf16").replace(
        "float16", "fp16"))


def start_layer(layers) -> int:
    """LoRA's lowest layer: the first layer that needs a backward, and the end of a frozen prefix."""
    return min(layers) if layers else 0
