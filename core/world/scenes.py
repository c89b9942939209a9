"""The generated world: seeded scenes of one or two flat shapes with known ground truth.

The toy CLIP is trained and evaluated on these scenes, so every attribute,
every caption word and every object pixel is known exactly. Rendering has no
anti-aliasing: a pixel is an object's or the background's, so `mask > 0`
pixels carry exactly the object colour and no background pixel ever does.

    >>> scenes = sample_scenes(4, seed=0, split="heldout")
    >>> images, masks = render_batch(scenes)          # [batch, 64, 64, 3], [batch, 64, 64]
    >>> caption(scenes[0], np.random.default_rng(0))  # e.g. "a photo of a large red circle"

Scenes are a pure description (`Scene`); `render` is a pure function of it.
Splits "train" and "heldout" draw from disjoint random streams.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from core import guards
from core.errors import ConfigError, OutputError, TextError
from core.paths import DATA_DIR

SHAPES = ("circle", "square", "triangle", "star", "cross")
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (245, 220, 30),
    "purple": (140, 50, 190),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
PLAIN_BACKGROUNDS = {"gray": (128, 128, 128), "brown": (125, 80, 45), "pink": (245, 175, 200)}
TEXTURE_BACKGROUNDS = ("striped", "dotted", "checkered")
BACKGROUNDS = tuple(PLAIN_BACKGROUNDS) + TEXTURE_BACKGROUNDS
COUNTS = (1, 2)
SPLITS = ("train", "heldout")
# Bumped whenever rendering or captions change: the toy model and its bases record it.
WORLD_VERSION = 2  # 2: pairs are sometimes captioned with singular shape words
MIN_IMAGE_SIZE = 32

# Muted gray tones for the textures; like the plain colours, none equals an object colour.
TEXTURE_TONES = ((170, 170, 165), (105, 105, 110))
# Half the object's extent, as a fraction of the cell side.
_HALF_EXTENT = {"small": 0.22, "large": 0.40}
# Gap kept between an object and its cell border, as a fraction of the cell side.
_CELL_MARGIN = 0.04
_SPLIT_IDS = {"train": 0, "heldout": 1}
# Scenes are drawn in fixed blocks so the first n scenes do not depend on n.
_BLOCK = 1024
_CAPTION_STREAM = 2**16
_BIAS_STREAM = 2**17
TEXT_POOL_PATH = DATA_DIR / "toy_texts.txt"


@dataclass(frozen=True)
class Scene:
    """One scene: `count` objects sharing shape, colour and size, each in its own 3x3 cell.

    cells: cell indices 0..8 (row-major, 0 = top left), one per object.
    jitter: per object (dx, dy) in [-1, 1], the shift of its centre inside its cell
        as a fraction of the free room; () means centred.
    """

    shape: str
    colour: str
    size: str
    cells: tuple[int, ...]
    background: str
    jitter: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        _check_names("shape", (self.shape,), SHAPES)
        _check_names("colour", (self.colour,), COLOURS)
        _check_names("size", (self.size,), SIZES)
        _check_names("background", (self.background,), BACKGROUNDS)
        cells = tuple(int(c) for c in self.cells)
        if len(cells) not in COUNTS or len(set(cells)) != len(cells) or not all(0 <= c < 9 for c in cells):
            raise ConfigError(f"cells must be 1 or 2 distinct indices in 0..8, got {self.cells!r}")
        jitter = tuple((float(dx), float(dy)) for dx, dy in self.jitter) or ((0.0, 0.0),) * len(cells)
        if len(jitter) != len(cells) or not all(-1 <= v <= 1 for pair in jitter for v in pair):
            raise ConfigError(f"jitter must hold one (dx, dy) pair in [-1, 1] per cell, got {self.jitter!r}")
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "jitter", jitter)

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def position(self) -> str:
        """Cell name of a single object ("top left"); two objects' names joined by "+"."""
        return "+".join(POSITIONS[c] for c in self.cells)

    def labels(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "position": self.position,
                "background": self.background, "count": self.count}


# ----------------------------------------------------------------------------- sampling


def _check_names(attribute: str, values: Iterable, valid: Iterable) -> tuple:
    valid = tuple(valid)
    values = tuple(values)
    unknown = [v for v in values if v not in valid]
    if unknown or not values:
        what = f"unknown {attribute} {unknown[0]!r}" if unknown else f"no {attribute} allowed"
        raise ConfigError(f"{what}; valid values: {', '.join(map(str, valid))}")
    return values


