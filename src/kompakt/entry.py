"""The console-script entry point: `kompakt list ...` is answered before the full CLI (which
imports torch, ~3 s) is loaded; on a runtime-only install (no click / torch: `pip install
kompakt[cpu]`) `verify` and `predict` run without them; everything else goes to kompakt.cli."""

from __future__ import annotations

import importlib.util
import sys

RUNTIME_COMMANDS = ("verify", "predict")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["list"]:
        from kompakt.catalogue import list_command

        list_command.main(args=args[1:], prog_name="kompakt list")
        return
    if any(importlib.util.find_spec(m) is None for m in ("click", "torch")):
        if (args[:1] and args[0] in RUNTIME_COMMANDS) or args[:1] in ([], ["-h"], ["--help"]):
            from kompakt.runtime.commands import main as runtime_cli

            sys.exit(runtime_cli(args))
        print(
            f"kompakt: error: `kompakt {args[0]}` needs the full tool (this is the runtime-only "
            "install): pip install 'kompakt[train,cpu]'",
            file=sys.stderr,
        )
        sys.exit(1)
    from kompakt.cli import main as full_cli

    full_cli(args)
