"""A planted shape-background bias: ground truth for spurious cues (Waterbirds' four groups, transposed).

In the *training* split, triangles are drawn on dotted backgrounds and squares on striped ones with
probability p (the shipped `toy-biased` setting, p = 0.9); the other backgrounds share the rest
uniformly. Other shapes keep uniform backgrounds ("uniform"), or move off the biased backgrounds
with probability p ("avoid", measured in docs/models.md). Held-out scenes stay
uniform, so a model that learned the shortcut is caught by the bias-conflicting groups:

    group                       triangle on dotted | triangle on striped | square on dotted | square on striped
    Waterbirds analogue          aligned            | conflicting         | conflicting      | aligned

>>> bias = PlantedBias.parse("triangle:dotted,square:striped", p=0.9)
>>> scenes = sample_scenes(64, seed=0, split="train", bias=bias)
>>> bias.group("square", "dotted")       # "conflicting"
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from core.errors import ConfigError
from core.world import scenes as world

OTHERS = ("uniform", "avoid")
SHIPPED = "triangle:dotted,square:striped"
METADATA_COLUMNS = ("file", "label", "group", "shape", "background", "alignment", "colour", "size", "position", "count")


@dataclass(frozen=True)
class PlantedBias:
    """Shape -> background correlations of the training split.

    pairs: (shape, background) pairs, shapes distinct and backgrounds distinct.
    p: probability that a paired shape is drawn on its background (the others share 1 - p uniformly).
    others: "uniform" (other shapes keep uniform backgrounds) or "avoid" (with probability p an
        other shape drawn on a paired background is moved to an unpaired one).
    """

    pairs: tuple[tuple[str, str], ...] = (("triangle", "dotted"), ("square", "striped"))
    p: float = 0.9
    others: str = "uniform"

    def __post_init__(self):
        pairs = tuple((str(s), str(b)) for s, b in self.pairs)
        if not pairs:
            raise ConfigError("a planted bias needs at least one shape:background pair")
        world._check_names("shape", [s for s, _ in pairs], world.SHAPES)
        world._check_names("background", [b for _, b in pairs], world.BACKGROUNDS)
        if len({s for s, _ in pairs}) != len(pairs) or len({b for _, b in pairs}) != len(pairs):
            raise ConfigError(f"each shape and each background may appear in one pair only, got {self.describe_pairs(pairs)}")
        if len(pairs) == len(world.BACKGROUNDS):
            raise ConfigError("leave at least one background unpaired")
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= float(self.p) <= 1.0:
            raise ConfigError(f"bias probability p must be a number in [0, 1], got {self.p!r}")
        if self.others not in OTHERS:
            raise ConfigError(f"unknown setting for other shapes {self.others!r}; valid values: {', '.join(OTHERS)}")
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "p", float(self.p))

    @classmethod
    def parse(cls, text: str, p: float = 0.9, others: str = "uniform") -> "PlantedBias":
        """From "triangle:dotted,square:striped" (the shipped pairs)."""
        pairs = []
        for item in filter(None, (part.strip() for part in str(text).split(","))):
            shape, colon, background = (part.strip() for part in item.partition(":"))
            if not colon or not shape or not background:
                raise ConfigError(f"bias pair {item!r} must read SHAPE:BACKGROUND, e.g. {SHIPPED}")
            pairs.append((shape, background))
        return cls(tuple(pairs), p, others)

    @staticmethod
    def describe_pairs(pairs) -> str:
        return ",".join(f"{s}:{b}" for s, b in pairs)

    @property
    def spec(self) -> str:
        return self.describe_pairs(self.pairs)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.pairs)

    @property
    def backgrounds(self) -> tuple[str, ...]:
        return tuple(b for _, b in self.pairs)

    def describe(self) -> str:
        rules = "; ".join(f"{s}s on {b} backgrounds with probability {self.p:g}" for s, b in self.pairs)
        rest = ("other shapes keep uniform backgrounds" if self.others == "uniform" else
                f"other shapes move off {' and '.join(self.backgrounds)} backgrounds with probability {self.p:g}")
        return f"training split only: {rules}; {rest}; held-out scenes uniform"

    def as_dict(self) -> dict:
        return {"pairs": [list(pair) for pair in self.pairs], "p": self.p, "others": self.others,
                "description": self.describe()}

    # ------------------------------------------------------------ planting

    def background(self, shape: str, background: str, u: float, v: float) -> str:
        """The planted background of a scene drawn with (shape, background), from two uniforms u, v in [0, 1)."""
        paired = dict(self.pairs)
        if shape in paired:
            target = paired[shape]
            if u < self.p:
                return target
            rest = [b for b in world.BACKGROUNDS if b != target]
            return rest[int(v * len(rest))]
        if self.others == "avoid" and background in self.backgrounds and u < self.p:
            free = [b for b in world.BACKGROUNDS if b not in self.backgrounds]
            return free[int(v * len(free))]
        return background

    def plant(self, scenes: list[world.Scene], rng: np.random.Generator) -> list[world.Scene]:
        """Scenes with their backgrounds redrawn by the bias (two uniforms per scene, always drawn)."""
        draws = rng.random((len(scenes), 2))
        return [replace(scene, background=self.background(scene.shape, scene.background, u, v))
                for scene, (u, v) in zip(scenes, draws.tolist())]

    # ------------------------------------------------------------ groups

    def group(self, shape: str, background: str) -> str | None:
        """"aligned" / "conflicting" for a paired shape on a paired background, else None."""
        if shape not in self.shapes or background not in self.backgrounds:
            return None
        return "aligned" if (shape, background) in self.pairs else "conflicting"

    def groups(self) -> list[tuple[str, str, str]]:
        """(shape, background, alignment) for every paired shape on every paired background."""
        return [(s, b, self.group(s, b)) for s in self.shapes for b in self.backgrounds]


def planted_bias_of(bundle) -> PlantedBias | None:
    """The planted bias a model was trained with, read from its own checkpoint's metadata (`python -m core toy
    train --bias ...` records the pairs, p and the rule for other shapes); None when it records none (e.g.
    `toy`, or a model clipscope did not train). Never a list kept elsewhere: the weights say what they learned."""
    from core.world.checkpoints import checkpoint_config

    if bundle.info.source not in ("toy", "file") or not str(bundle.info.pretrained).endswith(".safetensors"):
        return None
    config = checkpoint_config(Path(bundle.info.pretrained).expanduser())
    if not config or not config.get("bias"):
        return None
    return PlantedBias.parse(config["bias"], p=config.get("bias_p", 0.9), others=config.get("bias_others", "uniform"))


def model_bias(bundle, pairs: str | None = None) -> PlantedBias:
    """`pairs` if given ("triangle:dotted,square:striped"), else the bias the model's checkpoint records;
    ConfigError naming what to do when neither says."""
    if pairs:
        return PlantedBias.parse(pairs)
    bias = planted_bias_of(bundle)
    if bias is None:
        raise ConfigError(f"{bundle.info.spec} records no planted bias in its checkpoint (only models trained by "
                          "`python -m core toy train --bias SHAPE:BACKGROUND,...` do): give the pairs with --pairs")
    return bias


def group_name(shape: str, background: str, alignment: str) -> str:
    return f"{shape} on {background} ({alignment})"


def heldout_group_scenes(bias: PlantedBias, n_per_group: int, seed: int) -> Iterator[tuple[str, str, str, world.Scene]]:
    """(shape, background, alignment, scene): n_per_group uniform held-out scenes per group, fixed order."""
    for index, (shape, background, alignment) in enumerate(bias.groups()):
        # One seed per group, so adding a group never changes another group's scenes.
        for scene in world.sample_scenes(n_per_group, seed * 101 + index, split="heldout", shapes=(shape,),
                                         backgrounds=(background,)):
            yield shape, background, alignment, scene


def write_grouped_scenes(out_dir, bias: PlantedBias, n_per_group: int, seed: int, *, image_size: int = 64) -> Path:
    """Write held-out scenes of every group in the Waterbirds layout: images/NNNNNN.png and metadata.csv.

    metadata.csv: file, label (the shape: the class), group ("square on dotted (conflicting)"), and the
    scene's other attributes. `python -m core spurious --images OUT` reads it. Refuses a folder that holds files.
    """
    n_per_group = world._check_int("n_per_group", n_per_group, 1)
    image_size = world._check_image_size(image_size)
    import io

    from core.writes import OutputFolder

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already holds files; choose a new or empty folder (nothing is overwritten)")
    folder = OutputFolder(out, "grouped-scenes", require="empty")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(METADATA_COLUMNS)
    try:
        for i, (shape, background, alignment, scene) in enumerate(heldout_group_scenes(bias, n_per_group, seed)):
            name = f"images/{i:06d}.png"
            folder.write_image(name, Image.fromarray(world.render(scene, image_size)[0]), save=False)
            writer.writerow([name, shape, group_name(shape, background, alignment), shape, background, alignment,
                             scene.colour, scene.size, scene.position, scene.count])
        folder.write_bytes("metadata.csv", table.getvalue().encode("utf-8"), save=False)
    except BaseException:
        folder.clear()  # an unfinished set is removed: exactly the files written here, and the folders made
        raise
    folder.save()
    return out


def group_accuracy_table(bundle, bias: PlantedBias, *, n_per_group: int = 200, seed: int = 0,
                         batch_size: int = 200) -> dict:
    """Binary zero-shot shape accuracy (between the paired shapes) per group on uniform held-out scenes.

    The classifier uses the world's shape templates with the model's own text embeddings. Returns
    {"groups": {name: accuracy}, "aligned", "conflicting" (means over groups), "gap" (aligned -
    conflicting), "worst_group", "worst", "classes", "n_per_group", "seed"}.
    """
    import torch

    from core.engine.text import prompt_classifier
    from core.world.pixels import to_pixels

    task = world.ZERO_SHOT["shape"]
    prompts = [task.prompts()[task.classnames.index(s)] for s in bias.shapes]
    classifier = prompt_classifier(bundle, prompts)
    rows = list(heldout_group_scenes(bias, n_per_group, seed))
    correct: dict[str, list[bool]] = {}
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            images, _ = world.render_batch([r[3] for r in chunk], bundle.info.image_size)
            features = torch.nn.functional.normalize(bundle.model.encode_image(to_pixels(images).to(bundle.device)), dim=-1)
            predicted = (features @ classifier.to(features).T).argmax(-1).tolist()
            for (shape, background, alignment, _), p in zip(chunk, predicted):
                correct.setdefault(group_name(shape, background, alignment), []).append(bias.shapes[p] == shape)
    groups = {name: float(np.mean(hits)) for name, hits in correct.items()}
    aligned = float(np.mean([v for k, v in groups.items() if k.endswith("(aligned)")]))
    conflicting = float(np.mean([v for k, v in groups.items() if k.endswith("(conflicting)")]))
    worst = min(groups, key=lambda k: (groups[k], k))
    return {"classes": list(bias.shapes), "groups": groups, "aligned": aligned, "conflicting": conflicting,
            "gap": aligned - conflicting, "worst_group": worst, "worst": groups[worst],
            "n_per_group": n_per_group, "seed": seed}
