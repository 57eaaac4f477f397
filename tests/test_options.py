"""One source for every option: each config field is a CLI option, a TOML key and a library
argument, with one validation."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from kompakt.cli import cli
from kompakt.deploy import BuildOptions, DeployConfig
from kompakt.errors import ConfigError
from kompakt.export import ExportConfig
from kompakt.pipeline.runner import parse_config
from kompakt.runtime_bench.bench import BenchConfig
from kompakt.search import SearchConfig
from kompakt.train import TrainConfig

COMMANDS = [
    ("train", TrainConfig),
    ("export", ExportConfig),
    ("deploy", DeployConfig),
    ("deploy", BuildOptions),
    ("bench", BenchConfig),
    ("search", SearchConfig),
]


@pytest.mark.parametrize("command, config", COMMANDS)
def test_every_config_field_is_an_option_of_its_command(command, config):
    params = {p.name for p in cli.commands[command].params}
    fields = {f.name for f in dataclasses.fields(config) if f.metadata.get("cli", True)}
    assert fields <= params, fields - params
    helps = {p.name: p.help for p in cli.commands[command].params if hasattr(p, "help")}
    assert all(helps[name] for name in fields), "every option says what it does"


@pytest.fixture
def seen(monkeypatch):
    """`kompakt train` records the TrainConfig it would train with, instead of training."""
    import kompakt.train

    configs = {}

    def fake_fit(config):
        configs["c"] = config
        return {}

    monkeypatch.setattr(kompakt.train, "fit", fake_fit)
    return configs


def test_cli_beats_toml_beats_defaults_and_unknown_keys_are_refused(tmp_path, seen):
    config = tmp_path / "t.toml"
    config.write_text('[train]\nepochs = 7\nlr = 0.2\nschedule = "step"\n')
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--config", str(config), "--lr", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    c = seen["c"]
    assert (c.epochs, c.lr, c.schedule, c.batch_size) == (7, 0.3, "step", None)
    config.write_text("[train]\nepoch = 7\n")
    result = runner.invoke(cli, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "unknown keys" in result.output and "epochs" in result.output
    config.write_text('[train]\nepochs = "seven"\n')
    result = runner.invoke(cli, ["train", "--config", str(config)])
    assert result.exit_code == 1 and "epochs must be a int" in result.output


@pytest.mark.parametrize(
    "config, message",
    [
        (lambda: TrainConfig(epochs=0), "epochs must be an integer >= 1"),
        (lambda: TrainConfig(optimizer="rmsprop"), "optimizer must be"),
        (lambda: ExportConfig(batch=0), "batch must be 'dynamic'"),
        (lambda: DeployConfig(calib_samples=-5), "calib_samples must be an integer >= 1"),
        (lambda: DeployConfig(int8_scheme="8bit"), "int8_scheme"),
        (lambda: BuildOptions(opt_level="max"), "opt_level"),
        (lambda: BenchConfig(batches="1,x"), "batches must be whole numbers"),
        (lambda: BenchConfig(batches=(0,)), "batches must be whole numbers >= 1"),
    ],
)
def test_configs_validate_themselves_at_construction(config, message):
    with pytest.raises(ConfigError, match=message):
        config()


def test_pipeline_sections_are_checked_against_the_stage_dataclasses():
    base = {"models": [{"name": "m", "model": "mlp"}]}
    parse_config(base)
    for bad, where in [
        ({"export": {"tt_mod": "auto"}}, "tt_mode"),
        ({"deploy": {"calib_sample": 3}}, "calib_samples"),
        ({"bench": {"batches": "1,x"}}, "batches"),
        ({"models": [{"name": "m", "epoch": 3}]}, "epochs"),
        ({"pipeline": {"lr": "fast"}}, "lr must be a float"),
        ({"benchmark": {}}, "unknown sections"),
    ]:
        with pytest.raises(ConfigError, match=where):
            parse_config({**base, **bad})


def test_toml_keys_may_use_dashes_like_the_cli(tmp_path, seen):
    config = tmp_path / "t.toml"
    config.write_text("[train]\nbatch-size = 32\nlabel_smoothing = 0.1\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (seen["c"].batch_size, seen["c"].label_smoothing, seen["c"].out) == (
        32,
        0.1,
        str(tmp_path),
    )
    parsed = parse_config({"models": [{"name": "m", "batch-size": 8}], "bench": {"warmup-s": 0.1}})
    assert parsed.models[0]["batch_size"] == 8 and parsed.bench["warmup_s"] == 0.1
