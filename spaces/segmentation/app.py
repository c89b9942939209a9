"""Segmentation tab: zero-shot segmentation of an image for typed class texts, by heads, neurons or a baseline.

Each text's score map with its colour scale, the thresholded mask, the argmax over texts, two methods side
by side, and for generated-world images the true mask and the IoU. Moving the threshold re-renders
from the stored maps; nothing is recomputed.
Runs alone (`python spaces/segmentation/app.py [--port P] [--public]`) or as a tab of the root app.py.
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

from core.explorer import segmentation as explorer  # noqa: E402
from core.segmentation.names import METHODS  # noqa: E402


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
TAB = "segmentation"
ALONE = False  # True when this file is the whole app (then links to other tabs are refused with a notice)
NONE = explorer.NONE
RULE, SLIDER = "each method's rule", "the slider"


def _threshold(rule: str, value) -> float | None:
    return None if rule != SLIDER else value


def _views(view: explorer.SegmentationView, truth=True):
    """The view as component values (the order of VIEW_OUTPUTS); truth=False keeps the true mask on screen."""
    return (view, gr.Dropdown(choices=view.texts, value=view.texts[view.shown]), ui.picture(view.heat),
            ui.picture(view.truth_picture) if truth else gr.skip(), ui.picture(view.mask), ui.picture(view.labels),
            view.info, view.link.query, view.link.markdown)


def _duration(spec, image, image_id, texts, background, method, compare, *args, **kwargs) -> int:
    return request_seconds(images=1 + (compare not in (None, "", NONE)), texts=len((texts or "").splitlines()) + 1)


@gpu(duration=_duration)
@ui.guard
def compute(spec: str, image: str | None, image_id: str, texts: str, background: str, method: str, compare: str,
            rule: str, threshold: float, previous=None, progress=gr.Progress()):
    """Segment the image for each text with the chosen method(s); maps already computed for this image, model
    and texts in this session are reused."""
    view = explorer.segment(spec, image, image_id, texts, background, method, compare, _threshold(rule, threshold),
                            previous=previous, progress=progress)
    # The true mask does not change with the method: re-sending the same picture would only race its download.
    return _views(view, truth=previous is None or previous.key != view.key)


def switch_method(spec, image, image_id, texts, background, method, compare, rule, threshold, previous,
                  progress=gr.Progress()):
    """A method switch recomputes only once something was segmented (cached maps are reused)."""
    if previous is None:
        return (gr.skip(),) * len(VIEW_OUTPUTS)
    return compute(spec, image, image_id, texts, background, method, compare, rule, threshold, previous,
                   progress=progress)


@ui.guard
def change_view(view, text: str, rule: str, threshold: float):
    """Another text in the mask view or another threshold (no recomputation)."""
    if view is None:
        return (gr.skip(),) * len(VIEW_OUTPUTS)
    return _views(explorer.rerender(view, text, _threshold(rule, threshold)), truth=False)


def slide(view, text: str, threshold: float):
    """The slider moved: its threshold, whatever the rule said."""
    return change_view(view, text, SLIDER, threshold)


# A link's first answer (on ZeroGPU only when the link names this tab: see ui.open_link).
open_link_on_gpu = ui.gpu_link_opener(explorer.open_link)


@ui.guard
def restore(query: str, request: gr.Request):
    """The view a link names: its controls, its maps, and a notice for what was ignored."""
    linked = ui.open_link(explorer.open_link, open_link_on_gpu, ui.query_of(query, request), TAB, ALONE)
    if not linked.applies:
        return [gr.skip()] * (len(CONTROLS) + len(VIEW_OUTPUTS)) + [linked.notice or gr.skip()]
    s = linked.state
    controls = [s.model or gr.skip(), ui.picture(linked.picture) or gr.skip(), s.image if linked.picture else gr.skip(),
                "\n".join(s.texts) or gr.skip(), s.background or gr.skip(), s.method or gr.skip(),
                s.compare or gr.skip(), SLIDER if s.threshold is not None else gr.skip(),
                s.threshold if s.threshold is not None else gr.skip()]
    views = _views(linked.view) if linked.view is not None else [gr.skip()] * len(VIEW_OUTPUTS)
    return controls + list(views) + [linked.notice]


def build() -> gr.Blocks:
    global CONTROLS, VIEW_OUTPUTS
    with gr.Blocks(title="Segmentation") as demo:
        gr.Markdown(
            "### Segmentation\nZero-shot segmentation by the image-token decomposition (**heads**, paper 1), by "
            "second-order **neurons** (paper 2), or by an attention baseline. Maps cover the model's view of the "
            "image (centre crop at the input size).")
        links = ui.LinkBar(TAB)
        state = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=1):
                model = ui.model_box("segmentation-model")
                image = ui.image_input("segmentation-image")
                image_id = ui.image_id_box("segmentation-image-id")
                ui.examples(image, image_id, label="Generated-world examples (ground truth known)")
                texts = gr.Textbox(label="Class texts (one per line)", value="\n".join(explorer.DEFAULT_TEXTS),
                                   lines=3, elem_id="segmentation-texts")
                background = gr.Textbox(label="Background text (optional; pixels it wins are background)",
                                        elem_id="segmentation-background")
                method = gr.Dropdown(list(METHODS), value="heads", label="Method", elem_id="segmentation-method")
                compare = gr.Dropdown([NONE, *METHODS], value=NONE, label="Side by side with",
                                      elem_id="segmentation-compare")
                button = gr.Button("Segment", variant="primary", elem_id="segmentation-run")
            with gr.Column(scale=2):
                with gr.Row():
                    rule = gr.Radio([RULE, SLIDER], value=RULE, label="Foreground threshold from",
                                    elem_id="segmentation-rule")
                    threshold = gr.Slider(0, 1, value=0.5, step=0.01, label="Threshold (re-renders, no recomputation)",
                                          elem_id="segmentation-threshold")
                    text_pick = gr.Dropdown(label="Text (mask view)", choices=[], interactive=True,
                                            elem_id="segmentation-text")
                heat = gr.Image(label="Score maps in [0, 1], one row per text (colour scale beside each)",
                                elem_id="segmentation-heat")
                with gr.Row():
                    mask = gr.Image(label="Mask overlay", elem_id="segmentation-mask")
                    labels = gr.Image(label="Argmax over the texts", elem_id="segmentation-labels")
                truth = gr.Image(label="Ground truth (generated-world examples)", elem_id="segmentation-truth")
                info = gr.Markdown(elem_id="segmentation-info")
        CONTROLS = [model, image, image_id, texts, background, method, compare, rule, threshold]
        VIEW_OUTPUTS = [state, text_pick, heat, truth, mask, labels, info, *links.outputs]
        inputs = [model, image, image_id, texts, background, method, compare, rule, threshold, state]
        button.click(compute, inputs, VIEW_OUTPUTS, api_name="segment", **ui.MODEL_QUEUE)
        for switch in (method, compare):
            switch.input(switch_method, inputs, VIEW_OUTPUTS, api_visibility="private", **ui.MODEL_QUEUE)
        threshold.input(slide, [state, text_pick, threshold], VIEW_OUTPUTS, api_visibility="private").then(
            lambda: SLIDER, None, rule, queue=False, api_visibility="private")
        for control in (rule, text_pick):
            control.input(change_view, [state, text_pick, rule, threshold], VIEW_OUTPUTS, api_visibility="private")
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
