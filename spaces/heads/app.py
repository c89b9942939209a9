"""Heads tab: what each attention head does, in words (TextSpan), on your image, and by property retrieval.

Runs alone (`python spaces/heads/app.py [--port 7861]`) or as a tab of the root app.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from core.engine.contributions import CONVENTIONS  # noqa: E402
from core import settings  # noqa: E402
from core.errors import CoreError  # noqa: E402
from core.world.examples import example_images  # noqa: E402
from core.gpu import gpu  # noqa: E402
from core.engine.models import default_spec, load_clip  # noqa: E402

WORLD_SEED = 4242  # held-out scenes TextSpan is fitted on in the tab (the examples use another seed)
GALLERY_SIZE = 48
DEFAULT_TEXTS = "a red circle\na blue square"
WORLD, FOLDER = "generated world (held-out scenes)", "image folder on this machine"
MAX_CACHED = 4


class Fitted(NamedTuple):  # not a dataclass: app.py loads this file without registering it in sys.modules
    heads: list
    result: object  # TextSpanResult
    texts: list[str]
    provenance: str


_FITTED: dict[str, Fitted] = {}  # model spec -> TextSpan computed in this process
_GALLERIES: dict[tuple, object] = {}  # (spec, paths, layer, convention) -> GalleryIndex


def _remember(cache: dict, key, value) -> None:
    if len(cache) >= MAX_CACHED:
        cache.pop(next(iter(cache)))
    cache[key] = value


def _model(spec: str):
    return load_clip((spec or "").strip() or default_spec())


def _head(bundle, layer, head) -> tuple[int, int]:
    from core.heads.outputs import check_heads

    if layer is None or head is None:
        raise gr.Error("Choose a layer and a head.")
    return check_heads([(int(layer), int(head))], bundle.info)[0]


def _pool(pool_file: str | None) -> tuple[list[str], str]:
    from core.engine.text import read_text_pool
    from core.world.scenes import TEXT_POOL_PATH, load_toy_texts

    if pool_file:
        texts, _ = read_text_pool(pool_file)
        return texts, f"{Path(pool_file).name} ({len(texts)} texts, uploaded)"
    texts = load_toy_texts()
    return texts, f"the toy text pool `{TEXT_POOL_PATH.name}` ({len(texts)} texts)"


def _model_line(info) -> str:
    return f"**Model:** {info.display_name} (`{info.spec}`)"


def _texts_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"#": row["order"] + 1, "text": row["text"],
                          "variance explained": round(row["variance_explained"], 4),
                          "cumulative": round(row["cumulative_variance"], 4)} for row in rows])


# ---------------------------------------------------------------- the head's texts

def _from_bases(bundle, head):
    from core.artifacts.store import load_artifact
    from core.artifacts.hub import resolve_bases_source
    from core.heads.bases import head_text_rows

    source = resolve_bases_source(bundle.info.spec)
    if not source:
        return None
    artifact = load_artifact(source, expect_model=bundle.info.identity())
    rows = head_text_rows(artifact, head) if artifact.has("textspan") else []
    if not rows:
        return None
    manifest = artifact.manifest
    pool, images = manifest.get("text_pool") or {}, manifest.get("image_set") or {}
    params = manifest["algorithms"].get("textspan", {})
    return rows, (f"TextSpan from bases `{source}`: text pool {pool.get('name')} ({pool.get('count')} texts), image set "
                  f"{images.get('description')} ({images.get('count')} images), convention {manifest['convention']}, "
                  f"rank {rows[0]['rank']}, criterion {params.get('criterion')}, span {params.get('span')}")


def _from_fitted(bundle, head):
    from core.heads.outputs import select_heads
    from core.heads.bases import table_rows

    fitted = _FITTED.get(bundle.info.spec)
    if fitted is None or head not in fitted.heads:
        return None
    return table_rows([head], select_heads(fitted.result, [fitted.heads.index(head)]), fitted.texts), fitted.provenance


def head_texts(spec: str, layer, head):
    """The head's TextSpan texts with the variance of its outputs each explains."""
    from core.errors import BasesError

    try:
        bundle = _model(spec)
        chosen = _head(bundle, layer, head)
        try:
            found, problem = _from_bases(bundle, chosen), ""
        except BasesError as err:  # unusable bases must not hide the texts computed here
            found, problem = None, f"  \nThe configured bases could not be used: {err}"
        found = found or _from_fitted(bundle, chosen)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    name = f"L{chosen[0]}H{chosen[1]}"
    if found is None:
        return (f"{_model_line(bundle.info)}  \nNo TextSpan for head {name} yet: no bases with this head are configured "
                "for this model (CLIPSCOPE_BASES). Compute it below on generated scenes or your own image folder."
                f"{problem}"), pd.DataFrame()
    rows, provenance = found
    total = rows[-1]["cumulative_variance"]
    return (f"{_model_line(bundle.info)}  \n**Head {name}:** {len(rows)} texts explain {100 * total:.1f}% of the "
            f"variance of its outputs.  \n{provenance}{problem}"), _texts_frame(rows)


