"""Where the tables' images come from: ImageNet val, Waterbirds, ImageNet-segmentation, or the toy world.

- ImageNet val (`imagenet_val`): a folder in the ImageFolder layout with the 1,000 WordNet-id folders
  (n01440764, ...; the torchvision layout), whose sorted order is open_clip's ImageNet class order, so class i
  is `IMAGENET_CLASSNAMES[i]`; or `hf:ORG/NAME@<40-hex commit>:SPLIT[:COLUMN]` with `--label-column label`
  (e.g. ILSVRC/imagenet-1k, validation split, whose labels use the same order), pinned by the caller. Any other
  labelled set (e.g. `world:N:SEED` with `--label-column shape`, for a smoke test) keeps its own class names.
- Waterbirds: the folder of `waterbird_complete95_forest2water2` (metadata.csv with img_filename, y, place,
  split; test split = 2), read by `core.heads.spurious.grouped_folder`.
- ImageNet-segmentation: `gtsegs_ijcv.mat` (`core.segmentation.datasets`).
Nothing here downloads: a missing path or an uncached Hub dataset fails with a one-line message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import ConfigError

WNID = re.compile(r"n\d{8}")
WATERBIRDS_CLASSNAMES = ("landbird", "waterbird")
WATERBIRDS_TEST_SPLIT = "2"


@dataclass(frozen=True)
class Labelled:
    images: object  # core.engine.images.LabelledImages
    classnames: list[str]  # names for the zero-shot prompts, in label order
    templates: str  # "openai" (the 80 ImageNet templates) or "toy" (the world's, for its attribute column)
    description: str


def labelled_set(spec: str | None, label_column: str | None = None) -> Labelled:
    """A labelled image set for a table (see the module docstring)."""
    from core.inputs import labelled_source
    from core.engine.text import imagenet_classifier_texts

    if not spec:
        raise ConfigError("this table needs --images: ImageNet val (an ImageFolder of the 1,000 WordNet-id folders, "
                          "or hf:ORG/NAME@COMMIT:validation with --label-column label), or world:N:SEED with "
                          "--label-column shape for a smoke test")
    images = labelled_source(spec, label_column, "--images")
    names = list(images.classnames)
    imagenet = imagenet_classifier_texts()[0]
    if len(names) == 1000 and all(WNID.fullmatch(n) for n in names):
        return Labelled(images, imagenet, "openai", f"{images.description}; WordNet-id folders in sorted order = "
                        "open_clip's ImageNet class names")
    if spec.startswith("hf:") and len(names) == 1000 and all(n.isdigit() for n in names):
        ordered = sorted(names, key=int)
        if ordered != [str(i) for i in range(1000)]:
            raise ConfigError(f"{spec}: expected labels 0..999 (ImageNet's order)")
        return Labelled(images, [imagenet[int(n)] for n in names], "openai", f"{images.description}; labels 0..999 "
                        "= open_clip's ImageNet class order")
    from core.world import scenes as world

    templates = "toy" if spec.startswith("world:") and label_column in world.ZERO_SHOT else "openai"
    return Labelled(images, names, templates, images.description)


def classifier(bundle, labelled: Labelled, label_column: str | None):
    """(zero-shot classifier [class, d_out], description) for the set's class names."""
    from core.inputs import classifier_for

    return classifier_for(bundle, labelled.classnames, labelled.templates, label_column)
