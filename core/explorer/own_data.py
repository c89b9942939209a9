"""The Segmentation tab's "your own data" panel: images a visitor uploads with their own ground-truth masks, scored
by every method side by side with the papers' metrics.

The uploads are laid out as the folder `python -m core segeval --dataset FOLDER` reads (images/, masks/ as 0/255
PNGs, labels.csv when a class is given) in a folder of the caller's (the UI: the visitor's session folder), and
scored by `core.segmentation.evaluate.evaluate` itself (the aligned protocol, metrics of
core.segmentation.metrics): the same numbers as that command. Per image, a grid shows each method's map with its
IoU and AP against the mask.

>>> view = evaluate_uploads("toy", ["cat.png"], ["cat_mask.png"], "a cat", work=session_folder)
>>> view.rows, view.grids, view.command
"""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from core import budget, settings
from core.errors import ConfigError, DatasetError
from core.explorer import access
from core import engine
from core.explorer.common import Progress, progress_or_silent

LIMITS = {"public": 8, "local": 200}  # images per evaluation
METRIC_COLUMNS = ["method", "pixel accuracy %", "mIoU %", "mAP %", "AP-foreground %", "mIoU per image %"]
MASK_SUFFIXES = ("_mask", "-mask", ".mask", "_gt", "-gt")


@dataclass(frozen=True)
class OwnDataView:
    info: str
    rows: list[dict]  # one per method: the dataset metrics (percent)
    per_image: list[dict]  # one per image and method: IoU and AP of that image
    grids: list[tuple[Image.Image, str]]  # per image: the true mask, then every method's map with its IoU and AP
    command: str
    report: object  # core.segmentation.evaluate.EvaluationReport


def _stem(path: str) -> str:
    stem = Path(path).stem.lower()
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_uploads(images: Sequence[str], masks: Sequence[str]) -> list[tuple[str, str]]:
    """(image, mask) pairs: one of each, or matched by file name (cat.png with cat.png, cat_mask.png or cat-gt.png)."""
    images, masks = [str(p) for p in images or [] if p], [str(p) for p in masks or [] if p]
    if not images:
        raise ConfigError("Upload at least one image and its ground-truth mask.")
    if len(images) != len(masks):
        raise ConfigError(f"Upload one mask per image: got {len(images)} images and {len(masks)} masks.")
    if len(images) == 1:
        return [(images[0], masks[0])]
    by_stem = {}
    for mask in masks:
        by_stem.setdefault(_stem(mask), []).append(mask)
    pairs = []
    for image in images:
        found = by_stem.get(_stem(image), [])
        if len(found) != 1:
            raise ConfigError(f"No single mask matches the image {Path(image).name}: name each mask like its image "
                              "(cat.png with cat.png, cat_mask.png or cat-gt.png).")
        pairs.append((image, found[0]))
    return pairs


def _read_mask(path: str) -> np.ndarray:
    from core.segmentation.datasets import binary_mask

    name = f"the mask {Path(path).name}"
    try:
        with Image.open(path) as picture:
            picture.load()
            values = np.asarray(picture.convert("L") if picture.mode in ("1", "P", "LA") else picture)
    except (OSError, ValueError):
        raise DatasetError(f"{name} is not an image this app can read.") from None
    return binary_mask(values, name)


def write_folder(pairs: list[tuple[str, str]], class_text: str | None, work: Path) -> Path:
    """The uploads as a segeval folder (images/, masks/, labels.csv) in a new folder below `work`."""
    from core.engine.images import load_image
    from core.segmentation.datasets import check_same_size
    from core.writes import OutputFolder

    folder = Path(tempfile.mkdtemp(prefix="own-segmentation-", dir=work))
    out = OutputFolder(folder, "own-segmentation", require="empty", what="evaluation folder")
    rows = []
    for index, (image_path, mask_path) in enumerate(pairs):
        image = load_image(image_path, name=f"the image {Path(image_path).name}")
        mask = _read_mask(mask_path)
        check_same_size(image, mask, f"the mask {Path(mask_path).name}")
        name = f"{index:03d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(image_path).stem)[:40]}"
        out.write_image(f"images/{name}.png", image, save=False)
        out.write_image(f"masks/{name}.png", Image.fromarray(mask.astype(np.uint8) * 255), save=False)
        rows.append((f"images/{name}.png", class_text))
    if class_text:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("file", "class"))
        writer.writerows(rows)
        out.write_text("labels.csv", buffer.getvalue(), save=False)
    out.save()
    return folder


def _cost(bundle, images: int, methods: int) -> budget.Cost:
    sizes = budget.model_sizes(bundle)
    return budget.Cost("this evaluation", int(budget.forward_bytes(sizes, 8) * 3),
                       images * methods * budget.image_seconds(sizes, passes=3) + 2.0,
                       "the number of images or methods")


