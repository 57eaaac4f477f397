#!/usr/bin/env bash
# The test command: set up the environment, lint, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${KOMPAKT_VENV:-.venv}
"$VENV/bin/ruff" check src tests benchmarks examples
"$VENV/bin/ruff" format --check src tests benchmarks examples
"$VENV/bin/python" -m pytest --durations=15 "$@"
