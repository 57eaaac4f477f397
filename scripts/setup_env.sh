#!/usr/bin/env bash
# Create .venv (if missing) and install kompakt with everything the tests need, via the same
# scripts/install.sh the Docker images use. Re-runs are skipped while the inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KOMPAKT_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.kompakt-installed"
want="$(cat pyproject.toml scripts/setup_env.sh scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
KOMPAKT_EDITABLE=1 bash scripts/install.sh "$VENV/bin/python" "dev,bench"
echo "$want" > "$stamp"
