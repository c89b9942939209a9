"""Neuron bases: build (resumably) and load the artifact of neuron statistics and text decompositions.

One artifact folder (format: `core.artifacts.store`) per model, image set and text pool holds, per layer L:

    tensors/neuron_means_L{L}   mean (pass 1: kept when a build is interrupted later)
    tensors/neurons_L{L}        pcs, thresholds, top_images, top_norms, pc_variance (mean: neuron_means_L{L})
    tensors/sparse_L{L}         indices, coefficients, reconstruction_cosine
and
    tables/neuron_terms         rows (layer, neuron, rank, text, weight), the top TABLE_TERMS by |weight| per neuron
    tables/neuron_ablation      rows (layer, ablation, accuracy, ...) when an evaluation set was given
    extra/texts                 the text pool (checked against the manifest's sha256 on load)
    extra/image_set             which images the statistics come from (world scenes or files)

The manifest's `algorithms["neurons"]` records k, terms, dictionary mode, mode, coefficient and layers.

>>> images = ImageSet.world(1000, seed=0)
>>> build_neuron_bases(bundle, "out/toy-neurons", layers=[2], image_set=images, texts=texts, pool_name="toy")
>>> basis = load_neuron_basis(load_artifact("out/toy-neurons", expect_model=bundle.info.identity()), layer=2)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file

from core.artifacts.store import (Artifact, ArtifactWriter, check_stored_texts, check_text_pool, load_artifact,
                                  text_pool_identity)
from core.errors import BasesError, ConfigError
from core.engine.imagesets import ImageSet  # noqa: F401  (the image-set type, named here for existing callers)
from core.engine.labels import parse_label
from core.engine.models import ClipBundle
from core.neurons.stats import (DEFAULT_K, NeuronStats, Progress, check_k, first_principal_components,
                                neuron_means, neuron_top_deviations,
                                stats_from_tensors)
from core.neurons.texts import (ABLATIONS, DEFAULT_DICTIONARY, SPARSE_ABLATION, NeuronTexts, check_dictionary_mode,
                          decompose_neurons, default_terms, neuron_ablation_accuracies, text_dictionary)
from core.neurons.second_order import COEFFICIENT, check_layer
from core.engine.text import encode_texts

ALGORITHM = "neurons"
BUILD_COMMAND = ("python -m core neurons --model {spec} --layer L --images DIR --texts FILE --out DIR "
                 "(then pass --bases DIR, or set CLIPSCOPE_BASES={spec}=DIR)")


# ---------------------------------------------------------------- one layer's basis

@dataclass(frozen=True)
class NeuronBasis:
    """Everything the explorer and concept discovery need for one layer, with its provenance."""

    stats: NeuronStats
    words: NeuronTexts
    texts: list[str]
    image_set: ImageSet
    provenance: dict[str, Any]

    def describe(self) -> str:
        """One line saying what produced these results."""
        p = self.provenance
        return (f"model {p['model']}, layer {self.stats.layer}, image set: {p['image_set']}, text pool "
                f"{p['text_pool']} ({p['text_count']} texts), dictionary {p['dictionary']}, {p['terms']} terms, "
                f"k = {p['k']}, convention {p['mode']} (x{p['coefficient']:g}, divided by |y|), mean reconstruction "
                f"cosine {p['reconstruction_cosine']:.3f}")


def neuron_layers(artifact: Artifact) -> list[int]:
    """Layers with neuron statistics in the artifact (BasesError if it has none)."""
    params = artifact.manifest["algorithms"].get(ALGORITHM)
    if not params:
        raise BasesError(f"the bases at {artifact.path} hold no neuron statistics; build them with "
                         + BUILD_COMMAND.format(spec=artifact.manifest["model"]["spec"]))
    layers = params.get("layers") if isinstance(params, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, int) and not isinstance(layer, bool)
                                               for layer in layers):
        raise BasesError(f"the bases at {artifact.path} record neuron layers {layers!r}, not a list of integers: "
                         "the manifest was edited; rebuild the bases")
    return list(layers)


_NEURON_SHAPES = {"pcs": ("neuron", "d_out"), "thresholds": ("neuron",), "top_images": ("neuron", "k"),
                  "top_norms": ("neuron", "k"), "pc_variance": ("neuron",)}
_SPARSE_SHAPES = {"indices": ("neuron", "terms"), "coefficients": ("neuron", "terms"),
                  "reconstruction_cosine": ("neuron",)}


def load_neuron_basis(artifact: Artifact, layer: int, model_info=None) -> NeuronBasis:
    """Layer `layer` of a verified artifact; the stored texts must match the manifest's text pool.

    Every tensor's shape (against `model_info`'s d_mlp and d_out when given) and every stored index is
    checked, so a tampered file whose hashes were recomputed fails here with a BasesError.
    """
    layers = neuron_layers(artifact)
    if layer not in layers:
        raise ConfigError(f"the bases at {artifact.path} have neuron statistics for layer(s) "
                          f"{', '.join(map(str, layers))}, not layer {layer}")
    params = artifact.manifest["algorithms"][ALGORITHM]
    texts = check_stored_texts(artifact.json("texts"), str(artifact.path))  # the same check as `bases verify`
    check_text_pool(artifact, texts)
    missing = [key for key in ("mode", "coefficient", "dictionary", "terms", "k") if key not in params]
    if missing:
        raise BasesError(f"the bases at {artifact.path} lack neuron parameters {', '.join(missing)}: rebuild them")
    image_set = ImageSet.from_record(artifact.json("image_set"))
    sizes = {"neuron": model_info.d_mlp, "d_out": model_info.d_out} if model_info is not None else {}
    stored = artifact.tensors(f"neurons_L{layer}", _NEURON_SHAPES, sizes, integer=("top_images",),
                              below={"top_images": image_set.count})
    sizes = {"neuron": stored["pcs"].shape[0], "d_out": stored["pcs"].shape[1]}
    means = artifact.tensors(f"neuron_means_L{layer}", {"mean": ("neuron", "d_out")}, sizes)
    stats = _stats_from_store(layer, stored, means["mean"], n_images=image_set.count,
                              mode=params["mode"], coefficient=params["coefficient"])
    sparse = artifact.tensors(f"sparse_L{layer}", _SPARSE_SHAPES, {"neuron": sizes["neuron"]}, integer=("indices",),
                              below={"indices": len(texts)})
    words = _words_from_store(sparse, params["dictionary"])
    provenance = {"model": artifact.manifest["model"]["spec"], "random_init": artifact.manifest["model"]["random_init"],
                  "layer": layer, "image_set": image_set.description,
                  "text_pool": artifact.manifest["text_pool"]["name"], "text_count": len(texts),
                  "dictionary": params["dictionary"], "terms": params["terms"], "k": params["k"],
                  "mode": params["mode"], "coefficient": params["coefficient"],
                  "reconstruction_cosine": float(words.reconstruction_cosine.mean()), "source": str(artifact.path)}
    return NeuronBasis(stats, words, texts, image_set, provenance)


def neuron_terms_from_bases(bases: Artifact, neuron: str | tuple[int, int]) -> list[tuple[str, float]]:
    """(text, signed weight) of one neuron's sparse text decomposition in loaded bases, by |weight| descending:
    the texts whose weighted sum approximates the first principal component of its second-order effects.
    `neuron` is a label ("L2.n5") or (layer, neuron). For the layer's statistics: `load_neuron_basis`."""
    if isinstance(neuron, str):
        component = parse_label(neuron)
        if component.kind != "neuron":
            raise ConfigError(f"{neuron!r} names a {component.kind}, not an MLP neuron (e.g. L2.n5)")
        layer, index = component.layer, component.index
    else:
        try:
            layer, index = (int(value) for value in neuron)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"a neuron is a label such as L2.n5 or a (layer, neuron) pair, got {neuron!r}") from err
    basis = load_neuron_basis(bases, layer)
    return basis.words.terms(index, basis.texts)


