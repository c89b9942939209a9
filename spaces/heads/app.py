"""Heads tab: what each attention head does, in words (TextSpan), on your image, and by property retrieval.

Runs alone (`python spaces/heads/app.py [--port P] [--public]`) or as a tab of the root app.py.
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
from core.engine.conventions import CONVENTIONS  # noqa: E402
from core.explorer import heads as explorer  # noqa: E402
from core.links.images import default_texts  # noqa: E402


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
TAB = "heads"
ALONE = False
RANKED_COLUMNS = ["head", "layer", "head index", "score (cosine x100)", "sign"]
TOP_TEXT_COLUMNS = ["text", "score (cosine x100)"]
SPURIOUS_COLUMNS = ["model", "overall", "worst group"]


# ---------------------------------------------------------------- handlers: one core call each

@ui.guard
def show_texts(spec, layer, head, bases, prefer, fitted, progress=gr.Progress()):
    """The head's TextSpan texts and the share of its outputs' variance each explains."""
    found = explorer.head_texts(spec, layer, head, bases, fitted=fitted, prefer=prefer, progress=progress)
    return found.info, ui.frame(found.rows, explorer.TEXT_COLUMNS)


def _compute_seconds(spec, source, folder, uploads, n_images, *args, **kwargs) -> int:
    return request_seconds(images=int(n_images or 0), base=30)


@gpu(duration=_compute_seconds)
@ui.guard
def compute_text_span(spec, source, folder, uploads, n_images, per_head, pool_file, layer, head,
                      progress=gr.Progress()):
    """Fit TextSpan (last 4 layers and the chosen head) on generated scenes or your images, for this session."""
    fitted, found = explorer.compute_text_span(spec, source, folder, uploads, n_images, per_head, pool_file, layer,
                                               head, progress=progress)
    return fitted, found.info, ui.frame(found.rows, explorer.TEXT_COLUMNS), explorer.FROM_SESSION


@gpu(duration=lambda *args, **kwargs: request_seconds(texts=300))
@ui.guard
def explain_image(spec, image, image_id, texts, layer, head, pool_file, convention, scale, progress=gr.Progress()):
    """Which heads respond to the first text, the chosen head's token maps, and its top pool texts."""
    view = explorer.explain_image(spec, image, image_id, texts, layer, head, pool_file, convention, scale=scale,
                                  progress=progress)
    return (view.info, ui.frame(view.ranked, RANKED_COLUMNS), ui.picture(view.grid), ui.picture(view.maps),
            ui.frame(view.top_texts, TOP_TEXT_COLUMNS))


@gpu(duration=lambda *args, **kwargs: request_seconds(images=explorer.GALLERY_SIZE))
@ui.guard
def retrieve(spec, image, image_id, layer, head, source, folder, uploads, k, metric, convention, galleries,
             progress=gr.Progress()):
    """Gallery images whose contribution from the chosen head is nearest the image's."""
    found = explorer.retrieve_similar(spec, image, image_id, layer, head, source, folder, uploads, k, metric,
                                      convention, galleries=galleries, progress=progress)
    return found.info, ui.picture(found.items), found.galleries


@gpu(duration=lambda *args, **kwargs: 300)
@ui.guard
def spurious(spec, folder, heads, classnames, trials, convention, progress=gr.Progress()):
    """Worst-group accuracy with the heads mean-ablated, against random heads (a local grouped folder)."""
    info, rows = explorer.remove_spurious(spec, folder, heads, classnames, trials, convention, progress=progress)
    return info, ui.frame(rows, SPURIOUS_COLUMNS)


@ui.guard(model=False)
def link(spec, bases, layer, head, texts, image_id, convention, metric):
    """The link and command lines of the current controls."""
    return ui.link_values(explorer.heads_link(spec, bases, layer, head, texts, image_id, convention, metric))


# A link's first answer (on ZeroGPU only when the link names this tab: see ui.open_link).
open_link_on_gpu = ui.gpu_link_opener(explorer.open_link)


@ui.guard
def restore(query: str, request: gr.Request):
    """The view a link names: its controls, its first answers, and a notice for what was ignored."""
    linked = ui.open_link(explorer.open_link, open_link_on_gpu, ui.query_of(query, request), TAB, ALONE)
    skip = [gr.skip()] * (len(CONTROLS) + len(TEXT_OUTPUTS) + len(EXPLAIN_OUTPUTS) + 2)
    if not linked.applies:
        return skip + [linked.notice or gr.skip()]
    s = linked.state
    controls = [s.model or gr.skip(), s.bases or gr.skip(), gr.skip() if s.layer is None else s.layer,
                gr.skip() if s.head is None else s.head, ui.picture(linked.picture) or gr.skip(),
                s.image if linked.picture else gr.skip(), "\n".join(s.texts) or gr.skip(), s.convention or gr.skip(),
                s.method or gr.skip()]
    texts, explained = linked.view or (None, None)
    text_values = [texts.info, ui.frame(texts.rows, explorer.TEXT_COLUMNS)] if texts else [gr.skip()] * 2
    explain_values = ([explained.info, ui.frame(explained.ranked, RANKED_COLUMNS), ui.picture(explained.grid),
                       ui.picture(explained.maps),
                       ui.frame(explained.top_texts, TOP_TEXT_COLUMNS)] if explained else [gr.skip()] * 5)
    link = list(ui.link_values(linked.link)) if linked.link else [gr.skip()] * 2
    return controls + text_values + explain_values + link + [linked.notice]