def _allowed(attribute: str, chosen, valid: tuple) -> tuple:
    if chosen is None:
        return valid
    if isinstance(chosen, str):
        chosen = (chosen,)
    return tuple(dict.fromkeys(_check_names(attribute, chosen, valid)))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_split(split: str) -> int:
    if split not in _SPLIT_IDS:
        raise ConfigError(f"unknown split {split!r}; valid values: {', '.join(SPLITS)}")
    return _SPLIT_IDS[split]


def sample_scenes(n: int, seed: int, *, split: str = "train", count: int | None = None, shapes=None,
                  colours=None, sizes=None, backgrounds=None, positions=None, bias=None) -> list[Scene]:
    """Draw `n` scenes, deterministic per (seed, split, filters); attribute values uniform.

    Filters restrict an attribute to the given names (positions: cell names such as
    "top left"); `count` fixes the number of objects (None: 1 or 2 at random).
    bias: a `core.world.bias.PlantedBias` that redraws backgrounds by shape (training split only,
    from its own random stream, so the other attributes equal the unbiased draw's).
    Scene i does not depend on n. Raises ConfigError on unknown names or bad numbers.
    """
    n, seed = _check_int("n", n, 0), _check_int("seed", seed, 0)
    guards.check_count(n, "scenes", "the number of scenes", minimum=0)
    split_id = _check_split(split)
    if bias is not None and (split != "train" or backgrounds is not None):
        raise ConfigError("a planted bias applies to the training split only (held-out scenes stay uniform), "
                          "and chooses backgrounds itself (no background filter)")
    pools = (_allowed("shape", shapes, SHAPES), _allowed("colour", colours, tuple(COLOURS)),
             _allowed("size", sizes, SIZES), _allowed("background", backgrounds, BACKGROUNDS))
    cells = tuple(POSITIONS.index(p) for p in _allowed("position", positions, POSITIONS))
    counts = _allowed_counts(count, len(cells))
    scenes: list[Scene] = []
    for block in range(-(-n // _BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, block]))
        drawn = _sample_block(rng, min(_BLOCK, n - len(scenes)), pools, cells, counts)
        if bias is not None:
            bias_rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, block, _BIAS_STREAM]))
            drawn = bias.plant(drawn, bias_rng)
        scenes.extend(drawn)
    return scenes


def scene_at(index: int, seed: int, *, split: str = "heldout") -> Scene:
    """Scene `index` of `sample_scenes(index + 1, seed, split=split)`, drawing only its own block: one scene is
    not a request for index + 1 of them, so the scene-count bound of core.guards does not apply."""
    index, seed = _check_int("index", index, 0), _check_int("seed", seed, 0)
    split_id = _check_split(split)
    block, offset = divmod(index, _BLOCK)
    rng = np.random.default_rng(np.random.SeedSequence([seed, split_id, block]))
    pools = (SHAPES, tuple(COLOURS), SIZES, BACKGROUNDS)
    return _sample_block(rng, offset + 1, pools, tuple(range(len(POSITIONS))), _allowed_counts(None, len(POSITIONS)))[offset]


def _allowed_counts(count, n_cells: int) -> tuple[int, ...]:
    if count is not None and (isinstance(count, bool) or count not in COUNTS):
        raise ConfigError(f"count must be 1 or 2 (or None for both), got {count!r}")
    counts = COUNTS if count is None else (int(count),)
    counts = tuple(c for c in counts if c <= n_cells)
    if not counts:
        raise ConfigError(f"{count} objects need {count} allowed positions, only {n_cells} given")
    return counts


def _sample_block(rng: np.random.Generator, n: int, pools: tuple, cells: tuple, counts: tuple) -> list[Scene]:
    # Always draw a full block so that scene i is the same whatever n is.
    shape, colour, size, background = (rng.integers(len(pool), size=_BLOCK) for pool in pools)
    count = np.asarray(counts)[rng.integers(len(counts), size=_BLOCK)]
    first = rng.integers(len(cells), size=_BLOCK)
    # A uniform second cell different from the first.
    second = (first + 1 + rng.integers(max(len(cells) - 1, 1), size=_BLOCK)) % len(cells)
    jitter = rng.uniform(-1.0, 1.0, size=(_BLOCK, 2, 2))
    scenes = []
    for i in range(n):
        chosen = sorted({cells[first[i]], cells[second[i]]}) if count[i] == 2 else [cells[first[i]]]
        scenes.append(Scene(pools[0][shape[i]], pools[1][colour[i]], pools[2][size[i]], tuple(chosen),
                            pools[3][background[i]], tuple(map(tuple, jitter[i, :count[i]].tolist()))))
    return scenes


