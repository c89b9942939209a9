"""One image against a few texts: each text's score map, its mask, and the multi-class argmax view.

This is what `python -m core segment` and the Segmentation tab show. Maps cover the model's view of the
image (shortest side resized to the input size, centre-cropped), at the input resolution.

>>> result = segment_image(load_clip("toy"), image, ["a red circle", "a blue square"], method="heads")
>>> result.maps.shape          # [text, 64, 64] in [0, 1]
>>> result.labels(0.5)         # [64, 64]: index of the winning text, -1 for background
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.engine.images import load_image
from core.engine.models import ClipBundle
from core.engine.shared_trace import shared_trace
from core.engine.text import encode_texts
from core.engine.viz import model_view
from core.errors import TextError
from core.segmentation.methods import MAX_TEXTS, TEXT_FREE, MethodOptions, Segmenter, Targets, check_method
from core.segmentation.protocols import METHOD_RULES, binarise, normalise_maps, parse_threshold


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TextError("expected a list of texts, got a single string")
    cleaned = [t.strip() if isinstance(t, str) else t for t in texts]
    if not cleaned:
        raise TextError("no texts given: give at least one class text")
    if len(cleaned) > MAX_TEXTS:
        raise TextError(f"{len(cleaned)} texts given; at most {MAX_TEXTS} per image")
    for index, text in enumerate(cleaned):
        if not isinstance(text, str) or not text:
            raise TextError(f"text {index + 1} is empty; give non-empty texts")
    if len(set(cleaned)) != len(cleaned):
        raise TextError("the same text is given twice; give distinct texts")
    return cleaned


def label_map(joint: np.ndarray, threshold: str | float, background: int | None = None) -> np.ndarray:
    """int [H, W]: per pixel the text with the highest score, -1 where the winning score is not above the
    threshold ("mean": the mean of the winning scores) or where the `background` text wins.

    joint: [text, H, W] maps normalised together (one min-max over all texts), so they compare.
    """
    joint = np.asarray(joint, dtype=np.float64)
    winner = joint.argmax(0)  # ties go to the first text
    best = joint.max(0)
    labels = np.where(binarise(best, threshold), winner, -1)
    if background is not None:
        labels[labels == background] = -1
    return labels


@dataclass(frozen=True)
class ImageSegmentation:
    """Every text's map for one image, with what produced them."""

    texts: list[str]
    method: str
    description: str
    grids: torch.Tensor  # [text, G, G] raw patch-grid scores
    maps: np.ndarray  # [text, H, W] float32, each text's map min-max normalised to [0, 1]
    joint: np.ndarray  # [text, H, W] float32, all texts normalised together (for the argmax view)
    threshold: str | float  # the method's rule unless changed
    clamp: bool
    subtract_mean: bool
    cosine: list[float]  # cos(image, text)
    view: Image.Image  # the model's view of the image, at the input resolution
    model: dict[str, Any]
    text_free: bool  # the method's map does not depend on the text

    def masks(self, threshold: str | float | None = None) -> np.ndarray:
        """bool [text, H, W]: each text's foreground."""
        return binarise(self.maps, self.threshold if threshold is None else parse_threshold(threshold))

    def labels(self, threshold: str | float | None = None, background: int | None = None) -> np.ndarray:
        return label_map(self.joint, self.threshold if threshold is None else parse_threshold(threshold), background)

    def settings(self) -> dict[str, Any]:
        return {"model": self.model["spec"], "random_weights": bool(self.model["random_init"]), "method": self.method,
                "description": self.description, "texts": self.texts, "threshold": self.threshold,
                "clamp": self.clamp, "subtract_mean_over_texts": self.subtract_mean,
                "cosine": dict(zip(self.texts, self.cosine)), "map_size": list(self.maps.shape[1:]),
                "maps_cover": "the model's view: shortest side resized to the input size, centre crop"}


def segment_image(
    bundle: ClipBundle, image: Image.Image | str, texts: Sequence[str], *, method: str = "heads",
    options: MethodOptions = MethodOptions(), threshold: str | float | None = None, clamp: bool | None = None,
    subtract_mean: bool | None = None, segmenter: Segmenter | None = None,
) -> ImageSegmentation:
    """Score maps of `image` for each text. Heads maps subtract the mean over the texts when there are
    several (the papers' demo); threshold and clamp default to the method's rule (core.segmentation.protocols)."""
    check_method(method)
    texts = check_texts(texts)
    pil = image if isinstance(image, Image.Image) else load_image(image)
    rule_subtract, rule_clamp, rule_threshold = METHOD_RULES[method]
    threshold = rule_threshold if threshold is None else parse_threshold(threshold)
    clamp = rule_clamp if clamp is None else bool(clamp)
    subtract = (method == "heads" and len(texts) > 1) if subtract_mean is None else bool(subtract_mean)
    if subtract and method != "heads":
        raise TextError(f"subtracting the mean over texts applies to the heads map only, not to {method}")
    segmenter = segmenter if segmenter is not None else Segmenter(bundle, method, options)
    embeddings = encode_texts(bundle, texts)
    pixels = bundle.preprocess(pil).unsqueeze(0)
    output = segmenter(pixels, Targets(embeddings, torch.arange(len(texts))[None], subtract))
    grids = output.grids[0]  # [text, G, G]
    size = bundle.info.image_size
    maps = normalise_maps(grids, size, clamp=clamp).numpy().astype(np.float32)
    up = F.interpolate(grids[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    if clamp:
        up = up.clamp(min=0)
    low, span = up.min(), up.max() - up.min()
    joint = ((up - low) / span if span > 0 else torch.zeros_like(up)).numpy().astype(np.float32)
    # cos(image, text) from the segmenter's own traced forward when it made one (the trace's embedding equals
    # encode_image): one forward for the maps and the cosines.
    embedding = F.normalize(shared_trace(bundle.model.visual, pixels.to(bundle.device)).embedding.float(), dim=-1)
    cosine = (embedding @ embeddings.T.to(embedding)).squeeze(0).tolist()
    return ImageSegmentation(texts, method, segmenter.describe(), grids, maps, joint, threshold, clamp, subtract,
                             [float(c) for c in cosine], model_view(pil.convert("RGB"), size), bundle.info.as_dict(),
                             method in TEXT_FREE)


def world_truth(image: Image.Image, n_examples: int = 6) -> tuple[np.ndarray, str] | None:
    """(mask bool [H, W], "colour shape") when `image` is one of the generated-world example scenes (compared
    pixel for pixel with the scenes `core.world.examples` draws), else None."""
    from core.world.examples import EXAMPLE_SEED
    from core.world.scenes import heldout_scenes

    pixels = np.asarray(image.convert("RGB"))
    if pixels.shape != (64, 64, 3):
        return None
    for picture, labels, mask in heldout_scenes(n_examples, seed=EXAMPLE_SEED):
        if np.array_equal(np.asarray(picture), pixels):
            return mask > 0, f"{labels['colour']} {labels['shape']}"
    return None


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Foreground intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(prediction, truth).sum()
    return float(np.logical_and(prediction, truth).sum() / union) if union else 1.0
