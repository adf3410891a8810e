"""The run directory: every file name a run writes, how they are written, and how a run starts in a directory
(fresh, resumed, finished, or refused). What the files hold is train/records.py.

    run/  config.json  metrics.jsonl  checkpoint.pt  eval.json  curves.png  confusion.png  .lock
          adapter/  adapter_model.safetensors  adapter_config.json  train_config.json

The rules: a run writes only these names, inside its directory, each to a temp file renamed into place (a link
there is replaced, never followed); it never deletes or truncates a file it did not write; one live process at
a time holds the directory (.lock, with its host and pid; a lock whose process is gone is taken over).
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lora.files import alive, atomic_write, sweep_temps

from .cli import UserError
from .config import TrainConfig
from .records import parse_record

CONFIG = "config.json"  # {"train": TrainConfig.to_dict(), "labels": [...], "versions": {...}}
RUN_INFO = "train_config.json"  # the same object beside the PEFT files, so an adapter stands alone
METRICS = "metrics.jsonl"
EVAL = "eval.json"  # written last: a directory with eval.json holds a finished run
CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", RUN_INFO)
PLOTS = ("curves.png", "confusion.png")
LOCK = ".lock"
STALE_LOCK_SECONDS = 24 * 3600  # a lock from another machine this old is abandoned


def write_json(target: Path, obj) -> None:
    atomic_write(target, lambda p: Path(p).write_text(json.dumps(obj, indent=2) + "\n"))


def write_json_lines(path: Path, rows: list[dict]) -> None:
    atomic_write(path, lambda p: Path(p).write_text("".join(json.dumps(x) + "\n" for x in rows)))


def read_json(path: Path, what: str):
    """Parsed JSON, or one UserError line naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({what}): {e}") from None