# ----------------------------------------------------------------------------- rendering


def _check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    return guards.check_count(int(image_size), "scene_size", "image_size (pixels)", minimum=MIN_IMAGE_SIZE)


@lru_cache(maxsize=64)
def _background(name: str, image_size: int) -> np.ndarray:
    """The [H, W, 3] uint8 background; cached, so callers must copy before drawing."""
    if name in PLAIN_BACKGROUNDS:
        return np.broadcast_to(np.array(PLAIN_BACKGROUNDS[name], np.uint8), (image_size, image_size, 3)).copy()
    y, x = np.mgrid[:image_size, :image_size]
    period = max(image_size // 8, 4)
    if name == "striped":
        second = (x + y) // (period // 2) % 2 == 1
    elif name == "checkered":
        second = (x // period + y // period) % 2 == 1
    else:  # dotted: round dots on a square lattice
        second = ((x % period + 0.5 - period / 2) ** 2 + (y % period + 0.5 - period / 2) ** 2) <= (period / 4) ** 2
    return np.where(second[..., None], np.array(TEXTURE_TONES[1], np.uint8), np.array(TEXTURE_TONES[0], np.uint8))


def _star_radius(angle: np.ndarray, inner: float = 0.45) -> np.ndarray:
    """Boundary radius of a unit five-pointed star (one point up) along `angle` (radians, y down)."""
    sector = np.pi / 5
    t = np.mod(angle + np.pi / 2, 2 * sector)
    s = np.minimum(t, 2 * sector - t)  # angle from the nearest outer point
    # Polar equation of the straight edge from the outer point (1, 0) to the inner point (inner, sector).
    return inner * np.sin(sector) / (np.sin(s) + inner * np.sin(sector - s))


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) (object-centred, units of the half extent, v down) in `shape`.

    Every shape lies inside |u| <= 1, |v| <= 1. u, v broadcast together; returns bool.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "triangle":  # apex up at v = -0.9, base at v = 0.9
        return (v <= 0.9) & (np.abs(u) <= (v + 0.9) / 1.8)
    if shape == "star":
        return np.hypot(u, v) <= _star_radius(np.arctan2(v, u))
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= 0.33)) | ((au <= 0.33) & (av <= 1.0))
    raise ConfigError(f"unknown shape {shape!r}; valid values: {', '.join(SHAPES)}")


def object_geometry(scene: Scene, k: int, image_size: int) -> tuple[float, float, float]:
    """(centre x, centre y, half extent) in pixels of object k (0-based); pixel i spans [i, i + 1)."""
    cell = image_size / 3
    half = _HALF_EXTENT[scene.size]
    room = 0.5 - half - _CELL_MARGIN
    row, col = divmod(scene.cells[k], 3)
    dx, dy = scene.jitter[k]
    return (col + 0.5 + dx * room) * cell, (row + 0.5 + dy * room) * cell, half * cell