@gpu(duration=120)
def compute_text_span(spec: str, source: str, folder: str, n_images: int, per_head: int, pool_file, layer, head,
                      progress=gr.Progress()):
    """Fit TextSpan for the last 4 layers' heads (and the chosen head) on generated scenes or a folder."""
    from core.heads.outputs import check_heads, default_heads, pil_batches
    from core.engine.images import image_files, iter_image_batches
    from core.engine.text import encode_texts
    from core.heads.textspan import DEFAULT_RANK
    from core.heads.bases import fit_in_memory
    from core.world.scenes import heldout_scenes

    try:
        bundle = _model(spec)
        heads = check_heads(default_heads(bundle.info) + [_head(bundle, layer, head)], bundle.info)
        texts, pool_description = _pool(pool_file)
        n_images = int(n_images)
        if source == FOLDER:
            paths = image_files((folder or "").strip())[:n_images]
            batches = (pixels for _, pixels in iter_image_batches(paths, bundle.preprocess, 32, skipped=[]))
            images_description = f"{len(paths)} images of {folder}"
            n_images = len(paths)
        else:
            scenes = (image for image, _, _ in heldout_scenes(n_images, seed=WORLD_SEED))
            batches = pil_batches(bundle, scenes)
            images_description = f"{n_images} generated held-out world scenes (seed {WORLD_SEED})"
        rank = min(DEFAULT_RANK, bundle.info.d_out, n_images)
        per_head = min(int(per_head), rank)
        embeddings = encode_texts(bundle, texts)
        tracked = progress.tqdm(batches, total=-(-n_images // 32), desc="head outputs")
        result, fitted = fit_in_memory(bundle, tracked, n_images, embeddings, heads, per_head=per_head, rank=rank)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    provenance = (f"TextSpan computed here on {images_description} ({fitted.count} used), text pool "
                  f"{pool_description}, convention paper, data span rank {rank}, criterion std")
    _remember(_FITTED, bundle.info.spec, Fitted(fitted.heads, result, texts, provenance))
    return head_texts(spec, layer, head)


# ---------------------------------------------------------------- one image

def _texts(raw: str) -> list[str]:
    texts = [line.strip() for line in (raw or "").splitlines() if line.strip()]
    if not texts:
        raise gr.Error("Type at least one text (one per line).")
    return list(dict.fromkeys(texts))


def _token_gallery(result, image, head, info) -> list:
    from core.heads.outputs import difference_map, head_token_maps
    from core.engine.viz import overlay

    maps = head_token_maps(result.tokens, result.grid, head)
    items = []
    if len(result.texts) == 2:
        items.append((overlay(image, difference_map(maps), image_size=info.image_size),
                      f"difference: '{result.texts[0]}' minus '{result.texts[1]}'"))
    for text, scores in zip(result.texts, maps):
        items.append((overlay(image, scores, image_size=info.image_size), f"'{text}'"))
    return items


@gpu
def explain_image(spec: str, image_path: str | None, raw_texts: str, layer, head, pool_file, convention: str):
    """Which heads respond to the first text, the chosen head's token maps, and its top pool texts."""
    from core.engine.decomposition import decompose_image
    from core.heads.outputs import image_head_texts, rank_heads
    from core.engine.images import load_image
    from core.engine.text import encode_texts
    from core.engine.viz import heat_grid

    if not image_path:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        bundle = _model(spec)
        chosen = _head(bundle, layer, head)
        image = load_image(image_path, name="the uploaded image")
        result = decompose_image(bundle, image, _texts(raw_texts), convention=convention)
        pool, pool_description = _pool(pool_file)
        top_texts = image_head_texts(bundle, image, chosen, encode_texts(bundle, pool), k=10, convention=convention)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    scores = result.heads[:, :, 0]
    ranked = pd.DataFrame([{"layer": r["layer"], "head": r["head"], "score": round(r["score"], 5)}
                           for r in rank_heads(scores, k=10)])
    grid = heat_grid(scores, title=f"each head's share of cos(image, '{result.texts[0][:40]}') x100")
    texts_frame = pd.DataFrame([{"text": pool[i], "score": round(score, 5)} for i, score in top_texts])
    name = f"L{chosen[0]}H{chosen[1]}"
    info = (f"{_model_line(bundle.info)}  \n**Convention:** {convention}; scores are cosine contributions (the head's "
            f"share of cos(image, text), direct effect ÷ |y|).  \n"
            f"**Heads ranked** for '{result.texts[0]}'; **token maps** "
            f"of head {name} for {len(result.texts)} text(s); **top texts** of head {name} from {pool_description}.")
    return info, ranked, grid, _token_gallery(result, image, chosen, bundle.info), texts_frame


# ---------------------------------------------------------------- property retrieval

def _gallery_index(bundle, paths, layer, description, convention, progress):
    from core.heads.outputs import heads_of_layers
    from core.heads.retrieval import build_gallery

    key = (bundle.info.spec, tuple(map(str, paths)), layer, convention)
    if key not in _GALLERIES:
        wrap = lambda batches: progress.tqdm(batches, total=-(-len(paths) // 32), desc="gallery")  # noqa: E731
        _remember(_GALLERIES, key, build_gallery(bundle, paths, heads_of_layers(bundle.info, [layer]),
                                                 description=description, convention=convention, progress=wrap,
                                                 skipped=[]))
    return _GALLERIES[key]


@gpu(duration=120)
def retrieve_similar(spec: str, image_path: str | None, layer, head, source: str, folder: str, k: int, metric: str,
                     convention: str, progress=gr.Progress()):
    """Gallery images whose contribution from the chosen head is nearest the query image's."""
    from core.engine.images import image_files, load_image
    from core.heads.retrieval import nearest, query_contributions

    if not image_path:
        raise gr.Error("Upload an image or pick an example first: it is the retrieval query.")
    try:
        bundle = _model(spec)
        chosen = _head(bundle, layer, head)
        if source == FOLDER:
            paths, description = image_files((folder or "").strip()), f"folder {folder}"
        else:
            paths = example_images(GALLERY_SIZE)
            description = f"{GALLERY_SIZE} generated held-out world scenes (the examples are among them)"
        index = _gallery_index(bundle, paths, chosen[0], description, convention, progress)
        query_image = load_image(image_path, name="the query image")
        query = query_contributions(bundle, query_image, [chosen], convention=convention)[0]
        found = nearest(index, query, chosen, k=int(k), metric=metric)
        items = [(load_image(index.paths[i]), f"#{rank} {metric} {score:+.4f}") for rank, (i, score) in enumerate(found, 1)]
    except CoreError as err:
        raise gr.Error(str(err)) from err
    info = (f"{_model_line(bundle.info)}  \n**Head L{chosen[0]}H{chosen[1]}**, {metric} of its contributions; "
            f"gallery: {index.description} ({len(index.paths)} images); convention {convention}.")
    return info, items


# ---------------------------------------------------------------- spurious cues

@gpu(duration=300)
def remove_spurious(spec: str, folder: str, raw_heads: str, classnames: str, trials: int, convention: str,
                    progress=gr.Progress()):
    """Worst-group accuracy of a grouped folder with the heads mean-ablated, against random heads."""
    from core.engine.ablation import component_means
    from core.heads.outputs import check_heads, parse_heads
    from core.heads.spurious import grouped_folder, spurious_report
    from core.engine.text import zero_shot_classifier

    try:
        bundle = _model(spec)
        names = [name for name in (classnames or "").split(",") if name.strip()] or None
        grouped = grouped_folder((folder or "").strip(), classnames=names)
        heads = check_heads(parse_heads(raw_heads), bundle.info)
        classifier = zero_shot_classifier(bundle, grouped.classnames, ["a photo of a {}."])
        means = component_means(bundle, grouped.paths, description=f"the evaluated set ({len(grouped.paths)} images)",
                                convention=convention, skipped=[])
        report = spurious_report(bundle, grouped, classifier, heads, means, provenance="picked in the UI",
                                 means_from_evaluated_set=True, trials=int(trials), progress=progress.tqdm)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    summary = report.random_summary()
    table = pd.DataFrame([
        {"model": "unmodified", "overall": report.base.overall, "worst group": report.base.worst},
        {"model": "chosen heads ablated", "overall": report.ablated.overall, "worst group": report.ablated.worst},
        {"model": f"{len(heads)} random heads (mean of {trials})", "overall": summary["overall_mean"],
         "worst group": summary["worst_mean"]}]).round(4)
    info = (f"{_model_line(bundle.info)}  \nEvaluated on {report.evaluated_on}; classifier 'a photo of a {{}}.'; means "
            f"from the evaluated set itself (as the paper code; use the CLI's --means-from for a held-out set); "
            f"convention {convention}; random heads from layers {report.random_layers}, seed {report.seed}.")
    return info, table


# ---------------------------------------------------------------- layout

def build() -> gr.Blocks:
    info = None
    try:
        info = load_clip(default_spec()).info
    except CoreError:
        pass  # the model box still works; errors show when used
    last_layer = info.n_layers - 1 if info else 0
    with gr.Blocks(title="Heads") as demo:
        gr.Markdown("### Attention heads\nTextSpan labels each head of the last layers with the texts that explain "
                    "its outputs (Gandelsman et al., ICLR 2024). Pick a head to read its texts, see it at work on an "
                    "image, and find images it sees as similar.")
        with gr.Row():
            model = gr.Textbox(label="Model spec", value=default_spec(), scale=3,
                               info="toy (offline default), ARCH/TAG, hf-hub:ORG/NAME, ARCH/path.safetensors, ARCH/none")
            layer = gr.Number(label="Layer", value=last_layer, precision=0, minimum=0, elem_id="heads-layer")
            head = gr.Number(label="Head", value=0, precision=0, minimum=0, elem_id="heads-head")
            show = gr.Button("Show head texts", elem_id="heads-show")
        texts_info = gr.Markdown(elem_id="heads-info")
        texts_table = gr.Dataframe(label="The head's texts (TextSpan)", elem_id="heads-texts", max_height=320)
        with gr.Accordion("Compute TextSpan here (when no bases are available)", open=False):
            with gr.Row():
                source = gr.Radio([WORLD, FOLDER], value=WORLD, label="Image set")
                folder = gr.Textbox(label="Image folder (for 'image folder')")
            with gr.Row():
                n_images = gr.Slider(20, 2000, value=200, step=10, label="Images")
                per_head = gr.Slider(1, 40, value=10, step=1, label="Texts per head")
                pool_file = gr.File(label="Text pool (.txt, one per line; default: toy pool)", file_types=[".txt"],
                                    type="filepath")
            compute = gr.Button("Compute TextSpan", elem_id="heads-compute")

        gr.Markdown("### On an image")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", height=240, elem_id="heads-image")
                gr.Examples(examples=[[p] for p in example_images()], inputs=[image], label="Generated-world examples")
                texts = gr.Textbox(label="Texts (one per line; two give a difference map)", value=DEFAULT_TEXTS, lines=2)
                convention = gr.Radio(list(CONVENTIONS), value="paper", label="Convention")
                explain = gr.Button("Explain image", variant="primary", elem_id="heads-explain")
            with gr.Column(scale=2):
                image_info = gr.Markdown(elem_id="heads-image-info")
                with gr.Row():
                    top_heads = gr.Dataframe(label="Heads responding most to the first text", elem_id="heads-top-heads")
                    grid = gr.Image(label="Layer x head", elem_id="heads-grid")
                maps = gr.Gallery(label="Chosen head's token maps (red: towards the text)", columns=3, height=300,
                                  elem_id="heads-maps")
                top_texts = gr.Dataframe(label="The image's own top texts for the chosen head", elem_id="heads-top-texts")

        gr.Markdown("### Property retrieval\nGallery images whose contribution from the chosen head is nearest the "
                    "image's above: a head that encodes a property (colour, count, place...) retrieves images sharing it.")
        with gr.Row():
            gallery_source = gr.Radio([WORLD, FOLDER], value=WORLD, label="Gallery")
            gallery_folder = gr.Textbox(label="Gallery folder (for 'image folder')")
            k = gr.Slider(1, 24, value=8, step=1, label="Images")
            metric = gr.Radio(["cosine", "centered", "dot"], value="cosine", label="Similarity",
                              info="centered: cosine after removing the head's mean over the gallery")
            retrieve = gr.Button("Find similar images", elem_id="heads-retrieve")
        retrieval_info = gr.Markdown(elem_id="heads-retrieval-info")
        gallery = gr.Gallery(label="Nearest images", columns=8, height=260, elem_id="heads-gallery")

        with gr.Accordion("Spurious-cue removal (grouped folder, Waterbirds layout)", open=False):
            with gr.Row():
                grouped = gr.Textbox(label="Grouped folder (metadata.csv with file, label, group)",
                                     elem_id="heads-grouped")
                ablated_heads = gr.Textbox(label="Heads to mean-ablate (layer.head, comma-separated)",
                                           elem_id="heads-ablated")
                classnames = gr.Textbox(label="Class names for the sorted label values (optional)")
                trials = gr.Slider(1, 10, value=5, step=1, label="Random trials")
            spurious = gr.Button("Measure worst-group accuracy", elem_id="heads-spurious")
            spurious_info = gr.Markdown(elem_id="heads-spurious-info")
            spurious_table = gr.Dataframe(elem_id="heads-spurious-table")

        head_inputs = [model, layer, head]
        show.click(head_texts, head_inputs, [texts_info, texts_table], api_name="head_texts")
        compute.click(compute_text_span, [model, source, folder, n_images, per_head, pool_file, layer, head],
                      [texts_info, texts_table], api_name="compute_textspan")
        explain.click(explain_image, [model, image, texts, layer, head, pool_file, convention],
                      [image_info, top_heads, grid, maps, top_texts], api_name="explain_image")
        retrieve.click(retrieve_similar, [model, image, layer, head, gallery_source, gallery_folder, k, metric, convention],
                       [retrieval_info, gallery], api_name="retrieve")
        spurious.click(remove_spurious, [model, grouped, ablated_heads, classnames, trials, convention],
                       [spurious_info, spurious_table], api_name="spurious")
    return demo


demo = build()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The Heads tab on its own.")
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args()
    host, port = args.host or settings.server_host(), args.port or settings.server_port()
    settings.configure(public=True if not settings.is_loopback(host) else None)
    demo.queue(default_concurrency_limit=2).launch(server_name=host, server_port=port, max_file_size="50mb")