def find_neuron_bases(bundle: ClipBundle, source: str | None = None) -> Artifact:
    """The neuron bases for this model: `source`, else $CLIPSCOPE_BASES / the shipped default."""
    from core.artifacts.hub import load_bases, resolve_bases_source

    spec = bundle.info.spec
    resolved = resolve_bases_source(spec, source)
    if resolved is None:
        raise BasesError(f"no neuron bases are configured for model {spec}: build them with "
                         + BUILD_COMMAND.format(spec=spec))
    artifact = load_bases(resolved, expect_model=bundle.info.identity())
    neuron_layers(artifact)
    return artifact


# ---------------------------------------------------------------- building

@dataclass(frozen=True)
class Evaluation:
    """A labelled image set and a zero-shot classifier for the ablation experiment."""

    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # -> (pixels, labels [batch])
    classifier: torch.Tensor  # [class, d_out]
    description: str
    classifier_description: str
    n_batches: int | None = None


@dataclass(frozen=True)
class BuildOptions:
    k: int = DEFAULT_K
    n_terms: int | None = None  # default: core.neurons.texts.default_terms (128 for d_out 512)
    dictionary: str = DEFAULT_DICTIONARY
    mode: str = "paper"
    coefficient: float = COEFFICIENT
    half: bool = False  # keep the top-k deviation vectors in float16 while streaming
    batch_size: int = 32


