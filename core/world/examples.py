"""Example images for the tabs, drawn by the world generator (deterministic, written once)."""

from __future__ import annotations

from pathlib import Path

from core.world import scenes as world
from core.settings import cache_dir

EXAMPLE_SEED = 7


def example_images(n: int = 6, image_size: int = 64) -> list[str]:
    """Paths of `n` held-out world scenes saved as PNG under the clipscope cache (created on first use)."""
    folder = cache_dir() / "examples" / f"world-v{getattr(world, 'WORLD_VERSION', 1)}-{image_size}"
    paths = [folder / f"scene_{i}.png" for i in range(n)]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for path, (image, _, _) in zip(paths, world.heldout_scenes(n, seed=EXAMPLE_SEED, image_size=image_size)):
            image.save(path)
    return [str(p) for p in paths]
