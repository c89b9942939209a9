"""How a patch-grid score map becomes a [0, 1] map and a binary mask, and how the ground truth is laid over it.

Two protocols:

- `official` reproduces the papers' code exactly. The class is the zero-shot prediction. The image goes
  through the model's own preprocessing (shortest side resized, centre crop) but the mask is squashed to
  the square input (nearest neighbour), so the masks of non-square images are misaligned: that is part of
  the published numbers. Per method, as the papers' scripts (or the baselines' reference code) do:
    heads:      map minus its mean over all classes, clamp at 0, min-max, foreground = S > mean(S);
    neurons:    plain min-max, foreground = S > 0.5;
    baselines:  min-max, foreground = S > mean(S) (GradCAM clamps inside the method).
- `aligned` (default) gives the mask the identical resize and crop as the image. The class is given (the
  dataset's label) or predicted; the threshold rule, clamping and class-mean subtraction are options,
  defaulting to the per-method rules above.

Every map is upsampled bilinearly (align_corners=False, as `F.interpolate(scale_factor=patch)`) from the
patch grid to the model's input size before clamping and min-max; a constant map becomes all zeros (the
papers' NaN -> 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from core.errors import ConfigError, UnsupportedModelError

PROTOCOLS = ("official", "aligned")
CLASS_SOURCES = ("given", "predicted")
# Per method: (subtract the mean over classes, clamp at 0, threshold rule) of the papers' code.
METHOD_RULES: dict[str, tuple[bool, bool, str | float]] = {
    "heads": (True, True, "mean"),
    "neurons": (False, False, 0.5),
    "random-neurons": (False, False, 0.5),
    "raw-attention": (False, False, "mean"),
    "rollout": (False, False, "mean"),
    "gradcam": (False, False, "mean"),
    "chefer": (False, False, "mean"),
    "oracle": (False, False, 0.5),
}


@dataclass(frozen=True)
class Protocol:
    """Everything that turns one method's raw map into the prediction the metrics score."""

    name: str  # official | aligned
    geometry: str  # squash (the mask resized to the square input) | crop (the image's own resize and crop)
    class_source: str  # given | predicted
    subtract_class_mean: bool
    clamp: bool
    threshold: str | float  # "mean" or a number in [0, 1]

    def describe(self) -> str:
        threshold = "S > mean(S)" if self.threshold == "mean" else f"S > {self.threshold:g}"
        return (f"{self.name}: {self.class_source} class, "
                f"{'minus the mean over classes, ' if self.subtract_class_mean else ''}"
                f"{'clamp at 0, ' if self.clamp else ''}min-max, {threshold}; mask "
                f"{'squashed to the square input' if self.geometry == 'squash' else 'resized and cropped as the image'}")

    def record(self) -> dict[str, Any]:
        return asdict(self)


def parse_threshold(value: str | float | None) -> str | float | None:
    """'mean', a number in [0, 1], or None (the method's default)."""
    if value is None or value == "mean":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"threshold must be 'mean' or a number in [0, 1], got {value!r}") from err
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"threshold must be 'mean' or a number in [0, 1], got {value!r}")
    return number


