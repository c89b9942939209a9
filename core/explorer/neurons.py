"""The Neurons tab: each MLP neuron's texts, top images, activation map and second-order effect; search by text;
concept discovery.

Every call names its model, bases and layer, so each works on its own (no earlier "load" call): statistics come
from the bases (verified, read-only, shared), or from statistics computed in the caller's session (`session`),
which the caller keeps per visitor.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from core import budget, caches
from core.engine.labels import neuron_label
from core.errors import ConfigError, CoreError, OutputError
from core.explorer import access
from core.explorer.common import (LinkPanel, Progress, bases_recipe, cached_artifact, check_index, colour_bar,
                                  display_source, link_model, link_panel, load_model, maybe_int, progress_or_silent,
                                  query_image, read_texts, text_pool, without_paths)
from core.links.codec import BASES, ViewState
from core.links.commands import reproduce_commands

WORLD, FOLDER = "generated world", "image folder on this machine"
N_GALLERY = 8
RELIABLE_SHARE = 0.05  # k / images above this: the k-th largest effect is no longer a rare event
TERM_COLUMNS = ["text", "weight"]


@dataclass(frozen=True)
class Basis:
    """One layer's statistics and where they come from, in words a visitor may see."""

    basis: object  # core.neurons.bases.NeuronBasis
    source: str  # display form: shipped folder, ORG/NAME@SHA, "computed in this session"
    bases_source: str | None  # the source to name in a command line (None: computed in the session)

    def status(self) -> str:
        p = self.basis.provenance
        warning = " **Random weights**: for testing only." if p.get("random_init") else ""
        return (f"**Neuron statistics** ({self.source}): model {p['model']}, layer {self.basis.stats.layer}, image "
                f"set: {_public_description(self.basis.image_set)}, text pool {without_paths(p['text_pool'])} "
                f"({p['text_count']} "
                f"texts), dictionary {p['dictionary']}, {p['terms']} terms, k = {p['k']}, convention {p['mode']} "
                f"(x{p['coefficient']:g}, divided by |y|), mean reconstruction cosine "
                f"{p['reconstruction_cosine']:.3f}.{warning}{reliability_warning(self.basis)}")


def _public_description(image_set) -> str:
    if image_set.kind == "folder":
        return f"{image_set.count} images of folder {Path(image_set.params['root']).name}"
    return without_paths(image_set.description)


def reliability_warning(basis) -> str:
    """A warning when the threshold (k-th largest effect) comes from too few images to mean 'rare'."""
    k, n = basis.stats.k, basis.image_set.count
    if n and k / n > RELIABLE_SHARE:
        return (f"  \n**Warning:** the thresholds are the {k}-th largest effects over only {n} images ({100 * k / n:.0f}%"
                f" of them), so a typical image exceeds many of them and 'activated' means little. Use at least "
                f"{int(k / RELIABLE_SHARE)} images for k = {k}.")
    return ""


@functools.lru_cache(maxsize=16)
def _load_layer(artifact, layer: int):
    from core.neurons.bases import load_neuron_basis, neuron_layers

    neuron_layers(artifact)
    return load_neuron_basis(artifact, layer)


def find_basis(bundle, bases: str | None, layer, session=None) -> Basis:
    """The layer's statistics: this session's (when it computed that model and layer and no bases are named),
    else the named or configured bases."""
    from core.artifacts.hub import resolve_bases_source
    from core.neurons.bases import BUILD_COMMAND

    layer = check_index(layer, "layer", bundle.info.n_layers)
    named = access.check_bases_source(bases)
    if (session is not None and not named and session.provenance.get("model") == bundle.info.spec
            and session.stats.layer == layer):
        return Basis(session, "computed in this session", None)
    source = resolve_bases_source(bundle.info.spec, named)
    if source is None:
        raise ConfigError(f"No neuron statistics for model {bundle.info.spec}: compute them below, name bases "
                          f"(ORG/NAME@SHA), or build them with {BUILD_COMMAND.format(spec=bundle.info.spec)}.")
    basis = _load_layer(cached_artifact(source, bundle.info.identity()), layer)
    shown = display_source(source)
    return Basis(basis, f"bases `{shown}`", shown)


def bases_status(spec: str | None, bases: str | None, layer, session=None, *, progress: Progress | None = None) -> str:
    """What the tab will read for this model and layer (the 'Load bases' button and the page's first view)."""
    bundle = load_model(spec, progress)
    return find_basis(bundle, bases, layer, session).status()


# ---------------------------------------------------------------- one neuron

@dataclass(frozen=True)
class NeuronView:
    info: str
    terms: list[dict]
    gallery: list[tuple[Image.Image, str]]


