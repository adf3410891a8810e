"""The run directory: every file name a run writes, how they are written, and how a run starts in a directory
(fresh, resumed, finished, or refused), and what they hold: the run record (config.json, and the adapter's
train_config.json), eval.json's record, the checkpoint's state with the versions and RNG that make a run
reproducible.

    run/  config.json  metrics.jsonl  checkpoint.pt  eval.json  curves.png  confusion.png  .lock
          adapter/  adapter_model.safetensors  adapter_config.json  train_config.json

The rules: a run writes only these names, inside its directory, each to a temp file renamed into place (a link
there is replaced, never followed); it never deletes or truncates a file it did not write; one live process at
a time holds the directory (.lock, with its host and pid; a lock whose process is gone is taken over).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from .config import TrainConfig
from .device import versions
from .errors import UserError
from .files import atomic_write, lock, sweep_temps, unlock, write_bytes

CONFIG = "config.json"  # {"train": TrainConfig.to_dict(), "labels": [...], "versions": {...}}
RUN_INFO = "train_config.json"  # the same object beside the PEFT files, so an adapter stands alone
METRICS = "metrics.jsonl"
EVAL = "eval.json"  # written last: a directory with eval.json holds a finished run
CHECKPOINT = "checkpoint.pt"
ADAPTER = "adapter"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", RUN_INFO)
PLOTS = ("curves.png", "confusion.png")
LOCK = ".lock"


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
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # cut short, a number too long, nested too deep
        detail = str(e).splitlines()[0][:120] if str(e) else "nested too deeply"
        raise UserError(f"{path} is not valid JSON ({what}): {detail}") from None


def read_run_info(adapter_dir: str | Path) -> Record:
    """The Record in the train_config.json of an adapter written by `python -m train`."""
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
        lock(self / LOCK, str(self.path))

    def unlock(self) -> None:
        """Release the lock if this process holds it; then a directory left empty (a run refused or stopped
        before it wrote anything) goes too."""
        try:
            if unlock(self / LOCK) and not any(self.path.iterdir()):
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
        directory: what `cfg` asks is compared with what the saved run was asked (its record keeps both what was
        asked and what it resolved to), so nothing is resolved again."""
        mine, theirs = cfg.what_it_trains(), TrainConfig.what_it_trains(self.load_record().asked)
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
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

    def load_record(self) -> Record:
        path = self / CONFIG
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        return parse_record(read_json(path, "run config"), path)

    def save_adapter(self, files: dict[str, bytes], record: dict) -> None:
        """The adapter's PEFT files (lora.adapter_files) and the run record beside them, each written whole."""
        for name, data in files.items():
            write_bytes(self.adapter / name, data)
        write_json(self.adapter / RUN_INFO, record)

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


# What the files hold: the run record and the checkpoint's state (eval.json's is train.metrics.eval_record).

@dataclass
class Progress:
    """Where the run is; saved in every checkpoint."""
    epoch: int = 0  # current epoch, 0-based
    batch: int = 0  # next batch index within the epoch
    step: int = 0  # optimizer steps done
    train_seconds: float = 0.0  # summed over every session of a resumed run
    sessions: int = 1  # processes the run has trained in: 1, plus one per resume
    examples: int = 0
    best_score: float | None = None  # the kept epoch's cfg.metric on the rows that choose it
    history: list = field(default_factory=list)  # one dict per finished epoch
    best: dict = field(default_factory=dict)  # the full report of the kept epoch: the best so far, or the latest
    best_state: dict = field(default_factory=dict)  # its trainable weights, where validation rows chose it
    plotted: list = field(default_factory=list)  # what the plots draw of each logged line (metrics.PLOTTED)


class Record(NamedTuple):
    """A run record: config.json, and the adapter's train_config.json."""
    train: TrainConfig  # the settings as resolved at start (train.model.resolve): what the run trained with
    asked: dict  # the settings as asked (flags, recipe, sweep spec), flat: what --resume auto and sweeps compare
    labels: list[str]
    plan: list[tuple[str, int]]  # what trains, per module group, as printed at start
    trainable: int  # the plan's total
    pairs: bool  # each row was a pair of texts: the exports' examples and graphs take pairs


def run_record(cfg: TrainConfig, asked: TrainConfig, labels: list[str], plan: list[tuple[str, int]],
               pairs: bool = False) -> dict:
    """What config.json and the adapter's train_config.json hold: one shape, written by one function."""
    return {"train": cfg.to_dict(), "asked": asked.to_flat(), "labels": list(labels), "pairs": pairs,
            "plan": [list(row) for row in plan], "trainable_params": sum(v for _, v in plan), "versions": versions()}


def parse_record(record: dict, path: Path) -> Record:
    """The Record in a run record; one UserError line if it is not one."""
    if isinstance(record, dict) and isinstance(record.get("train"), dict) and "asked" not in record:
        raise UserError(f"{path} was written by an earlier build of python -m train, whose runs this one does not "
                        "read; train it again")
    try:
        plan = [(str(name), int(count)) for name, count in record["plan"]]
        return Record(TrainConfig.from_dict(record["train"]), dict(record["asked"]), list(record["labels"]), plan,
                      int(record["trainable_params"]), record["pairs"] is True)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a run config written by python -m train: {e}") from None


def checkpoint_state(model: nn.Module, optimizer, scaler, ema, progress: dict, data: list[str]) -> dict:
    """What checkpoint.pt holds: the trained weights, optimizer, scaler, EMA, position, RNG, and the
    fingerprints of the data trained and evaluated on (a resume on other data is refused)."""
    return {"model": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "ema": {n: t.cpu() for n, t in ema.shadow.items()} if ema else {}, "progress": progress,
            "rng": {"torch": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()}
                                                       if torch.cuda.is_available() else {})}, "data": list(data)}


def restore_checkpoint(state: dict, model: nn.Module, optimizer, scaler, ema, device: torch.device,
                       path: Path, data: list[str]) -> Progress:
    """Put a checkpoint_state (read from `path`) back in place; returns its progress. A checkpoint
    of other data (`data`: the rows' fingerprints), of another model or recipe, or with a part missing, is
    one UserError line."""
    if state.get("data") != data:
        raise UserError(f"the data differ from what {path} was trained on (another training or evaluation "
                        "file, or other rows in it); resume with the same data, or start again with --overwrite")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state.get("model", {})) != set(trainable):
        raise UserError(f"{path} does not match this model's trainable parameters")
    try:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(state["model"][n])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.shadow = {n: t.to(device) for n, t in state["ema"].items()}
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return Progress(**state["progress"])  # one of an earlier build's (other fields) is a TypeError: one line
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        "start again with --overwrite") from None
