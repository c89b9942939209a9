"""Views that lead to each other: the head or neuron a clicked table row names, opened in its own tab by a link;
a neuron's activation map (its segmentation of an image); a head's TextSpan text used as a property to retrieve
gallery images by.

Every ranking table names components by their one label (core.engine.labels: L3H1, L2.n517), or by index columns
(layer + head, layer + neuron; a neuron column alone counts within the tab's layer).

>>> row_links(["head", "layer", "head index", "score"], ["L3H1", 3, 1, 1.46], "L3H1", model="toy", image="example:0")
"**L3H1**: [open it in the Heads tab](?tab=heads&model=toy&layer=3&head=1...)"
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from core.links.codec import BASES, ViewState, encode

_LABEL = re.compile(r"\bL(\d+)(?:H(\d+)|\.n(\d+))\b")


@dataclass(frozen=True)
class Target:
    kind: str  # "head" | "neuron"
    layer: int
    index: int

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.index}" if self.kind == "head" else f"L{self.layer}.n{self.index}"


def _labels_in(value) -> list[Target]:
    found = []
    for match in _LABEL.finditer(str(value if value is not None else "")):
        layer = int(match.group(1))
        found.append(Target("head", layer, int(match.group(2))) if match.group(2) is not None
                     else Target("neuron", layer, int(match.group(3))))
    return found


def _whole(value) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and 0 <= number < 1_000_000 else None


def row_target(columns: Sequence[str], row: Sequence, clicked=None, *, layer=None) -> Target | None:
    """The head or neuron a table row names: a label in the clicked cell, else in the row, else index columns."""
    for value in [clicked, *row]:
        found = _labels_in(value)
        if found:
            return found[0]
    cells = {str(c): v for c, v in zip(columns, row)}
    row_layer = _whole(cells.get("layer"))
    row_layer = row_layer if row_layer is not None else _whole(layer)
    for column, kind in (("head index", "head"), ("head", "head"), ("neuron", "neuron")):
        index = _whole(cells.get(column))
        if index is not None and row_layer is not None:
            return Target(kind, row_layer, index)
    return None


def _hub_bases(bases: str | None) -> str | None:
    bases = (bases or "").strip()
    return bases if BASES.fullmatch(bases) else None  # a local folder cannot travel in a link


def _image(image: str | None) -> str | None:
    image = (image or "").strip()
    return image if image and image != "upload" else None


def target_links(target: Target, *, model: str | None, bases: str | None = None, image: str | None = None,
                 texts: Sequence[str] = ()) -> str:
    """Markdown links that open the target in its tab (with the image, when one is named)."""
    from core.explorer.common import link_model
    from core.links.images import default_texts

    model, bases, image = link_model(model), _hub_bases(bases), _image(image)
    if target.kind == "head":
        texts = tuple(texts)[:2] if image else ()
        heads = encode(ViewState("heads", model=model, bases=bases, layer=target.layer, head=target.index,
                                 image=image, texts=texts))
        circuit = encode(ViewState("circuits", model=model, bases=bases, head=f"{target.layer}.{target.index}"))
        parts = [f"[open it in the Heads tab](?{heads})"]
        if target.layer > 0:
            parts.append(f"[the neurons that feed it](?{circuit})")
        return f"**{target.label}**: " + " · ".join(parts)
    shown = image or "example:0"
    neurons = encode(ViewState("neurons", model=model, bases=bases, layer=target.layer, neuron=target.index))
    on_image = encode(ViewState("neurons", model=model, bases=bases, layer=target.layer, neuron=target.index,
                                image=shown))
    segment = encode(ViewState("segmentation", model=model, image=shown, texts=tuple(texts)[:4] or
                               tuple(default_texts(shown)[:1]), method="neurons"))
    circuit = encode(ViewState("circuits", model=model, bases=bases, layer=target.layer, neuron=target.index))
    return (f"**{target.label}**: [open it in the Neurons tab](?{neurons}) · [its activation map on {shown} (the "
            f"map it segments by)](?{on_image}) · [segment {shown} with neurons](?{segment}) · "
            f"[its circuit](?{circuit})")


def row_links(columns: Sequence[str], row: Sequence, clicked=None, *, model: str | None, bases: str | None = None,
              layer=None, image: str | None = None, texts: Sequence[str] = ()) -> str:
    """What a clicked row leads to (Markdown), or a hint when the row names no head or neuron."""
    target = row_target(columns, row, clicked, layer=layer)
    if target is None:
        return ""
    return target_links(target, model=model, bases=bases, image=image, texts=texts)


def neuron_map_link(model: str | None, bases: str | None, layer: int, neuron: int, image: str | None = None) -> str:
    """A neuron's activation map on an image (the map paper 2 segments by), as a Neurons-tab link."""
    from core.explorer.common import link_model

    shown = _image(image) or "example:0"
    query = encode(ViewState("neurons", model=link_model(model), bases=_hub_bases(bases), layer=layer, neuron=neuron,
                             image=shown))
    return f"[Its activation map on {shown} (the map it segments by)](?{query})"


# ---------------------------------------------------------------- a head's text as a property to retrieve by

def retrieve_by_text(spec: str | None, layer, head, text: str, source: str, folder: str | None, uploads, k=10, *,
                     convention: str = "paper", galleries: dict | None = None, progress=None):
    """Gallery images ranked by how much the head writes towards `text` (the cosine of the head's contribution with
    the text's embedding): the property one of its TextSpan texts names (paper 1, section 5.2, by text)."""
    import torch

    from core.engine.images import load_image
    from core.engine.labels import head_label
    from core.engine.text import encode_texts
    from core.explorer import access
    from core import engine
    from core.explorer.common import progress_or_silent
    from core.explorer.heads import RetrievalView, _gallery, _head
    from core.heads.retrieval import nearest

    progress = progress_or_silent(progress)
    text = access.check_length(text, "The text").strip()
    if not text:
        from core.errors import TextError

        raise TextError("Click a text of the head first.")
    bundle = engine.load_clip(spec, progress=progress)
    chosen = _head(bundle, layer, head)
    k = access.check_count(k, "the number of images", 1, 64)
    index, galleries = _gallery(bundle, source, folder, uploads, chosen[0], convention, dict(galleries or {}), progress)
    direction = encode_texts(bundle, [text])[0].float().cpu()
    found = nearest(index, torch.nn.functional.normalize(direction, dim=0), chosen, k=k, metric="cosine")
    items = [(load_image(index.paths[i]), f"#{rank} cosine {score:+.4f}") for rank, (i, score) in enumerate(found, 1)]
    info = (f"**Head {head_label(*chosen)}**, images whose contribution from this head points most towards "
            f"'{text}' (cosine of the contribution with the text's embedding); gallery: {index.description} "
            f"({len(index.paths)} images); convention {convention}.")
    return RetrievalView(info, items, galleries)
