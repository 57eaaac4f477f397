#!/usr/bin/env bash
# The one-command proof on a real NVIDIA GPU (~5 minutes), e.g. inside docker/Dockerfile.gpu:
#   bash scripts/gpu_smoke.sh            # OUT=runs/gpu_smoke by default
# Steps (each PASS/FAIL, printed as one table and written to $OUT/gpu_smoke.json):
#   preflight: one ONNX Runtime wheel, ort.get_device() == GPU, CUDA + TensorRT providers,
#     TensorRT major of the `tensorrt` module == the one ORT's EP links (10), pytest importable;
#   deploy matrix at CLI defaults: tensorrt x {fp32, fp16, int8}, onnxruntime-tensorrt x
#     {fp32, fp16, int8}, onnxruntime-cuda {fp32, fp16}; placement recorded, no compute on CPU;
#   batch edges: 1 and the profile max run, max+1 is a clear error; a static-batch export;
#   parity vs ORT CPU: fp32 <= 2e-3 (TF32), fp16 <= 2e-2, int8 top-1 agreement >= 0.97;
#   8 threads x 50 runs equal single-thread results with flat GPU memory;
#   relocate a bundle and reload without a rebuild; a foreign plan is refused;
#   kompakt bench at batch 32: TensorRT no slower than ORT-CUDA;
#   KOMPAKT_REQUIRE_GPU=1 pytest -m "gpu or tensorrt".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_smoke}
exec "$PYTHON" scripts/gpu_smoke.py --out "$OUT" "$@"
