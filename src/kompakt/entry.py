"""The console-script entry point: `kompakt list ...` is answered before the full CLI (which
imports torch, ~3 s) is loaded; everything else goes to kompakt.cli."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["list"]:
        from kompakt.catalogue import list_command

        list_command.main(args=args[1:], prog_name="kompakt list")
        return
    from kompakt.cli import main as full_cli

    full_cli(args)
