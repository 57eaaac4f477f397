import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from clirun import kompakt, python
from kompakt.errors import ConfigError, KompaktError, ShapeError
from kompakt.runtime import BundleError, load, read_manifest, validate_manifest

ROOT = Path(__file__).resolve().parents[2]


def samples(n=4):
    return np.random.default_rng(0).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_import_is_lean_even_after_running_a_bundle(lenet_bundle):
    code = (
        "import sys, numpy as np, kompakt.runtime as rt\n"
        f"e = rt.load({str(lenet_bundle)!r}); e.run(np.zeros((1, 1, 8, 8), np.float32))\n"
        "heavy = ('torch', 'click', 'openvino', 'tensorrt', 'onnx')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_run_matches_the_source_onnx_and_specs_describe_it(lenet_bundle):
    with load(lenet_bundle) as engine:
        assert engine.inputs[0].shape == ("batch", 1, 8, 8)
        assert engine.inputs[0].dtype == np.float32 and engine.outputs[0].shape == ("batch", 10)
        x = samples()
        source = ort.InferenceSession(str(lenet_bundle / "model.onnx"))
        np.testing.assert_allclose(engine.run(x), source.run(None, {"input": x})[0], atol=1e-5)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((2, 1, 8, 8), np.float64), "must be float32, got float64"),
        (np.zeros((1, 8, 8), np.float32), r"must have rank 4 .* got shape \(1, 8, 8\)"),
        (np.zeros((2, 3, 8, 8), np.float32), "axis 1 must be 1"),
        (np.zeros((65, 1, 8, 8), np.float32), "batch 65 is above this engine's max batch 64"),
        ([[1.0]], "expected a numpy array"),
    ],
)
def test_bad_inputs_are_clear_errors(lenet_bundle, x, message):
    with load(lenet_bundle) as engine, pytest.raises(ShapeError, match=message):
        engine.run(x)


def test_nan_inputs_are_refused_when_asked(lenet_bundle):
    x = samples(1)
    x[0, 0, 0, 0] = np.nan
    with load(lenet_bundle, reject_nan=True) as engine, pytest.raises(ShapeError, match="NaN"):
        engine.run(x)
    engine = load(lenet_bundle)
    engine.close()
    with pytest.raises(KompaktError, match="closed"):
        engine.run(samples(1))


def test_predict_applies_the_bundle_preprocessing_bit_for_bit(lenet_bundle):
    with load(lenet_bundle) as engine:
        pre = engine.manifest["preprocessing"]
        assert pre["scale"] == 1 / 255  # digits are stored as 8-bit pixel values
        images = np.random.default_rng(1).integers(0, 256, (5, 8, 8), dtype=np.uint8)
        mean, std = np.float32(pre["mean"][0]), np.float32(pre["std"][0])
        expected = (images[:, None].astype(np.float32) * np.float32(1 / 255) - mean) / std
        x = engine.preprocess(list(images))
        np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
        logits = engine.run(x)
        exp = np.exp(logits - logits.max(1, keepdims=True))
        probs = exp / exp.sum(1, keepdims=True)
        predictions = engine.predict(list(images), top_k=3)
        for row, prediction in zip(probs, predictions, strict=True):
            assert prediction.index == int(row.argmax())
            assert prediction.score == float(row.max())  # the same numbers, not close ones
            assert len(prediction.top_k) == 3 and prediction.label in engine.class_names
        assert [p.index for p in engine.predict(images)] == [p.index for p in predictions]
        with pytest.raises(ShapeError, match="resize it first"):
            engine.predict([np.zeros((10, 8), np.uint8)])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_pixels_and_never_reports_a_nan_score(lenet_bundle, bad):
    image = np.ones((8, 8), np.float32)
    image[3, 4] = bad
    with load(lenet_bundle) as engine:
        with pytest.raises(ShapeError, match=r"image\(s\) \[1\] contain NaN or infinite"):
            engine.predict([np.ones((8, 8), np.float32), image])
        with pytest.raises(ShapeError, match="non-finite scores"):  # allowed in, still refused
            engine.predict([image], allow_nonfinite=True)


@pytest.mark.parametrize("top_k", [0, -1, 1.5, True])
def test_predict_top_k_must_be_a_positive_integer(lenet_bundle, top_k):
    with load(lenet_bundle) as engine, pytest.raises(ConfigError, match="top_k"):
        engine.predict([np.ones((8, 8), np.uint8)], top_k=top_k)


@pytest.mark.parametrize("images", [[], np.zeros((0, 8, 8), np.uint8), "digit.png", [["a"]]])
def test_predict_on_empty_or_foreign_input_is_a_clear_error(lenet_bundle, images):
    with load(lenet_bundle) as engine, pytest.raises(ShapeError):
        engine.predict(images)