def render(scene: Scene, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene: image uint8 [H, W, 3] and mask uint8 [H, W] (0 = background, k = object k, 1-based)."""
    image_size = _check_image_size(image_size)
    image = _background(scene.background, image_size).copy()
    mask = np.zeros((image_size, image_size), np.uint8)
    for k, cell_index in enumerate(scene.cells):
        # Objects stay inside their cell, so only the cell's pixels need testing.
        row, col = divmod(cell_index, 3)
        rows = slice(row * image_size // 3, -(-(row + 1) * image_size // 3))
        cols = slice(col * image_size // 3, -(-(col + 1) * image_size // 3))
        cx, cy, half = object_geometry(scene, k, image_size)
        u = (np.arange(cols.start, cols.stop) + 0.5 - cx)[None, :] / half
        v = (np.arange(rows.start, rows.stop) + 0.5 - cy)[:, None] / half
        inside = shape_mask(scene.shape, u, v)
        image[rows, cols][inside] = COLOURS[scene.colour]
        mask[rows, cols][inside] = k + 1
    return image, mask


def render_batch(scenes: list[Scene], image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Draw scenes: images uint8 [batch, H, W, 3] and masks uint8 [batch, H, W]."""
    image_size = _check_image_size(image_size)
    images = np.empty((len(scenes), image_size, image_size, 3), np.uint8)
    masks = np.empty((len(scenes), image_size, image_size), np.uint8)
    for i, scene in enumerate(scenes):
        images[i], masks[i] = render(scene, image_size)
    return images, masks


# ----------------------------------------------------------------------------- captions

# How often each attribute is named; captions deliberately leave most of the scene unsaid.
_MENTION_PROBABILITY = {"shape": 0.85, "colour": 0.6, "size": 0.4, "count": 0.4, "position": 0.75, "background": 0.3}
_PREFIXES = ("a photo of ", "an image of ", "a picture showing ", "there is ", "")
_GENERIC_NOUNS = ("shape", "object")
_PAIR_PROBABILITY = 0.35


def position_phrase(position: str, of_image: bool = False) -> str:
    """How captions place a single object: "at the top left" (optionally "... of the image")."""
    return f"at the {position} of the image" if of_image else f"at the {position}"


def background_phrase(background: str) -> str:
    return f"on a {background} background"


def with_article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


def _mentions(scene: Scene, rng: np.random.Generator, always: tuple[str, ...] = ()) -> list[str]:
    available = [a for a in _MENTION_PROBABILITY if not (a == "position" and scene.count > 1)]
    # Draw for every attribute even when some are forced, so `always` never shifts the rng stream.
    chosen = [a for a in available if rng.random() < _MENTION_PROBABILITY[a] or a in always]
    return chosen or [available[rng.integers(len(available))]]


def _object_phrase(scene: Scene, mentioned: list[str], rng: np.random.Generator) -> str:
    plural = scene.count > 1
    if "shape" in mentioned:
        noun = SHAPE_PLURALS[scene.shape] if plural else scene.shape
    else:
        noun = _GENERIC_NOUNS[rng.integers(len(_GENERIC_NOUNS))] + ("s" if plural else "")
    adjectives = [value for attribute, value in (("size", scene.size), ("colour", scene.colour))
                  if attribute in mentioned]
    words = " ".join(adjectives + [noun])
    if plural and "shape" in mentioned and rng.random() < _PAIR_PROBABILITY:
        # "a red circle and another red circle": singular shape words name pairs too. Without it the
        # text side learns "circle" and "circles" as unrelated words, and singular prompts misread pairs.
        single = " ".join(adjectives + [scene.shape])
        return f"{with_article(single)} and another {single}"
    if "count" in mentioned:
        return ("two " if plural else "one ") + words
    if plural:
        return words
    if words == noun and "shape" not in mentioned and rng.random() < 0.5:
        return "something"
    return with_article(words)


def caption(scene: Scene, rng: np.random.Generator, *, always: Iterable[str] = (), only: bool = False) -> str:
    """A caption naming a random non-empty subset of the scene's attributes; deterministic given rng state.

    Position is named only for single objects; two objects are always plural ("two blue squares",
    "blue squares"). Example: "a photo of a large red circle at the top left on a striped background".
    always: attributes named whatever the draw (training names "shape" in groups of scenes that
    differ only in shape); the other attributes are drawn as usual, or not named at all if `only`.
    """
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    always = (always,) if isinstance(always, str) else tuple(always)
    always = _check_names("attribute", always, _MENTION_PROBABILITY) if always else ()
    if only and not always:
        raise ConfigError("only=True needs the attributes to name in `always`")
    mentioned = _mentions(scene, rng, always)
    if only:
        mentioned = [a for a in mentioned if a in always]
    prefix = _PREFIXES[rng.integers(len(_PREFIXES))]
    if mentioned == ["background"]:
        return prefix + with_article(f"{scene.background} background")
    parts = [_object_phrase(scene, mentioned, rng)]
    if "position" in mentioned:
        parts.append(position_phrase(scene.position, of_image=bool(rng.random() < 0.3)))
    if "background" in mentioned:
        parts.append(background_phrase(scene.background))
    if prefix == "there is " and scene.count > 1 and " and another " not in parts[0]:
        prefix = "there are "
    return prefix + " ".join(parts)


# ----------------------------------------------------------------------------- zero-shot spec


def _agree(text: str) -> str:
    """Fix the grammar a template can break: "a orange" -> "an orange", "one objects" -> "one object"."""
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    return re.sub(r"\bone (object|shape)s\b", r"one \1", text)


@dataclass(frozen=True)
class ZeroShotTask:
    """CLIP-style zero-shot classification of one attribute (class names x templates).

    attribute: the key of `Scene.labels()` this task predicts; labels[i] is the value for classnames[i].
    which: "all" scenes, or "single" (one-object scenes only).
    """

    attribute: str
    classnames: tuple[str, ...]
    labels: tuple
    templates: tuple[str, ...]
    which: str = "all"
    plurals: tuple[str, ...] = ()  # plural class names, for templates with "{plural}"

    def prompts(self) -> tuple[tuple[str, ...], ...]:
        """Texts [class][template], each template filled with the class name and made grammatical."""
        plurals = self.plurals or self.classnames
        return tuple(tuple(_agree(t.format(name, plural=plural)) for t in self.templates)
                     for name, plural in zip(self.classnames, plurals))

    def applies_to(self, labels: dict) -> bool:
        """Whether a scene (given by its `labels()`) is part of this task's evaluation."""
        return self.which == "all" or labels["count"] == 1


ZERO_SHOT: dict[str, ZeroShotTask] = {
    # Singular and plural templates: a scene holds one or two objects.
    "shape": ZeroShotTask("shape", SHAPES, SHAPES, (
        "a photo of a {}.", "a {}.", "an image of a {}.", "a picture showing a {}.", "there is a {}.",
        "a photo of {plural}.", "an image of {plural}.", "a picture showing {plural}."),
        plurals=tuple(SHAPE_PLURALS[s] for s in SHAPES)),
    "colour": ZeroShotTask("colour", tuple(COLOURS), tuple(COLOURS), (
        "a photo of a {} object.", "a {} shape.", "an image of a {} object.", "there is a {} shape.",
        "a picture showing {} objects.")),
    "position": ZeroShotTask("position", POSITIONS, POSITIONS, (
        "a photo of an object " + position_phrase("{}") + ".", "something " + position_phrase("{}") + ".",
        "a shape " + position_phrase("{}", of_image=True) + ".", "there is an object " + position_phrase("{}") + ".",
        "an image of something " + position_phrase("{}", of_image=True) + "."), which="single"),
    "background": ZeroShotTask("background", BACKGROUNDS, BACKGROUNDS, (
        "a photo of a {} background.", "a {} background.", "an object " + background_phrase("{}") + ".",
        "a picture showing a shape " + background_phrase("{}") + ".")),
    "count": ZeroShotTask("count", ("one", "two"), COUNTS, (
        "a photo of {} objects.", "{} shapes.", "an image of {} objects.", "a picture showing {} shapes.")),
}


# ----------------------------------------------------------------------------- text pool

_DISTRACTORS = (
    "a dog", "a cat", "a car", "music", "the ocean", "a mountain", "a tree", "a house", "a person", "a bird",
    "a horse", "a bicycle", "an airplane", "a boat", "a city street", "a forest", "a beach", "snow", "rain",
    "a sunset", "food", "a pizza", "an apple", "a banana", "a cup of coffee", "a book", "a computer", "a phone",
    "a chair", "a table", "a clock", "a guitar", "a piano", "a football", "a flower", "grass", "a river",
    "a bridge", "a train", "a bus", "a fish", "an elephant", "a lion", "a baby", "a smiling face",
    "a crowd of people", "a kitchen", "a bedroom", "an office", "a painting", "a map", "a newspaper",
    "handwritten text", "the number seven", "a flag", "a shoe", "a hat", "a wristwatch", "fire", "smoke",
    "the moon", "a bowl of soup",
)


def build_toy_texts() -> list[str]:
    """The toy text pool: attribute words and phrases, every zero-shot class phrase, combinations, distractors."""
    plurals = [SHAPE_PLURALS[s] for s in SHAPES]
    texts = [*SHAPES, *plurals, *COLOURS, *SIZES, *POSITIONS, *BACKGROUNDS, "one", "two"]
    for task in ZERO_SHOT.values():
        texts += task.classnames
    texts += ["a " + s for s in SHAPES] + ["a photo of a " + s for s in SHAPES] + ["two " + p for p in plurals]
    texts += [with_article(f"{c} object") for c in COLOURS] + [with_article(f"{c} shape") for c in COLOURS]
    texts += [f"a {size} {noun}" for size in SIZES for noun in ("shape", "object")]
    texts += ["an object " + position_phrase(p) for p in POSITIONS] + ["something " + position_phrase(p) for p in POSITIONS]
    texts += [f"{b} background" for b in BACKGROUNDS] + [with_article(f"{b} background") for b in BACKGROUNDS]
    texts += ["one object", "two objects", "one shape", "two shapes", "an object", "a shape", "something"]
    texts += [with_article(f"{c} {s}") for c in COLOURS for s in SHAPES]
    texts += [f"a photo of {with_article(f'{c} {s}')}" for c in COLOURS for s in SHAPES]
    texts += [f"a {size} {s}" for size in SIZES for s in SHAPES]
    texts += [f"a {s} {background_phrase(b)}" for s in SHAPES for b in BACKGROUNDS]
    texts += _DISTRACTORS
    return list(dict.fromkeys(texts))


def write_toy_texts(path: Path = TEXT_POOL_PATH) -> Path:
    """Regenerate the text pool file from `build_toy_texts()`."""
    from core.writes import atomic_write_text

    return atomic_write_text(path, "\n".join(build_toy_texts()) + "\n", what="toy text pool")


def load_toy_texts() -> list[str]:
    """The toy text pool from `TEXT_POOL_PATH`, one text per non-empty line."""
    if not TEXT_POOL_PATH.is_file():
        raise TextError(f"toy text pool {TEXT_POOL_PATH} is missing; regenerate it with "
                        "`python -c 'from core.world.scenes import write_toy_texts; write_toy_texts()'`")
    return [line.strip() for line in TEXT_POOL_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----------------------------------------------------------------------------- held-out ground truth and files


def heldout_scenes(n: int, seed: int = 0, image_size: int = 64, **filters) -> Iterator[tuple[Image.Image, dict, np.ndarray]]:
    """Yield (image, labels, mask [H, W] uint8) for `n` held-out scenes; filters as in `sample_scenes`.

    Arguments are checked at call time, not at the first `next`.
    """
    image_size = _check_image_size(image_size)
    scenes = sample_scenes(n, seed, split="heldout", **filters)

    def generate():
        for scene in scenes:
            image, mask = render(scene, image_size)
            yield Image.fromarray(image), scene.labels(), mask

    return generate()


LABEL_COLUMNS = ("file", "shape", "colour", "size", "position", "background", "count", "caption")
SCENES_MANIFEST = ".clipscope-scenes.json"  # what write_scenes wrote: the only files it ever replaces (core.writes)


def _scene_targets(n: int) -> list[str]:
    return ["labels.csv"] + [f"{folder}/{i:06d}.png" for i in range(n) for folder in ("images", "masks")]


def write_scenes(out_dir, n: int, seed: int, *, split: str = "heldout", image_size: int = 64,
                 overwrite: bool = False) -> Path:
    """Write n scenes to out_dir: images/NNNNNN.png, masks/NNNNNN.png (instance masks), labels.csv.

    labels.csv columns: LABEL_COLUMNS; `file` is the image path relative to out_dir, and the
    mask has the same name under masks/. Refuses a non-empty folder unless overwrite=True; with it,
    only files an earlier write_scenes wrote (listed in SCENES_MANIFEST, unchanged) are replaced,
    and nothing else in the folder is ever replaced or deleted.
    """
    import io

    from core.writes import OutputFolder

    image_size = _check_image_size(image_size)
    scenes = sample_scenes(n, seed, split=split)
    out = Path(out_dir)
    targets = _scene_targets(len(scenes))
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{out} exists and is not a folder; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} is not empty; choose a new or empty folder, or pass overwrite=True "
                          "(--overwrite) to replace the scenes written there")
    params = {"n": n, "seed": seed, "split": split, "image_size": image_size, "world_version": WORLD_VERSION}
    folder = OutputFolder(out, "scenes", require="any", params=params)
    folder.claim(targets)  # refused before anything is written if one of them is not ours; then listed as pending

    def save(rel: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        folder.write_bytes(rel, buffer.getvalue(), save=False)

    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], _CAPTION_STREAM]))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(LABEL_COLUMNS)
    for i, scene in enumerate(scenes):
        image, mask = render(scene, image_size)
        name = f"{i:06d}.png"
        save(f"images/{name}", image)
        save(f"masks/{name}", mask)
        labels = scene.labels()
        writer.writerow([f"images/{name}"] + [labels[c] for c in LABEL_COLUMNS[1:-1]] + [caption(scene, rng)])
    folder.write_bytes("labels.csv", table.getvalue().encode("utf-8"), save=False)
    folder.remove_stale(targets)  # our own scenes of an earlier, larger run, if unchanged; saves the manifest
    return out
