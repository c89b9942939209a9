"""Arguments and output helpers shared by the command-line commands.

Every input is checked where it enters, before any model is loaded: paths go through `core.guards` (public
mode, --allow-path), numbers through its bounds, model specs through its allow-list. A refusal is a
`CoreError` that `core.cli.main` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core import guards
from core.inputs import (TEMPLATE_NAMES, check_templates, classifier_for,  # noqa: F401
                         existing_file, existing_folder, image_source, labelled_source, parse_images)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """--model and --device: every command that loads a model takes both."""
    parser.add_argument(
        "--model",
        default=None,
        help="model spec: toy (default, offline), ARCH/TAG (e.g. ViT-B-32/openai), hf-hub:ORG/NAME, "
        "ARCH/path/to/weights.safetensors, or ARCH/none (random weights). Default: $CLIPSCOPE_MODEL or toy.",
    )
    add_device_argument(parser)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=None,
        help="where to compute: auto (CUDA when available), cpu, cuda or cuda:N. Default: $CLIPSCOPE_DEVICE or auto.",
    )


def add_convention_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--convention",
        default="paper",
        help="how the final LayerNorm's mean and bias are shared among components: "
        "paper (equal shares, the papers' code; default) or centered (each component centred by its own mean)",
    )


CONVENTIONS = ("paper", "centered")


def model_spec(args: argparse.Namespace) -> str:
    """The --model spec (or the default), checked against this server's allow-list before anything loads."""
    from core import settings

    return guards.check_model_allowed(args.model if args.model is not None else settings.default_model())


def device_of(args: argparse.Namespace):
    """The torch.device asked for by --device (default: the settings', i.e. $CLIPSCOPE_DEVICE or auto)."""
    from core.settings import resolve_device

    return resolve_device(getattr(args, "device", None))


def load_model(args: argparse.Namespace):
    from core.engine.models import load_clip

    return load_clip(model_spec(args), device=device_of(args))


def check_convention(value: str) -> str:
    from core.errors import ConfigError

    if value not in CONVENTIONS:
        raise ConfigError(f"unknown --convention {value[:40]!r}: choose one of {', '.join(CONVENTIONS)}")
    return value


def count(value: int | None, bound: str, flag: str, *, minimum: int = 1) -> int | None:
    """An integer option within [minimum, the core.guards bound]; None stays None."""
    return None if value is None else guards.check_count(value, bound, flag, minimum=minimum)


def positive(value: int | None, flag: str, *, minimum: int = 1, maximum: int | None = None) -> int | None:
    """An integer option of at least `minimum` (and at most `maximum`); None stays None."""
    from core.errors import ConfigError

    if value is None:
        return None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise ConfigError(f"{flag} must be at least {minimum}{upper}, got {value}")
    return value


def print_json(obj: Any, device=None) -> None:
    """Print obj as JSON; with `device`, every top-level object also says which device produced it."""
    if device is not None:
        stamp = {"device": str(device)}
        obj = [{**item, **stamp} if isinstance(item, dict) else item for item in obj] if isinstance(obj, list) \
            else {**obj, **stamp} if isinstance(obj, dict) else obj
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def model_line(model) -> str:
    """'model: NAME [SPEC] on DEVICE' for a ClipBundle (or 'model: NAME [SPEC]' for its ModelInfo)."""
    info = getattr(model, "info", model)
    line = f"model: {info.display_name}" + ("" if info.display_name == info.spec else f" [{info.spec}]")
    return line + (f" on {model.device}" if hasattr(model, "device") else "")
