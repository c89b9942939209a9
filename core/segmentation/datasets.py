"""Segmentation datasets: images with binary foreground masks, and (optionally) class labels.

Specs (`open_dataset`):

- `world:N[:SEED]`: N held-out scenes of the generated world (64 px), exact masks (every object pixel),
  class = "<colour> <shape>" (40 classes, e.g. "red circle"), zero-shot prompts from the world's shape
  templates (singular and plural).
- `world-pairs:N[:SEED[:K]]`: N held-out composites (`core.world.composites`) of K = 2 (default) .. 4
  objects of pairwise different classes on one background. The class is the first object's ("A"), the
  mask its pixels; `others` holds each other object's exact pixels, which the class-specificity scores
  use as negatives. Same classes and prompts as `world`.
- `PATH.mat`: ImageNet-segmentation `gtsegs_ijcv.mat` (Guillaumin et al.; 4,276 images; MATLAB v7.3 =
  HDF5), read with h5py as the papers' loader does: `/value/img[i, 0]` refers to the image, stored in
  reversed axis order (transposed back to H x W x 3); `/value/gt[i, 0]` refers to a 1 x 1 cell whose
  element refers to the mask (transposed back to H x W). No class labels: the class is predicted among
  the 1,000 ImageNet classes with the 80 OpenAI templates, as in the papers.
- `DIR`: a folder with `images/` and `masks/`, each image's mask the PNG of the same relative name
  (`images/a/b.jpg` -> `masks/a/b.png`), binary (values {0, 1} or {0, 255}) and of the image's size.
  Optional `labels.csv` with a `file` column (relative to DIR) and a `class` column; a folder written by
  `python -m core toy scenes` (columns `colour`, `shape`, instance masks 0/1/2) is read as the world.
  Without labels the class is predicted among `classnames` (default: the ImageNet classes).
"""

from __future__ import annotations

import csv
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from core.errors import DatasetError
from core.engine.images import IMAGE_SUFFIXES, load_image

WORLD_IMAGE_SIZE = 64
MAT_KEYS = ("value/img", "value/gt")


@dataclass(frozen=True)
class SegmentationSample:
    index: int
    image: Image.Image  # RGB
    mask: np.ndarray  # bool [H, W], the image's size
    label: int | None  # index into the dataset's classnames, None when unlabelled
    name: str
    # Composites only: bool [other object, H, W], each other object's pixels, and their class indices.
    others: np.ndarray | None = None
    other_labels: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClassPrompts:
    """Class names and their prompts [class][template], for the zero-shot classifier."""

    classnames: list[str]
    prompts: list[list[str]]
    description: str


class SegmentationDataset:
    """Base: `len(ds)`, `ds.sample(i)`, `ds.class_prompts()`; `labelled` says whether samples carry a class."""

    spec: str
    description: str
    labelled: bool

    def __len__(self) -> int:
        raise NotImplementedError

    def sample(self, index: int) -> SegmentationSample:
        raise NotImplementedError

    def class_prompts(self) -> ClassPrompts:
        raise NotImplementedError

    def identity(self) -> dict:
        return {"spec": self.spec, "description": self.description, "count": len(self)}

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise DatasetError(f"sample {index} is out of range: the dataset has {len(self)} images")


# ---------------------------------------------------------------- shared checks

def binary_mask(values: np.ndarray, what: str, *, instances: bool = False) -> np.ndarray:
    """bool [H, W] from a mask array whose values are {0, 1} or {0, 255} (instance ids 0..2 if `instances`)."""
    values = np.asarray(values)
    if values.ndim == 3 and values.shape[-1] in (3, 4) and (values[..., :3] == values[..., :1]).all():
        values = values[..., 0]
    if values.ndim != 2 or values.size == 0:
        raise DatasetError(f"{what} is not a single-channel 2-D mask (shape {values.shape})")
    present = np.unique(values)
    allowed = ({0, 1, 2},) if instances else ({0, 1}, {0, 255})
    if not any(set(present.tolist()) <= ok for ok in allowed):
        shown = ", ".join(f"{v:g}" for v in present[:6]) + (", ..." if len(present) > 6 else "")
        raise DatasetError(f"{what} is not a binary mask: its values are {shown}; expected 0 and 1, or 0 and 255")
    return values > 0