def test_calibration_and_validation_use_the_bundles_preprocessing(lenet_onnx):
    """The arrays INT8 calibrates on are the raw train images through the same function
    predict applies: per-channel mean ~0 and std ~1 (the train statistics)."""
    import onnx

    from kompakt.data import load_dataset
    from kompakt.deploy.bundle import _metadata, _splits
    from kompakt.runtime.preprocessing import Preprocessing

    meta = _metadata(onnx.load(lenet_onnx))
    splits = _splits("digits", None, ["batch", 1, 8, 8], meta)
    data = load_dataset("digits")
    pre = Preprocessing.from_dict(meta["preprocessing"])
    assert (pre.mean, pre.std, pre.scale) == (data.info.mean, data.info.std, data.info.scale)
    np.testing.assert_array_equal(splits["train"], data.x["train"].numpy())  # bit for bit
    assert abs(float(splits["train"].mean())) < 1e-3
    assert abs(float(splits["train"].std()) - 1) < 1e-2


def copy_bundle(src, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def test_tampered_file_is_refused_with_its_name(lenet_bundle, tmp_path):
    bundle = copy_bundle(lenet_bundle, tmp_path)
    artefact = bundle / "model.optimized.onnx"
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.optimized\.onnx does not match its sha256"):
        load(bundle)


def test_truncated_file_is_refused(lenet_bundle, tmp_path):
    bundle = copy_bundle(lenet_bundle, tmp_path)
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"model\.onnx has 100 bytes.*truncated"):
        load(bundle)


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/passwd", "sub/../../x"])
def test_paths_leaving_the_bundle_are_refused(lenet_bundle, tmp_path, path):
    bundle = copy_bundle(lenet_bundle, tmp_path)
    manifest = json.loads((bundle / "kompakt.json").read_text())
    manifest["files"]["evil"] = {"path": path, "sha256": "0" * 64, "bytes": 1}
    (bundle / "kompakt.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="leaves the bundle directory"):
        read_manifest(bundle)


def test_manifest_schema_is_enforced(lenet_bundle):
    manifest = json.loads((lenet_bundle / "kompakt.json").read_text())
    validate_manifest(manifest)
    broken = {k: v for k, v in manifest.items() if k != "inputs"}
    with pytest.raises(BundleError, match="missing required key 'inputs'"):
        validate_manifest(broken)
    with pytest.raises(BundleError, match="precision"):
        validate_manifest({**manifest, "precision": "int4"})
    with pytest.raises(BundleError, match="not a kompakt bundle"):
        load(lenet_bundle.parent)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_one_engine_shared_by_8_threads(lenet_bundle):
    engine = load(lenet_bundle)
    inputs = [samples(1) + i for i in range(8)]
    expected = [engine.run(x) for x in inputs]
    for x in inputs:  # warm-up
        for _ in range(50):
            engine.run(x)
    before = rss_kib()
    errors = []

    def work(i):
        try:
            for _ in range(500):
                np.testing.assert_allclose(engine.run(inputs[i]), expected[i], rtol=1e-6)
        except Exception as error:  # collected, reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert rss_kib() <= before * 1.05
    engine.close()


def test_example_app_classifies_images(lenet_bundle):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "classify.py"), str(lenet_bundle)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("->") == 4


def test_cli_predict_on_image_files(lenet_bundle, tmp_path):
    from PIL import Image

    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(path)
        paths.append(str(path))
    proc = kompakt("predict", lenet_bundle, *paths, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["image"] for r in rows] == paths and all(0 <= r["score"] <= 1 for r in rows)


def test_predict_batches_more_images_than_the_engine_takes(lenet_onnx, tmp_path):
    from bundles import bundle
    from kompakt.deploy import BuildOptions

    out = bundle(lenet_onnx, tmp_path / "b4", options=BuildOptions(max_batch=4))
    images = list(np.random.default_rng(0).integers(0, 17, (10, 8, 8), dtype=np.uint8))
    with load(out) as engine:
        assert engine.max_batch == 4
        assert len(engine.predict(images)) == 10
        with pytest.raises(ShapeError, match="above this engine's max batch 4"):
            engine.run(engine.preprocess(images))


@pytest.mark.slow
def test_dataset_samples_written_as_png_predict_like_the_dataset(lenet_bundle, tmp_path):
    """`kompakt data samples` + `kompakt predict`: the PNG files go through the same
    preprocessing as the dataset, so predicting them equals running the dataset's tensors."""
    from kompakt.data import load_dataset

    proc = kompakt("data", "samples", "digits", "-n", "5", "-o", tmp_path / "png")
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "png").glob("*.png"))
    assert len(files) == 5 and files[0].name.startswith("0000_")
    proc = kompakt("predict", lenet_bundle, *files, "--json")
    assert proc.returncode == 0, proc.stderr
    predicted = [row["index"] for row in json.loads(proc.stdout)]
    data = load_dataset("digits")
    with load(lenet_bundle) as engine:
        direct = engine.run(data.x["test"][:5].numpy()).argmax(1).tolist()
    assert predicted == direct


def test_rgb_calibration_on_embedded_synthetic_data(tmp_path):
    import torch

    from bundles import bundle
    from kompakt.export import export_onnx

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 30 * 30, 4),
    ).eval()
    export_onnx(model, tmp_path / "rgb.onnx", example_input=torch.randn(2, 3, 32, 32))
    out = bundle(
        tmp_path / "rgb.onnx",
        tmp_path / "q",
        precision="int8",
        calib_data="synthetic:channels=3,image_size=32",
        calib_samples=32,
    )
    manifest = json.loads((out / "kompakt.json").read_text())
    assert manifest["quantization"]["calib_samples"] == 32
