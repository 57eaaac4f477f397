"""Trust nothing that comes from a file: signatures, hashed-files-only, no code paths from
manifests, a --force that only replaces bundles, one-line errors, and a fuzz of the manifest."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from bundles import bundle
from clirun import kompakt
from kompakt.deploy import DeployConfig, build_bundle
from kompakt.errors import ConfigError, KompaktError
from kompakt.runtime import BundleError, load
from kompakt.runtime.backends import EngineFiles
from kompakt.runtime.signing import SignatureError, generate_key

X = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)


@pytest.fixture(scope="module")
def keys():
    return generate_key(), generate_key()


@pytest.fixture(scope="module")
def signed(lenet_onnx, tmp_path_factory, keys):
    (private, _), _ = keys
    return bundle(lenet_onnx, tmp_path_factory.mktemp("signed") / "b", sign_key=private)


def copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "kompakt.json").read_text())
    change(manifest)
    (path / "kompakt.json").write_text(json.dumps(manifest))


def test_a_signed_bundle_loads_with_its_key_and_not_with_another(signed, keys, monkeypatch):
    (_, public), (_, other) = keys
    with load(signed, trusted_keys=[public]) as engine:
        assert engine.run(X).shape == (2, 10)
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        load(signed, trusted_keys=[other])
    monkeypatch.setenv("KOMPAKT_TRUSTED_KEYS", other)  # the environment configures apps too
    with pytest.raises(SignatureError):
        load(signed)
    monkeypatch.setenv("KOMPAKT_TRUSTED_KEYS", public)
    load(signed).close()


def test_tampering_after_signing_is_caught_where_hashes_alone_would_not(signed, keys, tmp_path):
    (_, public), _ = keys
    tampered = copy(signed, tmp_path)
    edit_manifest(tampered, lambda m: m["class_names"].reverse())  # hashes still all match
    load(tampered).close()  # without keys: hashes protect against corruption only
    with pytest.raises(SignatureError, match="changed after signing"):
        load(tampered, trusted_keys=[public])


def test_unsigned_bundles_are_refused_when_keys_are_configured(lenet_bundle, keys):
    (_, public), _ = keys
    with pytest.raises(SignatureError, match="unsigned"):
        load(lenet_bundle, trusted_keys=[public])


@pytest.mark.slow
def test_cli_keygen_sign_and_verify(lenet_onnx, tmp_path):
    assert kompakt("keygen", "-o", tmp_path / "key").returncode == 0
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    out = tmp_path / "b"
    proc = kompakt("deploy", lenet_onnx, "-o", out, "--sign-key", tmp_path / "key")
    assert proc.returncode == 0, proc.stderr
    ok = kompakt("verify", out, "--trusted-key", tmp_path / "key.pub", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signed_by"] == (tmp_path / "key.pub").read_text().strip()
    kompakt("keygen", "-o", tmp_path / "other")
    bad = kompakt("verify", out, "--trusted-key", tmp_path / "other.pub")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_artifact_files_must_be_hashed_and_symlinks_are_refused(lenet_bundle, tmp_path):
    unlisted = copy(lenet_bundle, tmp_path)
    edit_manifest(unlisted, lambda m: m["artifact_files"].append("extra.bin"))
    (unlisted / "extra.bin").write_bytes(b"\x00")
    with pytest.raises(BundleError, match="not among the hashed files"):
        load(unlisted)
    linked = tmp_path / "linked"
    shutil.copytree(lenet_bundle, linked)
    (linked / "notes.txt").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match="symlink"):
        load(linked)


@pytest.mark.parametrize(
    "option", ["trt_extra_plugin_lib_paths", "trt_engine_decryption_lib_path", "anything_new"]
)
def test_provider_options_that_could_load_code_are_refused(lenet_bundle, option):
    from kompakt.runtime.backends.onnxruntime import OnnxRuntimeTensorrtRunner

    manifest = json.loads((lenet_bundle / "kompakt.json").read_text())
    manifest["backend"] = "onnxruntime-tensorrt"
    manifest["backend_options"] = {"provider_options": {option: "/tmp/evil.so"}}
    with pytest.raises(BundleError, match="does not allow"):
        OnnxRuntimeTensorrtRunner(EngineFiles.read(lenet_bundle, manifest), manifest, None)


def test_force_replaces_only_bundles(lenet_onnx, lenet_bundle, tmp_path, monkeypatch):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    note = tmp_path / "afile.txt"
    note.write_text("keep me")
    for target, reason in ((mine, "not a kompakt bundle"), (note, "it is a file")):
        with pytest.raises(ConfigError, match=reason):
            build_bundle(lenet_onnx, target, DeployConfig(force=True))
    assert (mine / "thesis.tex").read_text() == "years of work" and note.read_text() == "keep me"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="working directory"):
        build_bundle(lenet_onnx, Path("."), DeployConfig(force=True))
    with pytest.raises(ConfigError, match="contains the source model"):
        build_bundle(lenet_onnx, lenet_onnx.parent, DeployConfig(force=True))
    proc = kompakt("deploy", lenet_onnx, "-o", mine, "--force")
    assert proc.returncode == 1 and "refusing to replace" in proc.stderr
    again = copy(lenet_bundle, tmp_path)
    build_bundle(lenet_onnx, again, DeployConfig(force=True))  # a bundle: replaced
    names = sorted(p.name for p in tmp_path.iterdir() if ".retired-" not in p.name)
    assert names == ["afile.txt", "copy", "mydata"]


def test_an_interrupted_replacement_is_reported_and_repaired(lenet_onnx, lenet_bundle, tmp_path):
    out = copy(lenet_bundle, tmp_path)
    out.rename(tmp_path / ".copy.old")  # the crash between the two renames
    with pytest.raises(BundleError, match="replacement of this bundle was interrupted"):
        load(out)
    build_bundle(lenet_onnx, out, DeployConfig(force=True))
    assert not (tmp_path / ".copy.old").exists()
    load(out).close()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["files"]["model.onnx"].update(path="model\x00.onnx"), "not a valid"),
        (lambda m: m["inputs"][0].update(dtype="foo"), "is not one of"),
        (lambda m: m.update(inputs=[]), "at least 1"),
        (lambda m: m.update(artifact="../../etc/passwd"), "not among the hashed files"),
        (lambda m: m["files"]["model.onnx"].update(path="/etc/hostname"), "leaves the bundle"),
    ],
)
def test_hostile_manifests_give_one_line_errors(lenet_bundle, tmp_path, change, message):
    bad = copy(lenet_bundle, tmp_path)
    edit_manifest(bad, change)
    with pytest.raises(BundleError, match=message):
        load(bad)


def test_deeply_nested_json_and_uppercase_hashes(lenet_bundle, tmp_path):
    deep = copy(lenet_bundle, tmp_path)
    (deep / "kompakt.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        load(deep)
    upper = tmp_path / "upper"
    shutil.copytree(lenet_bundle, upper)
    edit_manifest(
        upper, lambda m: [f.update(sha256=f["sha256"].upper()) for f in m["files"].values()]
    )
    load(upper).close()  # a hash is a hash in either case


def test_empty_batches_and_bad_onnx_files_are_one_line_errors(lenet_bundle, tmp_path):
    with load(lenet_bundle) as engine, pytest.raises(KompaktError, match="empty batch"):
        engine.run(np.zeros((0, 1, 8, 8), np.float32))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    unknown = tmp_path / "unknown.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOp", ["input"], ["logits"])],
        "g",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(onnx.helper.make_model(graph), unknown)
    for path in (empty, unknown):
        proc = kompakt("deploy", path, "-o", tmp_path / f"{path.stem}-b")
        assert proc.returncode == 1, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_readers_never_see_a_half_replaced_bundle(lenet_onnx, tmp_path):
    """Engines load in a loop while deploy --force replaces the bundle three times: every load
    gets a complete bundle (the old or the new), never a missing or mismatched file."""
    import threading

    from kompakt.deploy.bundle import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this OS or filesystem cannot swap two directories atomically")
    out = tmp_path / "live"
    build_bundle(lenet_onnx, out, DeployConfig())
    stop, errors, loads = threading.Event(), [], [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                with load(out) as engine:
                    engine.run(X)
                loads[0] += 1
            except Exception as error:  # any failure is a half-done replacement
                errors.append(f"{type(error).__name__}: {error}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            build_bundle(lenet_onnx, out, DeployConfig(force=True))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert loads[0] > 10
    retired = list(tmp_path.glob(".live.retired-*"))
    assert len(retired) == 3 and all((r / "kompakt.json").is_file() for r in retired)


def _mutations(manifest: dict, rng: random.Random):
    """One random change to a manifest: a value replaced by a value of another kind, a key
    deleted, or a string edited."""
    paths = []

    def walk(node, trail):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*trail, k))
                walk(v, (*trail, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append((*trail, i))
                walk(v, (*trail, i))

    walk(manifest, ())
    trail = rng.choice(paths)
    parent = manifest
    for key in trail[:-1]:
        parent = parent[key]
    last = trail[-1]
    choice = rng.randrange(4)
    if choice == 0 and isinstance(parent, dict):
        del parent[last]
    elif choice == 1:
        parent[last] = rng.choice(
            [
                *(None, -1, 0, 1e308, "", "x" * 5, [], {}, True, "../x", "\ud800", "n" * 300),
                *({"dot": {"a": 1}}, {"scheme": [1]}, [[0.0, 0.0], [0.0, 0.0]]),  # records
            ]
        )
    elif choice == 2 and isinstance(parent[last], str):
        value = parent[last]
        parent[last] = value[: rng.randrange(len(value) + 1)] + rng.choice(["/", "\x00", "A", ""])
    else:
        parent[last] = rng.choice([[1], {"a": 1}, "model.onnx", 3])


def test_fuzzed_manifests_load_the_same_outputs_or_fail_with_a_kompakt_error(
    lenet_bundle, tmp_path
):
    """Hundreds of seeded mutations: `load` + `run` either give the good bundle's outputs or
    raise KompaktError; never another exception, never different numbers."""
    with load(lenet_bundle) as engine:
        want = engine.run(X)
    good = json.loads((lenet_bundle / "kompakt.json").read_text())
    work = copy(lenet_bundle, tmp_path)
    rng = random.Random(1234)
    outcomes = {"same": 0, "refused": 0}
    for _ in range(300):
        manifest = json.loads(json.dumps(good))
        for _ in range(rng.randint(1, 3)):
            _mutations(manifest, rng)
        (work / "kompakt.json").write_text(json.dumps(manifest))
        try:
            with load(work) as engine:
                got = engine.run(X)
        except KompaktError:
            outcomes["refused"] += 1
            continue
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        outcomes["same"] += 1
    assert outcomes["refused"] > 50 and outcomes["same"] > 10, outcomes


def _rehash(bundle_dir: Path, name: str) -> None:
    """Update the manifest's size and sha256 of `name` (an unsigned bundle edited on purpose)."""
    import hashlib

    def change(m):
        data = (bundle_dir / m["files"][name]["path"]).read_bytes()
        m["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    edit_manifest(bundle_dir, change)


def test_golden_samples_are_read_by_their_hashed_path_never_from_a_fifo(lenet_bundle, tmp_path):
    """The golden check opens the file the manifest hashes (its entry's path), once, as a
    regular file: a key renamed to name a FIFO in the bundle cannot make verify hang or read
    unhashed data."""
    import os

    out = copy(lenet_bundle, tmp_path)
    manifest = json.loads((out / "kompakt.json").read_text())
    name = manifest["golden"]["file"]

    def rename_key(m):
        m["files"]["pipe"] = m["files"].pop(name)
        m["golden"]["file"] = "pipe"

    edit_manifest(out, rename_key)
    forged = np.zeros(1)
    np.savez(out / "pipe", inputs=forged, reference=forged)  # an unhashed file by that name
    (out / "pipe.npz").rename(out / "pipe")
    with pytest.warns(RuntimeWarning, match="pipe is not listed"), load(out) as engine:
        result = engine.verify()  # reads golden.npz (the hashed path), not the forged file
    assert result["ok"] and result["samples"] > 0
    (out / "pipe").unlink()
    os.mkfifo(out / "pipe")  # a FIFO anywhere in a bundle is refused before anything opens it
    with pytest.raises(BundleError, match="pipe is not a regular file"):
        load(out)


def test_golden_samples_that_inflate_or_do_not_fit_the_model_are_refused(lenet_bundle, tmp_path):
    """A golden file declaring more than the limit is refused before inflating; references of
    the wrong shape or zero samples are a KompaktError, not a numpy traceback."""
    import time

    from kompakt.runtime.files import limits

    cases = {
        "inflates": (np.zeros((2, 1, 8, 8), np.float32), np.zeros((10_000_000, 10), np.float32)),
        "wrong shape": (np.zeros((4, 1, 8, 8), np.float32), np.zeros((4, 5), np.float32)),
        "no samples": (np.zeros((0, 1, 8, 8), np.float32), np.zeros((0, 10), np.float32)),
    }
    for label, (inputs, reference) in cases.items():
        out = copy(lenet_bundle, tmp_path / label.replace(" ", "-"))
        manifest = json.loads((out / "kompakt.json").read_text())
        name = manifest["golden"]["file"]
        path = out / manifest["files"][name]["path"]
        np.savez_compressed(path, inputs=inputs, reference=reference)
        _rehash(out, name)
        start = time.perf_counter()
        with load(out) as engine, pytest.raises(KompaktError) as caught:
            engine.verify()
        assert time.perf_counter() - start < 5, label
        if label == "inflates":
            assert "would inflate" in str(caught.value)
            assert reference.nbytes > limits().golden_bytes
        else:
            assert "golden samples hold" in str(caught.value), label
