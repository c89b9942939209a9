"""Segmentation metrics, computed exactly as the papers' metric code does (Chefer et al.'s, copied by both papers).

Per image, a score map S [H, W] in [0, 1] (after the protocol's normalisation), its binary prediction
(S above the threshold) and the binary ground truth give one `ImageScores`; `SegmentationMetrics` adds
them up over a dataset:

- pixel accuracy = sum over images of correct pixels / (eps + sum of labelled pixels), eps = np.spacing(1);
- mIoU = mean over {background, foreground} of sum_images intersection_c / (eps + sum_images union_c)
  (dataset-level IoU per class, then the mean of the two);
- mAP = mean over images of sklearn's `average_precision_score` on the two-channel one-hot target
  [background, foreground] against the scores [1 - S, S], both channels flattened into one sample set;
  a constant map scores 0 in both channels (the papers' code turns its 0/0 = NaN into 0).

Also reported, because small objects make the pooled mAP nearly meaningless (a uniform map scores 0.5):
- AP-foreground = mean over images with some foreground of the AP of S against the foreground mask alone;
- per-image mIoU = mean over images of the mean IoU of the classes present in the image or its prediction.

`core.segmentation.reference` transcribes the papers' code literally; the tests hold these to it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from core.errors import DatasetError

EPS = float(np.spacing(1, dtype=np.float64))
METRIC_NAMES = ("pixel_accuracy", "miou", "map", "ap_foreground", "miou_per_image")


@dataclass(frozen=True)
class ImageScores:
    """One image's contribution to the dataset metrics (integers are pixel counts)."""

    correct: int
    labelled: int
    intersection: tuple[int, int]  # (background, foreground)
    union: tuple[int, int]
    ap: float  # two-channel AP (the papers' mAP term)
    ap_foreground: float  # NaN when the image has no foreground pixel
    iou: float  # this image's mean IoU over the classes with a non-empty union

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "ImageScores":
        return cls(int(record["correct"]), int(record["labelled"]), tuple(int(v) for v in record["intersection"]),
                   tuple(int(v) for v in record["union"]), float(record["ap"]), float(record["ap_foreground"]),
                   float(record["iou"]))


def _check(scores: np.ndarray, prediction: np.ndarray, target: np.ndarray) -> None:
    if not (scores.shape == prediction.shape == target.shape) or scores.ndim != 2:
        raise DatasetError(f"score map {scores.shape}, prediction {prediction.shape} and mask {target.shape} "
                           "must be 2-D and of one size")
    if not np.isfinite(scores).all():
        raise DatasetError("the score map holds NaN or infinite values")


def image_scores(scores: np.ndarray, prediction: np.ndarray, target: np.ndarray) -> ImageScores:
    """Metrics terms of one image: scores [H, W] in [0, 1] (taken as float32), prediction and target bool [H, W]."""
    scores = np.asarray(scores, dtype=np.float32)  # the papers' maps are float32: 1 - S rounds as theirs does
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    _check(scores, prediction, target)
    correct = int((prediction == target).sum())
    inter_fg = int((prediction & target).sum())
    inter_bg = int((~prediction & ~target).sum())
    union_fg = int((prediction | target).sum())
    union_bg = int((~prediction | ~target).sum())
    constant = scores.max() == scores.min()
    channels = np.zeros((2,) + scores.shape, np.float32) if constant else np.stack([np.float32(1) - scores, scores])
    one_hot = np.stack([~target, target]).astype(np.int64)
    ap = float(np.nan_to_num(average_precision_score(one_hot.reshape(-1), channels.reshape(-1))))
    ap_fg = float(average_precision_score(target.reshape(-1), scores.reshape(-1))) if target.any() else math.nan
    ious = [i / u for i, u in ((inter_bg, union_bg), (inter_fg, union_fg)) if u > 0]
    return ImageScores(correct, int(target.size), (inter_bg, inter_fg), (union_bg, union_fg), ap, ap_fg,
                       float(np.mean(ious)))


@dataclass
class SegmentationMetrics:
    """Running sums over a dataset; `summary()` gives the metrics (fractions in [0, 1])."""

    correct: int = 0
    labelled: int = 0
    intersection: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    union: np.ndarray = field(default_factory=lambda: np.zeros(2, dtype=np.int64))
    aps: list[float] = field(default_factory=list)
    ap_foregrounds: list[float] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)

    def add(self, scores: ImageScores) -> None:
        self.correct += scores.correct
        self.labelled += scores.labelled
        self.intersection += np.asarray(scores.intersection, dtype=np.int64)
        self.union += np.asarray(scores.union, dtype=np.int64)
        self.aps.append(scores.ap)
        if not math.isnan(scores.ap_foreground):
            self.ap_foregrounds.append(scores.ap_foreground)
        self.ious.append(scores.iou)

    @property
    def images(self) -> int:
        return len(self.aps)

    def summary(self) -> dict[str, float | int]:
        if not self.images:
            raise DatasetError("no images were evaluated, so there are no metrics to report")
        iou = self.intersection / (EPS + self.union)
        return {
            "pixel_accuracy": float(self.correct / (EPS + self.labelled)),
            "miou": float(iou.mean()),
            "iou_background": float(iou[0]),
            "iou_foreground": float(iou[1]),
            "map": float(np.mean(self.aps)),
            "ap_foreground": float(np.mean(self.ap_foregrounds)) if self.ap_foregrounds else math.nan,
            "miou_per_image": float(np.mean(self.ious)),
            "images": self.images,
        }
