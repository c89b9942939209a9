"""Odd, broken and huge images become RGB or a clear ImageError; labelled folders keep true labels."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core.errors import DatasetError, ImageError
from core.engine.images import image_folder, labelled_from_csv, load_image


def _check_rgb(image, size):
    assert image.mode == "RGB" and image.size == size


def test_odd_modes_become_rgb(tmp_path):
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    _check_rgb(load_image(tmp_path / "cmyk.jpg"), (30, 20))
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png")
    _check_rgb(image, (8, 6))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16, mode="I;16")
    sixteen.save(tmp_path / "16bit.png")
    image = load_image(tmp_path / "16bit.png")
    _check_rgb(image, (64, 64))
    assert np.asarray(image).max() == 255
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    _check_rgb(load_image(tmp_path / "palette.gif"), (30, 20))
    _check_rgb(load_image(np.zeros((5, 7), dtype=np.uint8)), (7, 5))


def test_broken_files_are_refused(tmp_path):
    (tmp_path / "text.png").write_text("this is not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(tmp_path / "truncated.jpg")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")


def _png_header_only(width, height):
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_huge_images_are_refused_before_decoding(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_header_only(10_000, 6_000))  # 60 megapixels claimed
    with pytest.raises(ImageError, match="megapixels"):
        load_image(tmp_path / "huge.png")


def test_image_folder_labels_come_from_folders(tmp_path):
    for name, count in (("zebra", 2), ("apple_pie", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / name / f"{9 - i}.png")
    data = image_folder(tmp_path)
    assert data.classnames == ["apple pie", "zebra"]
    for path, label in zip(data.paths, data.labels):
        assert data.classnames[label] == path.parent.name.replace("_", " ")
    with pytest.raises(DatasetError, match="ImageFolder"):
        image_folder(tmp_path / "zebra")


def test_labels_csv(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text("file,shape\na.png,circle\n")
    data = labelled_from_csv(tmp_path / "labels.csv", "shape")
    assert data.classnames == ["circle"] and data.labels == [0]
    with pytest.raises(DatasetError, match="colour"):
        labelled_from_csv(tmp_path / "labels.csv", "colour")
