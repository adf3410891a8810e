#!/usr/bin/env bash
# Speed benchmark on CUDA: bf16 autocast first (the precision a GPU user trains in), then fp32,
# batch 32 x seq 128, writing benchmarks/results/speed-cuda.json. Installs nothing; needs torch with
# CUDA, transformers and peft already present. On an H100 it takes about a minute; the timeout keeps
# it well under 10 minutes whatever happens.
#
#   bash benchmarks/gpu.sh                  # then: python -m benchmarks.report
#   REPEATS=50 bash benchmarks/gpu.sh       # more rounds for tighter medians
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1  # random weights from a config: nothing to download

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device visible to torch")'
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true

timeout 540 "$PYTHON" -m benchmarks.speed --device cuda --precisions bf16,fp32 \
    --batch-size "${BATCH_SIZE:-32}" --seq-len "${SEQ_LEN:-128}" --repeats "${REPEATS:-20}" --warmup 3 \
    --out benchmarks/results/speed-cuda.json
