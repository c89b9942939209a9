"""Neurons tab: what each MLP neuron writes through later attention heads, in words (paper 2).

Pick a model, layer and neuron: its texts with signed weights, its top images, its activation map
and second-order effect on your image. Search neurons by text; discover an image's concepts.
Runs alone (`python spaces/neurons/app.py [--port P]`) or as a tab of the root app.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from core.neurons.concepts import image_concepts  # noqa: E402
from core import settings  # noqa: E402
from core.errors import CoreError  # noqa: E402
from core.world.examples import example_images  # noqa: E402
from core.gpu import gpu  # noqa: E402
from core.engine.images import load_image  # noqa: E402
from core.engine.models import default_spec, load_clip  # noqa: E402
from core.neurons.bases import (  # noqa: E402
    BuildOptions, ImageSet, NeuronBasis, build_neuron_bases, find_neuron_bases, load_neuron_basis, neuron_layers)
from core.neurons.texts import activation_map, image_effects, search_neurons  # noqa: E402
from core.engine.text import cache_dir, encode_texts, read_text_pool, texts_sha256  # noqa: E402
from core.engine.viz import overlay  # noqa: E402
from core.world.scenes import load_toy_texts  # noqa: E402

WORLD, FOLDER, TOY_POOL = "generated world", "image folder", "toy"
N_GALLERY = 8


def _bundle(spec: str):
    return load_clip((spec or "").strip() or default_spec())


def _need(basis: NeuronBasis | None) -> NeuronBasis:
    if basis is None:
        raise gr.Error("No neuron statistics loaded: load bases or compute them first.")
    return basis


def _status(basis: NeuronBasis, note: str = "") -> str:
    warning = " **Random weights**: for testing only." if basis.provenance.get("random_init") else ""
    return f"{note}**Neuron statistics:** {basis.describe()}.{warning}"


def load_bases(spec: str, source: str, layer: float | None):
    """Load the model's neuron bases (from `source`, $CLIPSCOPE_BASES or the shipped default)."""
    try:
        bundle = _bundle(spec)
        artifact = find_neuron_bases(bundle, (source or "").strip() or None)
        layers = neuron_layers(artifact)
        chosen = int(layer) if layer is not None and int(layer) in layers else layers[0]
        basis = load_neuron_basis(artifact, chosen)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    note = "" if layer is None or int(layer) == chosen else f"Layer {int(layer)} is not in these bases. "
    return basis, _status(basis, f"{note}Loaded bases from `{artifact.path}` (layers {layers}). ")


def try_default_bases(spec: str, layer: float | None):
    """On page load: the configured bases if there are any, else say how to get statistics."""
    try:
        return load_bases(spec, "", layer)
    except gr.Error as err:
        return None, f"No neuron bases loaded ({err.message}). Compute statistics below."


def _texts(pool: str) -> tuple[list[str], str]:
    pool = (pool or TOY_POOL).strip()
    if pool == TOY_POOL:
        return load_toy_texts(), TOY_POOL
    return read_text_pool(pool)[0], Path(pool).name


def compute_bases(spec, layer, source, n_scenes, folder, pool, k, dictionary, progress=gr.Progress()):
    """Compute neuron statistics and text decompositions (cached on disk, resumable) and load them."""
    try:
        bundle = _bundle(spec)
        if layer is None:
            raise gr.Error("Choose a layer.")
        layer = int(layer)
        images = ImageSet.world(int(n_scenes), seed=0) if source == WORLD else ImageSet.folder(folder or "")
        texts, pool_name = _texts(pool)
        key = texts_sha256([bundle.info.spec, str(bundle.info.weights_sha256), images.description, pool_name,
                            texts_sha256(texts), str(layer), str(int(k)), dictionary])[:20]
        out = cache_dir() / "neuron-bases" / key
        track = lambda iterable, desc, total=None: progress.tqdm(iterable, desc=desc, total=total)  # noqa: E731
        build_neuron_bases(bundle, out, layers=[layer], image_set=images, texts=texts, pool_name=pool_name,
                           options=BuildOptions(k=int(k), dictionary=dictionary), progress=track)
        basis = load_neuron_basis(find_neuron_bases(bundle, str(out)), layer)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    return basis, _status(basis, "Computed here. ")


