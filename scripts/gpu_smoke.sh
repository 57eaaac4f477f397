#!/usr/bin/env bash
# The one-command proof on a real NVIDIA GPU (~5 minutes), e.g. inside docker/Dockerfile.gpu:
#   bash scripts/gpu_smoke.sh            # OUT=runs/gpu_smoke by default
# Steps (each PASS/FAIL, printed as one table and written to $OUT/gpu_smoke.json):
#   preflight: one ONNX Runtime wheel, ort.get_device() == GPU, the CUDA and TensorRT EPs each
#     loaded for real by a one-node session, TensorRT major == the one ORT's EP links (10);
#   deploy matrix at CLI defaults: tensorrt x {fp32, fp16, int8}, onnxruntime-tensorrt x
#     {fp32, fp16, int8}, onnxruntime-cuda {fp32, fp16}; placement recorded, no compute on CPU;
#   batch edges: 1 and the profile max run, max+1 is a clear error; a static-batch export;
#   parity vs ORT CPU on real digits: fp32 <= 2e-3 (TF32), fp16 <= 2e-2, int8 top-1 >= 0.97;
#   8 threads x 50 runs equal single-thread results with flat GPU memory;
#   relocate a bundle and reload without a rebuild; a foreign plan is refused;
#   relocate an onnxruntime-tensorrt bundle (its engine cache reused) and run a read-only copy;
#   a TT-conv-TT-fc and a MetaHead model (mnist5k) on TensorRT FP32 / FP16 vs ORT CPU;
#   kompakt bench at batch 32 (reported; no speed claim on an 8x8 LeNet);
#   KOMPAKT_REQUIRE_GPU=1 pytest -m "gpu or tensorrt".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_smoke}
exec "$PYTHON" scripts/gpu_smoke.py --out "$OUT" "$@"
