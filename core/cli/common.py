"""Arguments and output helpers shared by the command-line commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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


def device_of(args: argparse.Namespace):
    """The torch.device asked for by --device (default: the settings', i.e. $CLIPSCOPE_DEVICE or auto)."""
    from core.settings import resolve_device

    return resolve_device(getattr(args, "device", None))


def load_model(args: argparse.Namespace):
    from core.engine.models import default_spec, load_clip

    return load_clip(args.model or default_spec(), device=device_of(args))


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


def classifier_for(bundle, classnames, templates: str, column: str | None):
    """A zero-shot classifier for `classnames` from a --templates choice; returns (classifier, description)."""
    from pathlib import Path

    from core.world import scenes as world
    from core.errors import ConfigError
    from core.engine.text import imagenet_classifier_texts, prompt_classifier, read_text_pool, zero_shot_classifier

    if templates == "auto":
        templates = "toy" if bundle.info.source == "toy" and column in world.ZERO_SHOT else "openai"
    if templates == "toy":
        task = world.ZERO_SHOT.get(column or "")
        if task is None:
            raise ConfigError(f"--templates toy needs --label-column one of {', '.join(world.ZERO_SHOT)}.")
        by_label = {str(label): prompts for label, prompts in zip(task.labels, task.prompts())}
        missing = [c for c in classnames if c not in by_label]
        if missing:
            raise ConfigError(f"classes {missing} are not values of the world's {column!r} attribute.")
        return prompt_classifier(bundle, [by_label[c] for c in classnames]), f"world templates for {column!r}"
    if templates == "openai":
        return zero_shot_classifier(bundle, classnames, imagenet_classifier_texts()[1]), "80 OpenAI ImageNet templates"
    if templates == "simple":
        return zero_shot_classifier(bundle, classnames, ["a photo of a {}."]), "'a photo of a {}.'"
    lines, _ = read_text_pool(Path(templates))
    if not all("{}" in line for line in lines):
        raise ConfigError(f"every template in {templates} must contain {{}}.")
    return zero_shot_classifier(bundle, classnames, lines), f"{len(lines)} templates from {templates}"