def show_neuron(spec: str | None, bases: str | None, layer, neuron, session=None, *,
                progress: Progress | None = None) -> NeuronView:
    """The neuron's texts (signed weights), its top images and its statistics."""
    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    found = find_basis(bundle, bases, layer, session)
    basis, stats = found.basis, found.basis.stats
    n = check_index(neuron, "neuron", stats.mean.shape[0])
    terms = basis.words.terms(n, basis.texts)
    rows = [{"text": text, "weight": round(weight, 4)} for text, weight in terms]
    gallery = []
    top = list(zip(stats.top_images[n, :N_GALLERY].tolist(), stats.top_norms[n].tolist()))
    for rank, (index, norm) in enumerate(progress.tqdm(top, total=len(top), desc="top images"), 1):
        try:
            gallery.append((basis.image_set.image(index), f"#{rank}: image {index}, |effect| {norm:.2f}"))
        except CoreError:
            continue  # a file of the image set that is no longer there
    info = (f"**Layer {stats.layer}, neuron {n}** ({neuron_label(stats.layer, n)}): threshold (the {stats.k}-th largest |effect - mean|) "
            f"{float(stats.thresholds[n]):.3f}; PC share of the top-{stats.k} energy {float(stats.pc_variance[n]):.3f}; "
            f"reconstruction cosine of the PC from its {len(terms)} texts "
            f"{float(basis.words.reconstruction_cosine[n]):.3f} (dictionary {basis.words.dictionary_mode}).  \n"
            f"Top images of: {_public_description(basis.image_set)}.  \n{found.status()}  \n"
            f"[Its circuit: the later heads that carry its effect](?{_circuit_query(bundle, bases, stats.layer, n)})")
    return NeuronView(info, rows, gallery)


def _circuit_query(bundle, bases: str | None, layer: int, neuron: int) -> str:
    """The Circuits tab's link for this neuron (the same model and Hub bases)."""
    from core.links.codec import encode

    bases = (bases or "").strip()
    return encode(ViewState("circuits", model=bundle.info.spec, bases=bases if BASES.fullmatch(bases) else None,
                            layer=layer, neuron=neuron))


def neuron_on_image(spec: str | None, bases: str | None, layer, neuron, image_path: str | None, image_ref: str | None,
                    session=None, *, progress: Progress | None = None) -> tuple[Image.Image, str]:
    """The neuron's activation map on the image, and its second-order effect size against the threshold."""
    from core.engine.viz import overlay
    from core.neurons.concepts import effect_sizes
    from core.neurons.texts import activation_map, image_effects

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    found = find_basis(bundle, bases, layer, session)
    basis = found.basis
    n = check_index(neuron, "neuron", basis.stats.mean.shape[0])
    query = query_image(image_path, image_ref)
    progress(0.3, desc="second-order effects of the layer")
    phi, trace = image_effects(bundle.model.visual, basis.stats.layer, bundle.preprocess(query.image)[None],
                               mode=basis.stats.mode, coefficient=basis.stats.coefficient)
    norms, thresholds = effect_sizes(phi[0], basis.stats)
    heat = activation_map(trace, basis.stats.layer, n, bundle.info.grid).cpu()
    size, threshold = float(norms[n]), float(thresholds[n])
    verdict = "significant (above its threshold)" if size > threshold else "below its threshold"
    limit = float(heat.abs().max()) or 1e-12
    picture = colour_bar(overlay(query.image, heat, image_size=bundle.info.image_size, limit=limit), limit,
                         "activation (post-GELU)")
    info = (f"**Image:** {query.description}.  \nNeuron {n} of layer {basis.stats.layer}: |effect - mean| = "
            f"**{size:.3f}** vs threshold {threshold:.3f} ({size / threshold:.2f}x, {verdict}); activation range "
            f"{float(heat.min()):+.3f} .. {float(heat.max()):+.3f}.  \n{found.status()}")
    return picture, info


def search_neurons(spec: str | None, bases: str | None, layer, text: str, top, session=None, *,
                   progress: Progress | None = None) -> tuple[list[dict], str]:
    """Neurons of the layer whose principal component points most towards the text."""
    from core.engine.text import encode_texts
    from core.neurons.texts import search_neurons as ranked

    bundle = load_model(spec, progress)
    found = find_basis(bundle, bases, layer, session)
    basis = found.basis
    query = read_texts(text, limit=1)[0]
    top = access.check_count(top, "the number of neurons", 1, 200)
    embedding = encode_texts(bundle, [query], use_cache=False)[0]
    rows = [{"neuron": n, "cosine": round(cos, 4),
             "top texts": "; ".join(f"{t} ({w:+.2f})" for t, w in basis.words.terms(n, basis.texts)[:4])}
            for n, cos in ranked(basis.stats.pcs, embedding, top=top)]
    return rows, f"Neurons of layer {basis.stats.layer} ranked by cos(PC, '{query}'). {found.status()}"


