"""Measurement: latency, throughput, memory, accuracy, parity (see timing.py)."""
