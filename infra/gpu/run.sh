#!/usr/bin/env bash
# The whole GPU job in one command, for a lent machine that runs one command of at most
# 10 minutes with no network but package registries: install (from wheels brought
# along when WHEELS is set), ingest celeba-6k at 128x128, train `paper` on its train
# split for MINUTES, evaluate on its test split, measure encode/train images/s, and
# write the numbers and fp16 weights to OUT. tests/test_gpu_script.py rehearses every
# step on the CPU with a tiny budget, so the one GPU run cannot fail on a typo.
#
#   OUT=gpu-out DATA=../shared/data/celeba-6k MINUTES=6 infra/gpu/run.sh
#
# Settings (environment, defaults in brackets): OUT (required), DATA
# [../shared/data/celeba-6k], MINUTES [6], PRESET [paper], SIZE [128], CROP [178],
# SPLIT [identity:0.8], LIMIT [0: every image], DEVICE [auto], PRECISION [auto],
# EVAL_ITEMS [200], MEASURE_SECONDS [5: per throughput measurement], WHEELS [unset:
# use the running environment], PYTHON [python3]. Relative paths are taken from the
# repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:?set OUT to the output folder}
DATA=${DATA:-../shared/data/celeba-6k}
MINUTES=${MINUTES:-6}
PRESET=${PRESET:-paper}
SIZE=${SIZE:-128}
CROP=${CROP:-178}
SPLIT=${SPLIT:-identity:0.8}
LIMIT=${LIMIT:-0}
DEVICE=${DEVICE:-auto}
PRECISION=${PRECISION:-auto}
EVAL_ITEMS=${EVAL_ITEMS:-200}
MEASURE_SECONDS=${MEASURE_SECONDS:-5}
PY=${PYTHON:-python3}

step() { echo "[$(date +%T)] $*"; }
mkdir -p "$OUT"
STAGING="$OUT/images-staging"  # the ingested faces, deleted at the end

if [ -n "${WHEELS:-}" ]; then
    step "installing imambig from the wheels in $WHEELS (offline)"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" -e .
fi
step "environment"
"$PY" - <<'EOF' | tee "$OUT/device.txt"
import platform, torch
print("torch", torch.__version__, "python", platform.python_version())
print("cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine())
EOF

step "ingesting $DATA at ${SIZE}x${SIZE}"
limit=()
[ "$LIMIT" != 0 ] && limit=(--limit "$LIMIT")
"$PY" -m imambig ingest "$DATA" --crop "$CROP" --size "$SIZE" --split "$SPLIT" \
    "${limit[@]}" --out "$STAGING" --overwrite

step "training $PRESET for $MINUTES minutes"
"$PY" -m imambig train --images "$STAGING" --preset "$PRESET" --minutes "$MINUTES" \
    --epochs 1000 --loss mse --ema 0.999 --precision "$PRECISION" --device "$DEVICE" \
    --out "$OUT/model" | tee "$OUT/train.log"

step "evaluating on the test split and measuring images/s"
"$PY" benchmarks/gpu_report.py --model "$OUT/model" --images "$STAGING" --out "$OUT" \
    --device "$DEVICE" --precision "$PRECISION" --eval-items "$EVAL_ITEMS" \
    --seconds "$MEASURE_SECONDS"

rm -rf "$STAGING"  # the faces stay on the machine that holds them
step "done: $OUT/numbers.json, $OUT/model-fp16.safetensors"
