"""The metrics equal a literal transcription of the papers' metric code on random maps and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from core.errors import DatasetError
from core.segmentation.metrics import SegmentationMetrics, image_scores
from core.segmentation.protocols import binarise, normalise_maps
from core.segmentation.reference import paper_dataset_metrics, paper_eval_image


def _random_case(rng: np.random.Generator, grid: int, patch: int):
    raw = torch.from_numpy(rng.normal(size=(grid, grid)) + rng.normal()).float()
    size = grid * patch
    # blobs of foreground of random extent (sometimes tiny, sometimes most of the image)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(1, size * 0.7)]
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
    return raw, mask


@pytest.mark.parametrize("clamp,threshold", [(True, "mean"), (False, 0.5), (False, "mean"), (True, 0.5)])
def test_dataset_metrics_equal_the_papers_code(clamp, threshold):
    rng = np.random.default_rng(5)
    grid, patch = 7, 8
    ours, theirs = SegmentationMetrics(), []
    for index in range(25):
        raw, mask = _random_case(rng, grid, patch)
        if index == 3:
            raw = torch.full((grid, grid), 0.7)  # constant map: the papers' 0/0 = NaN, set to 0
        if index == 4:
            raw = -raw.abs() - 0.1  # all negative: constant after clamping
        paper = paper_eval_image(raw, torch.from_numpy(mask.astype(np.int64)), patch, clamp=clamp, threshold=threshold)
        theirs.append(paper)
        scores = normalise_maps(raw, grid * patch, clamp=clamp).numpy()
        expected_map = torch.nan_to_num(paper[-1], nan=0.0).numpy()
        assert np.abs(scores - expected_map).max() < 1e-6
        prediction = binarise(scores, threshold)
        one = image_scores(scores, prediction, mask)
        correct, labeled, inter, union, ap, _ = paper
        assert one.correct == correct and one.labelled == labeled
        assert list(one.intersection) == inter.tolist() and list(one.union) == union.tolist()
        assert abs(one.ap - float(ap[0])) < 1e-6
        ours.add(one)
    summary, reference = ours.summary(), paper_dataset_metrics(theirs)
    for key in ("pixel_accuracy", "miou", "map"):
        assert abs(summary[key] - reference[key]) < 1e-6, key


def test_foreground_ap_and_per_image_iou_by_hand():
    scores = np.array([[0.9, 0.8], [0.1, 0.3]])
    target = np.array([[True, False], [False, True]])
    prediction = scores > 0.5
    one = image_scores(scores, prediction, target)
    # foreground AP: ranks 0.9 (fg), 0.8 (bg), 0.3 (fg) -> precision 1 at recall 1/2, 2/3 at recall 1
    assert one.ap_foreground == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # fg: inter 1, union 3; bg: inter 1, union 3
    assert one.intersection == (1, 1) and one.union == (3, 3)
    assert one.iou == pytest.approx(1 / 3)
    assert one.ap == pytest.approx(average_precision_score(
        np.stack([~target, target]).reshape(-1), np.stack([1 - scores, scores]).reshape(-1)))


def test_pooled_map_rewards_uniform_maps_but_foreground_ap_does_not():
    """Why AP-foreground is reported: small objects make the two-channel mAP nearly meaningless."""
    target = np.zeros((32, 32), bool)
    target[:3, :3] = True
    uniform = np.zeros((32, 32))
    one = image_scores(uniform, binarise(uniform, "mean"), target)
    assert one.ap == pytest.approx(0.5)
    assert one.ap_foreground == pytest.approx(target.mean())
    assert one.correct / one.labelled > 0.99  # all-background scores high pixel accuracy
    assert one.intersection[1] == 0


def test_images_without_foreground_are_left_out_of_foreground_ap():
    metrics = SegmentationMetrics()
    empty = np.zeros((4, 4), bool)
    scores = np.linspace(0, 1, 16).reshape(4, 4)
    metrics.add(image_scores(scores, scores > 0.5, empty))
    full = empty.copy()
    full[2:] = True
    metrics.add(image_scores(scores, scores > 0.5, full))
    summary = metrics.summary()
    assert summary["ap_foreground"] == pytest.approx(1.0) and summary["images"] == 2


def test_metric_inputs_are_checked():
    with pytest.raises(DatasetError, match="of one size"):
        image_scores(np.zeros((4, 4)), np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(DatasetError, match="NaN"):
        image_scores(np.full((2, 2), np.nan), np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    with pytest.raises(DatasetError, match="no images"):
        SegmentationMetrics().summary()
