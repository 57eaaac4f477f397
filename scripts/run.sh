#!/usr/bin/env bash
# The main job. Until `kompakt pipeline` lands (issue: bench/pipeline), this runs the TT-linear
# benchmark: dense nn.Linear vs TTLinear, side by side, results in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${KOMPAKT_VENV:-.venv}
"$VENV/bin/python" benchmarks/tt_linear.py "$@"
