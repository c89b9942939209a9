"""Neurons tab: what each MLP neuron writes through later attention heads, in words (paper 2).

Pick a model, layer and neuron: its texts with signed weights, its top images, its activation map and
second-order effect on your image. Search neurons by text; discover an image's concepts.
Runs alone (`python spaces/neurons/app.py [--port P] [--public]`) or as a tab of the root app.py.
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

from core import settings  # noqa: E402
from core.explorer import neurons as explorer  # noqa: E402


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
TAB = "neurons"
ALONE = False
ACTIVATED_COLUMNS = ["neuron", "|effect - mean|", "threshold", "ratio"]
WORD_COLUMNS = ["word", "score"]
SEARCH_COLUMNS = ["neuron", "cosine", "top texts"]


# ---------------------------------------------------------------- handlers: one core call each

@ui.guard
def load_bases(spec, bases, layer, session, progress=gr.Progress()):
    """Which statistics the tab reads for this model and layer (named bases, configured ones, or this session's)."""
    return explorer.bases_status(spec, bases, layer, session, progress=progress)


@gpu(duration=lambda spec, layer, source, n_scenes, *a, **k: request_seconds(scenes=int(n_scenes or 0), base=60))
@ui.guard
def compute_bases(spec, layer, source, n_scenes, folder, pool_file, pool_path, k, dictionary, progress=gr.Progress()):
    """Compute one layer's neuron statistics and text decompositions for this session."""
    return explorer.compute_statistics(spec, layer, source, n_scenes, folder, pool_file, pool_path, k, dictionary,
                                       progress=progress)


@ui.guard
def show_neuron(spec, bases, layer, neuron, session, progress=gr.Progress()):
    """The neuron's texts (signed weights), its top images and its statistics."""
    view = explorer.show_neuron(spec, bases, layer, neuron, session, progress=progress)
    return ui.frame(view.terms, explorer.TERM_COLUMNS), ui.picture(view.gallery), view.info


@gpu(duration=lambda *args, **kwargs: request_seconds(images=1))
@ui.guard
def neuron_on_image(spec, bases, layer, neuron, image, image_id, session, progress=gr.Progress()):
    """The neuron's activation map on the image, and its second-order effect size against its threshold."""
    heat, info = explorer.neuron_on_image(spec, bases, layer, neuron, image, image_id, session, progress=progress)
    return ui.picture(heat), info


@gpu(duration=lambda *args, **kwargs: request_seconds(texts=1))
@ui.guard
def search(spec, bases, layer, text, top, session, progress=gr.Progress()):
    """Neurons of the layer whose principal component points most towards the text."""
    rows, info = explorer.search_neurons(spec, bases, layer, text, top, session, progress=progress)
    return ui.frame(rows, SEARCH_COLUMNS), info


@gpu(duration=lambda *args, **kwargs: request_seconds(images=1))
@ui.guard
def concepts(spec, bases, layer, image, image_id, top, threshold, session, progress=gr.Progress()):
    """Activated neurons of the image (effect above threshold x tau_n) and the words they vote for."""
    neurons, words, info = explorer.discover_concepts(spec, bases, layer, image, image_id, top, threshold, session,
                                                      progress=progress)
    return ui.frame(neurons, ACTIVATED_COLUMNS), ui.frame(words, WORD_COLUMNS), info


@ui.guard(model=False)
def link(spec, bases, layer, neuron, text, image_id, threshold):
    """The link and command lines of the current controls."""
    return ui.link_values(explorer.neurons_link(spec, bases, layer, neuron, text, image_id, threshold))


# A link's first answer (on ZeroGPU only when the link names this tab: see ui.open_link).
open_link_on_gpu = ui.gpu_link_opener(explorer.open_link)


@ui.guard
def restore(query: str, request: gr.Request):
    """The view a link names (controls and first answers); without a link, the bases status."""
    linked = ui.open_link(explorer.open_link, open_link_on_gpu, ui.query_of(query, request), TAB, ALONE)
    n_out = len(CONTROLS) + len(VIEW_OUTPUTS) + 2
    if not linked.applies:
        return [gr.skip()] * n_out + [first_status(), linked.notice or gr.skip()]
    s, view = linked.state, linked.view
    controls = [s.model or gr.skip(), s.bases or gr.skip(), gr.skip() if s.layer is None else s.layer,
                gr.skip() if s.neuron is None else s.neuron, ui.picture(linked.picture) or gr.skip(),
                s.image if linked.picture else gr.skip(), s.texts[0] if s.texts else gr.skip(),
                gr.skip() if s.threshold is None else s.threshold]
    values = [gr.skip()] * len(VIEW_OUTPUTS)
    if view is not None:
        values = [*((ui.frame(view.neuron.terms, explorer.TERM_COLUMNS), ui.picture(view.neuron.gallery),
                     view.neuron.info) if view.neuron else [gr.skip()] * 3),
                  *((ui.picture(view.on_image[0]), view.on_image[1]) if view.on_image else [gr.skip()] * 2),
                  *((ui.frame(view.concepts[0], ACTIVATED_COLUMNS), ui.frame(view.concepts[1], WORD_COLUMNS),
                     view.concepts[2]) if view.concepts else [gr.skip()] * 3),
                  *((ui.frame(view.search[0], SEARCH_COLUMNS), view.search[1]) if view.search else [gr.skip()] * 2)]
    link = list(ui.link_values(linked.link)) if linked.link else [gr.skip()] * 2
    return controls + values + link + [view.status if view else gr.skip(), linked.notice]


def first_status() -> str:
    """The page's first status line: the configured bases of the default model, or how to get statistics."""
    from core.errors import CoreError

    try:
        return explorer.bases_status(None, None, _default_layer())
    except CoreError as err:
        return f"No neuron bases loaded ({ui.error_message(err)}). Compute statistics below."


def _default_layer() -> int:
    from core.engine.configs import vision_layers
    from core.errors import CoreError

    layers = vision_layers(settings.default_model())  # from the config: the page is laid out before any model loads
    if layers is not None:
        return explorer.default_layer(layers)
    from core.engine.models import load_clip

    try:
        return explorer.default_layer(load_clip(settings.default_model(), device=settings.resolve_device()).info.n_layers)
    except CoreError:
        return 0


# ---------------------------------------------------------------- layout

def build() -> gr.Blocks:
    global CONTROLS, VIEW_OUTPUTS
    public = settings.public()
    with gr.Blocks(title="Neurons") as demo:
        gr.Markdown("### Neurons\nEach MLP neuron's *second-order effect*: what it writes into the image "
                    "representation through later attention heads. Its first principal component is explained by a "
                    "sparse sum of texts (OMP). Statistics come from precomputed bases, or are computed here for your "
                    "session.")
        links = ui.LinkBar(TAB)
        session = gr.State(None, time_to_live=3600)  # statistics computed in this session only
        with gr.Row():
            model = ui.model_box("neurons-model")
            bases = gr.Textbox(label="Bases (empty: the configured ones; or ORG/NAME@SHA"
                               + ("" if public else ", or a folder") + ")", elem_id="neurons-bases", scale=2)
            layer = gr.Number(label="Layer", value=_default_layer(), precision=0, minimum=0, elem_id="neurons-layer",
                              scale=1)
            load = gr.Button("Load bases", scale=1, elem_id="neurons-load")
        with gr.Accordion("Compute statistics (your session only)", open=False):
            with gr.Row():
                image_source = gr.Radio([explorer.WORLD] + ([] if public else [explorer.FOLDER]), value=explorer.WORLD,
                                        label="Image set", elem_id="neurons-source")
                n_scenes = gr.Number(label="World scenes", value=2000, precision=0, elem_id="neurons-scenes")
                folder = gr.Textbox(label="Image folder on this machine", visible=not public, elem_id="neurons-folder")
                pool_file = gr.File(label="Text pool (.txt; default: the toy pool)", file_types=[".txt"],
                                    type="filepath", elem_id="neurons-pool-file")
                pool_path = gr.Textbox(label="or a text pool file on this machine", visible=not public,
                                       elem_id="neurons-pool")
                k = gr.Number(label="k (top images)", value=100, precision=0, elem_id="neurons-k")
                dictionary = gr.Radio(["normalise_texts", "original"], value="normalise_texts", label="Dictionary")
            compute = gr.Button("Compute statistics", variant="primary", elem_id="neurons-compute")
        status = gr.Markdown(elem_id="neurons-status")
        with gr.Row():
            with gr.Column(scale=1):
                neuron = gr.Number(label="Neuron", value=0, precision=0, minimum=0, elem_id="neurons-neuron")
                show = gr.Button("Show neuron", elem_id="neurons-show")
                neuron_info = gr.Markdown(elem_id="neurons-neuron-info")
                terms = ui.table("Texts (signed weights)", explorer.TERM_COLUMNS, "neurons-terms", max_height=320)
                gallery = gr.Gallery(label="Top images", columns=4, height="auto", elem_id="neurons-gallery")
            with gr.Column(scale=1):
                image = ui.image_input("neurons-image", "Your image")
                image_id = ui.image_id_box("neurons-image-id")
                ui.examples(image, image_id)
                with gr.Row():
                    words_top = gr.Number(label="Words", value=10, precision=0, minimum=1, elem_id="neurons-words-top")
                    threshold = gr.Number(label="Threshold (x tau_n; 1 = the paper's rule)", value=1.0, minimum=0.01,
                                          elem_id="neurons-threshold")
                with gr.Row():
                    on_image = gr.Button("Activation map of the neuron", elem_id="neurons-map-run")
                    discover = gr.Button("Discover concepts", variant="primary", elem_id="neurons-concepts-run")
                effect = gr.Markdown(elem_id="neurons-effect")
                heat = gr.Image(show_label=False, elem_id="neurons-map")
                concept_info = gr.Markdown(elem_id="neurons-concepts-info")
                words = ui.table("Concepts (words)", WORD_COLUMNS, "neurons-words", max_height=260)
                activated = ui.table("Activated neurons", ACTIVATED_COLUMNS, "neurons-activated", max_height=200)
        with gr.Row():
            query = gr.Textbox(label="Which neurons write...", value="a red circle", elem_id="neurons-search-text")
            search_top = gr.Number(label="Neurons", value=10, precision=0, minimum=1, elem_id="neurons-search-top")
            find = gr.Button("Search neurons", elem_id="neurons-search-run")
        search_info = gr.Markdown(elem_id="neurons-search-info")
        hits = ui.table("Neurons by cosine(PC, text)", SEARCH_COLUMNS, "neurons-search-table")

        CONTROLS = [model, bases, layer, neuron, image, image_id, query, threshold]
        VIEW_OUTPUTS = [terms, gallery, neuron_info, heat, effect, activated, words, concept_info, hits, search_info]
        where = [model, bases, layer]
        link_inputs = [model, bases, layer, neuron, query, image_id, threshold]

        def chain(trigger, handler, inputs, outputs, api_name, cleared: dict):
            """Clear the stale result at once, run the handler, then write the link of the controls."""
            trigger(ui.constant(list(cleared.values())), None, list(cleared), queue=False, api_visibility="private").then(
                handler, inputs, outputs, api_name=api_name, **ui.MODEL_QUEUE).then(
                link, link_inputs, links.outputs, api_visibility="private")

        chain(load.click, load_bases, where + [session], [status], "load_bases", {status: ""})
        chain(compute.click, compute_bases, [model, layer, image_source, n_scenes, folder, pool_file, pool_path, k,
                                             dictionary], [session, status], "compute_bases", {status: ""})
        chain(show.click, show_neuron, where + [neuron, session], [terms, gallery, neuron_info], "show_neuron",
              {terms: ui.frame([], explorer.TERM_COLUMNS), gallery: [], neuron_info: ""})
        chain(on_image.click, neuron_on_image, where + [neuron, image, image_id, session], [heat, effect],
              "neuron_on_image", {heat: None, effect: ""})
        chain(discover.click, concepts, where + [image, image_id, words_top, threshold, session],
              [activated, words, concept_info], "concepts",
              {activated: ui.frame([], ACTIVATED_COLUMNS), words: ui.frame([], WORD_COLUMNS), concept_info: ""})
        chain(find.click, search, where + [query, search_top, session], [hits, search_info], "search_neurons",
              {hits: ui.frame([], SEARCH_COLUMNS), search_info: ""})
        image.upload(lambda: "", None, image_id, queue=False, api_visibility="private")
        image_id.submit(ui.show_image_id, image_id, image, api_visibility="private")
        demo.load(restore, [links.query], CONTROLS + VIEW_OUTPUTS + links.outputs + [status, links.notice],
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
