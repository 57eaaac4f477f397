#!/usr/bin/env bash
# Install kompakt into the Python interpreter given as $1, with the extras in $2 (e.g. "dev",
# "openvino", "gpu"). torch is installed first (KOMPAKT_TORCH, default the CPU build 2.13.0) so
# that no dependency pulls a multi-GB CUDA build by accident. Used by CI (scripts/setup_env.sh)
# and by both Dockerfiles, so the images install exactly what CI proves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: install.sh PYTHON [EXTRAS]}
EXTRAS=${2:-}
TORCH_SPEC=${KOMPAKT_TORCH:-torch==2.13.0}
"$PY" -m pip install --quiet --upgrade pip
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
if [ -n "$EXTRAS" ]; then
  "$PY" -m pip install --quiet ${KOMPAKT_EDITABLE:+-e} ".[$EXTRAS]"
else
  "$PY" -m pip install --quiet ${KOMPAKT_EDITABLE:+-e} .
fi