def discover_concepts(spec: str | None, bases: str | None, layer, image_path: str | None, image_ref: str | None, top,
                      threshold=1.0, session=None, *, progress: Progress | None = None):
    """(activated neuron rows, word rows, info): neurons whose effect exceeds threshold x tau_n, and their words."""
    from core.neurons.concepts import image_concepts

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    found = find_basis(bundle, bases, layer, session)
    query = query_image(image_path, image_ref)
    top = access.check_count(top, "the number of words", 1, 200)
    try:
        scale = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError("The threshold must be a number (1 = the paper's rule).") from None
    if not 0 < scale <= 1000:
        raise ConfigError("The threshold must be above 0 and at most 1000 (1 = the paper's rule).")
    progress(0.3, desc="second-order effects of the layer")
    result = image_concepts(bundle, found.basis, query.image, top=top, scale=scale)
    neurons = [{"neuron": n, "|effect - mean|": round(v, 3), "threshold": round(t, 3), "ratio": round(v / t, 2)}
               for n, v, t in zip(result.neurons, result.norms, result.thresholds)]
    words = [{"word": text, "score": round(score, 4)} for text, score in result.words]
    info = (f"**Image:** {query.description}.  \n{len(result.neurons)} activated neurons in layer {result.layer} "
            f"(effect above {scale:g} x threshold). {found.status()}")
    return neurons, words, info


# ---------------------------------------------------------------- statistics computed in the session

def compute_statistics(spec: str | None, layer, source: str, n_scenes, folder: str | None, pool_upload,
                       pool_typed: str | None, k, dictionary: str, *, progress: Progress | None = None):
    """(NeuronBasis for the caller's session, status): statistics and text decompositions of one layer.

    Written under the clipscope cache, keyed by everything that determines them, and resumable.
    """
    from core.engine.text import cache_dir, texts_sha256
    from core.neurons.bases import BuildOptions, ImageSet, build_neuron_bases, find_neuron_bases, load_neuron_basis

    progress = progress_or_silent(progress)
    bundle = load_model(spec, progress)
    layer = check_index(layer, "layer", bundle.info.n_layers)
    k = access.check_count(k, "k", 1, 1000)
    if source == WORLD:
        images = ImageSet.world(access.check_count(n_scenes, "the number of world scenes", 10,
                                                   access.MAX_WORLD_SCENES), seed=0)
    elif source == FOLDER:
        root = access.check_server_path(folder, "image folder")
        if root is None:
            raise ConfigError("Type the image folder, or choose the generated world.")
        images = ImageSet.folder(root)
    else:
        raise ConfigError(f"Unknown image set {source!r}; choose {WORLD} or {FOLDER}.")
    if k >= images.count:
        raise ConfigError(f"k ({k}) must be smaller than the number of images ({images.count}).")
    texts, pool_name, _ = text_pool(pool_upload, pool_typed)
    budget.admit(budget.neuron_statistics(bundle, images=images.count, k=k, texts=len(texts),
                                          images_name="world scenes" if source == WORLD else "images"))
    key = texts_sha256([bundle.info.spec, str(bundle.info.weights_sha256), images.description, pool_name,
                        texts_sha256(texts), str(layer), str(k), dictionary])[:20]
    track = lambda iterable, desc, total=None: progress.tqdm(iterable, desc=desc, total=total)  # noqa: E731

    def build(out: Path) -> None:
        build_neuron_bases(bundle, out, layers=[layer], image_set=images, texts=texts, pool_name=pool_name,
                           options=BuildOptions(k=k, dictionary=dictionary), progress=track)

    def load(out: Path):
        return load_neuron_basis(find_neuron_bases(bundle, str(out)), layer)

    basis = cached_statistics(cache_dir() / "neuron-bases", key, build, load)
    return basis, Basis(basis, "computed in this session", None).status()


# Statistics computed for visitors are kept under the cache, keyed by everything that determines them, least
# recently used out past this size.
NEURON_CACHE_BYTES = 2_000_000_000
ABANDONED_SECONDS = 86_400  # an unfinished build nobody resumed for a day is trimmed like any old entry
_key_locks: dict[str, threading.Lock] = {}
_key_locks_guard = threading.Lock()


