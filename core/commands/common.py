"""Arguments and output helpers shared by the command-line commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any



def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model spec: toy (default, offline), ARCH/TAG (e.g. ViT-B-32/openai), hf-hub:ORG/NAME, "
        "ARCH/path/to/weights.safetensors, or ARCH/none (random weights). Default: $CLIPSCOPE_MODEL or toy.",
    )


def add_convention_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--convention",
        default="paper",
        help="how the final LayerNorm's mean and bias are shared among components: "
        "paper (equal shares, the papers' code; default) or centered (each component centred by its own mean)",
    )


def load_model(args: argparse.Namespace):
    from core.models import default_spec, load_clip

    return load_clip(args.model or default_spec())


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def model_line(info) -> str:
    return f"model: {info.display_name}" + ("" if info.display_name == info.spec else f" [{info.spec}]")
