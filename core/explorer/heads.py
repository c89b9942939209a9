"""The Heads tab: each head's TextSpan texts, the head at work on an image, property retrieval, spurious cues.

Texts come from bases first (the configured ones, or ORG/NAME@SHA from the Hub), and from TextSpan computed in
the visitor's own session when they choose so. Session results (`FittedSpan`, gallery indexes) are returned to
the caller, who keeps them per session; nothing here is shared between visitors except verified, read-only bases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from PIL import Image

from core import budget
from core.engine.labels import head_label
from core.errors import BasesError, ConfigError, CoreError
from core.explorer import access
from core.explorer.common import (UNIT, UNIT_NAME, LinkPanel, Progress, bases_recipe, cached_artifact, check_index,
                                  colour_bar, display_source, link_model, link_panel, load_model, maybe_int,
                                  progress_or_silent, query_image, read_texts, text_pool, without_paths)
from core.links.codec import BASES, ViewState
from core.links.commands import reproduce_commands
from core.messages import error_message

WORLD_SEED = 4242  # held-out scenes TextSpan is fitted on in the tab (the examples use another seed)
GALLERY_SIZE = 48
WORLD, UPLOADS, FOLDER = "generated world (held-out scenes)", "uploaded images", "image folder on this machine"
SOURCES = (WORLD, UPLOADS, FOLDER)
FROM_BASES, FROM_SESSION = "bases", "computed here"
METRICS = ("cosine", "centered", "dot")
MAX_GALLERIES = 2  # per session
SPURIOUS_TEMPLATES = "80 OpenAI ImageNet templates"  # the command line's default (`spurious --templates openai`)
TEXT_COLUMNS = ["#", "text", "variance explained", "cumulative"]


class FittedSpan(NamedTuple):
    """TextSpan computed in one visitor's session (kept by the caller, never in this module)."""

    spec: str
    heads: list
    result: object  # TextSpanResult
    texts: list[str]
    provenance: str


class HeadTexts(NamedTuple):
    info: str
    rows: list[dict]
    source: str  # FROM_BASES, FROM_SESSION or "" (none)


def _head(bundle, layer, head) -> tuple[int, int]:
    return check_index(layer, "layer", bundle.info.n_layers), check_index(head, "head", bundle.info.n_heads)


def _model_line(info) -> str:
    return f"**Model:** {info.display_name} (`{info.spec}`)"


def _text_rows(rows: list[dict]) -> list[dict]:
    return [{"#": row["order"] + 1, "text": row["text"], "variance explained": round(row["variance_explained"], 4),
             "cumulative": round(row["cumulative_variance"], 4)} for row in rows]


# ---------------------------------------------------------------- bases

def bases_artifact(bundle, bases: str | None):
    """(artifact or None, resolved source): the verified bases for this model (read-only, shared by everyone)."""
    from core.artifacts.hub import resolve_bases_source

    source = resolve_bases_source(bundle.info.spec, access.check_bases_source(bases))
    if not source:
        return None, None
    return cached_artifact(source, bundle.info.identity()), source


def _from_bases(artifact, source: str, head) -> tuple[list[dict], str] | None:
    from core.heads.bases import head_text_rows

    rows = head_text_rows(artifact, head) if artifact.has("textspan") else []
    if not rows:
        return None
    manifest = artifact.manifest
    pool, images = manifest.get("text_pool") or {}, manifest.get("image_set") or {}
    params = manifest["algorithms"].get("textspan", {})
    return rows, (f"TextSpan from bases `{display_source(source)}`: text pool {without_paths(pool.get('name'))} "
                  f"({pool.get('count')} texts), image set {without_paths(images.get('description'))} "
                  f"({images.get('count')} images), convention "
                  f"{manifest['convention']}, rank {rows[0]['rank']}, criterion {params.get('criterion')}, span "
                  f"{params.get('span')}")


def _from_session(fitted: FittedSpan | None, spec: str, head) -> tuple[list[dict], str] | None:
    from core.heads.bases import table_rows
    from core.heads.outputs import select_heads

    if fitted is None or fitted.spec != spec or head not in fitted.heads:
        return None
    rows = table_rows([head], select_heads(fitted.result, [fitted.heads.index(head)]), fitted.texts)
    return rows, fitted.provenance