def _check_same_size(image: Image.Image, mask: np.ndarray, what: str) -> None:
    if mask.shape != (image.height, image.width):
        raise DatasetError(f"{what} is {mask.shape[1]}x{mask.shape[0]} but its image is {image.width}x{image.height}; "
                           "a mask must have its image's size")


# ---------------------------------------------------------------- the generated world

def world_class_prompts() -> ClassPrompts:
    from core.world import scenes as world

    names = [f"{colour} {shape}" for colour in world.COLOURS for shape in world.SHAPES]
    plurals = [f"{colour} {world.SHAPE_PLURALS[shape]}" for colour in world.COLOURS for shape in world.SHAPES]
    task = world.ZeroShotTask("object", tuple(names), tuple(names), world.ZERO_SHOT["shape"].templates,
                              plurals=tuple(plurals))
    return ClassPrompts(names, [list(p) for p in task.prompts()],
                        f"world colour x shape classes ({len(names)}), the world's {len(task.templates)} shape templates")


class WorldSegmentation(SegmentationDataset):
    labelled = True

    def __init__(self, n: int, seed: int = 0):
        from core.world import scenes as world

        from core import guards

        n = guards.check_count(n, "scenes", "world:N (scenes)")
        self.scenes = world.sample_scenes(n, seed, split="heldout")
        self.seed = seed
        self.spec = f"world:{n}:{seed}"
        self.description = (f"{n} held-out generated world scenes (seed {seed}, world v{world.WORLD_VERSION}, "
                            f"{WORLD_IMAGE_SIZE} px, exact masks)")
        self._names = world_class_prompts().classnames

    def __len__(self) -> int:
        return len(self.scenes)

    def sample(self, index: int) -> SegmentationSample:
        from core.world import scenes as world

        self._check_index(index)
        scene = self.scenes[index]
        image, mask = world.render(scene, WORLD_IMAGE_SIZE)
        name = f"{scene.colour} {scene.shape}"
        return SegmentationSample(index, Image.fromarray(image), mask > 0, self._names.index(name),
                                  f"scene {index}: {name}{'s' if scene.count > 1 else ''}")

    def class_prompts(self) -> ClassPrompts:
        return world_class_prompts()


class WorldPairsSegmentation(SegmentationDataset):
    """Held-out composites of objects of different classes; the class and mask are the first object's."""

    labelled = True

    def __init__(self, n: int, seed: int = 0, objects: int = 2):
        from core import guards
        from core.world import composites
        from core.world import scenes as world

        n = guards.check_count(n, "scenes", "world-pairs:N (scenes)")
        self.scenes = composites.sample_composites(n, seed, objects=objects)
        self.seed, self.objects = seed, objects
        self.spec = f"world-pairs:{n}:{seed}" + (f":{objects}" if objects != 2 else "")
        self.description = (f"{n} held-out world composites of {objects} objects of different classes (seed {seed}, "
                            f"world v{world.WORLD_VERSION}, {WORLD_IMAGE_SIZE} px, exact per-object masks; the class "
                            "is the first object's, the others' pixels are its negatives)")
        self._names = world_class_prompts().classnames

    def __len__(self) -> int:
        return len(self.scenes)

    def sample(self, index: int) -> SegmentationSample:
        from core.world.composites import render_composite

        self._check_index(index)
        scene = self.scenes[index]
        image, mask = render_composite(scene, WORLD_IMAGE_SIZE)
        others = np.stack([mask == k + 1 for k in range(1, len(scene.objects))])
        labels = [self._names.index(name) for name in scene.classes]
        return SegmentationSample(index, Image.fromarray(image), mask == 1, labels[0],
                                  f"composite {index}: {' vs '.join(scene.classes)} on {scene.background}",
                                  others, tuple(labels[1:]))

    def class_prompts(self) -> ClassPrompts:
        return world_class_prompts()


# ---------------------------------------------------------------- ImageNet-segmentation (.mat, HDF5)