def build_neuron_bases(
    bundle: ClipBundle, out_dir: str | Path, *, layers: list[int], image_set: ImageSet, texts: list[str],
    pool_name: str, options: BuildOptions = BuildOptions(), evaluation: Evaluation | None = None,
    progress: Progress | None = None, overwrite: bool = False, log: Callable[[str], None] = lambda _: None,
) -> Path:
    """Compute and write the neuron bases of `layers`; groups written by an interrupted run are kept."""
    visual = bundle.model.visual
    for layer in layers:
        check_layer(visual, layer)
    check_k(options.k, image_set.count)
    n_terms = options.n_terms or default_terms(len(texts), bundle.info.d_out)
    params = neuron_build_params(layers, n_terms, options, evaluation)
    check_dictionary_mode(options.dictionary)  # before any work
    writer = ArtifactWriter(out_dir, model=bundle.info.identity(), text_pool=text_pool_identity(texts, pool_name),
                            image_set=image_set.identity(), convention=options.mode, algorithms={ALGORITHM: params},
                            overwrite=overwrite)
    metrics = write_neuron_groups(bundle, writer, layers=layers, image_set=image_set, texts=texts, n_terms=n_terms,
                                  options=options, evaluation=evaluation, progress=progress, log=log)
    return writer.finalize(metrics=metrics, notes=f"neuron statistics over {image_set.description}; text pool "
                           f"{pool_name}; dictionary {options.dictionary}")


def neuron_build_params(layers: list[int], n_terms: int, options: BuildOptions, evaluation: Evaluation | None) -> dict:
    """The parameters a neuron build records in its manifest (equal parameters => resumable)."""
    return {"layers": list(layers), "k": options.k, "terms": n_terms, "dictionary": options.dictionary,
            "mode": options.mode, "coefficient": options.coefficient, "store_dtype": "float16" if options.half
            else "float32", "evaluate": evaluation.description if evaluation else None,
            "classifier": evaluation.classifier_description if evaluation else None}


def write_neuron_groups(
    bundle: ClipBundle, writer: ArtifactWriter, *, layers: list[int], image_set: ImageSet, texts: list[str],
    n_terms: int, options: BuildOptions = BuildOptions(), evaluation: Evaluation | None = None,
    progress: Progress | None = None, log: Callable[[str], None] = lambda _: None,
) -> dict[str, float]:
    """Write the neuron groups and tables of `layers` into an open writer (shared with other builds); returns metrics."""
    _write_once(writer, "texts", lambda: writer.add_json("texts", texts))
    _write_once(writer, "image_set", lambda: writer.add_json("image_set", image_set.record()))
    embeddings = encode_texts(bundle, texts)
    metrics: dict[str, float] = {}
    for layer in layers:
        stats, words = _build_layer(bundle, writer, layer, image_set, embeddings, n_terms, options, progress, log)
        metrics[f"L{layer}_reconstruction_cosine_mean"] = float(words.reconstruction_cosine.mean())
        metrics[f"L{layer}_pc_variance_mean"] = float(stats.pc_variance.mean())
        if evaluation is not None:
            metrics.update(_evaluate_layer(bundle, writer, stats, words, embeddings, evaluation, progress, log))
    _write_once(writer, "neuron_terms", lambda: writer.add_table("neuron_terms", _terms_rows(writer, layers, texts)))
    if evaluation is not None:
        _write_once(writer, "neuron_ablation", lambda: writer.add_table("neuron_ablation", _ablation_rows(writer, layers)))
    return metrics


# Stored compactly (ViT-B-16-scale bases stay under 50 MB): directions and means in float16, ids in int32;
# the mean lives only in the pass-1 group neuron_means_L{layer}.
STORED_FLOAT = torch.float16
TABLE_TERMS = 16  # terms per neuron in the viewer table; the tensors keep all of them


