"""Pictures of segmentation results, as PIL images (numpy + PIL only; no UI library).

- `heat_picture`: a [0, 1] map blended over the model's view, with a labelled colour scale;
- `mask_picture`: a binary mask tinted over the view, its outline drawn;
- `label_picture`: the multi-class argmax view, one colour per text, with a legend.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a perceptually ordered dark-blue -> teal -> yellow scale (viridis-like), for [0, 1] maps.
_SCALE = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
# Distinct colours for the argmax view (text k gets _PALETTE[k]); background stays the image, dimmed.
_PALETTE = np.array([[228, 26, 28], [55, 126, 184], [77, 175, 74], [152, 78, 163], [255, 127, 0], [255, 255, 51],
                     [166, 86, 40], [247, 129, 191], [0, 206, 209], [128, 128, 0], [0, 0, 128], [240, 128, 128],
                     [0, 128, 128], [189, 183, 107], [72, 61, 139], [255, 215, 0]], dtype=np.float64)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def heat_colours(values: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colours of values in [0, 1] (clipped) on the sequential scale."""
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(_SCALE) - 1)
    low = np.minimum(np.floor(t).astype(int), len(_SCALE) - 2)
    frac = (t - low)[..., None]
    return (_SCALE[low] * (1 - frac) + _SCALE[low + 1] * frac).round().astype(np.uint8)


def text_colour(index: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in _PALETTE[index % len(_PALETTE)])


def _resize_map(values: np.ndarray, display: int, nearest: bool = False) -> np.ndarray:
    picture = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(picture.resize((display, display), Image.NEAREST if nearest else Image.BILINEAR))


def _base(view: Image.Image, display: int) -> np.ndarray:
    return np.asarray(view.convert("RGB").resize((display, display), Image.BICUBIC), dtype=np.float64)


def heat_picture(view: Image.Image, values: np.ndarray, *, title: str = "", display: int = 256,
                 alpha: float = 0.6) -> Image.Image:
    """The map (values in [0, 1], [H, W]) over the view, with a colour scale from 0 to 1 on the right."""
    colours = heat_colours(_resize_map(values, display)).astype(np.float64)
    blended = ((1 - alpha) * _base(view, display) + alpha * colours).round().astype(np.uint8)
    font, small = _font(12), _font(10)
    top = 22 if title else 6
    canvas = Image.new("RGB", (display + 62, display + top + 6), "white")
    canvas.paste(Image.fromarray(blended), (0, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((2, 4), title[:48], fill="black", font=font)
    bar = heat_colours(np.linspace(1, 0, display)[:, None].repeat(14, 1))
    canvas.paste(Image.fromarray(bar), (display + 8, top))
    for value in (1.0, 0.5, 0.0):
        y = top + round((1 - value) * (display - 1))
        draw.line([(display + 22, y), (display + 26, y)], fill="black")
        draw.text((display + 28, max(top, min(y - 6, top + display - 12))), f"{value:.1f}", fill="black", font=small)
    return canvas


def mask_picture(view: Image.Image, mask: np.ndarray, *, title: str = "", display: int = 256,
                 colour: tuple[int, int, int] = (255, 40, 40), alpha: float = 0.45) -> Image.Image:
    """The binary mask [H, W] tinted over the view, with its outline."""
    inside = _resize_map(np.asarray(mask, dtype=np.float32), display, nearest=True) > 0.5
    base = _base(view, display)
    tinted = np.where(inside[..., None], (1 - alpha) * base + alpha * np.array(colour), base * 0.8)
    edge = inside & ~(np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1))
    tinted[edge] = colour
    return _titled(Image.fromarray(tinted.round().astype(np.uint8)), title)


def label_picture(view: Image.Image, labels: np.ndarray, texts: Sequence[str], *, title: str = "",
                  display: int = 256, alpha: float = 0.6) -> Image.Image:
    """The argmax view: pixels of text k in colour k, background (-1) dimmed, and a legend below."""
    resized = _resize_map(np.asarray(labels, dtype=np.float32), display, nearest=True).round().astype(int)
    base = _base(view, display)
    out = base * 0.55
    for index in range(len(texts)):
        inside = resized == index
        out[inside] = (1 - alpha) * base[inside] + alpha * _PALETTE[index % len(_PALETTE)]
    picture = _titled(Image.fromarray(out.round().astype(np.uint8)), title)
    font = _font(11)
    rows = len(texts) + 1
    canvas = Image.new("RGB", (picture.width, picture.height + 16 * rows + 4), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    entries = [(text, text_colour(i), float((labels == i).mean())) for i, text in enumerate(texts)]
    entries.append(("background", (90, 90, 90), float((labels == -1).mean())))
    for row, (text, colour, share) in enumerate(entries):
        y = picture.height + 4 + 16 * row
        draw.rectangle([4, y, 16, y + 11], fill=colour)
        draw.text((22, y - 1), f"{text[:36]} ({100 * share:.0f}%)", fill="black", font=font)
    return canvas


def _titled(picture: Image.Image, title: str) -> Image.Image:
    if not title:
        return picture
    canvas = Image.new("RGB", (picture.width, picture.height + 20), "white")
    canvas.paste(picture, (0, 20))
    ImageDraw.Draw(canvas).text((2, 3), title[:48], fill="black", font=_font(12))
    return canvas


def side_by_side(pictures: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Pictures in one row, top-aligned."""
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), "white")
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + gap
    return canvas


def stacked(pictures: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Pictures in one column, left-aligned."""
    height = sum(p.height for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (max(p.width for p in pictures), height), "white")
    y = 0
    for picture in pictures:
        canvas.paste(picture, (0, y))
        y += picture.height + gap
    return canvas