def method_protocol(name: str, method: str, *, has_labels: bool, class_source: str | None = None,
                    threshold: str | float | None = None, clamp: bool | None = None,
                    subtract_class_mean: bool | None = None) -> Protocol:
    """The protocol `name` for `method`; options left None take the method's rule (see the module docstring)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    if method not in METHOD_RULES:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHOD_RULES)}")
    if class_source is not None and class_source not in CLASS_SOURCES:
        raise ConfigError(f"unknown class source {class_source!r}; choose one of {', '.join(CLASS_SOURCES)}")
    threshold = parse_threshold(threshold)
    subtract, clamp_rule, threshold_rule = METHOD_RULES[method]
    if name == "official":
        changed = [flag for flag, value in (("class source", class_source), ("threshold", threshold), ("clamp", clamp),
                                            ("class-mean subtraction", subtract_class_mean)) if value is not None]
        if changed:
            raise ConfigError(f"the official protocol fixes the {', '.join(changed)} as the papers' code does; "
                              "use the aligned protocol to change them")
        return Protocol("official", "squash", "predicted", subtract, clamp_rule, threshold_rule)
    if class_source is None:
        class_source = "given" if has_labels else "predicted"
    if class_source == "given" and not has_labels:
        raise ConfigError("this dataset has no class labels: use the predicted class")
    if subtract_class_mean and method != "heads":
        raise ConfigError(f"class-mean subtraction applies to the heads map only (it is linear in the class text), "
                          f"not to {method}")
    return Protocol("aligned", "crop", class_source, subtract if subtract_class_mean is None else subtract_class_mean,
                    clamp_rule if clamp is None else clamp, threshold_rule if threshold is None else threshold)


# ---------------------------------------------------------------- score maps

def normalise_maps(grids: torch.Tensor, size: int | tuple[int, int], *, clamp: bool) -> torch.Tensor:
    """[..., G, G] patch-grid scores -> [..., H, W] maps in [0, 1]: bilinear upsampling, optional clamp
    at 0, min-max per map (a constant map becomes zeros)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = grids.shape[:-2]
    flat = grids.reshape(-1, 1, *grids.shape[-2:]).float()
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)[:, 0]
    if clamp:
        up = up.clamp(min=0)
    low = up.amin((-2, -1), keepdim=True)
    span = up.amax((-2, -1), keepdim=True) - low
    maps = torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(up))
    return maps.reshape(*lead, *size)


def binarise(maps: torch.Tensor | np.ndarray, threshold: str | float) -> np.ndarray:
    """bool [..., H, W]: S > mean(S) per map, or S > a fixed threshold."""
    maps = np.asarray(maps, dtype=np.float64)
    if threshold == "mean":
        return maps > maps.mean((-2, -1), keepdims=True)
    return maps > float(threshold)


# ---------------------------------------------------------------- ground-truth geometry

def geometry_steps(preprocess: Callable) -> list[Callable[[Image.Image], Image.Image]]:
    """The resize and crop steps of a torchvision preprocessing, redone with nearest-neighbour interpolation."""
    steps = []
    for step in getattr(preprocess, "transforms", [preprocess]):
        if isinstance(step, transforms.Resize):
            steps.append(transforms.Resize(step.size, interpolation=transforms.InterpolationMode.NEAREST,
                                           max_size=step.max_size))
        elif isinstance(step, transforms.CenterCrop):
            steps.append(transforms.CenterCrop(step.size))
        elif isinstance(step, (transforms.Normalize, transforms.ToTensor)) or type(step).__name__ in (
                "MaybeConvertMode", "MaybeToTensor") or getattr(step, "__name__", "") == "_convert_to_rgb":
            continue  # colour and tensor steps: no geometry
        else:
            raise UnsupportedModelError(f"the model's preprocessing has a {type(step).__name__} step, which the "
                                        "aligned protocol cannot mirror on masks; use --protocol official")
    return steps


def mask_view(mask: np.ndarray, preprocess: Callable, size: int, geometry: str) -> np.ndarray:
    """bool [size, size]: the ground truth laid over the model's input.

    geometry "crop": the preprocessing's own resize and centre crop (nearest neighbour);
    "squash": resized to size x size (nearest neighbour), as the papers' code does.
    """
    picture = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L")
    if geometry == "squash":
        picture = picture.resize((size, size), Image.NEAREST)
    elif geometry == "crop":
        for step in geometry_steps(preprocess):
            picture = step(picture)
    else:
        raise ConfigError(f"unknown mask geometry {geometry!r}; use crop or squash")
    view = np.asarray(picture) > 127
    if view.shape != (size, size):
        raise UnsupportedModelError(f"the model's preprocessing gives {view.shape[1]}x{view.shape[0]} masks, "
                                    f"not its input size {size}x{size}")
    return view
