"""The `kompakt` command: a thin click layer over the library.

Each command calls one public function. A `KompaktError` becomes one line on stderr and exit
code 1; `kompakt --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import json
import sys

import click

from kompakt import __version__
from kompakt.errors import ConfigError, KompaktError


class KompaktGroup(click.Group):
    """A click group that turns library errors into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KompaktError as error:
            if (ctx.obj or {}).get("debug"):
                raise
            click.echo(f"kompakt: error: {error}", err=True)
            ctx.exit(1)


@click.group(cls=KompaktGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kompakt")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """kompakt: train compressed image models, export them to ONNX, deploy and measure them."""
    ctx.ensure_object(dict)["debug"] = debug


def _int_list(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").replace("*", ",").split(",") if v)
    except ValueError:
        raise ConfigError(f"--{name} expects integers separated by commas, got {text!r}") from None


@cli.command("layers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def layers_command(as_json: bool) -> None:
    """List the compressed layers kompakt provides."""
    from kompakt.layers import LAYERS

    rows = {name: LAYERS.help(name) for name in LAYERS.names()}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(map(len, rows))
    for name, text in rows.items():
        click.echo(f"{name:<{width}}  {text}")


@cli.command("tt-plan")
@click.argument("in_features", type=int)
@click.argument("out_features", type=int)
@click.option("--in-modes", help="Factorisation of IN_FEATURES, e.g. 2,7,8,8,7,4.")
@click.option("--out-modes", help="Factorisation of OUT_FEATURES, e.g. 4,4,4,4,4,4.")
@click.option("--ranks", default="8", show_default=True, help="Rank cap, or one rank per bond.")
@click.option("--batch", default=1, show_default=True, help="Batch size for the cost model.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def tt_plan_command(
    in_features: int,
    out_features: int,
    in_modes: str | None,
    out_modes: str | None,
    ranks: str,
    batch: int,
    as_json: bool,
) -> None:
    """Plan a TT-linear layer: modes, ranks, parameters, multiply-adds, compression."""
    from kompakt.layers.tt import plan_tt_linear

    rank_list = _int_list(ranks, "ranks")
    plan = plan_tt_linear(
        in_features,
        out_features,
        _int_list(in_modes, "in-modes"),
        _int_list(out_modes, "out-modes"),
        rank_list[0] if rank_list and len(rank_list) == 1 else rank_list,
        batch,
    )
    if as_json:
        click.echo(json.dumps(plan, indent=2))
        return
    for key, value in plan.items():
        click.echo(f"{key:<22} {value}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="kompakt")


if __name__ == "__main__":
    sys.exit(main())
