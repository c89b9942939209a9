"""Reading images and image folders safely.

Every image becomes an 8-bit RGB PIL image before the model's own preprocessing: CMYK, palette,
grey, 16-bit and float images are converted; transparency is composited on white; EXIF rotation
is applied. Non-images, truncated files and images over 50 megapixels are refused with an
ImageError (the pixel count is checked before decoding, so a decompression bomb costs nothing).

Folders: `image_folder(path)` reads the ImageFolder layout (one sub-folder per class; labels are
the folder names, never derived from file order); `image_files(path)` lists a flat folder.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import DatasetError, ImageError

MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We refuse more than MAX_PIXELS ourselves, before decoding; PIL keeps its bomb guard above that.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size and array.max() > 0 else 1.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image(source: str | os.PathLike | bytes | Image.Image | np.ndarray, *, name: str | None = None) -> Image.Image:
    """An 8-bit RGB PIL image from a path, raw bytes, a PIL image or an array [H, W(, C)]."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3) or source.size == 0:
            raise ImageError(f"{label}: expected an array [H, W] or [H, W, C], got shape {source.shape}")
        source = Image.fromarray(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            handle = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
            if isinstance(handle, Path) and not handle.is_file():
                raise ImageError(f"image file not found: {handle}")
            image = Image.open(handle)
        except UnidentifiedImageError as err:
            raise ImageError(f"{label} is not an image file PIL can read.") from err
        except IsADirectoryError as err:
            raise ImageError(f"{label} is a folder, not an image.") from err
        except Image.DecompressionBombError as err:
            raise ImageError(f"{label} is too large to decode safely: {err}") from err
        except OSError as err:
            raise ImageError(f"{label} could not be read (truncated or corrupt): {err}") from err
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{label} has {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is {MAX_PIXELS // 1_000_000}.")
    if width == 0 or height == 0:
        raise ImageError(f"{label} is empty (size {width}x{height}).")
    try:
        image.seek(0)
        image.load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"{label} could not be decoded (truncated or corrupt): {err}") from err


def preprocess_batch(preprocess: Callable, images: Sequence[Image.Image]) -> torch.Tensor:
    """[batch, 3, H, W] model input from RGB PIL images via the model's own preprocessing."""
    return torch.stack([preprocess(image) for image in images])


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder` or below it, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    return files


@dataclass(frozen=True)
class LabelledImages:
    """Image paths with true labels. `labels[i]` indexes `classnames`."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    description: str


def image_folder(folder: str | os.PathLike) -> LabelledImages:
    """The ImageFolder layout: FOLDER/<class name>/<image>. Class names: folder names, '_' as space."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(
            f"{folder} has no class sub-folders; a labelled folder needs the ImageFolder layout "
            "FOLDER/<class name>/<images> (or a labels CSV, see --labels)."
        )
    paths, labels = [], []
    for index, class_dir in enumerate(classes):
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DatasetError(f"no images found in the class folders of {folder}")
    names = [p.name.replace("_", " ") for p in classes]
    return LabelledImages(paths, labels, names, f"{folder} (ImageFolder, {len(paths)} images, {len(names)} classes)")


def labelled_from_csv(csv_path: str | os.PathLike, column: str, *, file_column: str = "file") -> LabelledImages:
    """Labels from a CSV table (e.g. the toy world's labels.csv): image file relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"labels file not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or column not in rows[0] or file_column not in rows[0]:
        found = ", ".join(rows[0].keys()) if rows else "no rows"
        raise DatasetError(f"{csv_path} needs columns {file_column!r} and {column!r}; found: {found}")
    names = sorted({row[column] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    paths = [csv_path.parent / row[file_column] for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image files listed in {csv_path} are missing, e.g. {missing[0]}")
    labels = [index[row[column]] for row in rows]
    return LabelledImages(paths, labels, names, f"{csv_path} (column {column!r}, {len(paths)} images, {len(names)} classes)")


def iter_image_batches(
    paths: Sequence[Path], preprocess: Callable, batch_size: int = 32, *, skipped: list[str] | None = None
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, [batch, 3, H, W]) over `paths`; unreadable files are skipped and named in `skipped`."""
    batch, indices = [], []
    for index, path in enumerate(paths):
        try:
            batch.append(preprocess(load_image(path)))
            indices.append(index)
        except ImageError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
        if len(batch) == batch_size:
            yield indices, torch.stack(batch)
            batch, indices = [], []
    if batch:
        yield indices, torch.stack(batch)
