"""Composite held-out scenes: two (or more) objects of different classes on one background, exact per-object masks.

The world's own scenes (`core.world.scenes`) hold one class each (one object, or two identical ones), so a
map that lights up any object scores well on them. Composites put objects of different colour x shape
classes side by side, so a class's map can be scored with the other objects' pixels as negatives
(`core.segmentation` `world-pairs:N:SEED`).

They are drawn from their own random stream of the held-out split, and nothing in the world's training
draws them: the toy models never saw two classes in one image. Every object is rendered by the world's own
`render` (a one-object `Scene` with the shared background), so composites change nothing in the world and
its version (`WORLD_VERSION`) stays.

    >>> scene = sample_composites(1, seed=0)[0]
    >>> image, mask = render_composite(scene)     # mask: 0 background, k + 1 = object k
    >>> scene.classes                              # ("red circle", "blue star")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import guards
from core.errors import ConfigError
from core.world import scenes as world

MIN_OBJECTS, MAX_OBJECTS = 2, 4
_COMPOSITE_STREAM = 2**18  # a stream of the held-out split that no other draw uses
_BLOCK = 1024  # scenes are drawn in fixed blocks, so scene i does not depend on n


@dataclass(frozen=True)
class CompositeObject:
    shape: str
    colour: str
    size: str
    cell: int
    jitter: tuple[float, float]

    @property
    def classname(self) -> str:
        """The world's colour x shape class name, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class CompositeScene:
    """Objects of pairwise different classes in distinct cells of the 3 x 3 grid, on one background."""

    background: str
    objects: tuple[CompositeObject, ...]

    def __post_init__(self):
        if not MIN_OBJECTS <= len(self.objects) <= MAX_OBJECTS:
            raise ConfigError(f"a composite holds {MIN_OBJECTS}..{MAX_OBJECTS} objects, got {len(self.objects)}")
        if len({o.classname for o in self.objects}) != len(self.objects) or len({o.cell for o in self.objects}) != len(
                self.objects):
            raise ConfigError("a composite's objects must have different classes and different cells")
        for obj in self.objects:  # checks every name, cell and jitter as the world does
            self.single(obj)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(o.classname for o in self.objects)

    def single(self, obj: CompositeObject) -> world.Scene:
        """The world scene of one object alone on this background."""
        return world.Scene(obj.shape, obj.colour, obj.size, (obj.cell,), self.background, (obj.jitter,))

    def labels(self) -> dict:
        return {"background": self.background, "objects": [
            {"shape": o.shape, "colour": o.colour, "size": o.size, "position": world.POSITIONS[o.cell]}
            for o in self.objects]}


def _check_objects(objects) -> int:
    if isinstance(objects, bool) or not isinstance(objects, (int, np.integer)) or not MIN_OBJECTS <= objects <= MAX_OBJECTS:
        raise ConfigError(f"objects per composite must be an integer in {MIN_OBJECTS}..{MAX_OBJECTS}, got {objects!r}")
    return int(objects)


def sample_composites(n: int, seed: int, *, objects: int = 2) -> list[CompositeScene]:
    """`n` held-out composites of `objects` objects each; deterministic per (seed, objects), scene i independent of n.

    Per scene: a uniform background; the first object's shape, colour and size uniform; each further object
    a uniform class among those not yet in the scene, with its own uniform size; distinct uniform cells;
    uniform jitter. The first object is the one whose class the benchmark maps ("A").
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    guards.check_count(int(n), "scenes", "the number of scenes", minimum=0)
    objects = _check_objects(objects)
    classes = [(shape, colour) for colour in world.COLOURS for shape in world.SHAPES]
    heldout = world._SPLIT_IDS["heldout"]
    scenes: list[CompositeScene] = []
    for block in range(-(-int(n) // _BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), heldout, block, _COMPOSITE_STREAM, objects]))
        background = rng.integers(len(world.BACKGROUNDS), size=_BLOCK)
        # Per scene: a class permutation, a cell permutation, sizes and jitter; drawn for the whole block.
        class_order = np.argsort(rng.random((_BLOCK, len(classes))), axis=1, kind="stable")[:, :objects]
        cell_order = np.argsort(rng.random((_BLOCK, 9)), axis=1, kind="stable")[:, :objects]
        sizes = rng.integers(len(world.SIZES), size=(_BLOCK, objects))
        jitter = rng.uniform(-1.0, 1.0, size=(_BLOCK, objects, 2))
        for i in range(min(_BLOCK, int(n) - len(scenes))):
            parts = tuple(CompositeObject(classes[c][0], classes[c][1], world.SIZES[sizes[i, k]], int(cell_order[i, k]),
                                          (float(jitter[i, k, 0]), float(jitter[i, k, 1])))
                          for k, c in enumerate(class_order[i]))
            scenes.append(CompositeScene(world.BACKGROUNDS[background[i]], parts))
    return scenes


def render_composite(scene: CompositeScene, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """image uint8 [H, W, 3] and instance mask uint8 [H, W] (0 background, k + 1 = object k), pixel-exact.

    Each object is drawn by the world's `render` alone on the shared background; objects sit in distinct
    cells and stay inside them, so they never overlap."""
    image = mask = None
    for k, obj in enumerate(scene.objects):
        drawn, own = world.render(scene.single(obj), image_size)
        if image is None:
            image, mask = drawn.copy(), np.zeros_like(own)
        inside = own > 0
        image[inside] = drawn[inside]
        mask[inside] = k + 1
    return image, mask
