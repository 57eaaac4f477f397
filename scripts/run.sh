#!/usr/bin/env bash
# The main job. Until `kompakt pipeline` lands (bench/pipeline issue), this trains the TT-conv-TT-fc
# model on the embedded mnist5k data (about a minute on 2 cores) and prints its per-layer table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${KOMPAKT_VENV:-.venv}
OUT=${KOMPAKT_OUT:-runs/main}
"$VENV/bin/kompakt" train --model garipov-tt-conv-tt-fc --data mnist5k --epochs 5 --out "$OUT" "$@"
"$VENV/bin/kompakt" inspect "$OUT/best.pt"
