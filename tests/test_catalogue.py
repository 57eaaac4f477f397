"""`kompakt list`: the shipped catalogue equals the live registries and needs no torch."""

import json
import subprocess
import sys

import pytest

from kompakt.catalogue import KINDS, live_catalogue, shipped_catalogue


def test_shipped_catalogue_equals_the_live_registries():
    # fails when a dataset/model/layer is added without `python -m kompakt.catalogue`
    assert shipped_catalogue() == live_catalogue()


@pytest.mark.parametrize("kind", KINDS)
def test_list_answers_without_importing_torch_or_onnx(kind):
    code = (
        f"import sys; from kompakt.entry import main; main(['list', {kind!r}, '--json']); "
        "heavy = [m for m in ('torch', 'onnx') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    if kind == "backends":
        assert {row["name"] for row in rows} >= {"onnxruntime", "tensorrt", "openvino"}
    else:
        assert rows == shipped_catalogue()[kind] and rows


def test_old_listing_commands_are_aliases(tmp_path):
    from click.testing import CliRunner

    from kompakt.cli import cli

    runner = CliRunner()
    models = runner.invoke(cli, ["models", "list", "--json"])
    assert json.loads(models.output) == shipped_catalogue()["models"]
    layers = runner.invoke(cli, ["layers", "--json"])
    assert json.loads(layers.output) == shipped_catalogue()["layers"]
    backends = runner.invoke(cli, ["deploy", "--list-backends", "--json"])
    assert next(r["name"] for r in json.loads(backends.output)) == "onnxruntime"
    listing = runner.invoke(cli, ["list", "nonsense"])
    assert listing.exit_code == 2 and "nonsense" in listing.output
