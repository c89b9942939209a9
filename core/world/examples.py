"""Example images for the tabs, drawn by the world generator (deterministic, written once)."""

from __future__ import annotations

from pathlib import Path

from core import caches
from core.errors import OutputError
from core.settings import cache_dir
from core.world import scenes as world

EXAMPLE_SEED = 7


def example_images(n: int = 6, image_size: int = 64) -> list[str]:
    """Paths of `n` held-out world scenes saved as PNG under the clipscope cache (created on first use).

    Each file is written atomically. When the cache cannot be written (read-only, full), the pictures are written
    to a folder of this process under the system's temporary folder instead (core.caches.fallback_root), with a
    warning in the log.
    """
    name = f"world-v{getattr(world, 'WORLD_VERSION', 1)}-{image_size}"
    folder = cache_dir() / "examples" / name
    paths = [folder / f"scene_{i}.png" for i in range(n)]
    if _all_files(paths):
        return [str(p) for p in paths]
    scenes = [image for image, _, _ in world.heldout_scenes(n, seed=EXAMPLE_SEED, image_size=image_size)]
    if not _write_missing(paths, scenes):
        paths = [caches.fallback_root() / "examples" / name / p.name for p in paths]
        if not _write_missing(paths, scenes):
            raise OutputError("the example pictures cannot be written: the cache and temporary folders are full "
                              "or read-only")
    return [str(p) for p in paths]


def _all_files(paths) -> bool:
    try:
        return all(p.is_file() for p in paths)
    except OSError:  # an unreadable cache folder
        return False


def _write_missing(paths, images) -> bool:
    for path, image in zip(paths, images):
        try:
            present = path.is_file()
        except OSError:
            return False
        if not present and not caches.store(path, lambda tmp, image=image: image.save(tmp, format="PNG"),
                                            "example pictures"):
            return False
    return True