def imagenet_class_prompts() -> ClassPrompts:
    from core.engine.text import format_templates, imagenet_classifier_texts

    names, templates = imagenet_classifier_texts()
    prompts = format_templates(names, templates)
    step = len(templates)
    return ClassPrompts(names, [prompts[i:i + step] for i in range(0, len(prompts), step)],
                        "ImageNet classes (1,000), the 80 OpenAI templates")


class ImageNetSegmentation(SegmentationDataset):
    labelled = False

    def __init__(self, path: str | os.PathLike, classnames: Sequence[str] | None = None):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"ImageNet-segmentation file not found: {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise DatasetError(f"{self.path} is not an HDF5 file (ImageNet-segmentation's gtsegs_ijcv.mat is a MATLAB "
                               "v7.3 file, which is HDF5)") from err
        sizes = []
        for key in MAT_KEYS:
            node = self._file.get(key)
            if not isinstance(node, h5py.Dataset) or h5py.check_dtype(ref=node.dtype) is not h5py.Reference \
                    or node.ndim != 2 or node.shape[1] != 1:
                raise DatasetError(f"{self.path} does not have the ImageNet-segmentation layout: expected /{MAT_KEYS[0]} "
                                   f"and /{MAT_KEYS[1]}, [N, 1] arrays of object references (found: "
                                   f"{_describe_node(node)} at /{key})")
            sizes.append(node.shape[0])
        if sizes[0] != sizes[1] or sizes[0] == 0:
            raise DatasetError(f"{self.path}: /{MAT_KEYS[0]} has {sizes[0]} entries and /{MAT_KEYS[1]} {sizes[1]}; "
                               "expected the same, non-zero number")
        self._count = sizes[0]
        self._classnames = list(classnames) if classnames else None
        self.spec = str(self.path)
        self.description = f"ImageNet-segmentation {self.path.name} ({self._count} images, no class labels)"

    def __len__(self) -> int:
        return self._count

    def _deref(self, ref, what: str) -> np.ndarray:
        try:
            return np.asarray(self._file[ref])
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise DatasetError(f"{self.path}: {what} is not a valid object reference ({err})") from err

    def sample(self, index: int) -> SegmentationSample:
        self._check_index(index)
        what = f"{self.path.name} image {index}"
        array = self._deref(self._file[MAT_KEYS[0]][index, 0], what)
        if array.ndim != 3 or array.shape[0] != 3 or array.dtype != np.uint8:
            raise DatasetError(f"{what} is stored as {array.dtype} {array.shape}; expected uint8 [3, W, H]")
        image = Image.fromarray(np.ascontiguousarray(array.transpose(2, 1, 0))).convert("RGB")
        cell = self._deref(self._file[MAT_KEYS[1]][index, 0], f"{what}'s mask cell")
        if cell.ndim != 2 or cell.size == 0 or cell.dtype != object:
            raise DatasetError(f"{what}'s mask cell is {cell.dtype} {cell.shape}; expected a cell of object references")
        mask = binary_mask(self._deref(cell[0, 0], f"{what}'s mask").T, f"{what}'s mask")
        _check_same_size(image, mask, f"{what}'s mask")
        return SegmentationSample(index, image, mask, None, f"image {index}")

    def class_prompts(self) -> ClassPrompts:
        return _custom_prompts(self._classnames) if self._classnames else imagenet_class_prompts()


def _describe_node(node) -> str:
    if node is None:
        return "nothing"
    shape = getattr(node, "shape", None)
    return f"{type(node).__name__} {getattr(node, 'dtype', '')} {shape if shape is not None else ''}".strip()


