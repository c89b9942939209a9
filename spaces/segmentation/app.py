"""Segmentation tab: zero-shot segmentation of an image for typed class texts, by heads, neurons or a baseline.

Each text's score map with its colour scale, the thresholded mask, the argmax over texts, two methods side
by side, and for the generated-world examples the true mask and the IoU. Moving the threshold re-renders
from the stored maps; nothing is recomputed.
Runs alone (`python spaces/segmentation/app.py [--port P]`) or as a tab of the root app.py.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402

from core.engine.images import load_image  # noqa: E402
from core.engine.models import default_spec, load_clip  # noqa: E402
from core.errors import CoreError  # noqa: E402
from core.gpu import gpu  # noqa: E402
from core.segmentation.methods import METHODS, MethodOptions, Segmenter  # noqa: E402
from core.segmentation.pictures import heat_picture, label_picture, mask_picture, side_by_side, stacked  # noqa: E402
from core.segmentation.protocols import mask_view  # noqa: E402
from core.segmentation.segment import iou, segment_image, world_truth  # noqa: E402
from core.world.examples import example_images  # noqa: E402

NONE = "none"
RULE, SLIDER = "each method's rule", "the slider"
DEFAULT_TEXTS = "a green cross\na pink background"
MAX_TEXT_LENGTH = 200


def _texts(raw: str, background: str) -> tuple[list[str], int | None]:
    texts = [line.strip() for line in (raw or "").splitlines() if line.strip()]
    if not texts:
        raise gr.Error("Type at least one class text (one per line).")
    background = (background or "").strip()
    if background:
        texts.append(background)
    if any(len(t) > MAX_TEXT_LENGTH for t in texts):
        raise gr.Error(f"Texts are limited to {MAX_TEXT_LENGTH} characters.")
    return texts, (len(texts) - 1 if background else None)


def _methods(method: str, compare: str) -> list[str]:
    chosen = [method] + ([compare] if compare and compare not in (NONE, method) else [])
    for name in chosen:
        if name not in METHODS:
            raise gr.Error(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return chosen


@gpu
def compute(spec: str, image_path: str | None, raw_texts: str, background: str, method: str, compare: str,
            rule: str, threshold: float, session: dict | None):
    """Segment the image for each text with the chosen method(s); maps already computed for this image, model
    and texts in this session are reused."""
    if not image_path:
        raise gr.Error("Upload an image or pick an example first.")
    texts, background_index = _texts(raw_texts, background)
    methods = _methods(method, compare)
    spec = (spec or "").strip() or default_spec()
    key = [spec, image_path, texts]
    same_image = bool(session) and session.get("key") == key
    session = session if same_image else {"key": key, "results": {}}
    try:
        bundle = load_clip(spec)
        image = load_image(image_path, name="the uploaded image")
        for name in methods:
            if name not in session["results"]:
                segmenter = Segmenter(bundle, name, MethodOptions())
                session["results"][name] = segment_image(bundle, image, texts, method=name, segmenter=segmenter)
        if not same_image:
            truth = world_truth(image)
            session["truth"] = None if truth is None else (
                mask_view(truth[0], bundle.preprocess, bundle.info.image_size, "crop"), truth[1])
    except CoreError as err:
        raise gr.Error(str(err)) from err
    session.update(methods=methods, background=background_index, spec=spec, image=image_path)
    pick = gr.Dropdown(choices=texts, value=texts[0])
    # The true mask does not change with the method: re-sending the same picture would only race its download.
    truth = gr.skip() if same_image else truth_picture(session)
    return (session, pick, heat_maps(session), truth, *render(session, texts[0], rule, threshold))


def truth_picture(session: dict):
    if session.get("truth") is None:
        return None
    truth_mask, name = session["truth"]
    view = session["results"][session["methods"][0]].view
    return mask_picture(view, truth_mask, title=f"ground truth: {name}", colour=(40, 200, 40))


def switch_method(spec, image_path, raw_texts, background, method, compare, rule, threshold, session):
    """A method switch recomputes only once something was segmented (cached maps are reused)."""
    if not session or not image_path:
        return (gr.skip(),) * 7
    return compute(spec, image_path, raw_texts, background, method, compare, rule, threshold, session)


def heat_maps(session: dict):
    """One row per text, one column per method: each map over the image with its colour scale."""
    results = [session["results"][m] for m in session["methods"]]
    return stacked([side_by_side([heat_picture(r.view, r.maps[index], title=f"{r.method}: {text}", display=192)
                                  for r in results]) for index, text in enumerate(results[0].texts)])


def _threshold(rule: str, value: float):
    return None if rule == RULE else float(value)


def render(session: dict | None, text: str | None, rule: str, threshold: float):
    """Mask overlay, argmax view and the provenance for one text and threshold (no recomputation)."""
    if not session or "methods" not in session:
        return None, None, ""
    results = [session["results"][m] for m in session["methods"]]
    texts = results[0].texts
    index = texts.index(text) if text in texts else 0
    chosen = _threshold(rule, threshold)
    masks, labels = [], []
    for result in results:
        mask = result.masks(chosen)[index]
        masks.append(mask_picture(result.view, mask, title=f"{result.method}: {texts[index]}"))
        if len(texts) > 1:
            labels.append(label_picture(result.view, result.labels(chosen, session["background"]), texts,
                                        title=f"{result.method}: argmax"))
    return side_by_side(masks), side_by_side(labels) if labels else None, provenance(session, results, chosen)


def provenance(session: dict, results: list, threshold) -> str:
    model = results[0].model
    lines = [f"**Model:** {model['display_name']} (`{model['spec']}`)"]
    if model["random_init"]:
        lines.append("**Random weights**: this model is not trained; maps are for testing only.")
    for result in results:
        rule = result.threshold if threshold is None else threshold
        rule_text = "S > mean(S)" if rule == "mean" else f"S > {rule:g}"
        note = " It does not depend on the text: every text gets the same map." if result.text_free else ""
        lines.append(f"**{result.method}:** {result.description}; foreground {rule_text}; clamp "
                     f"{'yes' if result.clamp else 'no'}; heads minus the mean over texts: "
                     f"{'yes' if result.subtract_mean else 'no'}.{note}")
    texts = results[0].texts
    lines.append("**cos(image, text):** " + ", ".join(f"{t} {c:+.3f}" for t, c in zip(texts, results[0].cosine)))
    if session.get("truth") is not None:
        truth_mask, name = session["truth"]
        header = "| text | " + " | ".join(f"IoU {r.method}" for r in results) + " |"
        rows = [f"| {text} | " + " | ".join(f"{iou(r.masks(threshold)[i], truth_mask):.3f}" for r in results) + " |"
                for i, text in enumerate(texts)]
        lines.append(f"Generated-world example: **{name}**; IoU of each text's mask with the true mask:\n\n"
                     + "\n".join([header, "|---|" + "---|" * len(results)] + rows) + "\n")
    command = ["python", "-m", "core", "segment", "--model", session["spec"], "--image", "IMAGE"]
    for text in texts[:-1] if session["background"] is not None else texts:
        command += ["--text", text]
    if session["background"] is not None:
        command += ["--background", texts[-1]]
    command += ["--method", results[0].method, "--out", "seg/"]
    if threshold is not None:
        command += ["--threshold", f"{threshold:g}"]
    lines.append(f"Reproduce: `{' '.join(shlex.quote(c) for c in command)}`")
    return "  \n".join(lines)


def build() -> gr.Blocks:
    with gr.Blocks(title="Segmentation") as demo:
        gr.Markdown(
            "### Segmentation\nZero-shot segmentation by the image-token decomposition (**heads**, paper 1), by "
            "second-order **neurons** (paper 2), or by an attention baseline. Maps cover the model's view of the "
            "image (centre crop at the input size).")
        session = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Textbox(label="Model spec", value=default_spec(),
                                   info="toy (offline default), ARCH/TAG, hf-hub:ORG/NAME, ARCH/path.safetensors, ARCH/none")
                image = gr.Image(type="filepath", label="Image", height=256, elem_id="segmentation-image")
                gr.Examples(examples=[[p] for p in example_images()], inputs=[image],
                            label="Generated-world examples (ground truth known)")
                texts = gr.Textbox(label="Class texts (one per line)", value=DEFAULT_TEXTS, lines=3,
                                   elem_id="segmentation-texts")
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
        views = [mask, labels, info]
        inputs = [model, image, texts, background, method, compare, rule, threshold, session]
        button.click(compute, inputs, [session, text_pick, heat, truth, *views], api_name="segment")
        for switch in (method, compare):
            switch.input(switch_method, inputs, [session, text_pick, heat, truth, *views], api_visibility="private")
        threshold.input(lambda s, t, v: render(s, t, SLIDER, v), [session, text_pick, threshold], views,
                        api_visibility="private").then(lambda: SLIDER, None, rule, api_visibility="private")
        for control in (rule, text_pick):
            control.input(render, [session, text_pick, rule, threshold], views, api_visibility="private")
    return demo


demo = build()

if __name__ == "__main__":
    import argparse

    from core import settings

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args()
    host, port = args.host or settings.server_host(), args.port or settings.server_port()
    settings.configure(public=True if not settings.is_loopback(host) else None)
    demo.queue(default_concurrency_limit=2).launch(server_name=host, server_port=port, max_file_size="50mb")
