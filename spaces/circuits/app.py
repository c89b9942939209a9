"""Circuits tab: which later attention heads carry an MLP neuron's second-order effect, and which neurons feed a head.

Pick a model, layer and neuron: a signed later-layer x head map of its edges (weight or data), its strongest paths
with each head's TextSpan texts and the neuron's own terms, and on request the share of its real effect that the
second-order lens explains (path ablation). Type a head (LAYER.HEAD) for the neurons that feed it.
Runs alone (`python spaces/circuits/app.py [--port P] [--public]`) or as a tab of the root app.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1] if (HERE.parents[1] / "core").is_dir() else HERE  # the repository, or a deployed Space
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.gpu import gpu, request_seconds  # noqa: E402  (before torch: ZeroGPU)

import gradio as gr  # noqa: E402

from core.explorer import circuits as explorer  # noqa: E402


def _load_ui():
    """spaces/ui_common.py (beside this file in a deployed Space), loaded by path: spaces/ is not a package."""
    import importlib.util

    if "clipscope_ui_common" not in sys.modules:
        path = next(p for p in (HERE / "ui_common.py", HERE.parent / "ui_common.py") if p.is_file())
        spec = importlib.util.spec_from_file_location("clipscope_ui_common", path)
        sys.modules["clipscope_ui_common"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["clipscope_ui_common"]


ui = _load_ui()
TAB = "circuits"
ALONE = False
KIND_LABELS = {"weight edges (no images)": "weight", "data edges (the neuron's top images)": "data"}


def _kind(label: str) -> str:
    return KIND_LABELS.get(label, label)


def _label(kind: str) -> str:
    return next((label for label, value in KIND_LABELS.items() if value == kind), kind)


# ---------------------------------------------------------------- handlers: one core call each

@gpu(duration=lambda spec, bases, layer, neuron, kind, *a, **k: request_seconds(images=100 if _kind(kind) == "data" else 0))
@ui.guard
def show_circuit(spec, bases, layer, neuron, kind, target, top, progress=gr.Progress()):
    """The neuron's edges to every later head: heat map, strongest paths with the heads' texts, the neuron's terms."""
    view = explorer.show_circuit(spec, bases, layer, neuron, _kind(kind), target, top, progress=progress)
    return (ui.picture(view.picture), ui.frame(view.paths, explorer.PATH_COLUMNS),
            ui.frame(view.terms, explorer.TERM_COLUMNS), view.info)


@gpu(duration=lambda *args, **kwargs: request_seconds(images=300))
@ui.guard
def measure_ablation(spec, bases, layer, neuron, target, progress=gr.Progress()):
    """Mean-ablate each path (lens and real model) and the whole neuron: how much of its real effect the lens explains."""
    info, rows = explorer.measure_ablation(spec, bases, layer, neuron, target, progress=progress)
    return info, ui.frame(rows, explorer.ABLATION_COLUMNS)


@gpu(duration=lambda *args, **kwargs: request_seconds(texts=1))
@ui.guard
def in_edges(spec, bases, head, target, top, progress=gr.Progress()):
    """The earlier-layer neurons with the strongest weight edges into the head, with their terms."""
    info, rows = explorer.show_in_edges(spec, bases, head, target, top, progress=progress)
    return info, ui.frame(rows, explorer.IN_COLUMNS)


@ui.guard(model=False)
def link(spec, bases, layer, neuron, head, target, kind):
    """The link and command lines of the current controls."""
    return ui.link_values(explorer.circuits_link(spec, bases, layer, neuron, head, target, _kind(kind)))


open_link_on_gpu = ui.gpu_link_opener(explorer.open_link)


@ui.guard
def restore(query: str, request: gr.Request):
    """The view a link names (controls and first answers)."""
    linked = ui.open_link(explorer.open_link, open_link_on_gpu, ui.query_of(query, request), TAB, ALONE)
    n_out = len(CONTROLS) + len(VIEW_OUTPUTS) + 2
    if not linked.applies:
        return [gr.skip()] * n_out + [linked.notice or gr.skip()]
    s, view = linked.state, linked.view
    controls = [s.model or gr.skip(), s.bases or gr.skip(), gr.skip() if s.layer is None else s.layer,
                gr.skip() if s.neuron is None else s.neuron, s.head if isinstance(s.head, str) else gr.skip(),
                s.texts[0] if s.texts else gr.skip(), _label(s.method) if s.method else gr.skip()]
    values = [gr.skip()] * len(VIEW_OUTPUTS)
    if view is not None:
        values = [*((ui.picture(view.circuit.picture), ui.frame(view.circuit.paths, explorer.PATH_COLUMNS),
                     ui.frame(view.circuit.terms, explorer.TERM_COLUMNS), view.circuit.info)
                    if view.circuit else [gr.skip()] * 4),
                  *((view.in_edges[0], ui.frame(view.in_edges[1], explorer.IN_COLUMNS)) if view.in_edges
                    else [gr.skip()] * 2)]
    link_values = list(ui.link_values(linked.link)) if linked.link else [gr.skip()] * 2
    return controls + values + link_values + [linked.notice]


