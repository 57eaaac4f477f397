"""Fakes of GPU SDKs (TensorRT, cuda-python) that follow the documented APIs and compute real
results on the CPU, so every GPU code path of kompakt runs in CI. Never a GPU measurement."""
