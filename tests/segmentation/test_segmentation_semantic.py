"""Against ground truth: on held-out generated scenes (exact masks) the toy CLIP's heads map finds the objects."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.engine.models import load_clip
from core.segmentation.datasets import WorldSegmentation
from core.segmentation.evaluate import evaluate
from core.segmentation.segment import segment_image
from core.world.scenes import Scene, render

SEED = 31  # a held-out seed no other test uses


@pytest.mark.slow
def test_heads_beat_raw_attention_against_the_true_masks(tmp_path):
    toy = load_clip("toy")
    report = evaluate(toy, WorldSegmentation(150, seed=SEED), ["heads", "raw-attention", "oracle"],
                      state_dir=tmp_path)
    heads, raw, oracle = (report.result(m).metrics for m in ("heads", "raw-attention", "oracle"))
    assert heads["ap_foreground"] > raw["ap_foreground"] + 0.2
    assert heads["miou"] > raw["miou"] + 0.1
    assert heads["miou_per_image"] > raw["miou_per_image"]
    # the measured level (0.55 on 500 scenes); far below it is a bug, not a finding
    assert heads["ap_foreground"] > 0.48
    assert oracle["ap_foreground"] > heads["ap_foreground"] and oracle["miou"] > heads["miou"]
    assert report.class_accuracy > 0.9


def test_argmax_view_puts_each_object_under_its_own_text():
    """Two texts for two scenes' objects side by side: each object's pixels go to its own text."""
    toy = load_clip("toy")
    left = Scene("circle", "red", "large", (3,), "gray")
    right = Scene("square", "blue", "large", (5,), "gray")
    image_left, mask_left = render(left)
    image_right, mask_right = render(right)
    combined = np.where(mask_right[..., None] > 0, image_right, image_left)
    result = segment_image(toy, Image.fromarray(combined), ["a red circle", "a blue square"])
    labels = result.labels()
    red, blue = mask_left > 0, mask_right > 0
    assert (labels[red] == 0).mean() > 0.6 and (labels[blue] == 1).mean() > 0.6
    assert (labels[red] == 1).mean() < 0.2 and (labels[blue] == 0).mean() < 0.2