def evaluate_uploads(spec: str | None, images: Sequence[str], masks: Sequence[str], class_text: str | None = None,
                     methods: Sequence[str] | None = None, *, work: str | Path, progress: Progress | None = None
                     ) -> OwnDataView:
    """Every chosen method (default: all) on the uploaded images against their masks, as `segeval` scores them."""
    from core.segmentation.datasets import FolderSegmentation
    from core.segmentation.evaluate import evaluate
    from core.segmentation import METHODS

    progress = progress_or_silent(progress)
    methods = list(dict.fromkeys(methods or METHODS))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"Unknown method {unknown[0]!r}; choose among {', '.join(METHODS)}.")
    limit = LIMITS["public" if settings.public() else "local"]
    count = len([p for p in images or [] if p])
    if count > limit:
        raise ConfigError(f"At most {limit} images per evaluation on this server, got {count}.")
    pairs = pair_uploads(images, masks)
    class_text = access.check_length(class_text, "The class text").strip() or None
    bundle = engine.load_clip(spec, progress=progress)
    budget.admit(_cost(bundle, len(pairs), len(methods)))
    progress(0.1, desc="reading the uploads")
    folder = write_folder(pairs, class_text, Path(work))
    dataset = FolderSegmentation(folder)
    progress(0.2, desc="segmenting with every method")
    report = evaluate(bundle, dataset, methods, state_dir=folder / "state", save_maps=folder / "maps",
                      random_draws=1, progress=progress)
    progress(0.9, desc="the grids")
    return _view(bundle, dataset, folder, report, methods, class_text)


def _percent(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(100 * value, 2)


def _view(bundle, dataset, folder: Path, report, methods: list[str], class_text: str | None) -> OwnDataView:
    from core.segmentation.metrics import image_scores
    from core.segmentation.pictures import heat_picture, mask_picture, side_by_side
    from core.segmentation.protocols import binarise

    rows = [{"method": r.method, "pixel accuracy %": _percent(r.metrics["pixel_accuracy"]),
             "mIoU %": _percent(r.metrics["miou"]), "mAP %": _percent(r.metrics["map"]),
             "AP-foreground %": _percent(r.metrics["ap_foreground"]),
             "mIoU per image %": _percent(r.metrics["miou_per_image"])} for r in report.results]
    per_image, grids = [], []
    maps_dir = folder / "maps"
    for i in range(len(dataset)):
        truth = np.asarray(Image.open(maps_dir / f"{i:05d}_mask.png")) > 127
        view = _view_picture(dataset.sample(i).image, bundle, report.results[0].protocol.geometry)
        pictures = [mask_picture(view, truth, title="ground truth", colour=(40, 200, 40), display=160)]
        for result in report.results:
            scores = np.load(maps_dir / result.method / f"{i:05d}_map.npy")
            prediction = binarise(scores[None], result.protocol.threshold)[0]
            terms = image_scores(scores, prediction, truth)
            iou = terms.intersection[1] / terms.union[1] if terms.union[1] else float("nan")
            per_image.append({"image": dataset.sample(i).name, "method": result.method, "IoU %": _percent(iou),
                              "AP %": _percent(terms.ap), "AP-foreground %": _percent(terms.ap_foreground)})
            pictures.append(heat_picture(view, scores, title=f"{result.method}: IoU {100 * iou:.1f}, "
                                         f"AP {100 * terms.ap:.1f}", display=160))
        grids.append((side_by_side(pictures), dataset.sample(i).name))
    command = (f"python -m core segeval --model {bundle.info.spec} --dataset YOUR_FOLDER "
               + " ".join(f"--method {m}" for m in methods) + " --random-draws 1")
    classes = (f"the given class '{class_text}' (80 OpenAI templates)" if class_text
               else "no class given: the class is predicted among the ImageNet classes")
    info = (f"**Model:** {bundle.info.display_name} (`{bundle.info.spec}`)  \n**Images:** {len(dataset)} uploaded with "
            f"their masks; {classes}; protocol {report.protocol} "
            f"({report.results[0].protocol.describe()}).  \n"
            "Metrics as the papers' code: pixel accuracy and mIoU summed over the images, mAP (two-channel) and "
            "AP-foreground averaged over images, percent. The grids show each method's map with that image's IoU "
            "(foreground) and AP.  \nSame numbers from the command line, on a folder with images/ and masks/ (0/255 "
            f"PNGs of the same names){' and labels.csv (file,class)' if class_text else ''}: `{command}`")
    return OwnDataView(info, rows, per_image, grids, command, report)


def _view_picture(image: Image.Image, bundle, geometry: str) -> Image.Image:
    """The image as the model sees it (the protocol's resize and crop), for the grids' backgrounds."""
    from core.segmentation.protocols import geometry_steps

    size = bundle.info.image_size
    if geometry == "squash":
        return image.convert("RGB").resize((size, size), Image.BILINEAR)
    picture = image.convert("RGB")
    for step in geometry_steps(bundle.preprocess):
        picture = step(picture)
    return picture
