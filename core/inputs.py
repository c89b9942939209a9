"""Inputs a user names, checked where they enter: files and folders, image sets, templates, zero-shot classifiers.

Shared by the command line (`core.cli`) and the recipes it and the explorer call (`core.reproduce`), so the same
option means the same thing everywhere. Paths go through `core.guards` (public mode, --allow-path), counts through
its bounds; a refusal is a `CoreError` (one line, exit status 2 on the command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import guards


def existing_file(value: str, kind: str, *, hint: str = "") -> Path:
    """A file a user named: allowed by core.guards, and a regular file (a folder, pipe or device is refused)."""
    import stat

    from core.errors import DatasetError

    path = guards.check_user_path(value, kind, hint=hint)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DatasetError(f"{kind} not found: {path}") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"{kind} {path} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    if stat.S_ISDIR(mode):
        raise DatasetError(f"{kind} {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise DatasetError(f"{kind} {path} is not a regular file (a pipe or a device?)")
    return path


def existing_folder(value: str, kind: str, *, hint: str = "") -> Path:
    """A folder a user named: allowed by core.guards, and a folder."""
    from core.errors import DatasetError

    path = guards.check_user_path(value, kind, hint=hint)
    if not path.is_dir():
        raise DatasetError(f"{kind} not found: {path}" if not path.exists() else f"{kind} {path} is not a folder")
    return path


def image_source(value: str, kind: str = "--images") -> tuple[str, Any]:
    """`world:N[:SEED]` as ("world", (n, seed)) with N within the scene bound, else ("folder", Path)."""
    from core.errors import ConfigError

    if value.startswith("world:"):
        try:
            parts = [int(part) for part in value.split(":")[1:]]
        except ValueError:
            raise ConfigError(f"{kind} world:N[:SEED] needs integers, got {value[:60]!r}") from None
        if not 1 <= len(parts) <= 2:
            raise ConfigError(f"{kind} world:N[:SEED], got {value[:60]!r}")
        n = guards.check_count(parts[0], "scenes", f"{kind} world:N (scenes)")
        seed = parts[1] if len(parts) == 2 else 0
        if seed < 0:
            raise ConfigError(f"{kind} world:N:SEED needs a seed >= 0, got {seed}")
        return "world", (n, seed)
    return "folder", existing_folder(value, f"image folder {kind}", hint="use world:N for generated scenes")


def labelled_source(folder_value: str, label_column: str | None, kind: str):
    """A labelled folder for --images/--evaluate: ImageFolder layout, or DIR/labels.csv with --label-column;
    or world:N[:SEED] / hf:... with --label-column naming the labels (written once as files, see parse_images)."""
    from core.engine.images import image_folder, labelled_from_csv
    from core.engine.imagesets import HF_PREFIX

    if folder_value.startswith(("world:", HF_PREFIX)):
        return parse_images(folder_value, kind, labelled=True, label_column=label_column,
                            generator_split="heldout").labelled_images()

    folder = existing_folder(folder_value, f"labelled folder {kind}")
    if label_column:
        return labelled_from_csv(folder / "labels.csv", label_column)
    return image_folder(folder)


def parse_images(value: str, kind: str = "--images", *, labelled: bool = False, label_column: str | None = None,
                 generator_split: str | None = None):
    """The engine's ImageSet (core.engine.imagesets) of an image-set option: a folder (allowed by core.guards),
    world:N[:SEED[:SPLIT]] (N within the scene bound) or hf:ORG/NAME@REVISION:SPLIT[:COLUMN] / hf:PATH:SPLIT."""
    import core.world  # noqa: F401  (registers the generated world's images: world:N[:SEED])
    from core.engine.imagesets import HF_PREFIX, parse_image_set

    spec = value.strip() if isinstance(value, str) else value
    if isinstance(spec, str) and spec.startswith("world:"):
        parts = spec.split(":")
        image_source(":".join(parts[:3]), kind)  # bounds of N and SEED; a SPLIT is checked by the world
    elif isinstance(spec, str) and spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX):].split(":")[0]
        if "/" not in name or Path(name).exists() or name.startswith((".", "/", "~")):
            guards.check_user_path(name, f"dataset folder {kind}")
    else:
        spec = str(existing_folder(spec, f"image folder {kind}", hint="use world:N for generated scenes or "
                                   "hf:ORG/NAME@REVISION:SPLIT for a Hugging Face dataset"))
    return parse_image_set(spec, labelled=labelled, label_column=label_column, generator_split=generator_split)


TEMPLATE_NAMES = ("auto", "toy", "openai", "simple")


def check_templates(templates: str) -> str:
    """A --templates choice: a name, or a file of templates (allowed by core.guards, each with one {})."""
    if templates not in TEMPLATE_NAMES:
        _template_lines(templates)
    return templates


def _template_lines(templates: str) -> list[str]:
    from core.engine.text import check_template, read_text_pool

    path = existing_file(templates, "templates file", hint="use " + ", ".join(TEMPLATE_NAMES))
    lines, _ = read_text_pool(path)
    guards.check_count(len(lines), "templates", f"templates in {path.name}")
    for line in lines:
        check_template(line)
    return lines


def classifier_for(bundle, classnames, templates: str, column: str | None):
    """A zero-shot classifier for `classnames` from a --templates choice; returns (classifier, description)."""
    from core.world import scenes as world
    from core.errors import ConfigError
    from core.engine.text import imagenet_classifier_texts, prompt_classifier, zero_shot_classifier

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
    lines = _template_lines(templates)
    return zero_shot_classifier(bundle, classnames, lines), f"{len(lines)} templates from {templates}"
