"""The generated world as an image generator of the engine's image sets (`world:N[:SEED[:SPLIT]]`).

The engine lists it by name (`core.engine.imagesets.SHIPPED_GENERATORS`) and imports this module when a world image
set is first asked for: no import side effect registers it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from PIL import Image

from core.errors import ConfigError
from core.world import scenes as world

IMAGE_SIZE = 64  # the toy CLIP's input size; other models' preprocessing resizes it


class WorldImages:
    """Scenes `0..n-1` of one split and seed (the first n scenes do not depend on n), rendered on demand."""

    default_split = "train"

    def params(self, n: int, seed: int, split: str | None) -> dict:
        split = split or self.default_split
        world.sample_scenes(1, seed, split=split)  # validates split and seed early
        return {"n": n, "seed": seed, "split": split, "world_version": world.WORLD_VERSION}

    def describe(self, params: dict) -> str:
        return (f"{params['n']} generated world scenes ({params['split']} split, seed {params['seed']}, "
                f"world v{params['world_version']})")

    def _check(self, params: dict) -> None:
        if params.get("world_version") != world.WORLD_VERSION:
            raise ConfigError(f"these images are scenes of world v{params.get('world_version')}, but this version "
                              f"of clipscope draws world v{world.WORLD_VERSION}: rebuild with the current world")

    def render(self, params: dict, ids: Sequence[int]) -> list[Image.Image]:
        self._check(params)
        scenes = _scenes(params["n"], params["seed"], params["split"])
        images, _ = world.render_batch([scenes[i] for i in ids], IMAGE_SIZE)
        return [Image.fromarray(image) for image in images]

    def labels(self, params: dict, column: str) -> tuple[list[str], list[int]]:
        columns = ("shape", "colour", "size", "position", "background", "count")
        if column not in columns:
            raise ConfigError(f"world scenes have labels {', '.join(columns)}, not {column!r}")
        values = [str(scene.labels()[column]) for scene in _scenes(params["n"], params["seed"], params["split"])]
        names = sorted(set(values))
        index = {name: i for i, name in enumerate(names)}
        return names, [index[value] for value in values]


@lru_cache(maxsize=4)
def _scenes(n: int, seed: int, split: str) -> tuple:
    return tuple(world.sample_scenes(n, seed, split=split))


WORLD_IMAGES = WorldImages()