def head_texts(spec: str | None, layer, head, bases: str | None = None, *, fitted: FittedSpan | None = None,
               prefer: str = FROM_BASES, progress: Progress | None = None) -> HeadTexts:
    """The head's TextSpan texts with the variance of its outputs each explains: from bases, or this session."""
    bundle = load_model(spec, progress)
    chosen = _head(bundle, layer, head)
    name = head_label(*chosen)
    problem, from_bases = "", None
    try:
        artifact, source = bases_artifact(bundle, bases)
        from_bases = _from_bases(artifact, source, chosen) if artifact is not None else None
    except BasesError as err:  # unusable bases must not hide the texts computed here
        problem = f"  \nThe configured bases could not be used: {error_message(err)}"
    from_session = _from_session(fitted, bundle.info.spec, chosen)
    order = [(from_session, FROM_SESSION), (from_bases, FROM_BASES)]
    if prefer != FROM_SESSION:
        order.reverse()
    found, source_name = next(((f, s) for f, s in order if f is not None), (None, ""))
    if found is None:
        return HeadTexts(f"{_model_line(bundle.info)}  \nNo TextSpan for head {name} yet: no bases with this head are "
                         "configured for this model, and none was computed in this session. Compute it below on "
                         f"generated scenes or your own images.{problem}", [], "")
    rows, provenance = found
    other = {FROM_SESSION: from_bases, FROM_BASES: from_session}[source_name]
    also = (f"  \n(Texts {'from bases' if source_name == FROM_SESSION else 'computed in this session'} also exist "
            f"for this head: choose '{FROM_BASES if source_name == FROM_SESSION else FROM_SESSION}' to see them.)"
            if other else "")
    if prefer == FROM_SESSION and source_name != FROM_SESSION:
        also = "  \n(No TextSpan for this head was computed in this session: these are the bases' texts.)"
    total = rows[-1]["cumulative_variance"]
    return HeadTexts(f"{_model_line(bundle.info)}  \n**Head {name}** ({source_name}): {len(rows)} texts explain "
                     f"{100 * total:.1f}% of the variance of its outputs.  \n{provenance}{problem}{also}"
                     f"{_circuit_link(bundle, bases, chosen)}", _text_rows(rows), source_name)


def _circuit_link(bundle, bases: str | None, head: tuple[int, int]) -> str:
    """A link to the Circuits tab's in-edges of this head (heads of layer 0 read no MLP neuron)."""
    from core.links.codec import encode

    if head[0] == 0:
        return ""
    bases = (bases or "").strip()
    query = encode(ViewState("circuits", model=bundle.info.spec, bases=bases if BASES.fullmatch(bases) else None,
                             head=f"{head[0]}.{head[1]}"))
    return f"  \n[The neurons that feed this head](?{query})"


def _image_set(bundle, source: str, folder: str | None, uploads, n_images: int, progress):
    """(pixel batches, count, description) of the images TextSpan or a gallery is computed on."""
    from core.engine.images import image_files, iter_image_batches
    from core.heads.outputs import pil_batches
    from core.world.scenes import heldout_scenes

    if source == WORLD:
        scenes = (image for image, _, _ in heldout_scenes(n_images, seed=WORLD_SEED))
        return pil_batches(bundle, scenes), n_images, f"{n_images} generated held-out world scenes (seed {WORLD_SEED})"
    if source == UPLOADS:
        paths = _uploads(uploads)[:n_images]
        description = f"{len(paths)} uploaded images"
    elif source == FOLDER:
        root = access.check_server_path(folder, "image folder")
        if root is None:
            raise ConfigError("Type the image folder, or choose another image set.")
        paths = image_files(root)[:n_images]
        description = f"{len(paths)} images of folder {root.name}"
    else:
        raise ConfigError(f"Unknown image set {source!r}; choose one of {', '.join(SOURCES)}.")
    batches = (pixels for _, pixels in iter_image_batches(paths, bundle.preprocess, 32, skipped=[]))
    return batches, len(paths), description


def _uploads(uploads) -> list[str]:
    paths = [str(p) for p in (uploads or []) if p]
    if not paths:
        raise ConfigError("Upload some images first (or choose the generated world).")
    if len(paths) > access.MAX_UPLOADS:
        raise ConfigError(f"At most {access.MAX_UPLOADS} uploaded images, got {len(paths)}.")
    return paths