# ---------------------------------------------------------------- layout

def build() -> gr.Blocks:
    global CONTROLS, TEXT_OUTPUTS, EXPLAIN_OUTPUTS
    public = settings.public()
    sources = [explorer.WORLD, explorer.UPLOADS] + ([] if public else [explorer.FOLDER])
    with gr.Blocks(title="Heads") as demo:
        gr.Markdown("### Attention heads\nTextSpan labels each head of the last layers with the texts that explain "
                    "its outputs (Gandelsman et al., ICLR 2024). Pick a head to read its texts, see it at work on an "
                    "image, and find images it sees as similar.")
        links = ui.LinkBar(TAB)
        fitted = gr.State(None, time_to_live=3600)  # TextSpan computed in this session only
        galleries = gr.State({}, time_to_live=3600)  # gallery indexes of this session only
        with gr.Row():
            model = ui.model_box("heads-model")
            bases = gr.Textbox(label="Bases (empty: the configured ones; or ORG/NAME@SHA"
                               + ("" if public else ", or a folder") + ")", elem_id="heads-bases", scale=2)
            layer = gr.Number(label="Layer", value=_last_layer(), precision=0, minimum=0, elem_id="heads-layer")
            head = gr.Number(label="Head", value=0, precision=0, minimum=0, elem_id="heads-head")
            prefer = gr.Radio([explorer.FROM_BASES, explorer.FROM_SESSION], value=explorer.FROM_BASES,
                              label="Texts from", elem_id="heads-prefer")
            show = gr.Button("Show head texts", elem_id="heads-show")
        texts_info = gr.Markdown(elem_id="heads-info")
        texts_table = ui.table("The head's texts (TextSpan)", explorer.TEXT_COLUMNS, "heads-texts", max_height=320)
        with gr.Accordion("Compute TextSpan here (your session only)", open=False):
            with gr.Row():
                source = gr.Radio(sources, value=explorer.WORLD, label="Image set", elem_id="heads-source")
                folder = gr.Textbox(label="Image folder on this machine", visible=not public, elem_id="heads-folder")
                uploads = gr.File(label="Your images", file_count="multiple", file_types=["image"], type="filepath",
                                  elem_id="heads-uploads")
            with gr.Row():
                n_images = gr.Slider(20, 2000, value=200, step=10, label="Images", elem_id="heads-n-images")
                per_head = gr.Slider(1, 40, value=10, step=1, label="Texts per head", elem_id="heads-per-head")
                pool_file = gr.File(label="Text pool (.txt, one per line; default: toy pool)", file_types=[".txt"],
                                    type="filepath", elem_id="heads-pool")
            compute = gr.Button("Compute TextSpan", elem_id="heads-compute")

        gr.Markdown("### On an image")
        with gr.Row():
            with gr.Column(scale=1):
                image = ui.image_input("heads-image")
                image_id = ui.image_id_box("heads-image-id")
                ui.examples(image, image_id)
                texts = gr.Textbox(label="Texts (one per line; two give a difference map)",
                                   value="\n".join(default_texts()[:2]), lines=2, elem_id="heads-texts-input")
                convention = gr.Radio(list(CONVENTIONS), value="paper", label="Convention", elem_id="heads-convention")
                scale = gr.Radio(["shared", "own"], value="shared", label="Colour scale of the token maps",
                                 elem_id="heads-scale")
                explain = gr.Button("Explain image", variant="primary", elem_id="heads-explain")
            with gr.Column(scale=2):
                image_info = gr.Markdown(elem_id="heads-image-info")
                with gr.Row():
                    top_heads = ui.table("Heads responding most to the first text (by magnitude)", RANKED_COLUMNS,
                                         "heads-top-heads")
                    grid = gr.Image(show_label=False, elem_id="heads-grid", buttons=["download"])
                maps = gr.Gallery(label="Chosen head's token maps (red: towards the text)", columns=3, height="auto",
                                  elem_id="heads-maps")
                top_texts = ui.table("The image's own top texts for the chosen head", TOP_TEXT_COLUMNS,
                                     "heads-top-texts")

        gr.Markdown("### Property retrieval\nGallery images whose contribution from the chosen head is nearest the "
                    "image's above: a head that encodes a property (colour, count, place...) retrieves images sharing it.")
        with gr.Row():
            gallery_source = gr.Radio(sources, value=explorer.WORLD, label="Gallery", elem_id="heads-gallery-source")
            gallery_folder = gr.Textbox(label="Gallery folder on this machine", visible=not public,
                                        elem_id="heads-gallery-folder")
            gallery_uploads = gr.File(label="Your gallery images", file_count="multiple", file_types=["image"],
                                      type="filepath", elem_id="heads-gallery-uploads")
            k = gr.Slider(1, 24, value=10, step=1, label="Images", elem_id="heads-k")
            metric = gr.Radio(list(explorer.METRICS), value="cosine", label="Similarity", elem_id="heads-metric",
                              info="centered: cosine after removing the head's mean over the gallery")
            retrieve_button = gr.Button("Find similar images", elem_id="heads-retrieve")
        retrieval_info = gr.Markdown(elem_id="heads-retrieval-info")
        gallery = gr.Gallery(label="Nearest images", columns=8, height="auto", elem_id="heads-gallery")

        with gr.Accordion("Spurious-cue removal (a grouped folder on this machine, Waterbirds layout)", open=False,
                          visible=not public):
            with gr.Row():
                grouped = gr.Textbox(label="Grouped folder (metadata.csv with file, label, group)",
                                     elem_id="heads-grouped")
                ablated = gr.Textbox(label="Heads to mean-ablate (layer.head, comma-separated)", elem_id="heads-ablated")
                classnames = gr.Textbox(label="Class names for the sorted label values (optional)")
                trials = gr.Slider(1, 10, value=5, step=1, label="Random trials")
            spurious_button = gr.Button("Measure worst-group accuracy", elem_id="heads-spurious")
            spurious_info = gr.Markdown(elem_id="heads-spurious-info")
            spurious_table = ui.table("Accuracy", SPURIOUS_COLUMNS, "heads-spurious-table")

        CONTROLS = [model, bases, layer, head, image, image_id, texts, convention, metric]
        TEXT_OUTPUTS = [texts_info, texts_table]
        EXPLAIN_OUTPUTS = [image_info, top_heads, grid, maps, top_texts]
        link_inputs = [model, bases, layer, head, texts, image_id, convention, metric]

        def chain(trigger, handler, inputs, outputs, api_name, cleared: dict):
            """Clear the stale result at once, run the handler, then write the link of the controls."""
            trigger(ui.constant(list(cleared.values())), None, list(cleared), queue=False, api_visibility="private").then(
                handler, inputs, outputs, api_name=api_name, **ui.MODEL_QUEUE).then(
                link, link_inputs, links.outputs, api_visibility="private")

        no_texts = {texts_info: "", texts_table: ui.frame([], explorer.TEXT_COLUMNS)}
        chain(show.click, show_texts, [model, layer, head, bases, prefer, fitted], TEXT_OUTPUTS, "head_texts", no_texts)
        chain(compute.click, compute_text_span,
              [model, source, folder, uploads, n_images, per_head, pool_file, layer, head],
              [fitted, texts_info, texts_table, prefer], "compute_textspan", no_texts)
        chain(explain.click, explain_image, [model, image, image_id, texts, layer, head, pool_file, convention, scale],
              EXPLAIN_OUTPUTS, "explain_image",
              {image_info: "", top_heads: ui.frame([], RANKED_COLUMNS), grid: None, maps: [],
               top_texts: ui.frame([], TOP_TEXT_COLUMNS)})
        chain(retrieve_button.click, retrieve,
              [model, image, image_id, layer, head, gallery_source, gallery_folder, gallery_uploads, k, metric,
               convention, galleries], [retrieval_info, gallery, galleries], "retrieve",
              {retrieval_info: "", gallery: []})
        chain(spurious_button.click, spurious, [model, grouped, ablated, classnames, trials, convention],
              [spurious_info, spurious_table], "spurious",
              {spurious_info: "", spurious_table: ui.frame([], SPURIOUS_COLUMNS)})
        image.upload(lambda: "", None, image_id, queue=False, api_visibility="private")
        image_id.submit(ui.show_image_id, image_id, image, api_visibility="private")
        demo.load(restore, [links.query],
                  CONTROLS + TEXT_OUTPUTS + EXPLAIN_OUTPUTS + links.outputs + [links.notice],
                  queue=ui.LOAD_QUEUE, api_visibility="private", js=ui.PAGE_QUERY_JS)
    return demo


def _last_layer() -> int:
    from core.engine.configs import vision_layers
    from core.errors import CoreError

    layers = vision_layers(settings.default_model())  # from the config: the page is laid out before any model loads
    if layers is not None:
        return layers - 1
    from core.engine.models import load_clip

    try:
        return load_clip(settings.default_model(), device=settings.resolve_device()).info.n_layers - 1
    except CoreError:
        return 0  # the model box still works; errors show when used


CONTROLS: list = []
TEXT_OUTPUTS: list = []
EXPLAIN_OUTPUTS: list = []

if __name__ == "__main__":
    host, port = ui.configure(ui.parse_args(__doc__))
    ALONE = True
    ui.launch(build(), host, port)
else:
    demo = build()
