import json

import pytest
from click.testing import CliRunner

from clirun import kompakt
from kompakt import __version__
from kompakt.cli import cli
from kompakt.layers import LAYERS


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_version_and_help():
    assert __version__ in invoke("--version").output
    result = invoke("--help")
    assert result.exit_code == 0
    for command in (
        "layers",
        "tt-plan",
        "train",
        "inspect",
        "export",
        "lint-trt",
        "deploy",
        "predict",
    ):
        assert command in result.output
        assert invoke(command, "--help").exit_code == 0


def test_layers_lists_the_registry():
    listed = json.loads(invoke("layers", "--json").output)
    assert sorted(listed) == LAYERS.names()


def test_tt_plan_reports_novikov_numbers():
    result = invoke(
        "tt-plan",
        "25088",
        "4096",
        "--in-modes",
        "2,7,8,8,7,4",
        "--out-modes",
        "4x4x4x4x4x4",
        "--ranks",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["core_params"] == 2016
    assert plan["compression"] == pytest.approx(50972.44)


def test_library_errors_are_one_line_and_exit_1():
    # run the real console entry point so stderr and the exit code are what a user sees
    proc = kompakt("tt-plan", "25088", "4096", "--in-modes", "2,7,8")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "multiply to 112, expected 25088" in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback():
    proc = kompakt("--debug", "tt-plan", "10", "10", "--ranks", "0")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
