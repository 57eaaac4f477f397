"""Embed a kompakt bundle in an app: load it, classify images. Needs numpy + the backend only.

Usage: python examples/classify.py BUNDLE_DIR
(classifies four synthetic images shaped like the bundle's input; pass your own arrays instead)
"""

import sys

import numpy as np

import kompakt.runtime

with kompakt.runtime.load(sys.argv[1]) as engine:
    _, channels, height, width = engine.inputs[0].shape
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (height, width, channels), dtype=np.uint8) for _ in range(4)]
    for i, prediction in enumerate(engine.predict(images, top_k=2)):
        print(f"image {i} -> {prediction.label} ({prediction.score:.2f})")
