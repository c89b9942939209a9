"""Step 1: the class direction v = e(c2) - e(c1) from CLIP text embeddings (paper 2, section 5.1).

c1 is the class the images show, c2 the class CLIP should be fooled into. e(c) is the unit-norm
text embedding of the bare class name, as the paper code does; `templates` averages prompt
templates instead (normalised mean, like a zero-shot classifier).

>>> direction = class_direction(bundle, "square", "triangle")
>>> direction.v.shape        # [d_out]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from core.engine.models import ClipBundle
from core.engine.text import encode_texts, prompt_classifier
from core.errors import ConfigError, TextError


@dataclass(frozen=True)
class ClassDirection:
    """v = e(target) - e(present); embeddings unit norm [d_out]."""

    present: str
    target: str
    e_present: torch.Tensor
    e_target: torch.Tensor
    templates: tuple[str, ...]

    @property
    def v(self) -> torch.Tensor:
        return self.e_target - self.e_present

    def describe(self) -> str:
        how = "bare class names" if not self.templates else f"{len(self.templates)} templates"
        return (f"v = e({self.target!r}) - e({self.present!r}) ({how}); |v| = {float(self.v.norm()):.3f}, "
                f"cos(e1, e2) = {float(self.e_present @ self.e_target):.3f}")


def clean_class(bundle: ClipBundle, name: str, role: str) -> str:
    """The stripped class name; TextError when it is empty or tokenizes to nothing."""
    if not isinstance(name, str) or not name.strip():
        raise TextError(f"the {role} class is empty; give a class name such as 'square'.")
    name = " ".join(name.split())
    tokens = bundle.tokenizer([name])[0]
    # Start and end of text are always there; anything else is content.
    if int((tokens != 0).sum()) <= 2:
        raise TextError(f"the {role} class {name!r} tokenizes to nothing for {bundle.info.spec}; give a class name "
                        "made of words.")
    return name


def check_classes(bundle: ClipBundle, present: str, target: str) -> tuple[str, str]:
    present, target = clean_class(bundle, present, "present (c1)"), clean_class(bundle, target, "target (c2)")
    if present.lower() == target.lower():
        raise ConfigError(f"the present and target classes are the same ({present!r}); choose two different classes.")
    return present, target


def class_direction(bundle: ClipBundle, present: str, target: str, *,
                    templates: Sequence[str] = ()) -> ClassDirection:
    """v = e(target) - e(present). templates: e.g. ("a photo of a {}.",); () = bare names (paper code)."""
    present, target = check_classes(bundle, present, target)
    templates = tuple(templates)
    if templates:
        if not all("{}" in t for t in templates):
            raise ConfigError("every template must contain {} for the class name.")
        e = prompt_classifier(bundle, [[t.format(c) for t in templates] for c in (present, target)])
    else:
        e = encode_texts(bundle, [present, target])
    e = e.float().cpu()
    return ClassDirection(present, target, e[0], e[1], templates)
