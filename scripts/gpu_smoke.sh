#!/usr/bin/env bash
# GPU smoke test: build TensorRT and ORT-TensorRT bundles of two zoo models, bench them against
# ONNX Runtime CPU, and run the gpu/tensorrt tests with KOMPAKT_REQUIRE_GPU=1 (so a missing GPU
# fails instead of skipping). Run on a machine with an NVIDIA GPU, e.g. in docker/Dockerfile.gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_smoke}
mkdir -p "$OUT"
python -c "import torch, tensorrt; assert torch.cuda.is_available(), 'no CUDA GPU'; print('TensorRT', tensorrt.__version__, 'on', torch.cuda.get_device_name(0))"
for model in lenet5 garipov-conv; do
  kompakt train --model "$model" --data digits --epochs 2 --out "$OUT/$model" --quiet
  kompakt export "$OUT/$model/best.pt" -o "$OUT/$model.onnx"
  kompakt deploy "$OUT/$model.onnx" -o "$OUT/$model-cpu" --backend onnxruntime --force
  kompakt deploy "$OUT/$model.onnx" -o "$OUT/$model-trt-fp16" --backend tensorrt --precision fp16 --force
  kompakt deploy "$OUT/$model.onnx" -o "$OUT/$model-ort-trt" --backend onnxruntime-tensorrt --force
  kompakt bench "$OUT/$model-cpu" "$OUT/$model-trt-fp16" "$OUT/$model-ort-trt" \
      --data digits --ckpt "$OUT/$model/best.pt" --report "$OUT/report-$model"
done
KOMPAKT_REQUIRE_GPU=1 python -m pytest -m "gpu or tensorrt" -ra