def read_run_info(adapter_dir: str | Path) -> tuple[TrainConfig, list[str]]:
    """(TrainConfig, labels) from the train_config.json of an adapter written by `python -m train`."""
    path = Path(adapter_dir) / RUN_INFO
    if not path.is_file():
        raise UserError(f"{adapter_dir} is not an adapter written by python -m train (no {RUN_INFO})")
    return parse_record(read_json(path, "run config"), path)


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER

    def finished(self) -> bool:
        return (self / EVAL).is_file()

    def holds_run(self) -> bool:
        """config.json is a run record of python -m train (not merely a file of that name)."""
        try:
            record = json.loads((self / CONFIG).read_text())
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and isinstance(record.get("train"), dict)

    def lock(self) -> None:
        """Claim the directory for this process (made if missing), or refuse in one line while another live
        process holds it. Released by unlock(), and at exit."""
        self.path.mkdir(parents=True, exist_ok=True)
        mine = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = (self / LOCK).read_text(errors="replace").split()
                host, pid = (holder + ["", ""])[:2]
                age = time.time() - (self / LOCK).stat().st_mtime
                if " ".join(holder) == mine or (host == socket.gethostname() and pid.isdigit() and not alive(int(pid))
                                                ) or (host != socket.gethostname() and age > STALE_LOCK_SECONDS):
                    (self / LOCK).unlink(missing_ok=True)  # ours already, or its process is gone: take it over
                    continue
                raise UserError(f"{self.path} is being written by process {pid} on {host} (its {LOCK}); wait for "
                                f"it to end, or pick another --output-dir (remove {self / LOCK} if that process is "
                                "gone)") from None
            with os.fdopen(fd, "w") as f:
                f.write(mine + "\n")
            atexit.register(self.unlock)
            return

    def unlock(self) -> None:
        """Release the lock if this process holds it; then a directory left empty (a run refused or stopped
        before it wrote anything) goes too."""
        try:
            if (self / LOCK).read_text().split() != [socket.gethostname(), str(os.getpid())]:
                return
            (self / LOCK).unlink()
            if not any(self.path.iterdir()):
                self.path.rmdir()
        except OSError:
            pass

    def clean_temps(self) -> None:
        """Remove the temp files of atomic writes that a killed process left (ours alone: their own suffix,
        and a process that is gone)."""
        for folder in (self.path, self.adapter):
            sweep_temps(folder)

    def start_mode(self, resume: bool | str, overwrite: bool) -> str:
        """How the run starts here: "fresh", "resume" or, for resume="auto" (torchrun restarts), "finished"
        (checked against the settings once they are resolved). Locks the directory; refuses a bad --output-dir
        or --resume. A directory whose run never reached its first checkpoint holds nothing worth keeping:
        a fresh start may replace it without --overwrite."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output-dir {self.path} is a file, not a directory")
        self.lock()
        self.clean_temps()
        trained = (self / CHECKPOINT).is_file() or self.finished()
        if resume == "auto":
            return "finished" if self.finished() else "resume" if (self / CHECKPOINT).is_file() else "fresh"
        if resume and not (self / CHECKPOINT).is_file():
            raise UserError(f"nothing to resume: {self / CHECKPOINT} does not exist; "
                            f"start again with --output-dir {self.path} --overwrite")
        if not resume and not overwrite and trained and self.holds_run():
            raise UserError(f"{self.path} already holds a run; continue it with --resume {self.path}, "
                            "or pick another --output-dir (or --overwrite)")
        return "resume" if resume else "fresh"

    def same_settings(self, cfg: TrainConfig) -> None:
        """--resume auto (and a sweep) must continue the run these settings describe, not another one left in the
        directory. `cfg` may be unresolved (a sweep's spec): what a run resolves (the rank of --rank auto, the
        layers of --top-layers, a length capped at the model's) is then taken as the saved run resolved it."""
        saved, _ = self.load_config()
        # Where and how it runs, not what it trains: the device, the folders, the evaluation batch (its default
        # follows the device).
        ignore = dict(stop_after=None, device="auto", output_dir="", cache_dir=None, eval_batch_size=None)
        if cfg.auto_rank or cfg.top_layers or cfg.max_length > saved.max_length:
            cfg = replace(cfg, auto_rank=False, top_layers=None, max_length=min(cfg.max_length, saved.max_length),
                          lora=replace(cfg.lora, rank=saved.lora.rank if cfg.auto_rank else cfg.lora.rank,
                                       layers=saved.lora.layers if cfg.top_layers else cfg.lora.layers))
        mine, theirs = replace(cfg, **ignore).to_dict(), replace(saved, **ignore).to_dict()
        changed = sorted(k for k in mine if mine[k] != theirs[k])
        if changed:
            raise UserError(f"{self.path} holds a run with other settings ({', '.join(changed)}); "
                            f"use another --output-dir, or --resume {self.path} to continue that run")

    def start(self, record: dict) -> None:
        """A fresh run here: the earlier run's files (ours alone) are replaced, config.json written first.
        Refuses a directory where files with a run's names were not written by a run, and links that would
        lead a write out of the directory."""
        ours = [n for n in (CONFIG, METRICS, EVAL, CHECKPOINT, *PLOTS, ADAPTER) if (self / n).exists()]
        if ours and not self.holds_run():
            raise UserError(f"{self.path} holds {', '.join(ours)}, which no run of python -m train wrote (no run "
                            f"record in {CONFIG}); nothing there is replaced: pick another --output-dir")
        if self.adapter.is_symlink() or (self.adapter.exists() and not self.adapter.is_dir()):
            raise UserError(f"{self.adapter} is a link or a file; a run writes its adapter into a directory of its "
                            "own there: remove it or pick another --output-dir")
        for name in (CHECKPOINT, EVAL, *PLOTS):
            (self / name).unlink(missing_ok=True)
        for name in ADAPTER_FILES:
            (self.adapter / name).unlink(missing_ok=True)
        if self.adapter.is_dir() and not any(self.adapter.iterdir()):
            self.adapter.rmdir()  # anything else the user put there stays, with the folder
        write_json(self / CONFIG, record)
        write_json_lines(self / METRICS, [])

    def load_config(self) -> tuple[TrainConfig, list[str]]:
        path = self / CONFIG
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        record = read_json(path, "run config")
        if isinstance(record, dict) and "train" not in record:  # the flat layout of older runs
            return parse_record({"train": record, "labels": []}, path)
        return parse_record(record, path)

    def save_checkpoint(self, state: dict) -> None:
        atomic_write(self / CHECKPOINT, lambda p: torch.save(state, p))

    def load_checkpoint(self) -> dict:
        path = self / CHECKPOINT
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        try:
            # weights_only: tensors, numbers, strings and containers only; no arbitrary objects are built.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, a pickle payload refused by weights_only, a foreign file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path} is not a readable checkpoint of python -m train ({first[:160]}); "
                            f"start again with --output-dir {self.path} --overwrite") from None

    def append_metrics(self, entry: dict) -> None:
        """One line onto metrics.jsonl, never through a link (start() made it a file of this run)."""
        try:
            fd = os.open(self / METRICS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            raise UserError(f"{self / METRICS} cannot be appended to ({e.strerror}); it must be this run's own "
                            "file, not a link") from None
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def trim_metrics(self, step: int) -> None:
        """Drop lines logged after the checkpoint being resumed (and a line a kill tore), so the log reads as
        one run."""
        path = self / METRICS
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        kept = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill -9 mid-write
            if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
                kept.append(entry)
        write_json_lines(path, kept)
