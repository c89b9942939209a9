"""What a toy checkpoint records about itself: safetensors metadata written by `python -m core toy train`.

Its own module so that both the trainer (core.world.toy) and the planted-bias groups (core.world.bias, which reads
the bias a model was trained with) can read it without importing each other."""

from __future__ import annotations

import json
from pathlib import Path

from core.paths import TOY_ARCH


def is_toy_weights(path: Path) -> bool:
    """True if `path` is a toy checkpoint written by `train_toy` (its safetensors metadata says so)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # not a safetensors file at all
        return False
    return metadata.get("arch") == TOY_ARCH and "steps" in metadata and "world_version" in metadata


def checkpoint_config(path: Path) -> dict | None:
    """The training config a toy checkpoint records in its safetensors metadata (`train_toy` writes it: steps,
    seed, groups and the planted bias), or None for a file that is not a toy checkpoint or records none."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file() or not is_toy_weights(path):
        return None
    with safe_open(str(path), framework="pt") as handle:
        text = (handle.metadata() or {}).get("config")
    try:
        config = json.loads(text) if text else None
    except ValueError:
        return None
    return config if isinstance(config, dict) else None
