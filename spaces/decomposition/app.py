"""Decomposition tab: an image's similarity to texts, split into the embedding, layers, heads, MLPs and tokens.

Runs alone (`python spaces/decomposition/app.py [--port P] [--public]`) or as a tab of the root app.py.
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

from core.engine.conventions import CONVENTIONS  # noqa: E402
from core.explorer import decomposition as explorer  # noqa: E402
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
TAB = "decomposition"
ALONE = False  # True when this file is the whole app (then links to other tabs are refused with a notice)
BAR_COLUMNS, TABLE_COLUMNS = ["layer", "part", "contribution"], ["component", "layer", "head", "contribution (cosine x100)"]


def _views(view: explorer.DecompositionView):
    """The view as component values (the order of VIEW_OUTPUTS)."""
    return (view, view.info, gr.Dropdown(choices=view.texts, value=view.texts[view.shown]),
            gr.Dropdown(choices=view.layer_choices(), value=str(view.layer) if view.layer is not None else explorer.ALL),
            gr.Dropdown(choices=view.head_choices(), value=str(view.head) if view.head is not None else explorer.ALL),
            ui.picture(view.grid), ui.picture(view.token_map), gr.BarPlot(value=ui.frame(view.bars, BAR_COLUMNS), sort=view.bar_order),
            ui.frame(view.table, TABLE_COLUMNS), view.link.query, view.link.markdown)


def _cleared():
    return (None, "", gr.Dropdown(choices=[], value=None), gr.skip(), gr.skip(), None, None,
            None, ui.frame([], TABLE_COLUMNS), gr.skip(), gr.skip())


def _duration(spec, image, image_id, texts, *args, **kwargs) -> int:
    return request_seconds(images=1, texts=len((texts or "").splitlines()))


@gpu(duration=_duration)
@ui.guard
def run_decomposition(spec: str, image: str | None, image_id: str, texts: str, convention: str,
                      progress=gr.Progress()):
    """Decompose cos(image, text) for each text into the embedding, MLP, head and token terms."""
    return _views(explorer.decompose(spec, image, image_id, texts, convention, progress=progress))


@ui.guard
def change_view(view, text: str, layer: str, head: str, scale: str):
    """Another text, layer, head or colour scale of the same decomposition (no recomputation)."""
    return _views(explorer.rerender(view, text, layer, head, scale))


# A link's first answer (on ZeroGPU only when the link names this tab: see ui.open_link).
open_link_on_gpu = ui.gpu_link_opener(explorer.open_link)


@ui.guard
def restore(query: str, request: gr.Request):
    """The view a link names: its controls, its first answer, and a notice for what was ignored."""
    linked = ui.open_link(explorer.open_link, open_link_on_gpu, ui.query_of(query, request), TAB, ALONE)
    if not linked.applies:
        return [gr.skip()] * (len(CONTROLS) + len(VIEW_OUTPUTS)) + [linked.notice or gr.skip()]
    s = linked.state
    controls = [s.model or gr.skip(), ui.picture(linked.picture) or gr.skip(), s.image if linked.picture else gr.skip(),
                "\n".join(s.texts) or gr.skip(), s.convention or gr.skip()]
    views = _views(linked.view) if linked.view is not None else [gr.skip()] * len(VIEW_OUTPUTS)
    return controls + list(views) + [linked.notice]


def _default_texts() -> str:
    return "\n".join(default_texts("example:0"))


def build() -> gr.Blocks:
    global CONTROLS, VIEW_OUTPUTS
    with gr.Blocks(title="Decomposition") as demo:
        gr.Markdown("### Decomposition\nThe image representation is an exact sum of direct effects of the embedding, "
                    "every MLP and every (layer, head, token). Pick an example or upload an image, type texts, and see "
                    "each part's share of the cosine similarity (all scores are cosine x100).")
        links = ui.LinkBar(TAB)
        state = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=1):
                model = ui.model_box("decomposition-model")
                image = ui.image_input("decomposition-image")
                image_id = ui.image_id_box("decomposition-image-id")
                ui.examples(image, image_id)
                texts = gr.Textbox(label="Texts (one per line)", value=_default_texts(), lines=3,
                                   elem_id="decomposition-texts")
                convention = gr.Radio(list(CONVENTIONS), value="paper", label="Convention",
                                      elem_id="decomposition-convention")
                button = gr.Button("Decompose", variant="primary", elem_id="decomposition-run")
            with gr.Column(scale=2):
                info = gr.Markdown(elem_id="decomposition-info")
                with gr.Row():
                    text_pick = gr.Dropdown(label="Text shown", choices=[], interactive=True, elem_id="decomposition-text")
                    layer_pick = gr.Dropdown(label="Layer (token map)", choices=[explorer.ALL], value=explorer.ALL,
                                             interactive=True, elem_id="decomposition-layer")
                    head_pick = gr.Dropdown(label="Head (token map)", choices=[explorer.ALL], value=explorer.ALL,
                                            interactive=True, elem_id="decomposition-head")
                    scale = gr.Radio(list(explorer.SCALES), value="shared", label="Colour scale of the token maps",
                                     info="shared: one scale for every text, so maps compare", elem_id="decomposition-scale")
                with gr.Row():
                    grid = gr.Image(show_label=False, elem_id="decomposition-grid", buttons=["download"])
                    token_map = gr.Image(show_label=False, elem_id="decomposition-map", buttons=["download"])
                bars = gr.BarPlot(value=None, x="layer", y="contribution", color="part",
                                  label="Per-layer contributions (cosine x100; embedding + attention + MLP bars add up "
                                        "to the cosine)", elem_id="decomposition-bars")
                table = ui.table("Heads ranked by |contribution|", TABLE_COLUMNS, "decomposition-table", max_height=300)
        CONTROLS = [model, image, image_id, texts, convention]
        VIEW_OUTPUTS = [state, info, text_pick, layer_pick, head_pick, grid, token_map, bars, table, *links.outputs]
        button.click(_cleared, None, VIEW_OUTPUTS, queue=False, api_visibility="private").then(
            run_decomposition, [model, image, image_id, texts, convention], VIEW_OUTPUTS, api_name="decompose",
            **ui.MODEL_QUEUE)
        for pick in (text_pick, layer_pick, head_pick, scale):
            pick.input(change_view, [state, text_pick, layer_pick, head_pick, scale], VIEW_OUTPUTS,
                       api_visibility="private")
        image.upload(lambda: "", None, image_id, queue=False, api_visibility="private")
        image_id.submit(ui.show_image_id, image_id, image, api_visibility="private")
        demo.load(restore, [links.query], CONTROLS + VIEW_OUTPUTS + [links.notice],
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