def _stats_to_store(stats: NeuronStats) -> dict[str, torch.Tensor]:
    tensors = stats.tensors()
    tensors.pop("mean")
    return {name: value.to(STORED_FLOAT if name in ("pcs", "top_norms") else
                           torch.int32 if name == "top_images" else value.dtype) for name, value in tensors.items()}


def _stats_from_store(layer: int, stored: dict[str, torch.Tensor], mean: torch.Tensor, **kwargs) -> NeuronStats:
    tensors = {name: value.long() if name == "top_images" else value.float() for name, value in stored.items()}
    return stats_from_tensors(layer, {**tensors, "mean": mean.float()}, **kwargs)


def _words_to_store(words: NeuronTexts) -> dict[str, torch.Tensor]:
    return {**words.tensors(), "indices": words.indices.to(torch.int32)}


def _words_from_store(stored: dict[str, torch.Tensor], dictionary: str) -> NeuronTexts:
    return NeuronTexts(stored["indices"].long(), stored["coefficients"], stored["reconstruction_cosine"], dictionary)


def _write_once(writer: ArtifactWriter, name: str, write: Callable[[], None]) -> None:
    if not writer.has(name):
        write()


def _read_tensors(writer: ArtifactWriter, group: str) -> dict[str, torch.Tensor]:
    return load_file(writer.path / "tensors" / f"{group}.safetensors")


