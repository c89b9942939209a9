"""Pictures of results, as PIL images (numpy + PIL only; no UI library).

- `heat_grid`: a labelled [rows, cols] heat map (e.g. layer x head contributions).
- `model_view`: the image as the model sees it (shortest side resized, centre-cropped).
- `overlay`: a patch-grid score map upsampled and blended over the model's view.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Diverging blue - white - red, for signed contributions.
_NEGATIVE = np.array([33, 102, 172], dtype=np.float64)
_MIDDLE = np.array([247, 247, 247], dtype=np.float64)
_POSITIVE = np.array([178, 24, 43], dtype=np.float64)


def diverging_colours(values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """uint8 [..., 3] colours for signed values; +-limit (default: max |value|) saturate."""
    values = np.asarray(values, dtype=np.float64)
    limit = float(np.abs(values).max()) if limit is None else float(limit)
    t = np.clip(values / limit, -1.0, 1.0)[..., None] if limit > 0 else np.zeros(values.shape + (1,))
    colours = np.where(t >= 0, _MIDDLE + t * (_POSITIVE - _MIDDLE), _MIDDLE - t * (_NEGATIVE - _MIDDLE))
    return colours.round().astype(np.uint8)


def label_font(size: int) -> ImageFont.ImageFont:
    """Pillow's default font at `size` points (the one font of every rendered picture)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without sized default fonts
        return ImageFont.load_default()


def heat_grid(
    matrix: torch.Tensor | np.ndarray,
    *,
    row_label: str = "layer",
    col_label: str = "head",
    title: str = "",
    cell: int = 30,
) -> Image.Image:
    """A labelled heat map of a [rows, cols] matrix, values written in the cells when they fit."""
    values = np.asarray(matrix, dtype=np.float64)
    rows, cols = values.shape
    margin_left, margin_top = max(70, cell * 2), (46 if title else 28) + max(0, cell * 3 // 10 - 9)
    # Value labels grow with the cell so that they stay readable on large grids (12x12, 24x16).
    font, small = label_font(max(12, cell * 3 // 10)), label_font(max(9, cell * 3 // 10))
    title_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 12 if title else 0
    width, height = max(margin_left + cols * cell + 10, title_width), margin_top + rows * cell + 10
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    colours = diverging_colours(values)
    limit = np.abs(values).max() or 1.0
    for r in range(rows):
        draw.text((6, margin_top + r * cell + cell // 3), f"{row_label} {r}", fill="black", font=small)
        for c in range(cols):
            x0, y0 = margin_left + c * cell, margin_top + r * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=tuple(int(v) for v in colours[r, c]))
            if cell >= 28:
                text_colour = "white" if abs(values[r, c]) > 0.6 * limit else "black"
                scaled = values[r, c] * 100
                label = f"{scaled:+.1f}" if abs(scaled) < 100 else f"{scaled:+.0f}"
                draw.text((x0 + 2, y0 + cell // 3), label, fill=text_colour, font=small)
    for c in range(cols):
        draw.text((margin_left + c * cell + 4, margin_top - 14), f"{col_label[0]}{c}", fill="black", font=small)
    return canvas


def model_view(image: Image.Image, size: int) -> Image.Image:
    """Resize the shortest side to `size` (bicubic) and centre-crop, as open_clip's preprocess does."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def overlay(image: Image.Image, scores: torch.Tensor | np.ndarray, *, image_size: int, display: int = 384,
            alpha: float = 0.55, limit: float | None = None) -> Image.Image:
    """Blend a [grid_h, grid_w] signed score map over the model's view of `image`, shown at `display` px."""
    grid = torch.as_tensor(np.asarray(scores, dtype=np.float32))[None, None]
    upsampled = torch.nn.functional.interpolate(grid, size=(display, display), mode="bilinear", align_corners=False)[0, 0]
    colours = diverging_colours(upsampled.numpy(), limit)
    base = model_view(image.convert("RGB"), image_size).resize((display, display), Image.BICUBIC)
    blended = (1 - alpha) * np.asarray(base, dtype=np.float64) + alpha * colours
    return Image.fromarray(blended.round().astype(np.uint8))
