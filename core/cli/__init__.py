"""`python -m core <command>`: the batch front door to the engine.

Each command lives in `core/cli/<name>.py` and exposes
`register(subparsers)`, which adds its parser and sets `func=run`. A
`CoreError` (or a missing file) becomes a one-line message on stderr and exit
status 2; nothing else is caught, so real bugs still show a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "decompose",
    "ablate",
    "toy",
    "textspan",
    "retrieve",
    "spurious",
    "neurons",
    "concepts",
    "second_order",
    "bases",
    "adversarial",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="CLIP image-encoder interpretability suite.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"core.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"core.cli.{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.errors import CoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (CoreError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: partial results already written are kept; run the same command again to resume.",
              file=sys.stderr)
        return 130
    return int(result or 0)
