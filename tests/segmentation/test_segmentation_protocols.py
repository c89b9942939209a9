"""Each protocol option on a hand-made case."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from core.engine.models import load_clip
from core.errors import ConfigError
from core.segmentation.datasets import WorldSegmentation
from core.segmentation.evaluate import evaluate
from core.segmentation.protocols import binarise, mask_view, method_protocol, normalise_maps


def test_official_protocol_fixes_each_methods_rules():
    heads = method_protocol("official", "heads", has_labels=True)
    assert (heads.geometry, heads.class_source, heads.subtract_class_mean, heads.clamp, heads.threshold) == \
        ("squash", "predicted", True, True, "mean")
    neurons = method_protocol("official", "neurons", has_labels=True)
    assert (neurons.subtract_class_mean, neurons.clamp, neurons.threshold) == (False, False, 0.5)
    for method in ("raw-attention", "rollout", "gradcam", "chefer"):
        rule = method_protocol("official", method, has_labels=False)
        assert (rule.subtract_class_mean, rule.clamp, rule.threshold) == (False, False, "mean")
    for option in ({"threshold": 0.3}, {"clamp": False}, {"class_source": "given"}, {"subtract_class_mean": False}):
        with pytest.raises(ConfigError, match="official protocol fixes"):
            method_protocol("official", "heads", has_labels=True, **option)


def test_aligned_protocol_options():
    labelled = method_protocol("aligned", "heads", has_labels=True)
    assert (labelled.geometry, labelled.class_source, labelled.subtract_class_mean, labelled.clamp) == \
        ("crop", "given", True, True)
    assert method_protocol("aligned", "heads", has_labels=False).class_source == "predicted"
    changed = method_protocol("aligned", "heads", has_labels=True, class_source="predicted", threshold="0.25",
                              clamp=False, subtract_class_mean=False)
    assert (changed.class_source, changed.threshold, changed.clamp, changed.subtract_class_mean) == \
        ("predicted", 0.25, False, False)
    with pytest.raises(ConfigError, match="no class labels"):
        method_protocol("aligned", "heads", has_labels=False, class_source="given")
    with pytest.raises(ConfigError, match="heads map only"):
        method_protocol("aligned", "rollout", has_labels=True, subtract_class_mean=True)
    with pytest.raises(ConfigError, match="threshold"):
        method_protocol("aligned", "heads", has_labels=True, threshold="1.5")
    with pytest.raises(ConfigError, match="unknown protocol"):
        method_protocol("paper", "heads", has_labels=True)


def test_clamping_min_max_and_thresholds_by_hand():
    grid = torch.tensor([[-1.0, 2.0], [4.0, -1.0]])
    clamped = normalise_maps(grid, 2, clamp=True)  # same size: the bilinear upsampling is the identity
    assert torch.allclose(clamped, torch.tensor([[0.0, 0.5], [1.0, 0.0]]))
    plain = normalise_maps(grid, 2, clamp=False)
    assert torch.allclose(plain, torch.tensor([[0.0, 0.6], [1.0, 0.0]]))
    assert binarise(clamped, "mean").tolist() == [[False, True], [True, False]]  # mean 0.375
    assert binarise(clamped, 0.5).tolist() == [[False, False], [True, False]]
    assert binarise(plain, 0.5).tolist() == [[False, True], [True, False]]
    assert torch.equal(normalise_maps(torch.full((3, 3), 2.5), 6, clamp=False), torch.zeros(6, 6))
    assert torch.equal(normalise_maps(-torch.ones(2, 2), 4, clamp=True), torch.zeros(4, 4))


def test_mask_geometry_crop_versus_squash_by_hand():
    preprocess = transforms.Compose([transforms.Resize(4), transforms.CenterCrop(4), transforms.ToTensor()])
    mask = np.zeros((4, 8), bool)
    mask[:, 2:4] = True  # columns 2 and 3 of 8
    cropped = mask_view(mask, preprocess, 4, "crop")  # the centre crop keeps columns 2..5
    assert cropped.tolist() == [[True, True, False, False]] * 4
    squashed = mask_view(mask, preprocess, 4, "squash")  # nearest neighbour samples columns 1, 3, 5, 7
    assert squashed.tolist() == [[False, True, False, False]] * 4
    with pytest.raises(ConfigError, match="geometry"):
        mask_view(mask, preprocess, 4, "stretch")


def test_crop_geometry_follows_the_models_own_preprocessing():
    toy = load_clip("toy")
    rng = np.random.default_rng(3)
    mask = rng.random((64, 128)) > 0.5  # 128 wide: shortest side stays 64, the crop keeps columns 32..95
    assert np.array_equal(mask_view(mask, toy.preprocess, 64, "crop"), mask[:, 32:96])
    # the image itself goes through the same geometry: a white stripe in columns 40..47 lands in columns 8..15
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 40:48] = 255
    pixels = toy.preprocess(Image.fromarray(image))
    bright = pixels.mean(0) > 0
    assert bright[:, 9:15].all() and not bright[:, :7].any() and not bright[:, 17:].any()
    squashed = mask_view(mask, toy.preprocess, 64, "squash")
    assert np.array_equal(squashed, mask[:, 1::2])


def _records(result) -> list[dict]:
    lines = open(result.state_file, encoding="utf-8").read().splitlines()[1:]
    return [json.loads(line) for line in lines]


def test_class_source_given_or_predicted(tmp_path):
    toy = load_clip("toy")
    dataset = WorldSegmentation(6, seed=12)
    given = evaluate(toy, dataset, ["heads"], state_dir=tmp_path).results[0]
    assert all(r["chosen"] == r["label"] for r in _records(given))
    predicted = evaluate(toy, dataset, ["heads"], class_source="predicted", state_dir=tmp_path).results[0]
    assert all(r["chosen"] == r["predicted"] for r in _records(predicted))
    official = evaluate(toy, dataset, ["heads"], protocol="official", state_dir=tmp_path).results[0]
    assert official.protocol.geometry == "squash" and official.state_file != predicted.state_file
