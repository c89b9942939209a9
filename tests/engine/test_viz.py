"""Pictures: colours mean what the legend says, and overlays sit where the model looked."""

import numpy as np
import torch
from PIL import Image

from core.engine.models import load_clip
from core.engine.viz import diverging_colours, heat_grid, model_view, overlay


def test_diverging_colours_sign_and_scale():
    colours = diverging_colours(np.array([-2.0, 0.0, 2.0]))
    blue, white, red = colours.astype(int)
    assert blue[2] > blue[0] and red[0] > red[2]  # negative is blue, positive red
    assert (white > 240).all()
    assert np.array_equal(diverging_colours(np.array([5.0]), limit=1.0), diverging_colours(np.array([1.0]), limit=1.0))
    assert (diverging_colours(np.zeros(3)) > 240).all()  # all-zero input: no division by zero


def test_model_view_is_what_open_clip_preprocess_sees():
    bundle = load_clip("toy")
    # smooth ramps: a wrong crop or scale shifts them; resampling filters barely matter
    y, x = np.mgrid[0:90, 0:140]
    image = Image.fromarray(np.stack([x * 255 / 139, y * 255 / 89, (x + y) * 255 / 228], -1).astype(np.uint8))
    view = model_view(image, bundle.info.image_size)
    assert view.size == (bundle.info.image_size,) * 2
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    ours = (torch.from_numpy(np.asarray(view, dtype=np.float32) / 255).permute(2, 0, 1)
            - torch.tensor(OPENAI_DATASET_MEAN)[:, None, None]) / torch.tensor(OPENAI_DATASET_STD)[:, None, None]
    theirs = bundle.preprocess(image)
    assert (ours - theirs).abs().mean() < 0.02  # same geometry (resampling filters differ slightly)


def test_overlay_and_grid_shapes():
    image = Image.new("RGB", (64, 64), "white")
    scores = torch.zeros(8, 8)
    scores[0, 7] = 1.0
    picture = np.asarray(overlay(image, scores, image_size=64, display=128))
    assert picture.shape == (128, 128, 3)
    top_right, bottom_left = picture[4, 124].astype(int), picture[124, 4].astype(int)
    assert top_right[0] > top_right[2] and abs(bottom_left[0] - bottom_left[2]) < 10  # red where the score is
    grid = heat_grid(torch.randn(3, 5), title="a long title that must fit in the picture")
    assert grid.width >= 5 * 30 and grid.height >= 3 * 30
