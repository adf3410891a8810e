"""Does memory stay flat as the corpus grows? Synthetic AG News-like corpora of N rows; for each N:
the token cache's build time and rows/s, its size on disk, and the peak resident memory of a
`python -m train` process that opens the cache and trains 50 steps on it. Target: peak RSS at 2M rows
within 1.2x of 100k.

    python -m benchmarks.scale                      # N = 100k and 2M: results/scale.json
    python -m benchmarks.scale --rows 20000,200000 --out /tmp/scale.json   # a quick look

Every measurement runs in a fresh child process (ru_maxrss only ever grows), so the build's memory
and the training process's memory are each their own. The training process is `python -m train`
(its main() called in the child, so the child can read its own VmHWM at the end): reference recipe,
the tiny model, --stop-after 50, fp32, on the cache the build child wrote.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine_info, write_json

TOPICS = [["war", "election", "minister", "treaty", "border", "embassy"],  # tests/helpers/tiny.py's vocabulary,
          ["match", "goal", "coach", "league", "season", "striker"],  # so the tiny tokenizer knows it
          ["market", "shares", "profit", "bank", "stocks", "merger"],
          ["software", "chip", "internet", "robot", "laptop", "research"]]
FILLER = ["the", "a", "on", "in", "said", "today", "new", "after", "report", "week", "big", "more"]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """VmHWM: this process's peak resident memory, file-backed pages (libraries, the mapped cache)
    included. Not ru_maxrss, which across exec keeps the parent's peak (Linux folds the old address
    space's high-water mark into it), so every child would report at least the parent's memory."""
    return _status_mb("VmHWM")


def anon_mb() -> float:
    """Resident anonymous memory now (heap, tensors, Python objects): what grows if rows are held."""
    return _status_mb("RssAnon")


def mapped_mb(folder: Path) -> float:
    """Resident pages of the files under `folder` that this process memory-maps (the token cache)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's header: address range ... path
            inside = str(folder) in line
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total / 1024


