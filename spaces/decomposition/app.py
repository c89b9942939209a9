"""Decomposition tab: an image's similarity to texts, split into layers, heads, MLPs and tokens.

Runs alone (`python spaces/decomposition/app.py`) or as a tab of the root app.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from core.engine.contributions import CONVENTIONS  # noqa: E402
from core.engine.decomposition import ImageDecomposition, decompose_image  # noqa: E402
from core.errors import CoreError  # noqa: E402
from core.world.examples import example_images  # noqa: E402
from core.gpu import gpu  # noqa: E402
from core.engine.images import load_image  # noqa: E402
from core.engine.models import default_spec, load_clip  # noqa: E402
from core.engine.viz import heat_grid, overlay  # noqa: E402

ALL = "all"
DEFAULT_TEXTS = "a red circle\na blue square\na striped background"


def _texts(raw: str) -> list[str]:
    texts = [line.strip() for line in (raw or "").splitlines() if line.strip()]
    if not texts:
        raise gr.Error("Type at least one text (one per line).")
    return texts


@gpu
def run_decomposition(spec: str, image_path: str | None, raw_texts: str, convention: str):
    """Decompose the image's cosine similarity to each text; returns the result and its views."""
    if not image_path:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        bundle = load_clip((spec or "").strip() or default_spec())
        image = load_image(image_path, name="the uploaded image")
        result = decompose_image(bundle, image, _texts(raw_texts), convention=convention)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    layers = [ALL] + [str(i) for i in range(result.heads.shape[0])]
    heads = [ALL] + [str(i) for i in range(result.heads.shape[1])]
    views = render_views(result, image_path, result.texts[0], ALL, ALL)
    return (
        result,
        provenance(result),
        gr.Dropdown(choices=result.texts, value=result.texts[0]),
        gr.Dropdown(choices=layers, value=ALL),
        gr.Dropdown(choices=heads, value=ALL),
        *views,
    )


def provenance(result: ImageDecomposition) -> str:
    model = result.model
    warning = "\n\n**Random weights**: this model is not trained; numbers are for testing only." if model["random_init"] else ""
    rows = "\n".join(f"| {text} | {float(cos):+.4f} |" for text, cos in zip(result.texts, result.cosine))
    return (
        f"**Model:** {model['display_name']} (`{model['spec']}`, open_clip {model['open_clip_version']})  \n"
        f"**Convention:** {result.convention}  ·  **Reconstruction error:** {result.reconstruction_error:.1e} "
        f"(relative, sum of components vs `encode_image`)  ·  scores are cosine contributions{warning}\n\n"
        f"| text | cosine similarity |\n|---|---|\n{rows}"
    )


def render_views(result: ImageDecomposition | None, image_path: str | None, text: str, layer: str, head: str):
    """The heat grid, the token map, the per-layer bars and the table for one text and head choice."""
    if result is None or text not in result.texts:
        return None, None, None, None
    t = result.texts.index(text)
    layer_index = None if layer in (None, ALL) else int(layer)
    head_index = None if head in (None, ALL) else int(head)
    grid = heat_grid(result.heads[:, :, t], title=f"contribution to cos(image, '{text[:40]}') x100")
    token_map = result.token_map(t, layer_index, head_index)
    picture = overlay(load_image(image_path), token_map, image_size=result.model["image_size"])
    bars = pd.DataFrame(
        [{"layer": str(l), "part": "attention", "contribution": float(result.heads[l, :, t].sum())} for l in range(result.heads.shape[0])]
        + [{"layer": str(l), "part": "MLP", "contribution": float(result.mlps[l, t])} for l in range(result.mlps.shape[0])]
    )
    table = pd.DataFrame(
        [{"layer": l, "head": h, "contribution": round(float(result.heads[l, h, t]), 6)}
         for l in range(result.heads.shape[0]) for h in range(result.heads.shape[1])]
    ).sort_values("contribution", ascending=False, key=abs)
    return grid, picture, bars, table


def build() -> gr.Blocks:
    with gr.Blocks(title="Decomposition") as demo:
        gr.Markdown(
            "### Decomposition\nThe image representation is an exact sum of direct effects of the embedding, "
            "every MLP and every (layer, head, token). Upload an image, type texts, and see each part's share of "
            "the cosine similarity."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Textbox(label="Model spec", value=default_spec(),
                                   info="toy (offline default), ARCH/TAG, hf-hub:ORG/NAME, ARCH/path.safetensors, ARCH/none")
                image = gr.Image(type="filepath", label="Image", height=256, elem_id="decomposition-image")
                gr.Examples(examples=[[p] for p in example_images()], inputs=[image], label="Generated-world examples")
                texts = gr.Textbox(label="Texts (one per line)", value=DEFAULT_TEXTS, lines=3)
                convention = gr.Radio(list(CONVENTIONS), value="paper", label="Convention")
                button = gr.Button("Decompose", variant="primary", elem_id="decomposition-run")
            with gr.Column(scale=2):
                info = gr.Markdown(elem_id="decomposition-info")
                with gr.Row():
                    text_pick = gr.Dropdown(label="Text", choices=[], interactive=True)
                    layer_pick = gr.Dropdown(label="Layer (token map)", choices=[ALL], value=ALL, interactive=True)
                    head_pick = gr.Dropdown(label="Head (token map)", choices=[ALL], value=ALL, interactive=True,
                                            elem_id="decomposition-head")
                with gr.Row():
                    grid = gr.Image(label="Layer x head contributions", elem_id="decomposition-grid")
                    token_map = gr.Image(label="Token map (red: towards the text)", elem_id="decomposition-map")
                bars = gr.BarPlot(x="layer", y="contribution", color="part", label="Per-layer contributions")
                table = gr.Dataframe(label="Heads ranked by |contribution|", max_height=300)
        views = [grid, token_map, bars, table]
        button.click(run_decomposition, [model, image, texts, convention],
                     [state, info, text_pick, layer_pick, head_pick, *views], api_name="decompose")
        for pick in (text_pick, layer_pick, head_pick):
            pick.input(render_views, [state, image, text_pick, layer_pick, head_pick], views, api_name="render_view", api_visibility="private")
    return demo


demo = build()

if __name__ == "__main__":
    demo.launch()
