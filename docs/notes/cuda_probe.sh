#!/usr/bin/env bash
# Why CUDA training steps were bimodal (docs/notes/cuda-probe-h200.txt): the fast recipe three times on the same
# data (bf16, bf16 with one OMP thread, fp32), GPU clocks sampled alongside; each run's metrics.jsonl holds its
# per-step examples/s. About 2.5 minutes on an H200 with the MiniLM proxy.
#
#   MODEL=path/to/minilm DATA=path/to/ag_news bash docs/notes/cuda_probe.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python}"
D="${1:-/tmp/probe}"; mkdir -p "$D"
nvidia-smi --query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw --format=csv,noheader -lms 250 > "$D/smi.csv" &
SMI=$!
A=(--recipe fast --model "$MODEL" --train-file "$DATA/train.csv" --eval-file "$DATA/dev.csv" --overwrite)
run() {
    local name=$1 s; shift; s=$(date +%s%N)
    echo "== $name start $(date +%T.%N)"
    timeout 70 "$@" > "$D/$name.log" 2>&1
    echo "== $name rc $? wall $(( ($(date +%s%N) - s) / 1000000 )) ms"; tail -3 "$D/$name.log"
}
run bf16 "$PYTHON" -m train "${A[@]}" --output-dir "$D/bf16" --cache-dir "$D/c1"
run bf16-omp1 env OMP_NUM_THREADS=1 "$PYTHON" -m train "${A[@]}" --output-dir "$D/omp1" --cache-dir "$D/c2"
run fp32 "$PYTHON" -m train "${A[@]}" --output-dir "$D/fp32" --cache-dir "$D/c3" --precision fp32
kill $SMI