def write_neuron_layer(
    writer: ArtifactWriter, layer: int, *, mean: torch.Tensor, count: int, top_norms: torch.Tensor,
    top_images: torch.Tensor, top_vectors: torch.Tensor, embeddings: torch.Tensor, n_terms: int,
    options: BuildOptions = BuildOptions(), progress: Progress | None = None,
) -> tuple[NeuronStats, NeuronTexts]:
    """Write one layer's groups from merged statistics (the sharded build's last step).

    mean [neuron, d_out] as stored (STORED_FLOAT values); top_norms, top_images [neuron, k] and
    top_vectors [neuron, k, d_out] best first. The first PCs are computed here, once, in float64.
    """
    means_group, stats_group, sparse_group = f"neuron_means_L{layer}", f"neurons_L{layer}", f"sparse_L{layer}"
    writer.add_tensors(means_group, {"mean": mean.to(STORED_FLOAT), "count": torch.tensor(count)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # LAPACK's last bits depend on the thread count; the k x k eigh is cheap
    try:
        pcs, share = first_principal_components(top_vectors)
    finally:
        torch.set_num_threads(threads)
    stats = NeuronStats(layer=layer, mean=mean.float(), pcs=pcs, thresholds=top_norms[:, -1].clone(),
                        top_images=top_images, top_norms=top_norms, pc_variance=share, n_images=count,
                        mode=options.mode, coefficient=options.coefficient)
    writer.add_tensors(stats_group, _stats_to_store(stats))
    stats = _stats_from_store(layer, _read_tensors(writer, stats_group), mean.float(), n_images=count,
                              mode=options.mode, coefficient=options.coefficient)
    if not writer.has(sparse_group):
        words = decompose_neurons(stats.pcs.cpu(), embeddings.cpu(), n_terms=n_terms,
                                  dictionary_mode=options.dictionary, progress=progress)
        writer.add_tensors(sparse_group, _words_to_store(words))
    return stats, _words_from_store(_read_tensors(writer, sparse_group), options.dictionary)


def write_neuron_tables(writer: ArtifactWriter, layers: list[int], texts: list[str], image_set: ImageSet,
                        layer_results: dict[int, tuple[NeuronStats, NeuronTexts]]) -> dict[str, float]:
    """The text pool, image set and terms table of a build whose layers are written; returns metrics."""
    _write_once(writer, "texts", lambda: writer.add_json("texts", texts))
    _write_once(writer, "image_set", lambda: writer.add_json("image_set", image_set.record()))
    writer.add_table("neuron_terms", _terms_rows(writer, layers, texts))
    metrics: dict[str, float] = {}
    for layer, (stats, words) in layer_results.items():
        metrics[f"L{layer}_reconstruction_cosine_mean"] = float(words.reconstruction_cosine.mean())
        metrics[f"L{layer}_pc_variance_mean"] = float(stats.pc_variance.mean())
    return metrics


def _build_layer(bundle, writer, layer, image_set, embeddings, n_terms, options, progress, log):
    visual, size = bundle.model.visual, options.batch_size
    skipped: list[str] = []
    batches = lambda: image_set.batches(bundle.preprocess, size, skipped)  # noqa: E731
    common = dict(mode=options.mode, coefficient=options.coefficient, progress=progress,
                  total=image_set.n_batches(size))
    means_group, stats_group, sparse_group = f"neuron_means_L{layer}", f"neurons_L{layer}", f"sparse_L{layer}"
    if writer.has(means_group):
        stored = _read_tensors(writer, means_group)
        mean, count = stored["mean"].float(), int(stored["count"])
        log(f"layer {layer}: means read back from an earlier run ({count} images)")
    else:
        mean, count = neuron_means(visual, layer, batches(), **common)
        writer.add_tensors(means_group, {"mean": mean.to(STORED_FLOAT), "count": torch.tensor(count)})
        mean = mean.to(STORED_FLOAT).float()  # pass 2 uses what is stored, so a resumed build is identical
    for problem in skipped[:3]:
        log(f"skipped: {problem}")
    if not writer.has(stats_group):
        dtype = torch.float16 if options.half else torch.float32
        stats = neuron_top_deviations(visual, layer, batches(), mean.to(bundle.device), count, k=options.k,
                                      store_dtype=dtype, **common)
        writer.add_tensors(stats_group, _stats_to_store(stats))
    stats = _stats_from_store(layer, _read_tensors(writer, stats_group), mean, n_images=count, mode=options.mode,
                              coefficient=options.coefficient)
    if not writer.has(sparse_group):
        words = decompose_neurons(stats.pcs.cpu(), embeddings.cpu(), n_terms=n_terms,
                                  dictionary_mode=options.dictionary, progress=progress)
        writer.add_tensors(sparse_group, _words_to_store(words))
    words = _words_from_store(_read_tensors(writer, sparse_group), options.dictionary)
    return stats, words


def _evaluate_layer(bundle, writer, stats, words, embeddings, evaluation, progress, log) -> dict[str, float]:
    group = f"ablation_L{stats.layer}"
    if writer.has(group):
        stored = _read_tensors(writer, group)
        accuracies = dict(zip(_ablation_names(), stored["accuracy"].tolist()))
        count = int(stored["count"])
    else:
        units = words.reconstructions(text_dictionary(embeddings.cpu(), words.dictionary_mode))
        accuracies, count = neuron_ablation_accuracies(
            bundle.model.visual, stats, evaluation.batches(), evaluation.classifier,
            directions={SPARSE_ABLATION: units.to(stats.pcs)}, progress=progress, total=evaluation.n_batches)
        writer.add_tensors(group, {"accuracy": torch.tensor([accuracies[n] for n in _ablation_names()],
                                                               dtype=torch.float64),
                                   "count": torch.tensor(count)})
    log(f"layer {stats.layer}: ablations evaluated on {count} images")
    return {f"L{stats.layer}_accuracy_{name}": value for name, value in accuracies.items()}


def _ablation_names() -> list[str]:
    return [*ABLATIONS, SPARSE_ABLATION]


def _ablation_rows(writer: ArtifactWriter, layers: list[int]) -> list[dict]:
    rows = []
    for layer in layers:
        stored = _read_tensors(writer, f"ablation_L{layer}")
        for name, accuracy in zip(_ablation_names(), stored["accuracy"].tolist()):
            rows.append({"layer": layer, "ablation": name, "accuracy": float(accuracy), "n_images": int(stored["count"])})
    return rows


def _terms_rows(writer: ArtifactWriter, layers: list[int], texts: list[str]) -> list[dict]:
    rows = []
    for layer in layers:
        words = _words_from_store(_read_tensors(writer, f"sparse_L{layer}"), "")
        for neuron in range(len(words.indices)):
            rows += [{"layer": layer, "neuron": neuron, "rank": rank, "text": text, "weight": float(weight)}
                     for rank, (text, weight) in enumerate(words.terms(neuron, texts)[:TABLE_TERMS])]
    return rows


def read_ablation_table(artifact: Artifact) -> list[dict]:
    """Rows of the artifact's neuron_ablation table ([] when it was built without an evaluation set)."""
    return artifact.table("neuron_ablation") if artifact.has("neuron_ablation") else []