# ---------------------------------------------------------------- layout

def build() -> gr.Blocks:
    global CONTROLS, VIEW_OUTPUTS
    from core import settings

    public = settings.public()
    with gr.Blocks(title="Circuits") as demo:
        gr.Markdown("### Circuits\nA neuron's *second-order effect* (paper 2) is a sum over the later attention heads "
                    "that carry it. Under paper 2's own assumption (LayerNorm statistics and attention frozen on the "
                    "image) the split is exact: each path neuron -> head gets its part. Red paths excite the target "
                    "direction (the neuron's first PC by default), blue ones inhibit it.")
        links = ui.LinkBar(TAB)
        with gr.Row():
            model = ui.model_box("circuits-model")
            bases = gr.Textbox(label="Bases (empty: the configured ones; or ORG/NAME@SHA"
                               + ("" if public else ", or a folder") + ")", elem_id="circuits-bases", scale=2)
            layer = gr.Number(label="Layer", value=1, precision=0, minimum=0, elem_id="circuits-layer", scale=1)
            neuron = gr.Number(label="Neuron", value=0, precision=0, minimum=0, elem_id="circuits-neuron", scale=1)
        with gr.Row():
            kind = gr.Radio(list(KIND_LABELS), value=next(iter(KIND_LABELS)), label="Edges", elem_id="circuits-kind",
                            scale=2)
            target = gr.Textbox(label="Target direction (empty: the neuron's first PC; or a text, or class:NAME)",
                                elem_id="circuits-target", scale=2)
            top = gr.Number(label="Paths listed", value=12, precision=0, minimum=1, elem_id="circuits-top", scale=1)
            show = gr.Button("Show circuit", variant="primary", elem_id="circuits-show", scale=1)
        info = gr.Markdown(elem_id="circuits-info")
        with gr.Row():
            with gr.Column(scale=1):
                picture = gr.Image(show_label=False, elem_id="circuits-map", type="filepath")
                terms = ui.table("The neuron's terms (sparse decomposition of r_n)", explorer.TERM_COLUMNS,
                                 "circuits-terms", max_height=260)
            with gr.Column(scale=1):
                paths = ui.table("Strongest paths", explorer.PATH_COLUMNS, "circuits-paths", max_height=420)
        with gr.Row():
            measure = gr.Button("Measure the real effect (path ablation)", elem_id="circuits-ablation-run")
        ablation_info = gr.Markdown(elem_id="circuits-ablation-info")
        ablation = ui.table("Each path mean-ablated alone", explorer.ABLATION_COLUMNS, "circuits-ablation",
                            max_height=300)
        with gr.Row():
            head = gr.Textbox(label="Head (LAYER.HEAD)", value="", elem_id="circuits-head", scale=1)
            find = gr.Button("Neurons feeding this head", elem_id="circuits-in-run", scale=1)
        in_info = gr.Markdown(elem_id="circuits-in-info")
        in_table = ui.table("In-edges", explorer.IN_COLUMNS, "circuits-in", max_height=360)

        CONTROLS = [model, bases, layer, neuron, head, target, kind]
        VIEW_OUTPUTS = [picture, paths, terms, info, in_info, in_table]
        link_inputs = [model, bases, layer, neuron, head, target, kind]

        def chain(trigger, handler, inputs, outputs, api_name, cleared: dict):
            """Clear the stale result at once, run the handler, then write the link of the controls."""
            trigger(ui.constant(list(cleared.values())), None, list(cleared), queue=False, api_visibility="private").then(
                handler, inputs, outputs, api_name=api_name, **ui.MODEL_QUEUE).then(
                link, link_inputs, links.outputs, api_visibility="private")

        chain(show.click, show_circuit, [model, bases, layer, neuron, kind, target, top], [picture, paths, terms, info],
              "show_circuit", {picture: None, paths: ui.frame([], explorer.PATH_COLUMNS),
                               terms: ui.frame([], explorer.TERM_COLUMNS), info: ""})
        chain(measure.click, measure_ablation, [model, bases, layer, neuron, target], [ablation_info, ablation],
              "measure_ablation", {ablation_info: "", ablation: ui.frame([], explorer.ABLATION_COLUMNS)})
        chain(find.click, in_edges, [model, bases, head, target, top], [in_info, in_table], "in_edges",
              {in_info: "", in_table: ui.frame([], explorer.IN_COLUMNS)})
        demo.load(restore, [links.query], CONTROLS + VIEW_OUTPUTS + links.outputs + [links.notice],
                  queue=ui.LOAD_QUEUE, api_visibility="private", js=ui.PAGE_QUERY_JS)
    return demo


CONTROLS: list = []
VIEW_OUTPUTS: list = []

if __name__ == "__main__":
    host, port = ui.configure(ui.parse_args(__doc__))
    ALONE = True
    ui.launch(build(), host, port)
else:
    demo = build()
