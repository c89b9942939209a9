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


# ---------------------------------------------------------------- class specificity (composites)

def specificity_terms(scores: np.ndarray, target: np.ndarray, others: np.ndarray) -> dict[str, Any]:
    """One composite's class-specificity terms, from the map of the target class.

    scores [H, W] (the normalised map the metrics score), target bool [H, W] (the mapped class's object),
    others bool [object, H, W] (each other object's pixels). Returns the map's mean over the target and over
    each other object, and the AP of the target's pixels against the other objects' pixels (background left
    out); `specific` says whether the target's mean exceeds every other object's (strictly: a tie is not).
    An object cropped out of the model's view has no pixels: its mean is NaN and the image is not scored.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target, others = np.asarray(target, dtype=bool), np.asarray(others, dtype=bool).reshape(-1, *scores.shape)
    if target.shape != scores.shape:
        raise DatasetError(f"score map {scores.shape} and target mask {target.shape} must be of one size")
    mean_target = float(scores[target].mean()) if target.any() else math.nan
    mean_others = [float(scores[o].mean()) if o.any() else math.nan for o in others]
    negatives = others.any(0) & ~target
    scored = bool(target.any() and all(o.any() for o in others))
    ap = math.nan
    if scored:
        pixels = target | negatives
        ap = float(average_precision_score(target[pixels], scores[pixels]))
    specific = bool(scored and all(mean_target > m for m in mean_others))
    return {"mean_target": mean_target, "mean_others": mean_others, "ap_target_vs_others": ap,
            "specific": specific, "scored": scored}


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial share (0, 1 for no trials)."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def specificity_summary(terms: list[dict[str, Any]]) -> dict[str, Any]:
    """Over a dataset's composites: the share whose map is higher on the target than on every other object
    (with its 95% Wilson interval), and the mean AP(target vs other objects' pixels)."""
    scored = [t for t in terms if t["scored"]]
    hits = sum(t["specific"] for t in scored)
    low, high = wilson_interval(hits, len(scored))
    return {"share_target_above_others": hits / len(scored) if scored else math.nan,
            "share_interval_95": [low, high], "specific_images": hits, "images": len(scored),
            "unscored_images": len(terms) - len(scored),
            "ap_target_vs_others": float(np.mean([t["ap_target_vs_others"] for t in scored])) if scored else math.nan,
            "mean_target": float(np.mean([t["mean_target"] for t in scored])) if scored else math.nan,
            "mean_others": float(np.mean([np.mean(t["mean_others"]) for t in scored])) if scored else math.nan}