def compute_text_span(spec: str | None, source: str, folder: str | None, uploads, n_images, per_head, pool_upload,
                      layer, head, *, progress: Progress | None = None) -> tuple[FittedSpan, HeadTexts]:
    """Fit TextSpan for the last 4 layers' heads (and the chosen head); the fit belongs to the caller's session."""
    from core.engine.text import encode_texts
    from core.heads.bases import fit_in_memory
    from core.heads.outputs import check_heads, default_heads
    from core.heads.textspan import DEFAULT_RANK

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    chosen = _head(bundle, layer, head)
    heads = check_heads(list(dict.fromkeys(default_heads(bundle.info) + [chosen])), bundle.info)
    n_images = access.check_count(n_images, "the number of images", 2, 2000)
    per_head = access.check_count(per_head, "texts per head", 1, 100)
    texts, _, pool_description = text_pool(pool_upload)
    batches, n_images, images_description = _image_set(bundle, source, folder, uploads, n_images, progress)
    # The span cannot be wider than the data: one direction per image less the mean, per output dimension, and
    # per dimension a head can write (its width plus its shares of the biases and the final LayerNorm, 3).
    rank = min(DEFAULT_RANK, bundle.info.d_out, n_images)
    per_head = min(per_head, rank - 1, bundle.info.d_head + 3, len(texts))
    budget.admit(budget.text_span(bundle, images=n_images, heads=len(heads), texts=len(texts), per_head=per_head))
    progress(0.1, desc="encoding the text pool")
    embeddings = encode_texts(bundle, texts)
    tracked = progress.tqdm(batches, total=-(-n_images // 32), desc="head outputs")
    result, fitted = fit_in_memory(bundle, tracked, n_images, embeddings, heads, per_head=per_head, rank=rank)
    provenance = (f"TextSpan computed here on {images_description} ({fitted.count} used), text pool "
                  f"{pool_description}, convention paper, data span rank {rank}, criterion std")
    span = FittedSpan(bundle.info.spec, list(fitted.heads), result, texts, provenance)
    return span, head_texts(bundle.info.spec, *chosen, fitted=span, prefer=FROM_SESSION)


# ---------------------------------------------------------------- one image

@dataclass(frozen=True)
class ExplainView:
    info: str
    ranked: list[dict]
    grid: Image.Image
    maps: list[tuple[Image.Image, str]]
    top_texts: list[dict]


def rank_by_magnitude(scores, k: int = 10) -> list[dict]:
    """Heads of a [layer, head] score matrix by |score| (ties by index), sign kept."""
    n_heads = scores.shape[1]
    cells = [(i // n_heads, i % n_heads, float(v)) for i, v in enumerate(scores.flatten().tolist())]
    cells.sort(key=lambda c: (-abs(c[2]), c[0], c[1]))
    return [{"head": head_label(l, h), "layer": l, "head index": h, f"score ({UNIT_NAME})": round(v * UNIT, 4),
             "sign": "+" if v > 0 else "-" if v < 0 else "0"} for l, h, v in cells[:k]]


def _token_maps(result, image, head, info, scale: str) -> list[tuple[Image.Image, str]]:
    from core.engine.viz import overlay
    from core.heads.outputs import difference_map, head_token_maps

    maps = head_token_maps(result.tokens, result.grid, head)
    items = [(scores, f"'{text}'") for text, scores in zip(result.texts, maps)]
    if len(result.texts) == 2:
        items.insert(0, (difference_map(maps), f"difference: '{result.texts[0]}' minus '{result.texts[1]}'"))
    shared = max(float(m.abs().max()) for m, _ in items) or 1e-12
    pictures = []
    for scores, caption in items:
        limit = shared if scale == "shared" else (float(scores.abs().max()) or 1e-12)
        picture = overlay(image, scores, image_size=info.image_size, limit=limit)
        pictures.append((colour_bar(picture, limit * UNIT, f"{UNIT_NAME}, {scale} scale"), caption))
    return pictures


def explain_image(spec: str | None, image_path: str | None, image_ref: str | None, raw_texts, layer, head,
                  pool_upload, convention: str, *, scale: str = "shared", progress: Progress | None = None) -> ExplainView:
    """Which heads respond to the first text, the chosen head's token maps, and its top pool texts."""
    from core.engine.decomposition import decompose_image
    from core.engine.text import encode_texts
    from core.engine.viz import heat_grid
    from core.heads.outputs import image_head_texts

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    chosen = _head(bundle, layer, head)
    query = query_image(image_path, image_ref)
    texts = read_texts(raw_texts)
    progress(0.2, desc="decomposing the image")
    result = decompose_image(bundle, query.image, texts, convention=convention)
    pool, _, pool_description = text_pool(pool_upload)
    budget.admit(budget.text_pool(bundle, texts=len(pool)))
    progress(0.6, desc="scoring the text pool for the head")
    top = image_head_texts(bundle, query.image, chosen, encode_texts(bundle, pool), k=10, convention=convention)
    scores = result.heads[:, :, 0]
    grid = heat_grid(scores, title=f"cos(image, '{texts[0][:32]}') by head, x100",
                     cell=44 if scores.shape[1] <= 16 else 36)
    name = head_label(*chosen)
    info = (f"{_model_line(bundle.info)}  \n**Image:** {query.description}  ·  **Convention:** {convention}; scores are "
            f"cosine contributions x100 (the head's share of cos(image, text)), ranked by magnitude, sign kept.  \n"
            f"**Heads ranked** for '{texts[0]}'; **token maps** of head {name} for {len(texts)} text(s) "
            f"(colour scale {scale}); **top texts** of head {name} from {pool_description}.")
    top_rows = [{"text": pool[i], f"score ({UNIT_NAME})": round(score * UNIT, 4)} for i, score in top]
    return ExplainView(info, rank_by_magnitude(scores), grid, _token_maps(result, query.image, chosen, bundle.info, scale),
                       top_rows)


# ---------------------------------------------------------------- property retrieval

@dataclass(frozen=True)
class RetrievalView:
    info: str
    items: list[tuple[Image.Image, str]]
    galleries: dict = field(default_factory=dict)  # the session's gallery indexes, to keep for the next call


def _gallery(bundle, source, folder, uploads, layer, convention, galleries: dict, progress):
    from core.engine.images import image_files
    from core.heads.outputs import heads_of_layers
    from core.heads.retrieval import build_gallery
    from core.world.examples import example_images

    if source == WORLD:
        paths, description = example_images(GALLERY_SIZE), (f"{GALLERY_SIZE} generated held-out world scenes "
                                                             "(the examples are among them)")
    elif source == UPLOADS:
        paths = _uploads(uploads)
        description = f"{len(paths)} uploaded images"
    elif source == FOLDER:
        root = access.check_server_path(folder, "image folder")
        if root is None:
            raise ConfigError("Type the gallery folder, or choose another gallery.")
        paths, description = image_files(root), f"folder {root.name}"
    else:
        raise ConfigError(f"Unknown gallery {source!r}; choose one of {', '.join(SOURCES)}.")
    key = (bundle.info.spec, tuple(map(str, paths)), layer, convention)
    if key not in galleries:
        wrap = lambda batches: progress.tqdm(batches, total=-(-len(paths) // 32), desc="indexing the gallery")  # noqa: E731
        index = build_gallery(bundle, paths, heads_of_layers(bundle.info, [layer]), description=description,
                              convention=convention, progress=wrap, skipped=[])
        galleries = {**{k: v for k, v in list(galleries.items())[-(MAX_GALLERIES - 1):]}, key: index}
    return galleries[key], galleries


def retrieve_similar(spec: str | None, image_path: str | None, image_ref: str | None, layer, head, source: str,
                     folder: str | None, uploads, k, metric: str, convention: str, *, galleries: dict | None = None,
                     progress: Progress | None = None) -> RetrievalView:
    """Gallery images whose contribution from the chosen head is nearest the query image's."""
    from core.engine.images import load_image
    from core.heads.retrieval import nearest, query_contributions

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    chosen = _head(bundle, layer, head)
    k = access.check_count(k, "the number of images", 1, 64)
    query = query_image(image_path, image_ref, what="the query image")
    index, galleries = _gallery(bundle, source, folder, uploads, chosen[0], convention, dict(galleries or {}), progress)
    progress(0.8, desc="searching")
    vector = query_contributions(bundle, query.image, [chosen], convention=convention)[0]
    found = nearest(index, vector, chosen, k=k, metric=metric)
    items = [(load_image(index.paths[i]), f"#{rank} {metric} {score:+.4f}") for rank, (i, score) in enumerate(found, 1)]
    info = (f"{_model_line(bundle.info)}  \n**Head {head_label(*chosen)}**, {metric} of its contributions; "
            f"query: {query.description}; gallery: {index.description} ({len(index.paths)} images); convention "
            f"{convention}.")
    return RetrievalView(info, items, galleries)


# ---------------------------------------------------------------- spurious cues

def remove_spurious(spec: str | None, folder: str | None, raw_heads: str, classnames: str, trials, convention: str,
                    *, progress: Progress | None = None) -> tuple[str, list[dict]]:
    """Worst-group accuracy of a grouped folder (a local user's) with the heads mean-ablated, against random heads."""
    from core.engine.ablation import component_means
    from core.engine.text import imagenet_classifier_texts, zero_shot_classifier
    from core.heads.outputs import check_heads, parse_heads
    from core.heads.spurious import grouped_folder, spurious_report

    progress = progress_or_silent(progress)
    root = access.check_server_path(folder, "grouped folder")
    if root is None:
        raise ConfigError("Type the grouped folder (with metadata.csv).")
    bundle = load_model(spec, progress)
    trials = access.check_count(trials, "random trials", 1, 20)
    names = [name.strip() for name in (classnames or "").split(",") if name.strip()] or None
    grouped = grouped_folder(root, classnames=names)
    heads = check_heads(parse_heads(raw_heads or ""), bundle.info)
    progress(0.1, desc="zero-shot classifier")
    classifier = zero_shot_classifier(bundle, grouped.classnames, imagenet_classifier_texts()[1])
    progress(0.2, desc="component means")
    means = component_means(bundle, grouped.paths, description=f"the evaluated set ({len(grouped.paths)} images)",
                            convention=convention, skipped=[])
    report = spurious_report(bundle, grouped, classifier, heads, means, provenance="picked in the UI",
                             means_from_evaluated_set=True, trials=trials, progress=progress.tqdm)
    summary = report.random_summary()
    rows = [{"model": "unmodified", "overall": report.base.overall, "worst group": report.base.worst},
            {"model": "chosen heads ablated", "overall": report.ablated.overall, "worst group": report.ablated.worst},
            {"model": f"{len(heads)} random heads ({report.baseline.describe()}; chosen at percentile "
                      f"{summary['chosen_percentile_worst']:.1f})", "overall": summary["overall_mean"],
             "worst group": summary["worst_mean"]}]
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    info = (f"{_model_line(bundle.info)}  \nEvaluated on {report.evaluated_on.replace(str(root), root.name)}; classifier: "
            f"{SPURIOUS_TEMPLATES} (as `python -m core spurious`); means from the evaluated set itself (use the "
            f"command line's --means-from for a held-out set); convention {convention}; random heads from layers "
            f"{report.random_layers}, seed {report.seed}.")
    return info, rows


# ---------------------------------------------------------------- link

def heads_link(spec: str | None, bases: str | None, layer, head, raw_texts, image_ref: str | None, convention: str,
               metric: str) -> LinkPanel:
    """The link and command lines of the tab's current controls (no model is loaded)."""
    spec = link_model(spec)
    try:
        texts = tuple(read_texts(raw_texts))
    except CoreError:
        texts = ()
    bases = (bases or "").strip()
    state = ViewState("heads", model=spec, bases=bases if BASES.fullmatch(bases) else None,
                      layer=maybe_int(layer), head=maybe_int(head), texts=texts if image_ref else (),
                      image=(image_ref or None), convention=convention or None,
                      method=metric if metric in METRICS else None)
    source = recipe = None
    notes = []
    try:
        artifact, source = bases_artifact(load_model(spec), bases or None)
        recipe = bases_recipe(artifact) if artifact is not None else None
    except CoreError:
        pass
    if bases and not BASES.fullmatch(bases):
        notes.append("Bases from a local folder cannot travel in a link: the link uses the configured bases.")
    return link_panel(state, reproduce_commands(state, bases_source=display_source(source) if source else None,
                                                recipe=recipe), notes)


def open_link(query, *, default_tab: str = "decomposition", only_tab: bool = False):
    """The view a link names (`core.explorer.common.Linked`); its view is (HeadTexts | None, ExplainView | None)."""
    from dataclasses import replace

    from core.explorer.common import link_failure, read_link
    from core.links.images import default_texts

    linked, failed = read_link(query, "heads", default_tab=default_tab, only_tab=only_tab)
    if not linked.applies:
        return linked
    s = linked.state
    try:
        bundle = load_model(s.model)
        layer = bundle.info.n_layers - 1 if s.layer is None else s.layer
        head = 0 if s.head is None else s.head
        texts = head_texts(s.model, layer, head, s.bases)
        image_ref = s.image if s.image and s.image != "upload" else None
        explained = (explain_image(s.model, None, image_ref, list(s.texts) or default_texts(image_ref)[:2], layer,
                                   head, None, s.convention or "paper") if image_ref else None)
    except CoreError as err:
        return failed(link_failure(err))
    link = heads_link(s.model, s.bases, layer, head, "\n".join(s.texts) or "\n".join(default_texts(image_ref)[:2])
                      if image_ref else "", image_ref, s.convention or "paper", s.method or "cosine")
    return replace(linked, view=(texts, explained), link=link)
