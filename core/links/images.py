"""Images a link can name: the shipped examples and generated-world scenes, rendered the same on every machine.

    example:N          the N-th example image of the tabs (N < EXAMPLE_COUNT): held-out world scene N of seed 7
    world:SEED:INDEX   held-out world scene INDEX of SEED (as `python -m core toy scenes --seed SEED` writes it)
    upload             an uploaded image: it cannot travel in a link, the link only says there was one
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core import caches
from core.errors import ImageError
from core.world import scenes as world
from core.world.examples import EXAMPLE_SEED, example_images

EXAMPLE_COUNT = 6
MAX_SEED = 2**31 - 1
MAX_SCENE_INDEX = 9_999
IMAGE_SIZE = 64
UPLOAD = "upload"


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; `seed`/`index` locate the world scene it renders (None for an upload)."""

    kind: str  # "example" | "world" | "upload"
    seed: int | None = None
    index: int | None = None

    @property
    def ref(self) -> str:
        if self.kind == "example":
            return f"example:{self.index}"
        if self.kind == "world":
            return f"world:{self.seed}:{self.index}"
        return UPLOAD


def parse_image_ref(text: str) -> ImageRef:
    """ValueError (with the accepted forms) unless `text` is example:N, world:SEED:INDEX or upload."""
    text = (text or "").strip()
    if text == UPLOAD:
        return ImageRef(UPLOAD)
    match = re.fullmatch(r"example:([0-9]{1,3})", text)
    if match and int(match[1]) < EXAMPLE_COUNT:
        return ImageRef("example", EXAMPLE_SEED, int(match[1]))
    match = re.fullmatch(r"world:([0-9]{1,10}):([0-9]{1,5})", text)
    if match and int(match[1]) <= MAX_SEED and int(match[2]) <= MAX_SCENE_INDEX:
        return ImageRef("world", int(match[1]), int(match[2]))
    raise ValueError(f"image must be example:N (N from 0 to {EXAMPLE_COUNT - 1}), world:SEED:INDEX "
                     f"(SEED up to {MAX_SEED}, INDEX up to {MAX_SCENE_INDEX}) or upload")


def _parse(text: str) -> ImageRef:
    try:
        ref = parse_image_ref(text)
    except ValueError as err:
        raise ImageError(f"Image id {text[:40]!r}: {err}.") from None
    if ref.kind == UPLOAD:
        raise ImageError("An uploaded image cannot travel in a link: upload it again.")
    return ref


def _scene(ref: ImageRef):
    return world.scene_at(ref.index, ref.seed, split="heldout")  # any INDEX up to MAX_SCENE_INDEX, public or not


def image_from_ref(text: str) -> Image.Image:
    """The RGB image a reference names (ImageError for anything else)."""
    return Image.fromarray(world.render(_scene(_parse(text)), IMAGE_SIZE)[0])


def image_ref_path(text: str) -> str:
    """A PNG file of the image (the examples' own files; other scenes written once under the cache)."""
    ref = _parse(text)
    if ref.kind == "example":
        return example_images(EXAMPLE_COUNT)[ref.index]
    from core.engine.text import cache_dir

    relative = Path("examples") / f"world-v{world.WORLD_VERSION}-{IMAGE_SIZE}" / f"seed{ref.seed}_{ref.index}.png"
    for root in (cache_dir(), caches.fallback_root()):  # a read-only or full cache: this process's own folder
        path = root / relative
        try:
            if path.is_file():
                return str(path)
        except OSError:
            continue
        image = image_from_ref(text)
        # atomic: concurrent visitors may write the same scene (same bytes)
        if caches.store(path, lambda tmp: image.save(tmp, format="PNG"), "example pictures"):
            return str(path)
    raise ImageError(f"Image id {text[:40]!r}: its picture cannot be written (the cache and temporary folders are "
                     "full or read-only).")


def describe_ref(text: str) -> str:
    """Words for the image, e.g. 'example 0 (a small green cross at the bottom on a pink background)'."""
    ref = _parse(text)
    labels = _scene(ref).labels()
    what = (f"{labels['count']} {labels['size']} {labels['colour']} {world.SHAPE_PLURALS[labels['shape']]}"
            if labels["count"] > 1 else f"a {labels['size']} {labels['colour']} {labels['shape']} at the "
            f"{labels['position']}")
    name = f"example {ref.index}" if ref.kind == "example" else f"world scene {ref.index} of seed {ref.seed}"
    return f"{name} ({what} on a {labels['background']} background)"


def default_texts(text: str = "example:0") -> list[str]:
    """Texts that describe the image: its object, its background, and one contrasting object."""
    labels = _scene(_parse(text)).labels()
    other_colour = next(c for c in ("red", "blue", "yellow") if c != labels["colour"])
    other_shape = next(s for s in ("circle", "square", "triangle") if s != labels["shape"])
    return [f"a {labels['colour']} {labels['shape']}", world.background_phrase(labels["background"])[3:],
            f"a {other_colour} {other_shape}"]
