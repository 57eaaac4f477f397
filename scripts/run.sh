#!/usr/bin/env bash
# The main job: `kompakt pipeline` with the packaged default config (train dense / TT / MetaHead
# models on the embedded mnist5k digits, export, deploy to ONNX Runtime FP32+INT8 and OpenVINO,
# `kompakt optimize` the dense model, benchmark side by side). About 12 minutes on 2 cores;
# re-runs reuse finished stages.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${KOMPAKT_VENV:-.venv}
"$VENV/bin/kompakt" pipeline --out "${KOMPAKT_OUT:-runs/pipeline}" "$@"