def write_imagenet_segmentation(path: str | os.PathLike, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Path:
    """Write images (uint8 [H, W, 3]) and masks ([H, W]) in gtsegs_ijcv.mat's HDF5 layout (for subsets and tests)."""
    import h5py

    path = Path(path)
    if path.exists():
        raise DatasetError(f"{path} exists; choose a new file name")
    with h5py.File(path, "w") as handle:
        refs = handle.create_group("#refs#")
        img = handle.create_dataset(f"{MAT_KEYS[0]}", (len(images), 1), dtype=h5py.ref_dtype)
        gt = handle.create_dataset(f"{MAT_KEYS[1]}", (len(masks), 1), dtype=h5py.ref_dtype)
        for i, (image, mask) in enumerate(zip(images, masks)):
            img[i, 0] = refs.create_dataset(f"img{i}", data=np.asarray(image, np.uint8).transpose(2, 1, 0)).ref
            target = refs.create_dataset(f"gt{i}", data=np.asarray(mask, np.uint8).T).ref
            cell = refs.create_dataset(f"cell{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = target
            gt[i, 0] = cell.ref
    return path


# ---------------------------------------------------------------- a folder of images and masks

def _custom_prompts(classnames: Sequence[str]) -> ClassPrompts:
    from core.engine.text import format_templates, imagenet_classifier_texts

    templates = imagenet_classifier_texts()[1]
    prompts = format_templates(classnames, templates)
    step = len(templates)
    return ClassPrompts(list(classnames), [prompts[i:i + step] for i in range(0, len(prompts), step)],
                        f"{len(classnames)} classes, the 80 OpenAI templates")


class FolderSegmentation(SegmentationDataset):
    def __init__(self, folder: str | os.PathLike, classnames: Sequence[str] | None = None):
        self.folder = Path(folder)
        images_dir, masks_dir = self.folder / "images", self.folder / "masks"
        if not images_dir.is_dir() or not masks_dir.is_dir():
            raise DatasetError(f"{self.folder} needs an images/ and a masks/ folder (each image's mask: the PNG of the "
                               "same relative name under masks/)")
        self.files = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {images_dir}")
        self.masks = [masks_dir / p.relative_to(images_dir).with_suffix(".png") for p in self.files]
        missing = [m for m in self.masks if not m.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} of {len(self.files)} images have no mask, e.g. {missing[0]} is missing")
        self.instances = False
        self.labels, self._prompts = self._read_labels(classnames)
        self.labelled = self.labels is not None
        self.spec = str(self.folder)
        self.description = (f"{self.folder} ({len(self.files)} images with masks, "
                            f"{'labelled: ' + self._prompts.description if self.labelled else 'no class labels'})")

    def _read_labels(self, classnames):
        table = self.folder / "labels.csv"
        if not table.is_file():
            return None, _custom_prompts(classnames) if classnames else imagenet_class_prompts()
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        columns = set(rows[0]) if rows else set()
        if "file" not in columns or not ({"class"} <= columns or {"colour", "shape"} <= columns):
            raise DatasetError(f"{table} needs a 'file' column and a 'class' column (or the world's 'colour' and "
                               f"'shape'); found: {', '.join(sorted(columns)) or 'no rows'}")
        by_file = {}
        for row in rows:
            name = row["class"] if "class" in columns else f"{row['colour']} {row['shape']}"
            by_file[(self.folder / row["file"]).resolve()] = name.strip()
        unlisted = [p for p in self.files if p.resolve() not in by_file]
        if unlisted:
            raise DatasetError(f"{len(unlisted)} images are not in {table}, e.g. {unlisted[0]}")
        names = [by_file[p.resolve()] for p in self.files]
        if "class" not in columns:
            self.instances = "count" in columns  # the world's instance masks: 0 background, 1 and 2 objects
            prompts = world_class_prompts()
            unknown = sorted(set(names) - set(prompts.classnames))
            if unknown:
                raise DatasetError(f"{table}: {unknown[0]!r} is not a colour x shape class of the generated world")
        else:
            if any(not n for n in names):
                raise DatasetError(f"{table} has an empty class name")
            prompts = _custom_prompts(sorted(set(names)))
        return [prompts.classnames.index(n) for n in names], prompts

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, index: int) -> SegmentationSample:
        self._check_index(index)
        image = load_image(self.files[index])
        what = f"mask {self.masks[index]}"
        try:
            with Image.open(self.masks[index]) as picture:
                values = np.asarray(picture.convert("L") if picture.mode == "1" else picture)
        except (OSError, ValueError) as err:
            raise DatasetError(f"{what} could not be read: {err}") from err
        mask = binary_mask(values, what, instances=self.instances)
        _check_same_size(image, mask, what)
        label = self.labels[index] if self.labels is not None else None
        return SegmentationSample(index, image, mask, label, str(self.files[index].relative_to(self.folder)))

    def class_prompts(self) -> ClassPrompts:
        return self._prompts


class FirstImages(SegmentationDataset):
    """The first `n` images of another dataset (a quick check before a full run)."""

    def __init__(self, dataset: SegmentationDataset, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DatasetError(f"the number of images must be a positive integer, got {n!r}")
        self.dataset, self.count = dataset, min(n, len(dataset))
        self.labelled = dataset.labelled
        self.spec = f"{dataset.spec}[:{self.count}]"
        self.description = f"the first {self.count} images of {dataset.description}"

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> SegmentationSample:
        self._check_index(index)
        return self.dataset.sample(index)

    def class_prompts(self) -> ClassPrompts:
        return self.dataset.class_prompts()


def first_images(dataset: SegmentationDataset, n: int) -> SegmentationDataset:
    return FirstImages(dataset, n)


# ---------------------------------------------------------------- specs

def open_dataset(spec: str, classnames: Sequence[str] | None = None) -> SegmentationDataset:
    """The dataset named by `spec` (see the module docstring); `classnames` for unlabelled data's prediction.

    world:N is bounded by core.guards; a path must be one this server may read (public mode: none)."""
    from core import guards

    if not isinstance(spec, str):
        raise DatasetError(f"a dataset spec must be a string, got {type(spec).__name__}")
    spec = spec.strip()
    if spec.startswith("world-pairs:"):
        try:
            numbers = [int(part) for part in spec.split(":")[1:]]
        except ValueError:
            raise DatasetError(f"a composite dataset world-pairs:N[:SEED[:K]] needs integers, got {spec[:60]!r}") from None
        if not 1 <= len(numbers) <= 3:
            raise DatasetError(f"a composite dataset is world-pairs:N[:SEED[:K]], got {spec[:60]!r}")
        n = guards.check_count(numbers[0], "scenes", "world-pairs:N (scenes)")
        seed = numbers[1] if len(numbers) >= 2 else 0
        if seed < 0:
            raise DatasetError(f"world-pairs:N:SEED needs a seed >= 0, got {seed}")
        from core.world.composites import MAX_OBJECTS, MIN_OBJECTS

        objects = numbers[2] if len(numbers) == 3 else 2
        if not MIN_OBJECTS <= objects <= MAX_OBJECTS:
            raise DatasetError(f"world-pairs:N:SEED:K needs K (objects per scene) in {MIN_OBJECTS}..{MAX_OBJECTS}, "
                               f"got {objects}")
        return WorldPairsSegmentation(n, seed, objects)
    if spec.startswith("world:"):
        try:
            numbers = [int(part) for part in spec.split(":")[1:]]
        except ValueError:
            raise DatasetError(f"a world dataset world:N[:SEED] needs integers, got {spec[:60]!r}") from None
        if not 1 <= len(numbers) <= 2:
            raise DatasetError(f"a world dataset is world:N[:SEED], got {spec[:60]!r}")
        n = guards.check_count(numbers[0], "scenes", "world:N (scenes)")
        seed = numbers[1] if len(numbers) == 2 else 0
        if seed < 0:
            raise DatasetError(f"world:N:SEED needs a seed >= 0, got {seed}")
        return WorldSegmentation(n, seed)
    if not spec:
        raise DatasetError("no dataset given (empty): use world:N:SEED, world-pairs:N:SEED, a gtsegs_ijcv.mat file, "
                           "or a folder with images/ and masks/")
    path = guards.check_user_path(spec, "dataset", hint="use world:N:SEED for generated scenes").expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DatasetError(f"dataset not found: {spec[:200]}; use world:N:SEED, a gtsegs_ijcv.mat file, or a folder "
                           "with images/ and masks/") from None
    except (OSError, ValueError) as err:
        raise DatasetError(f"dataset {spec[:200]} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    if stat.S_ISDIR(mode):
        return FolderSegmentation(path, classnames)
    if not stat.S_ISREG(mode):
        raise DatasetError(f"dataset {spec[:200]} is not a regular file or a folder (a pipe or a device?)")
    return ImageNetSegmentation(path, classnames)


def read_classnames(path: str | os.PathLike) -> list[str]:
    """Class names, one per line (for unlabelled datasets' predicted class)."""
    from core.engine.text import read_text_pool

    names, _ = read_text_pool(path)
    return names

