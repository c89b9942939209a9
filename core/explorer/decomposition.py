"""The Decomposition tab: one image against texts, split into the embedding term, MLPs, heads and tokens.

>>> view = decompose("toy", None, "example:0", "a green cross\\na red circle", "paper")
>>> view.info, view.table[:3], view.link.query
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from core.engine.labels import head_label
from core.errors import ConfigError
from core.explorer.common import (UNIT, UNIT_NAME, LinkPanel, Progress, colour_bar, link_panel, load_model,
                                  progress_or_silent, query_image, read_texts)
from core.links.codec import ViewState
from core.links.commands import reproduce_commands

if TYPE_CHECKING:  # torch: imported by the first request, not by the page
    from core.engine.decomposition import ImageDecomposition

ALL = "all"
SCALES = ("shared", "own")


@dataclass(frozen=True)
class DecompositionView:
    """Everything the tab shows for one decomposition and one choice of text, layer and head."""

    result: ImageDecomposition
    image: Image.Image
    image_ref: str
    image_description: str
    shown: int
    layer: int | None
    head: int | None
    scale: str
    map_limit: float  # the token map's colour scale saturates at +-map_limit (cosine units)
    info: str
    grid: Image.Image
    token_map: Image.Image
    bars: list[dict]
    bar_order: list[str]
    table: list[dict]
    link: LinkPanel

    @property
    def texts(self) -> list[str]:
        return self.result.texts

    def layer_choices(self) -> list[str]:
        return [ALL] + [str(i) for i in range(self.result.heads.shape[0])]

    def head_choices(self) -> list[str]:
        return [ALL] + [str(i) for i in range(self.result.heads.shape[1])]


def _choice(value, name: str, size: int) -> int | None:
    """'all'/None -> None, else an index below size (ConfigError otherwise)."""
    if value in (None, "", ALL):
        return None
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be 'all' or a number from 0 to {size - 1}.") from None
    if not 0 <= index < size:
        raise ConfigError(f"{name} {index} is out of range: this model has {name}s 0..{size - 1}.")
    return index


def _shown(result: ImageDecomposition, text) -> int:
    if text in (None, ""):
        return 0
    if isinstance(text, str) and text in result.texts:
        return result.texts.index(text)
    index = _choice(text, "text", len(result.texts))
    return index or 0


def decompose(spec: str | None, image_path: str | None, image_ref: str | None, raw_texts, convention: str,
              *, shown=0, layer=None, head=None, scale: str = "shared",
              progress: Progress | None = None) -> DecompositionView:
    """Decompose cos(image, text) for each text; the view shows text `shown`, and the token map of layer/head."""
    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    query = query_image(image_path, image_ref)
    texts = read_texts(raw_texts)
    progress(0.3, desc="tracing the image through the model")
    from core.engine.decomposition import decompose_image  # torch: not before the first request

    result = decompose_image(bundle, query.image, texts, convention=convention)
    progress(0.8, desc="drawing the views")
    return render_decomposition(result, query.image, query.ref, query.description, shown, layer, head, scale)


def render_decomposition(result: ImageDecomposition, image: Image.Image, image_ref: str, image_description: str,
                         shown=0, layer=None, head=None, scale: str = "shared") -> DecompositionView:
    """The views of a computed decomposition for one text, layer and head choice (no recomputation)."""
    from core.engine.viz import heat_grid, overlay

    n_layers, n_heads = result.heads.shape[:2]
    t = _shown(result, shown)
    layer_index, head_index = _choice(layer, "layer", n_layers), _choice(head, "head", n_heads)
    if scale not in SCALES:
        raise ConfigError(f"colour scale must be one of {', '.join(SCALES)}")
    text = result.texts[t]
    grid = heat_grid(result.heads[:, :, t], title=f"cos(image, '{text[:32]}') by head, x100",
                     cell=44 if n_heads <= 16 else 36)
    maps = [result.token_map(i, layer_index, head_index) for i in range(len(result.texts))]
    limit = float(max(m.abs().max() for m in maps)) if scale == "shared" else float(maps[t].abs().max())
    limit = limit or 1e-12
    picture = overlay(image, maps[t], image_size=result.model["image_size"], limit=limit)
    where = f"layer {layer_index if layer_index is not None else 'all'}, head {head_index if head_index is not None else 'all'}"
    picture = colour_bar(picture, limit * UNIT, f"{UNIT_NAME}, {scale} scale")
    bars = ([{"layer": "emb", "part": "embedding", "contribution": round(float(result.embedding_term[t]) * UNIT, 4)}]
            + [{"layer": f"L{l}", "part": "attention", "contribution": round(float(result.heads[l, :, t].sum()) * UNIT, 4)}
               for l in range(n_layers)]
            + [{"layer": f"L{l}", "part": "MLP", "contribution": round(float(result.mlps[l, t]) * UNIT, 4)}
               for l in range(n_layers)])
    order = ["emb"] + [f"L{l}" for l in range(n_layers)]
    cells = [(l, h, float(result.heads[l, h, t])) for l in range(n_layers) for h in range(n_heads)]
    cells.sort(key=lambda c: (-abs(c[2]), c[0], c[1]))  # by magnitude; ties by index, never by float noise
    table = [{"component": head_label(l, h), "layer": l, "head": h, f"contribution ({UNIT_NAME})": round(v * UNIT, 4)}
             for l, h, v in cells]
    state = ViewState("decomposition", model=result.model["spec"], texts=tuple(result.texts), image=image_ref,
                      convention=result.convention, shown=t or None, layer=layer_index, head=head_index)
    info = _info(result, image_description, t, f"**Token map:** '{text}', {where}; colour scale {scale}.")
    return DecompositionView(result, image, image_ref, image_description, t, layer_index, head_index, scale, limit, info,
                             grid, picture, bars, order, table, link_panel(state, reproduce_commands(state)))


def _info(result: ImageDecomposition, image_description: str, shown: int, view_line: str) -> str:
    model = result.model
    warning = "\n\n**Random weights**: this model is not trained; numbers are for testing only." if model["random_init"] else ""
    rows = "\n".join(
        f"| {'**' if i == shown else ''}{text}{'**' if i == shown else ''} | {float(result.cosine[i]) * UNIT:+.3f} | "
        f"{float(result.embedding_term[i]) * UNIT:+.3f} | {float(result.mlps[:, i].sum()) * UNIT:+.3f} | "
        f"{float(result.heads[:, :, i].sum()) * UNIT:+.3f} |"
        for i, text in enumerate(result.texts))
    return (f"**Model:** {model['display_name']} (`{model['spec']}`, open_clip {model['open_clip_version']})  \n"
            f"**Image:** {image_description}  ·  **Convention:** {result.convention}  ·  **Reconstruction error:** "
            f"{result.reconstruction_error:.1e} (relative, sum of components vs `encode_image`)  \n"
            f"All scores are cosine contributions x100: embedding + MLPs + heads = cosine.  \n{view_line}{warning}\n\n"
            f"| text | cosine x100 | embedding | MLPs | heads |\n|---|---|---|---|---|\n{rows}")


def rerender(view: DecompositionView, shown=None, layer=None, head=None, scale: str | None = None) -> DecompositionView:
    """The same decomposition with another text, layer, head or colour scale."""
    if view is None:
        raise ConfigError("Decompose an image first.")
    return render_decomposition(view.result, view.image, view.image_ref, view.image_description,
                                view.shown if shown is None else shown, layer, head, scale or view.scale)



def open_link(query, *, default_tab: str = "decomposition", only_tab: bool = False):
    """The view a link names (`core.explorer.common.Linked`): its controls, and its numbers when it names any."""
    from dataclasses import replace

    from core.errors import CoreError
    from core.explorer.common import link_failure, read_link
    from core.links.images import default_texts

    linked, failed = read_link(query, "decomposition", default_tab=default_tab, only_tab=only_tab)
    if not linked.applies:
        return linked
    s = linked.state
    image_ref = s.image if s.image != "upload" else None
    if not image_ref:
        return linked
    try:
        view = decompose(s.model, None, image_ref, list(s.texts) or default_texts(image_ref), s.convention or "paper",
                         shown=s.shown or 0, layer=s.layer, head=s.head)
    except CoreError as err:
        return failed(link_failure(err))
    return replace(linked, view=view)
