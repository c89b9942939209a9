"""`python -m core <command>`: the batch front door to the engine.

Each command lives in `core/cli/<name>.py` and exposes `register(subparsers)`, which adds its parser and
sets `func=run`. Every input problem ends the same way: one line `error: ...` on stderr and exit status 2.
That covers a `CoreError`, a usage error (argparse's usage text is replaced by one line), a missing or
unwritable file (`OSError`), a closed output pipe (`... | head`), and text that cannot be printed. Other
exceptions are bugs and still show their traceback.

Global options, before the command: `--public` (refuse server paths, random weights and models outside the
allow-list, tighter size bounds: what a public server does) and `--allow-path DIR` (read and write only
under DIR; repeatable).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from core.messages import without_paths

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
    "segment",
    "segeval",
    "adversarial",
    "reproduce",
    "circuit",
)


class UsageError(Exception):
    """A command-line usage error, reported as one line (see OneLineParser)."""

    def __init__(self, prog: str, message: str):
        super().__init__(f"{message} (see {prog} --help)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error raises UsageError instead of printing the usage text and exiting."""

    def error(self, message: str):
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m core", description="CLIP image-encoder interpretability suite.")
    parser.add_argument("--public", action="store_true", help="behave as a public server: no server paths, only "
                        "allow-listed models ($CLIPSCOPE_MODELS), no random weights, tighter size bounds")
    parser.add_argument("--allow-path", action="append", metavar="DIR",
                        help="read and write only under DIR (repeat for several; default: anywhere)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"core.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from core import settings
    from core.errors import CoreError
    from core.messages import error_message

    _printable_streams()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        return _fail(str(err), bool(argv and "--public" in argv) or settings.public())
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else 0
    if not getattr(args, "func", None):
        return _fail(str(UsageError(parser.prog, f"a command is required: choose one of {_choices(parser)}")))
    public = bool(args.public) or settings.public()
    try:
        with settings.overridden(public=True if args.public else None, allowed_paths=args.allow_path):
            result = args.func(args)
        sys.stdout.flush()
    except UsageError as err:
        return _fail(str(err), public)
    except CoreError as err:
        return _fail(error_message(err, public=public))
    except BrokenPipeError:
        _silence_stdout()
        return _fail("the output was closed before everything was written (e.g. by `| head`)")
    except OSError as err:  # the file system said no: a missing, unreadable or unwritable path
        return _fail(error_message(err, public=public))
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # safetensors' own I/O error (a full disk, a lost folder)
            raise
        line = str(err).splitlines()[0] if str(err) else str(err)
        return _fail(f"a safetensors file could not be read or written: {line}", public)
    except KeyboardInterrupt:
        print("interrupted: partial results already written are kept; run the same command again to resume.",
              file=sys.stderr)
        return 130
    return int(result or 0)


def _fail(message: str, public: bool = False) -> int:
    """Print `error: message` as one line on stderr; exit status 2 (server paths cut in public mode)."""
    if public:
        message = without_paths(message)
    try:
        print(f"error: {message}", file=sys.stderr)
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        pass
    return 2


def _choices(parser: argparse.ArgumentParser) -> str:
    """The sub-commands of `parser`, comma-separated."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]  # noqa: SLF001
    return ", ".join(actions[0].choices) if actions else ""


def require_subcommand(parser: argparse.ArgumentParser) -> None:
    """`python -m core toy` (no sub-command): a usage error, one `error:` line and exit 2, as argparse does."""
    raise UsageError(parser.prog, f"a subcommand is required: choose one of {_choices(parser)}")


def _printable_streams() -> None:
    """Text that the terminal's encoding cannot show (e.g. a file name in another encoding) is escaped, not fatal."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