def generate(directory: Path, n: int, seed: int = 0, pool: int = 4000) -> float:
    """train.csv (n rows) and test.csv (1,000) in the AG News layout, plus classes.txt. Lengths follow
    AG News: a title of 3-12 words and a description of 12-50, one in 20 running to 120 (truncated).
    Rows are combinations from a pool of random titles and descriptions, so 2M rows write in seconds.
    Returns seconds spent."""
    import numpy as np

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def text(y: int, words: int, topical: float) -> str:
        topic = rng.random(words) < topical
        return " ".join(TOPICS[y][rng.integers(6)] if t else FILLER[rng.integers(12)] for t in topic)
    titles = [[text(y, int(rng.integers(3, 13)), 0.8) for _ in range(pool)] for y in range(4)]
    descs = [[text(y, int(rng.integers(12, 51)) if rng.random() > 0.05 else int(rng.integers(51, 121)), 0.4)
              for _ in range(pool)] for y in range(4)]
    for name, rows in (("train.csv", n), ("test.csv", 1000)):
        with (directory / name).open("w") as f:
            for start in range(0, rows, 100_000):
                m = min(100_000, rows - start)
                y, t, d = (rng.integers(0, k, m).tolist() for k in (4, pool, pool))
                f.write("".join(f'"{a + 1}","{titles[a][b]}","{descs[a][c]}"\n' for a, b, c in zip(y, t, d)))
    (directory / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    return time.perf_counter() - started


def child_build(data: Path, model: Path, cache: Path, max_length: int) -> dict:
    """Build the cache as a run does (train.data.encode: one pass checks, hashes and tokenizes the rows), timed,
    with this process's peak RSS and its heap (RssAnon) sampled while it builds."""
    import threading

    from transformers import AutoTokenizer

    from train.data import encode
    from train.data.corpus import open_corpus

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = open_corpus(str(data)).train
    rss_before, anon, done_building = peak_rss_mb(), [anon_mb()], threading.Event()

    def sample() -> None:
        while not done_building.wait(0.1):
            anon.append(anon_mb())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    n = len(encode(rows, tokenizer, max_length, cache))
    done = time.perf_counter()
    done_building.set()
    sampler.join()
    return {"rows": n, "seconds": done - started, "rows_per_s": n / (done - started),
            "cpu_seconds": time.process_time(),
            "peak_rss_mb": peak_rss_mb(), "peak_rss_before_build_mb": rss_before,
            "anon_before_build_mb": anon[0], "peak_anon_mb": max(anon)}


def child_train(data: Path, model: Path, cache: Path, max_length: int, steps: int, batch_size: int) -> dict:
    """`python -m train` itself, in this process: the reference recipe on the tiny model, `steps` steps
    (--stop-after), fp32, on the cache the build child wrote (a hit: found without reading a row, then
    memory-mapped); the process's peak RSS once train's main has returned."""
    from train.__main__ import main as train_main

    out = cache.parent / f"{cache.name}-run"
    argv = ["--recipe", "reference", "--model", str(model), "--data", str(data), "--cache-dir", str(cache),
            "--output-dir", str(out), "--overwrite", "--max-length", str(max_length), "--batch-size", str(batch_size),
            "--rank", "8", "--lr", "1e-3", "--precision", "fp32", "--stop-after", str(steps)]
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries this child's one JSON line
        code = train_main(argv)
    done = time.perf_counter()
    if code != 0:
        raise SystemExit(f"python -m train {' '.join(argv)} exited with {code}")
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return {"command": "python -m train " + " ".join(argv), "seconds": done - started, "steps": len(losses),
            "first_loss": losses[0], "last_loss": losses[-1], "peak_rss_mb": peak_rss_mb(),
            "anon_at_exit_mb": anon_mb(), "cache_resident_mb": mapped_mb(cache)}


def spawn(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.scale", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(n: int, work: Path, model: Path, args) -> dict:
    data, cache = work / f"corpus-{n}", work / f"cache-{n}"
    shutil.rmtree(cache, ignore_errors=True)
    generate_seconds = generate(data, n)
    common = ["--data", str(data), "--model", str(model), "--cache", str(cache),
              "--max-length", str(args.max_length)]
    build = spawn("--child", "build", *common)
    train = spawn("--child", "train", *common, "--steps", str(args.steps), "--batch-size", str(args.batch_size))
    result = {"rows": n, "corpus_mb": (data / "train.csv").stat().st_size / 2**20,
              "generate_seconds": generate_seconds,
              "cache_mb": sum(p.stat().st_size for p in cache.glob("*.safetensors")) / 2**20,
              "build": build, "train": train}
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / f"cache-{n}-run", ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="100000,2000000", help="comma-separated corpus sizes")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--work", default="/tmp/roberta-lora-scale", help="scratch folder for corpora and caches")
    p.add_argument("--keep", action="store_true", help="keep corpora and caches")
    p.add_argument("--out", default=str(RESULTS_DIR / "scale.json"))
    p.add_argument("--child", choices=("build", "train"), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "build":
        print(json.dumps(child_build(args.data, args.model, args.cache, args.max_length)))
        return 0
    if args.child == "train":
        print(json.dumps(child_train(args.data, args.model, args.cache, args.max_length, args.steps,
                                     args.batch_size)))
        return 0
    return run(args, argv)


def run(args, argv: list[str] | None) -> int:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from helpers.tiny import make_tiny_model

    work = Path(args.work)
    model = make_tiny_model(work / "tiny-model")
    started = time.perf_counter()
    runs = [measure(int(n), work, model, args) for n in args.rows.split(",")]
    small, big = min(runs, key=lambda r: r["rows"]), max(runs, key=lambda r: r["rows"])
    ratio = big["train"]["peak_rss_mb"] / small["train"]["peak_rss_mb"]
    result = {
        "command": "python -m benchmarks.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": "tiny RoBERTa from tests/helpers/tiny.py (2 layers, hidden 64, word-level tokenizer), LoRA rank 8 "
                 "on query/value, AdamW; batch %d, max_length %d" % (args.batch_size, args.max_length),
        "training_process": "python -m train (its main() in the child): --recipe reference --rank 8 --precision fp32 "
                            "--stop-after %d, from the cache the build child wrote" % args.steps,
        "measures": {
            "build": "a child that builds the cache as a run does (train.data.encode): one pass checks, hashes and "
                     "tokenizes 8192 rows a call and writes them; rows_per_s over it",
            "peak_rss_mb": "VmHWM of the child: peak resident memory, libraries and mapped cache pages included",
            "peak_anon_mb": "build: largest RssAnon (heap, tensors, Python objects) sampled every 0.1 s",
            "anon_at_exit_mb": "train: RssAnon once python -m train's main has returned",
            "cache_resident_mb": "resident pages of the mapped cache at the end; collate unmaps the pages it read "
                                 "after every batch (they stay in the shared page cache)",
            "seconds": "train: python -m train's main, start to return (load; the cache found by the files' "
                       "identity, no row read; mmap, the steps, the checkpoint)",
        },
        "machine": machine_info(), "runs": runs,
        "train_peak_rss_ratio": ratio, "target_ratio": 1.2, "target_met": ratio <= 1.2,
        "total_seconds": time.perf_counter() - started,
    }
    write_json(Path(args.out), result)
    print(json.dumps({"rows": [r["rows"] for r in runs],
                      "train_peak_rss_mb": [round(r["train"]["peak_rss_mb"], 1) for r in runs],
                      "build_seconds": [round(r["build"]["seconds"], 1) for r in runs],
                      "build_rows_per_s": [round(r["build"]["rows_per_s"]) for r in runs],
                      "cache_mb": [round(r["cache_mb"], 1) for r in runs], "ratio": round(ratio, 3),
                      "target_met": ratio <= 1.2, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
