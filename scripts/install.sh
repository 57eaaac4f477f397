#!/usr/bin/env bash
# Install kompakt into the Python interpreter given as $1, with the extras in $2 (e.g. "dev",
# "openvino", "gpu"); the `train` extra (the full tool) always, unless KOMPAKT_RUNTIME_ONLY=1. torch is installed first (KOMPAKT_TORCH, default the CPU build 2.13.0) so
# that no dependency pulls a multi-GB CUDA build by accident. Used by CI (scripts/setup_env.sh)
# and by both Dockerfiles, so the images install exactly what CI proves.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: install.sh PYTHON [EXTRAS]}
EXTRAS=${2:-}
# the full tool unless only the runtime is wanted (an app, a serving image)
if [ -z "${KOMPAKT_RUNTIME_ONLY:-}" ]; then
  EXTRAS="train${EXTRAS:+,$EXTRAS}"
fi
# exactly one ONNX Runtime wheel: the CPU one unless the GPU extra brings onnxruntime-gpu
case ",$EXTRAS," in
  *,gpu,*) ;;
  *) EXTRAS="${EXTRAS:+$EXTRAS,}cpu" ;;
esac
TORCH_SPEC=${KOMPAKT_TORCH:-torch==2.13.0}
"$PY" -m pip install --quiet --upgrade pip
if [ -z "${KOMPAKT_RUNTIME_ONLY:-}" ] && ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "$TORCH_SPEC"
fi
"$PY" -m pip install --quiet ${KOMPAKT_EDITABLE:+-e} ".[$EXTRAS]"
wheels=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -ciE '^onnxruntime(-gpu)?==' || true)
if [ "$wheels" -gt 1 ]; then
  echo "install.sh: onnxruntime and onnxruntime-gpu are both installed; keep one" >&2
  exit 1
fi
