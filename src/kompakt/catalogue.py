"""`kompakt list {data,models,layers,backends}`: what kompakt can use, answered without torch.

Datasets, models and layers register themselves in modules that import torch (~3 s), too slow
for a listing. Their names and help lines are therefore kept in `catalogue.json`, written from
the live registries by `python -m kompakt.catalogue` and checked against them by a test, so it
cannot drift. `--live` imports the registries instead (plugins registered by imports show up
there). Backends are always listed live: whether one is available depends on this machine, and
their modules import no torch.
"""

from __future__ import annotations

import importlib
import json
from importlib import resources

import click

# kind -> (module, registry attribute)
REGISTRIES = {
    "data": ("kompakt.data", "DATASETS"),
    "models": ("kompakt.models", "MODELS"),
    "layers": ("kompakt.layers", "LAYERS"),
    "compressions": ("kompakt.compression", "COMPRESSIONS"),
}
KINDS = (*REGISTRIES, "backends")
CATALOGUE_FILE = "catalogue.json"


def live_rows(kind: str) -> dict[str, str]:
    """{name: help} of one registry, read from the registry itself (imports its module)."""
    module, attribute = REGISTRIES[kind]
    registry = getattr(importlib.import_module(module), attribute)
    return {name: registry.help(name) for name in registry.names()}


def live_catalogue() -> dict[str, dict[str, str]]:
    """{kind: {name: help}} read from the registries themselves (imports torch)."""
    return {kind: live_rows(kind) for kind in REGISTRIES}


def shipped_catalogue() -> dict[str, dict[str, str]]:
    """The catalogue written at release time (no torch import)."""
    return json.loads(resources.files("kompakt").joinpath(CATALOGUE_FILE).read_text())


def format_rows(rows: dict[str, str]) -> str:
    width = max(map(len, rows), default=0)
    return "\n".join(f"{name:<{width}}  {text}" for name, text in rows.items())


def format_backends(rows: list[dict]) -> str:
    lines = []
    width = max((len(row["name"]) for row in rows), default=0)
    for row in rows:
        status = "available" if row["available"] else f"unavailable: {row['reason']}"
        versions = ", ".join(f"{k} {v}" for k, v in (row.get("versions") or {}).items())
        status += f" ({versions})" if versions else ""
        lines.append(f"{row['name']:<{width}}  {','.join(row['precisions']):<15} {status}")
    return "\n".join(lines)


def print_listing(kind: str, as_json: bool, live: bool = False) -> None:
    if kind == "backends":
        from kompakt.deploy.builders import list_backends

        rows = list_backends()
        click.echo(json.dumps(rows, indent=2) if as_json else format_backends(rows))
        return
    rows = live_rows(kind) if live else shipped_catalogue()[kind]
    click.echo(json.dumps(rows, indent=2) if as_json else format_rows(rows))


@click.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--live", is_flag=True, help="Import the registries (shows plugins; ~3 s).")
def list_command(kind: str, as_json: bool, live: bool) -> None:
    """List datasets, models, layers or backends (answers without importing torch)."""
    print_listing(kind, as_json, live)


def write_catalogue() -> str:
    """Rewrite catalogue.json from the live registries; returns the path written."""
    from kompakt._io import atomic_write_text

    path = resources.files("kompakt").joinpath(CATALOGUE_FILE)
    atomic_write_text(str(path), json.dumps(live_catalogue(), indent=2, sort_keys=True) + "\n")
    return str(path)


if __name__ == "__main__":
    print(f"wrote {write_catalogue()}")