def show_neuron(basis: NeuronBasis | None, neuron: float):
    """The neuron's texts (signed weights), its top images and its statistics."""
    basis = _need(basis)
    try:
        n = int(neuron)
        terms = basis.words.terms(n, basis.texts)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    stats = basis.stats
    table = pd.DataFrame([{"text": text, "weight": round(weight, 4)} for text, weight in terms])
    gallery = []
    for rank, (index, norm) in enumerate(zip(stats.top_images[n, :N_GALLERY].tolist(), stats.top_norms[n].tolist()), 1):
        try:
            gallery.append((basis.image_set.image(index), f"#{rank}: image {index}, |effect| {norm:.2f}"))
        except CoreError:
            continue  # a file of the image set that is no longer there
    info = (f"**Layer {stats.layer}, neuron {n}** — threshold (the {stats.k}-th largest |effect - mean|): "
            f"{float(stats.thresholds[n]):.3f}; PC share of the top-{stats.k} energy: "
            f"{float(stats.pc_variance[n]):.3f}; reconstruction cosine of the PC from its {len(terms)} texts: "
            f"{float(basis.words.reconstruction_cosine[n]):.3f} (dictionary {basis.words.dictionary_mode}).  \n"
            f"Top images of: {basis.image_set.description}.  \n{_status(basis)}")
    return table, gallery, info


@gpu
def neuron_on_image(basis: NeuronBasis | None, neuron: float, image_path: str | None):
    """The neuron's activation map on the image, and its second-order effect size against the threshold."""
    basis = _need(basis)
    if not image_path:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        bundle = load_clip(basis.provenance["model"])
        image = load_image(image_path, name="the uploaded image")
        n, layer = int(neuron), basis.stats.layer
        phi, trace = image_effects(bundle.model.visual, layer, bundle.preprocess(image)[None],
                                   mode=basis.stats.mode, coefficient=basis.stats.coefficient)
        heat = activation_map(trace, layer, n, bundle.info.grid)
    except CoreError as err:
        raise gr.Error(str(err)) from err
    size = float((phi[0, n] - basis.stats.mean[n]).norm())
    threshold = float(basis.stats.thresholds[n])
    verdict = "significant (above its threshold)" if size > threshold else "below its threshold"
    info = (f"Neuron {n}: |effect - mean| = **{size:.3f}** vs threshold {threshold:.3f} "
            f"({size / threshold:.2f}x, {verdict}); activation range {float(heat.min()):+.3f} .. {float(heat.max()):+.3f}")
    return overlay(image, heat, image_size=bundle.info.image_size), info


def search(basis: NeuronBasis | None, text: str, top: float):
    """Neurons of the layer whose principal component points most towards the text."""
    basis = _need(basis)
    if not (text or "").strip():
        raise gr.Error("Type a text to search for.")
    try:
        bundle = load_clip(basis.provenance["model"])
        embedding = encode_texts(bundle, [text.strip()], use_cache=False)[0]
        hits = search_neurons(basis.stats.pcs, embedding, top=int(top))
    except CoreError as err:
        raise gr.Error(str(err)) from err
    rows = [{"neuron": n, "cosine": round(cos, 4),
             "top texts": "; ".join(f"{t} ({w:+.2f})" for t, w in basis.words.terms(n, basis.texts)[:4])}
            for n, cos in hits]
    return pd.DataFrame(rows), f"Neurons ranked by cos(PC, '{text.strip()}'). {_status(basis)}"


@gpu
def concepts(basis: NeuronBasis | None, image_path: str | None, top: float):
    """Activated neurons of the image (effect above threshold) and the words they vote for."""
    basis = _need(basis)
    if not image_path:
        raise gr.Error("Upload an image or pick an example first.")
    try:
        bundle = load_clip(basis.provenance["model"])
        result = image_concepts(bundle, basis, load_image(image_path, name="the uploaded image"), top=int(top))
    except CoreError as err:
        raise gr.Error(str(err)) from err
    neurons = pd.DataFrame([{"neuron": n, "|effect - mean|": round(v, 3), "threshold": round(t, 3),
                             "ratio": round(v / t, 2)} for n, v, t in zip(result.neurons, result.norms, result.thresholds)])
    words = pd.DataFrame([{"word": text, "score": round(score, 4)} for text, score in result.words])
    return neurons, words, f"{len(result.neurons)} activated neurons in layer {result.layer}. {_status(basis)}"


def _default_layer() -> int:
    try:
        n_layers = _bundle("").info.n_layers
    except CoreError:
        return 0
    return max(0, min(n_layers - 3, n_layers - 2))  # ViT-B-32: 9, as in the paper


