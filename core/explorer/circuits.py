"""The Circuits tab: which later heads carry a neuron's second-order effect, and which neurons feed a head.

Every call names its model, bases, layer and neuron (or head), so each works on its own. Weight edges come from
the bases when they store them (`bases build --circuits`), else from the model's weights (milliseconds on the toy
model); data edges are averaged over the neuron's top images of the bases' image set (paper 2's active images);
head texts and neuron terms come from the bases. Nothing is kept between calls or shared between visitors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from core.engine.labels import head_label, neuron_label
from core.errors import BasesError, ConfigError, CoreError
from core.explorer import access
from core.explorer.common import (LinkPanel, Progress, bases_recipe, cached_artifact, check_index, colour_bar,
                                  display_source, link_model, link_panel, load_model, maybe_int, progress_or_silent,
                                  read_texts, without_paths)
from core.links.codec import BASES, ViewState
from core.links.commands import reproduce_commands

KINDS = ("weight", "data")
PATH_COLUMNS = ["path", "edge", "share", "sign", "composition", "head's texts"]
TERM_COLUMNS = ["text", "weight"]
IN_COLUMNS = ["neuron", "weight edge", "composition", "neuron's terms"]
ABLATION_COLUMNS = ["path", "lens (frozen LN)", "real model"]
MAX_TOP = 50


def _bases(bundle, bases: str | None):
    """(artifact or None, display source or None): the verified bases for this model."""
    from core.artifacts.hub import resolve_bases_source

    source = resolve_bases_source(bundle.info.spec, access.check_bases_source(bases))
    if not source:
        return None, None
    return cached_artifact(source, bundle.info.identity()), display_source(source)


def _target(text: str | None) -> str | None:
    text = (text or "").strip()
    return read_texts(text, limit=1)[0] if text and text != "pc" else None


def default_neuron_layer(n_layers: int) -> int:
    """The layer the tab starts on: the third from last, as the Neurons tab (ViT-B-32: 9)."""
    return max(0, n_layers - 3)


# ---------------------------------------------------------------- the heat map

def edge_map(values: np.ndarray, later_layers: tuple[int, ...], title: str, unit: str) -> Image.Image:
    """A signed later-layer x head heat map, one colour scale for all cells (+-max |edge|) with its legend."""
    from core.engine.viz import _font, diverging_colours

    rows, cols = values.shape
    cell = 56 if cols <= 8 else 40 if cols <= 16 else 28
    left, top = 60, 46
    font, small = _font(14), _font(11)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(measure.textlength(title, font=font), measure.textlength(unit, font=_font(13)))
    width, height = max(left + cols * cell + 12, 320, int(text_width) + 16), top + rows * cell + 10
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black", font=font)
    limit = float(np.abs(values).max()) or 1e-12
    colours = diverging_colours(values, limit)
    for r, layer in enumerate(later_layers):
        draw.text((6, top + r * cell + cell // 3), f"layer {layer}", fill="black", font=small)
        for c in range(cols):
            x0, y0 = left + c * cell, top + r * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=tuple(int(v) for v in colours[r, c]))
            if cell >= 40:
                colour = "white" if abs(values[r, c]) > 0.6 * limit else "black"
                draw.text((x0 + 3, y0 + cell // 3), f"{values[r, c]:+.3g}", fill=colour, font=small)
    for c in range(cols):
        draw.text((left + c * cell + 4, top - 14), f"H{c}", fill="black", font=small)
    return colour_bar(canvas, limit, unit)


# ---------------------------------------------------------------- one neuron

@dataclass(frozen=True)
class CircuitView:
    info: str
    picture: Image.Image
    paths: list[dict]
    terms: list[dict]


def show_circuit(spec: str | None, bases: str | None, layer, neuron, kind: str = "weight", text: str | None = None,
                 top=12, *, progress: Progress | None = None) -> CircuitView:
    """The neuron's edges to every later head: the heat map, the strongest paths with their heads' texts, its terms."""
    from core.circuits.report import neuron_circuit, neuron_basis_or_none

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    layer = check_index(layer, "layer", bundle.info.n_layers - 1)
    neuron = check_index(neuron, "neuron", bundle.info.d_mlp)
    top = access.check_count(top, "the number of paths", 1, MAX_TOP)
    if kind not in KINDS:
        raise ConfigError(f"Choose weight or data edges, not {kind!r}.")
    target = _target(text)
    artifact, source = _bases(bundle, bases)
    image_set = None
    if kind == "data":
        basis = neuron_basis_or_none(artifact, layer, bundle.info)
        if basis is None:
            raise BasesError(f"Data edges average over the neuron's top images, which come from neuron bases: none "
                             f"hold layer {layer} of {bundle.info.spec}. Show weight edges, or build bases with "
                             f"`python -m core bases build --model {bundle.info.spec} --neuron-layers {layer} ...`.")
        image_set = basis.image_set
        progress(0.2, desc="data edges over the neuron's top images")
    circuit = neuron_circuit(bundle, layer, neuron, image_set=image_set, target=target, artifact=artifact,
                             bases_source=source)
    values = circuit.matrix(kind).numpy()
    what = ("mean data edge <part, t> x100/|y|" if kind == "data" else
            "weight edge <u, t>" if circuit.weight.signed is not None else "composition score")
    picture = edge_map(values, circuit.weight.later_layers, f"{neuron_label(layer, neuron)} -> later heads: {what}",
                       what + " (red: excitatory, blue: inhibitory)" if kind == "data" or circuit.weight.signed
                       is not None else what)
    paths = [{"path": row.name, "edge": _round(row.data if kind == "data" else row.weight if row.weight is not None
                                               else row.composition),
              "share": _round(row.share, 3) if kind == "data" else None, "sign": row.sign,
              "composition": _round(row.composition, 4), "head's texts": "; ".join(row.head_texts)}
             for row in _ranked(circuit.rows, kind)[:top]]
    terms = [{"text": t, "weight": round(w, 4)} for t, w in circuit.terms]
    return CircuitView(_info(bundle, circuit, kind), picture, paths, terms)


def _ranked(rows, kind: str):
    if kind == "data":
        return rows  # neuron_circuit orders by |data edge|
    key = (lambda r: -abs(r.weight)) if rows and rows[0].weight is not None else (lambda r: -r.composition)
    return sorted(rows, key=lambda r: (round(key(r), 12), r.layer, r.head))


def _round(value, digits: int = 5):
    return None if value is None else round(float(value), digits)


def _info(bundle, circuit, kind: str) -> str:
    p = circuit.provenance
    lines = [f"**{neuron_label(circuit.layer, circuit.neuron)}** of model {bundle.info.spec} "
             f"({'random weights: for testing only' if bundle.info.random_init else bundle.info.display_name}): "
             f"{len(circuit.rows)} paths to later heads, convention {circuit.mode} (x100, divided by |y|); target: "
             f"{circuit.target or 'none (composition scores; bases with this layer give the neuron PC r_n)'}."]
    lines.append(f"Weight edges {p.get('weights')}" + (f"; bases `{p['bases']}`" if p.get("bases") else "; no bases")
                 + ".")
    if kind == "data" and circuit.data is not None:
        lines.append(f"Data edges over {p.get('active')} of {without_paths(p.get('images') or '')}: mean <phi_n, t> = "
                     f"{float(circuit.data.total[0]):+.5f}, the sum of the edges (exact).")
    lines.append("The lens follows the value (OV) path of later heads with LayerNorm statistics and attention frozen, "
                 "as paper 2; 'Measure the real effect' says how much of the neuron's real effect that explains.")
    return "  \n".join(lines)


# ---------------------------------------------------------------- the real effect

def measure_ablation(spec: str | None, bases: str | None, layer, neuron, text: str | None = None, *,
                     progress: Progress | None = None) -> tuple[str, list[dict]]:
    """Mean-ablate each path in the lens and in the real model, and the whole neuron: the share explained."""
    from core.circuits.report import MEAN_IMAGES, neuron_basis_or_none, neuron_circuit

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    layer = check_index(layer, "layer", bundle.info.n_layers - 1)
    neuron = check_index(neuron, "neuron", bundle.info.d_mlp)
    artifact, source = _bases(bundle, bases)
    basis = neuron_basis_or_none(artifact, layer, bundle.info)
    if basis is None:
        raise BasesError(f"The ablation runs on the neuron's top images, which come from neuron bases: none hold "
                         f"layer {layer} of {bundle.info.spec}.")
    progress(0.2, desc="mean ablation: lens and hooked re-runs")
    circuit = neuron_circuit(bundle, layer, neuron, image_set=basis.image_set, target=_target(text),
                             artifact=artifact, ablation=True, bases_source=source)
    a = circuit.ablation
    info = (f"**Mean ablation of {neuron_label(layer, neuron)}** (model {bundle.info.spec}) on its top "
            f"{a.n_images} images; per-token means over the first {min(MEAN_IMAGES, basis.image_set.count)} images "
            f"of {without_paths(basis.image_set.description)}; effect on <y, t> x100/|y|, target "
            f"{circuit.target}.  \nAll paths: lens **{a.lens_all:+.5f}**, real model (hooked re-run, real LayerNorm "
            f"and everything downstream) **{a.real_all:+.5f}**. The whole neuron ablated in the residual (direct, "
            f"value, query/key and later-MLP paths): **{a.neuron_real:+.5f}**. The second-order lens explains "
            f"**{a.share_explained:.1%}** of the neuron's real effect."
            + ("  \n**The real effect has the opposite sign**: the frozen-LayerNorm lens does not describe what this "
               "neuron does in the real network." if a.lens_all * a.neuron_real < 0 else ""))
    rows = [{"path": head_label(l2, h), "lens (frozen LN)": round(float(a.lens[i, h]), 6),
             "real model": round(float(a.real[i, h]), 6)}
            for i, l2 in enumerate(a.later_layers) for h in range(a.lens.shape[1])]
    rows.sort(key=lambda r: (-abs(r["lens (frozen LN)"]), r["path"]))
    return info, rows


# ---------------------------------------------------------------- one head

def parse_head(value) -> tuple[int, int]:
    text = str(value or "").strip()
    parts = text.split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        raise ConfigError("Type the head as LAYER.HEAD, e.g. 2.1.")
    return int(parts[0]), int(parts[1])


def show_in_edges(spec: str | None, bases: str | None, head, text: str | None = None, top=12, *,
                  progress: Progress | None = None) -> tuple[str, list[dict]]:
    """The neurons of earlier layers with the strongest weight edges into the head, with their terms."""
    from core.circuits.report import head_circuit

    bundle = load_model(spec, progress)
    l2, h = parse_head(head)
    check_index(l2, "layer", bundle.info.n_layers)
    check_index(h, "head", bundle.info.n_heads)
    top = access.check_count(top, "the number of neurons", 1, MAX_TOP)
    artifact, source = _bases(bundle, bases)
    circuit = head_circuit(bundle, (l2, h), target=_target(text), artifact=artifact, top=top, bases_source=source)
    rows = [{"neuron": neuron_label(r.layer, r.neuron), "weight edge": _round(r.signed), "composition":
             round(r.composition, 4), "neuron's terms": "; ".join(f"{t} ({w:+.2f})" for t, w in r.terms[:4])}
            for r in circuit.rows]
    info = (f"**In-edges of head {head_label(l2, h)}** (model {bundle.info.spec}): the {len(rows)} strongest of MLP "
            f"layer(s) {circuit.provenance['layers']}, ranked by {circuit.provenance['ranked_by']}; target: "
            f"{circuit.target or 'none'}." + (f"  \nThe head's texts: {'; '.join(circuit.head_texts)}."
                                               if circuit.head_texts else ""))
    return info, rows


# ---------------------------------------------------------------- links

def circuits_link(spec: str | None, bases: str | None, layer, neuron, head, text: str | None, kind: str) -> LinkPanel:
    """The link and command lines of the tab's controls (reads only the bases' manifest)."""
    from core.circuits.report import neuron_basis_or_none

    spec = link_model(spec)
    bases = (bases or "").strip()
    query = (text or "").strip()
    try:
        head_value = "{}.{}".format(*parse_head(head)) if (head or "").strip() else None
    except CoreError:
        head_value = None
    state = ViewState("circuits", model=spec, bases=bases if BASES.fullmatch(bases) else None, layer=maybe_int(layer),
                      neuron=maybe_int(neuron), head=head_value,
                      texts=(query,) if query and query != "pc" and len(query) <= 200 and "\n" not in query else (),
                      method=kind if kind in KINDS and kind != "weight" else None)
    source = recipe = images = None
    try:
        bundle = load_model(spec)
        artifact, source = _bases(bundle, bases or None)
        if artifact is not None:
            recipe = bases_recipe(artifact)
            basis = neuron_basis_or_none(artifact, maybe_int(layer) or 0, bundle.info)
            images = _image_spec(basis.image_set) if basis is not None else None
    except CoreError:
        pass
    notes = [] if not bases or BASES.fullmatch(bases) else [
        "Bases from a local folder cannot travel in a link: the link uses the configured bases."]
    return link_panel(state, reproduce_commands(state, bases_source=source, recipe=recipe, images=images), notes)


def _image_spec(image_set) -> str | None:
    """world:N:SEED:SPLIT for the generated world, else None (the command says YOUR_IMAGE_FOLDER)."""
    params = image_set.params
    if image_set.kind == "world" and {"n", "seed", "split"} <= set(params):
        return f"world:{params['n']}:{params['seed']}:{params['split']}"
    return None


@dataclass(frozen=True)
class LinkedCircuits:
    circuit: CircuitView | None
    in_edges: tuple[str, list[dict]] | None


def open_link(query, *, default_tab: str = "decomposition", only_tab: bool = False):
    """The view a link names (`core.explorer.common.Linked`) with a `LinkedCircuits` view."""
    from dataclasses import replace

    from core.explorer.common import link_failure, read_link

    linked, failed = read_link(query, "circuits", default_tab=default_tab, only_tab=only_tab)
    if not linked.applies:
        return linked
    s = linked.state
    text = s.texts[0] if s.texts else None
    kind = s.method or "weight"
    try:
        bundle = load_model(s.model)
        layer = default_neuron_layer(bundle.info.n_layers) if s.layer is None else s.layer
        circuit = show_circuit(s.model, s.bases, layer, s.neuron, kind, text) if s.neuron is not None else None
        in_edges = show_in_edges(s.model, s.bases, s.head, text) if isinstance(s.head, str) else None
    except CoreError as err:
        return failed(link_failure(err))
    link = circuits_link(s.model, s.bases, layer, s.neuron, s.head or "", text, kind)
    return replace(linked, view=LinkedCircuits(circuit, in_edges), link=link)
