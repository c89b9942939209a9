"""A model's shape read from its open_clip JSON config, without importing open_clip or torch.

An app lays out its page (e.g. the layer a tab starts on) before any model is loaded; open_clip's import
alone (torchvision, transformers, timm) costs seconds. Configs are looked up where `load_clip` registers
them: the project's own, $CLIPSCOPE_MODEL_CONFIGS, then open_clip's installed ones.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from core import settings
from core.paths import CONFIG_DIR, TOY_ARCH, TOY_MODELS


def _config_folders() -> list[Path]:
    folders = [CONFIG_DIR, *settings.model_config_paths()]
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(list(spec.submodule_search_locations)[0]) / "model_configs")
    return folders


def vision_layers(spec: str) -> int | None:
    """The number of blocks of the vision tower `spec` names, or None where only loading it would tell
    (a hub model, an unknown architecture, an unreadable config)."""
    spec = (spec or "").strip()
    arch = TOY_ARCH if spec in TOY_MODELS else spec.split("/", 1)[0] if "/" in spec and not spec.startswith("hf-hub:") else None
    if not arch:
        return None
    for folder in _config_folders():
        path = folder / f"{arch}.json" if folder.is_dir() else folder
        if path.is_file() and path.stem == arch:
            try:
                layers = json.loads(path.read_text())["vision_cfg"]["layers"]
            except (OSError, ValueError, KeyError, TypeError):
                return None
            return layers if isinstance(layers, int) and layers > 0 else None
    return None