def cached_statistics(root: Path, key: str, build, load):
    """The statistics under root/key: read when complete, else built by one request at a time per key (others with
    the same key wait, then read them) in root/.work-KEY (an interrupted build resumes there) and renamed into place.

    The cache is optional: when it cannot be written (read-only, full), the statistics are built in a temporary
    folder, read, and that folder is removed; the log has a warning.
    """
    done = root / key
    with _key_locks_guard:
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        basis = _read_complete(done, load)
        if basis is not None:
            caches.touch(done)
            return basis
        try:
            with caches.file_lock(root / f".{key}.lock"):  # other server processes sharing the cache
                basis = _read_complete(done, load)
                if basis is None and done.is_dir() and not done.is_symlink():
                    build(done)  # an unfinished build of an earlier version, written in place: resumed there
                elif basis is None:
                    work = root / f".work-{key}"
                    build(work)
                    os.rename(work, done)
        except (OSError, OutputError) as err:
            caches.warn_once("neuron statistics", err)
            return _build_elsewhere(build, load)
        caches.trim(root, NEURON_CACHE_BYTES, keep=(key,), select=lambda name: not name.startswith(".") or (
            name.startswith(".work-") and caches.age(root / name) > ABANDONED_SECONDS))
        return basis if basis is not None else load(done)


def _read_complete(folder: Path, load):
    """The statistics in `folder` when it holds a complete artifact, else None (absent, unfinished or unreadable)."""
    try:
        if not (folder / "manifest.json").is_file():
            return None
        return load(folder)
    except (OSError, CoreError):
        return None


def _build_elsewhere(build, load):
    """Build in a temporary folder of this process (the cache cannot hold them), read, remove the folder."""
    import shutil
    import tempfile

    try:
        work = Path(tempfile.mkdtemp(prefix="neuron-bases-", dir=caches.fallback_root()))
    except OSError:
        raise OutputError("The statistics cannot be computed now: this server's disk is full.") from None
    try:
        build(work / "bases")
        return load(work / "bases")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- link

def neurons_link(spec: str | None, bases: str | None, layer, neuron, text: str | None, image_ref: str | None,
                 threshold) -> LinkPanel:
    """The link and command lines of the tab's current controls (reads only the bases' manifest)."""
    spec = link_model(spec)
    bases = (bases or "").strip()
    try:
        scale = float(threshold)
    except (TypeError, ValueError):
        scale = None
    query = (text or "").strip()
    state = ViewState("neurons", model=spec, bases=bases if BASES.fullmatch(bases) else None,
                      layer=maybe_int(layer), neuron=maybe_int(neuron),
                      texts=(query,) if query and len(query) <= 200 and "\n" not in query else (),
                      image=image_ref or None, threshold=scale if scale and 0 < scale <= 1000 else None)
    source = recipe = None
    try:
        from core.artifacts.hub import resolve_bases_source
        source = resolve_bases_source(spec, access.check_bases_source(bases))
        recipe = bases_recipe(cached_artifact(source)) if source else None
    except CoreError:
        pass
    notes = [] if not bases or BASES.fullmatch(bases) else [
        "Bases from a local folder cannot travel in a link: the link uses the configured bases."]
    return link_panel(state, reproduce_commands(state, bases_source=display_source(source) if source else None,
                                                recipe=recipe), notes)


@dataclass(frozen=True)
class LinkedNeurons:
    """A linked view's first answers (None where the link names nothing for that part)."""

    status: str
    neuron: NeuronView | None
    on_image: tuple | None  # (picture, info)
    concepts: tuple | None  # (neuron rows, word rows, info)
    search: tuple | None  # (rows, info)


def default_layer(n_layers: int) -> int:
    """The layer the tab starts on: the third from last (ViT-B-32: 9, as in the paper)."""
    return max(0, n_layers - 3)


def open_link(query, *, default_tab: str = "decomposition", only_tab: bool = False, top: int = 10):
    """The view a link names (`core.explorer.common.Linked`) with a `LinkedNeurons` view."""
    from dataclasses import replace

    from core.explorer.common import link_failure, read_link

    linked, failed = read_link(query, "neurons", default_tab=default_tab, only_tab=only_tab)
    if not linked.applies:
        return linked
    s = linked.state
    image_ref = s.image if s.image and s.image != "upload" else None
    try:
        bundle = load_model(s.model)
        layer = default_layer(bundle.info.n_layers) if s.layer is None else s.layer
        status = bases_status(s.model, s.bases, layer)
        neuron = None if s.neuron is None else show_neuron(s.model, s.bases, layer, s.neuron)
        on_image = (neuron_on_image(s.model, s.bases, layer, s.neuron, None, image_ref)
                    if image_ref and s.neuron is not None else None)
        concepts = (discover_concepts(s.model, s.bases, layer, None, image_ref, top, s.threshold or 1.0)
                    if image_ref else None)
        search = search_neurons(s.model, s.bases, layer, s.texts[0], top) if s.texts else None
    except CoreError as err:
        return failed(link_failure(err))
    link = neurons_link(s.model, s.bases, layer, s.neuron, s.texts[0] if s.texts else "", image_ref, s.threshold or 1.0)
    return replace(linked, view=LinkedNeurons(status, neuron, on_image, concepts, search), link=link)
