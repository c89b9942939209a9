"""Step 8: the binary CLIP classifier (c1 against c2) that decides whether an image fools the model.

An image succeeds when the classifier picks the target c2 over the present class c1, as in the paper.
The margin is cos(image, c2) - cos(image, c1) with the classifier's unit-norm class embeddings.

Templates: "auto" (the world's shape templates for toy-architecture models when both classes are world shapes,
else the 80 OpenAI ImageNet templates), "openai", "simple" ("a photo of a {}."), or "bare" (the bare
class names, as the paper code's sign test <image, v> > 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from core.engine.models import ClipBundle
from core.paths import TOY_ARCH
from core.engine.text import imagenet_classifier_texts, prompt_classifier, zero_shot_classifier
from core.errors import ConfigError
from core.world import scenes as world

TEMPLATE_CHOICES = ("auto", "openai", "simple", "bare")


@dataclass(frozen=True)
class BinaryClassifier:
    present: str
    target: str
    weights: torch.Tensor  # [2, d_out] unit rows: present, target
    how: str


def binary_classifier(bundle: ClipBundle, present: str, target: str, templates: str = "auto") -> BinaryClassifier:
    if templates not in TEMPLATE_CHOICES:
        raise ConfigError(f"unknown classifier templates {templates!r}; choose one of {', '.join(TEMPLATE_CHOICES)}")
    shapes = world.ZERO_SHOT["shape"]
    if templates == "auto":
        # Models of the toy architecture (shipped or retrained) know the world's vocabulary.
        toy_shapes = bundle.info.arch == TOY_ARCH and present in shapes.classnames and target in shapes.classnames
        templates = "world" if toy_shapes else "openai"
    if templates == "world":
        prompts = shapes.prompts()
        weights = prompt_classifier(bundle, [prompts[shapes.classnames.index(c)] for c in (present, target)])
        how = f"the world's {len(shapes.templates)} shape templates"
    elif templates == "openai":
        weights = zero_shot_classifier(bundle, [present, target], imagenet_classifier_texts()[1])
        how = "80 OpenAI ImageNet templates"
    elif templates == "simple":
        weights = zero_shot_classifier(bundle, [present, target], ["a photo of a {}."])
        how = "'a photo of a {}.'"
    else:
        weights = zero_shot_classifier(bundle, [present, target], ["{}"])
        how = "bare class names (the paper code's test)"
    return BinaryClassifier(present, target, weights.float().cpu(), how)


@dataclass(frozen=True)
class Verdicts:
    cos_present: list[float]
    cos_target: list[float]

    @property
    def margins(self) -> list[float]:
        return [t - p for p, t in zip(self.cos_present, self.cos_target)]

    @property
    def fooled(self) -> list[bool]:
        """True where the classifier picks the target (ties go to the present class)."""
        return [t > p for p, t in zip(self.cos_present, self.cos_target)]


@torch.inference_mode()
def judge(bundle: ClipBundle, classifier: BinaryClassifier, images: Sequence[Image.Image], *,
          batch_size: int = 64) -> Verdicts:
    """cos(image, class) for both classes, through the model's own preprocessing."""
    present, target = [], []
    weights = classifier.weights.to(bundle.device)
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([bundle.preprocess(image.convert("RGB")) for image in images[start:start + batch_size]])
        features = torch.nn.functional.normalize(bundle.model.encode_image(pixels.to(bundle.device)).float(), dim=-1)
        cosine = (features @ weights.T).cpu()
        present += cosine[:, 0].tolist()
        target += cosine[:, 1].tolist()
    return Verdicts(present, target)