def build() -> gr.Blocks:
    with gr.Blocks(title="Neurons") as demo:
        gr.Markdown("### Neurons\nEach MLP neuron's *second-order effect*: what it writes into the image "
                    "representation through later attention heads. Its first principal component is explained by a "
                    "sparse sum of texts (OMP). Statistics come from precomputed bases, or are computed here.")
        basis = gr.State(None)
        with gr.Row():
            model = gr.Textbox(label="Model spec", value=default_spec(), elem_id="neurons-model", scale=2)
            source = gr.Textbox(label="Bases (folder or ORG/NAME@SHA; empty: configured default)", scale=2)
            layer = gr.Number(label="Layer", value=_default_layer(), precision=0, elem_id="neurons-layer", scale=1)
            load = gr.Button("Load bases", scale=1)
        with gr.Accordion("Compute statistics (when no bases exist)", open=True):
            with gr.Row():
                image_source = gr.Radio([WORLD, FOLDER], value=WORLD, label="Image set")
                n_scenes = gr.Number(label="World scenes", value=1000, precision=0, elem_id="neurons-scenes")
                folder = gr.Textbox(label="Image folder (server path)")
                pool = gr.Textbox(label="Text pool: 'toy' or a file path", value=TOY_POOL)
                k = gr.Number(label="k (top images)", value=100, precision=0, elem_id="neurons-k")
                dictionary = gr.Radio(["normalise_texts", "original"], value="normalise_texts", label="Dictionary")
            compute = gr.Button("Compute statistics", variant="primary", elem_id="neurons-compute")
        status = gr.Markdown(elem_id="neurons-status")
        with gr.Row():
            with gr.Column(scale=1):
                neuron = gr.Number(label="Neuron", value=0, precision=0, elem_id="neurons-neuron")
                show = gr.Button("Show neuron", elem_id="neurons-show")
                neuron_info = gr.Markdown(elem_id="neurons-neuron-info")
                terms = gr.Dataframe(label="Texts (signed weights)", max_height=320, elem_id="neurons-terms")
                gallery = gr.Gallery(label="Top images", columns=4, height=220, elem_id="neurons-gallery")
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Your image", height=220, elem_id="neurons-image")
                gr.Examples(examples=[[p] for p in example_images()], inputs=[image], label="Generated-world examples")
                with gr.Row():
                    on_image = gr.Button("Activation map of the neuron", elem_id="neurons-map-run")
                    discover = gr.Button("Discover concepts", variant="primary", elem_id="neurons-concepts-run")
                effect = gr.Markdown(elem_id="neurons-effect")
                heat = gr.Image(label="Activation map (red: positive)", elem_id="neurons-map")
                concept_info = gr.Markdown(elem_id="neurons-concepts-info")
                words = gr.Dataframe(label="Concepts (words)", max_height=260, elem_id="neurons-words")
                activated = gr.Dataframe(label="Activated neurons", max_height=200)
        with gr.Row():
            query = gr.Textbox(label="Which neurons write...", value="a red circle", elem_id="neurons-search-text")
            top = gr.Number(label="How many", value=10, precision=0)
            find = gr.Button("Search neurons", elem_id="neurons-search-run")
        search_info = gr.Markdown()
        hits = gr.Dataframe(label="Neurons by cosine(PC, text)", elem_id="neurons-search-table")
        demo.load(try_default_bases, [model, layer], [basis, status], api_visibility="private")
        load.click(load_bases, [model, source, layer], [basis, status], api_name="load_bases")
        compute.click(compute_bases, [model, layer, image_source, n_scenes, folder, pool, k, dictionary],
                      [basis, status], api_name="compute_bases")
        show.click(show_neuron, [basis, neuron], [terms, gallery, neuron_info], api_name="show_neuron")
        on_image.click(neuron_on_image, [basis, neuron, image], [heat, effect], api_name="neuron_on_image")
        discover.click(concepts, [basis, image, top], [activated, words, concept_info], api_name="concepts")
        find.click(search, [basis, query, top], [hits, search_info], api_name="search_neurons")
    return demo


demo = build()

if __name__ == "__main__":
    import argparse
    
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args()
    host, port = args.host or settings.server_host(), args.port or settings.server_port()
    settings.configure(public=True if not settings.is_loopback(host) else None)
    demo.queue(default_concurrency_limit=2).launch(server_name=host, server_port=port, max_file_size="50mb")
