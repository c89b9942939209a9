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
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core import guards
from core.errors import DatasetError, ImageError

if TYPE_CHECKING:  # torch is imported where a batch is stacked: reading an image needs none of it
    import torch

MAX_PIXELS = guards.MAX_IMAGE_PIXELS  # public servers: guards.PUBLIC_MAX_IMAGE_PIXELS
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We refuse more than MAX_PIXELS ourselves, before decoding; PIL keeps its bomb guard above that.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def _to_rgb(image: Image.Image, label: str = "the image") -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        # A float or 32-bit image has no fixed white: scale by its maximum. NaN, Inf or negative values have no
        # meaning as brightness (clipping them would silently give a black image), so they are refused.
        if not np.isfinite(array).all():
            raise ImageError(f"{label} holds NaN or infinite pixel values; save it as an 8- or 16-bit image")
        if array.size and array.min() < 0:
            raise ImageError(f"{label} holds negative pixel values (minimum {array.min():.4g}); rescale it to "
                             "0..max and save it as an 8- or 16-bit image")
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
        try:
            source = Image.fromarray(source)
        except (TypeError, ValueError) as err:
            raise ImageError(f"{label}: an array of {source.dtype} with shape {source.shape} is not an image "
                             f"({err})") from None
    if isinstance(source, Image.Image):
        image = source
    else:
        if isinstance(source, bytes):
            guards.check_bytes(len(source), "image_bytes", label)
        try:
            handle = io.BytesIO(source) if isinstance(source, bytes) else _image_file(Path(source))
            image = Image.open(handle)
        except UnidentifiedImageError as err:
            raise ImageError(f"{label} is not an image file PIL can read.") from err
        except IsADirectoryError as err:
            raise ImageError(f"{label} is a folder, not an image.") from err
        except PermissionError as err:
            raise ImageError(f"{label} cannot be read: permission denied") from err
        except Image.DecompressionBombError as err:
            raise ImageError(f"{label} is too large to decode safely: {err}") from err
        except OSError as err:
            raise ImageError(f"{label} could not be read (truncated or corrupt): {err}") from err
    width, height = image.size
    most = guards.limit("image_pixels")
    if width * height > most:
        raise ImageError(f"{label} has {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                         f"{most // 1_000_000}.")
    if width == 0 or height == 0:
        raise ImageError(f"{label} is empty (size {width}x{height}).")
    try:
        image.seek(0)
        image.load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image, label)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, IndexError, struct.error,
            ZeroDivisionError, MemoryError) as err:
        # PIL's decoders raise all of these on crafted or truncated files
        raise ImageError(f"{label} could not be decoded (truncated or corrupt): {err}") from err


def _image_file(path: Path) -> Path:
    """`path` if it is a regular image file within the byte bound (a FIFO or device is never opened)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise ImageError(f"image file {path} cannot be read: {getattr(err, 'strerror', None) or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path} is a folder, not an image.")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"{path} is not a regular file (a pipe or a device?), not an image.")
    guards.check_bytes(info.st_size, "image_bytes", f"image file {path.name}")
    return path


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder` or below it, sorted by path (at most the core.guards gallery bound)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    files = sorted(p for p in _walk(folder) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    guards.check_count(len(files), "gallery", f"the number of images in {folder}")
    return files


def _walk(folder: Path) -> Iterator[Path]:
    """Files below `folder`, not following symlinked folders (no loops), stopping past the gallery bound."""
    most = guards.limit("gallery")
    seen = 0
    try:
        for root, _, names in os.walk(folder, onerror=None, followlinks=False):
            for name in names:
                seen += 1
                if seen > 20 * most + 10_000:
                    raise DatasetError(f"{folder} holds over {seen - 1:,} files; give a folder of images only")
                yield Path(root) / name
    except OSError as err:
        raise DatasetError(f"image folder {folder} cannot be listed: {err.strerror or err}") from None


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
        files = sorted(p for p in _walk(class_dir) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise DatasetError(f"no images found in the class folders of {folder}")
    guards.check_count(len(paths), "gallery", f"the number of images in {folder}")
    names = [p.name.replace("_", " ") for p in classes]
    return LabelledImages(paths, labels, names, f"{folder} (ImageFolder, {len(paths)} images, {len(names)} classes)")


def labelled_from_csv(csv_path: str | os.PathLike, column: str, *, file_column: str = "file") -> LabelledImages:
    """Labels from a CSV table (e.g. the toy world's labels.csv): image file relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"labels file not found: {csv_path}")
    rows = _read_csv(csv_path)
    if not rows or column not in rows[0] or file_column not in rows[0]:
        found = ", ".join(map(str, rows[0].keys())) if rows else "no rows"
        raise DatasetError(f"{csv_path} needs columns {file_column!r} and {column!r}; found: {found}")
    incomplete = next((number for number, row in enumerate(rows, 2) if not row.get(column) or not row.get(file_column)), None)
    if incomplete is not None:
        raise DatasetError(f"{csv_path} line {incomplete}: no value for {file_column!r} or {column!r}")
    guards.check_count(len(rows), "gallery", f"the number of rows of {csv_path}")
    names = sorted({row[column] for row in rows})
    index = {name: i for i, name in enumerate(names)}
    paths = [_listed_file(csv_path, row[file_column]) for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image files listed in {csv_path} are missing, e.g. {missing[0]}")
    labels = [index[row[column]] for row in rows]
    return LabelledImages(paths, labels, names, f"{csv_path} (column {column!r}, {len(paths)} images, {len(names)} classes)")


def _read_csv(csv_path: Path) -> list[dict]:
    if csv_path.stat().st_size > 64 * guards.limit("gallery") + 1_000_000:
        raise DatasetError(f"{csv_path} is too large for a labels table")
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError as err:
        raise DatasetError(f"{csv_path} is not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise DatasetError(f"{csv_path} is not a readable CSV table: {err}") from None


def _listed_file(csv_path: Path, name: str) -> Path:
    """A file named in a labels table: relative to the table's folder and inside it (no '..', no absolute path)."""
    relative = os.path.normpath(name)
    if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep) or "\0" in name:
        raise DatasetError(f"{csv_path} lists {name[:80]!r}: files must be paths relative to the table's folder, "
                           "inside it")
    return csv_path.parent / relative


def iter_image_batches(
    paths: Sequence[Path], preprocess: Callable, batch_size: int = 32, *, skipped: list[str] | None = None
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield (indices, [batch, 3, H, W]) over `paths`; unreadable files are skipped and named in `skipped`."""
    import torch

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
