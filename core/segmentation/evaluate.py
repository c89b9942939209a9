"""Evaluate segmentation methods over a dataset with the papers' metrics; resumable, optionally saving every map.

Per method, each finished image's metric terms are appended to a state file (JSON lines) under
`state_dir` (default $CLIPSCOPE_CACHE/segeval), keyed by everything that changes the result: model
identity, dataset, method and its options, protocol. Running the same evaluation again reads them back
and computes only the missing images, so an interrupted run resumes where it stopped.

`save_maps=DIR` writes, for image i, `DIR/METHOD/{i:05d}_map.npy` (float32 [H, W] in [0, 1], the exact
scores the metrics used) and `DIR/{i:05d}_mask.png` (the exact ground truth the metrics used, 0/255),
with `DIR/segeval.json` recording what produced them; anyone can recompute the metrics from the files.
`method "oracle"` scores the ground truth averaged over each patch and upsampled: the best any
patch-level map can do.

On composites (`world-pairs:N:SEED`: objects of different classes, the class given as the first
object's), each image also gets class-specificity terms (`core.segmentation.metrics.specificity_terms`):
the map's mean over the mapped object against its mean over each other object, and AP(mapped object vs
the other objects' pixels); `class_specificity` summarises them per method.

`random_draws=D` runs `random-neurons` D times with seeds seed, seed + 1, ... and reports the mean over
the draws with their spread (std, min, max) and every draw.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.engine.models import ClipBundle
from core.errors import ConfigError, DatasetError
from core.segmentation.datasets import SegmentationDataset
from core.segmentation.methods import METHODS, MethodOptions, Segmenter, Targets, check_method
from core.segmentation.metrics import (METRIC_NAMES, ImageScores, SegmentationMetrics, image_scores,
                                       specificity_summary, specificity_terms)
from core.segmentation.protocols import Protocol, binarise, mask_view, method_protocol, normalise_maps
from core.writes import OutputFolder, append_line

ORACLE = "oracle"
EVAL_METHODS = METHODS + (ORACLE,)
STATE_VERSION = 1
MANIFEST = "segeval.json"
RANDOM_METHOD = "random-neurons"
MAX_RANDOM_DRAWS = 100
Progress = Callable[..., Iterable]


@dataclass(frozen=True)
class MethodResult:
    method: str
    description: str
    protocol: Protocol
    metrics: dict[str, float | int]
    resumed: int  # images whose terms were read back from an earlier run
    state_file: str
    class_specificity: dict[str, Any] | None = None  # composites only (see the module docstring)
    draws: list[dict[str, Any]] | None = None  # random-neurons over several seeds: each draw's results
    spread: dict[str, dict[str, float]] | None = None  # per metric: std, min, max over the draws

    def as_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "description": self.description, "protocol": self.protocol.record(),
               **self.metrics, "resumed_images": self.resumed, "state_file": self.state_file}
        if self.class_specificity is not None:
            out["class_specificity"] = self.class_specificity
        if self.draws is not None:
            out.update(draws=self.draws, spread=self.spread)
        return out


@dataclass(frozen=True)
class EvaluationReport:
    model: dict[str, Any]
    dataset: str
    dataset_spec: str
    classes: str | None
    protocol: str
    results: list[MethodResult]
    class_accuracy: float | None  # zero-shot accuracy of the predicted class, when the dataset is labelled
    maps_dir: str | None = None
    objects_recognised: float | None = None  # composites: share predicted as the class of one of their objects

    def result(self, method: str) -> MethodResult:
        return next(r for r in self.results if r.method == method)

    @property
    def class_specificity(self) -> dict[str, dict[str, Any]] | None:
        """method -> its class-specificity summary (composites only)."""
        found = {r.method: r.class_specificity for r in self.results if r.class_specificity is not None}
        return found or None

    def as_dict(self) -> dict[str, Any]:
        out = {"model": self.model["spec"], "random_weights": bool(self.model["random_init"]),
               "dataset": self.dataset, "dataset_spec": self.dataset_spec, "classes": self.classes,
               "protocol": self.protocol, "class_accuracy": self.class_accuracy, "maps_dir": self.maps_dir,
               "results": [r.as_dict() for r in self.results]}
        if self.class_specificity is not None:
            out["class_specificity"] = self.class_specificity
            out["objects_recognised"] = self.objects_recognised
        return out


@dataclass
class _MethodRun:
    method: str
    label: str  # the method, or "random-neurons@seed3" for a further random draw (maps folder, manifest)
    protocol: Protocol
    segmenter: Segmenter | None
    settings: dict[str, Any]
    state_path: Path
    records: dict[int, dict] = field(default_factory=dict)
    resumed: int = 0

    def pending(self, index: int, maps_dir: Path | None) -> bool:
        if index not in self.records:
            return True
        return maps_dir is not None and not (maps_dir / self.label / f"{index:05d}_map.npy").is_file()


def default_state_dir() -> Path:
    from core.engine.text import cache_dir

    return cache_dir() / "segeval"


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def _read_state(path: Path, settings: dict[str, Any]) -> dict[int, dict]:
    """Records of an earlier run with the same settings; a line cut short by an interruption is dropped. A file
    whose first line is not this evaluation's settings is another's (or the user's): refused, never changed."""
    if path.is_symlink():
        raise DatasetError(f"{path} is a symbolic link, not a state file clipscope wrote; remove it or choose another "
                           "state folder")
    if not path.is_file():
        return {}
    records, valid_bytes = {}, 0
    with open(path, "rb") as handle:
        lines = handle.readlines()
    for number, raw in enumerate(lines):
        try:
            entry = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            break
        if not raw.endswith(b"\n"):
            break
        if number == 0:
            if not isinstance(entry, dict) or entry.get("settings") != settings:
                raise DatasetError(f"{path} belongs to another evaluation; remove it or choose another state folder")
        else:
            records[int(entry["index"])] = entry
        valid_bytes += len(raw)
    if lines and valid_bytes == 0:
        raise DatasetError(f"{path} is not a state file of this evaluation; remove it or choose another state folder")
    if valid_bytes < sum(len(raw) for raw in lines):
        handle = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))  # our own file: cut the partial last line
        try:
            os.ftruncate(handle, valid_bytes)
        finally:
            os.close(handle)
    return records


def _append(path: Path, entry: dict[str, Any]) -> None:
    append_line(path, json.dumps(entry, allow_nan=True))


def _prepare_maps_dir(maps_dir: Path, header: dict[str, Any], runs: list[_MethodRun]) -> OutputFolder:
    """Refuse a folder with files we did not write, or maps of another run; record our settings."""
    if maps_dir.exists() and not maps_dir.is_dir():
        raise ConfigError(f"--save-maps {maps_dir} exists and is not a folder")
    folder = OutputFolder(maps_dir, "segeval-maps", require="ours", what="--save-maps folder")
    manifest_path = maps_dir / MANIFEST
    manifest = {**header, "methods": {}}
    if folder.earlier is not None and manifest_path.is_file():
        if not folder.owns(MANIFEST):
            raise ConfigError(f"{manifest_path} was changed since segeval wrote it; choose a new folder for --save-maps")
        try:
            earlier = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{manifest_path} is unreadable ({err}); choose a new folder for --save-maps") from err
        if {k: earlier.get(k) for k in header} != header:
            raise ConfigError(f"{maps_dir} holds maps of another model, dataset or protocol; choose a new folder")
        for run in runs:
            if run.label in earlier.get("methods", {}) and earlier["methods"][run.label] != run.settings:
                raise ConfigError(f"{maps_dir} holds {run.label} maps made with other settings; choose a new folder")
        manifest["methods"] = earlier.get("methods", {})
    for run in runs:
        manifest["methods"][run.label] = run.settings
    folder.write_text(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return folder


def oracle_grids(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[batch, 1, G, G]: the fraction of each patch that is foreground (masks: bool [batch, H, W])."""
    return F.adaptive_avg_pool2d(masks.float()[:, None], grid)


def evaluate(
    bundle: ClipBundle, dataset: SegmentationDataset, methods: Sequence[str], *, protocol: str = "aligned",
    options: MethodOptions = MethodOptions(), class_source: str | None = None, threshold: str | float | None = None,
    clamp: bool | None = None, subtract_class_mean: bool | None = None, batch_size: int = 8,
    state_dir: str | Path | None = None, save_maps: str | Path | None = None, progress: Progress | None = None,
    log: Callable[[str], None] = lambda _: None, random_draws: int = 1,
) -> EvaluationReport:
    """Score each method on every image of `dataset`; see the module docstring for state and saved maps.

    class_source, threshold, clamp: aligned-protocol overrides for every method; subtract_class_mean: for heads.
    random_draws: random-neurons draws (seeds options.seed, options.seed + 1, ...), reported as mean and spread.
    """
    methods = _check_methods(methods, subtract_class_mean, batch_size)
    draws = _check_draws(random_draws)
    composites = is_composite(dataset)
    if composites and (protocol != "aligned" or class_source == "predicted"):
        raise ConfigError("a composite dataset (world-pairs) maps the class of its first object: use the aligned "
                          "protocol with the given class (the defaults)")
    info = bundle.info
    # State files are append-only logs whose first line names the evaluation; the folder's manifest lists them.
    state = OutputFolder(Path(state_dir) if state_dir else default_state_dir(), "segeval-state", require="any",
                         what="state folder")
    prompts = dataset.class_prompts()
    classes_key = hashlib.sha256(json.dumps(prompts.prompts).encode("utf-8")).hexdigest()[:20]
    overrides = {"class_source": class_source, "threshold": threshold, "clamp": clamp}
    runs = []
    for method in methods:
        seeds = [options.seed + d for d in range(draws)] if method == RANDOM_METHOD else [None]
        for draw, seed in enumerate(seeds):
            chosen = options if seed is None else replace(options, seed=seed)
            pool = runs[-1].segmenter.pool if draw else None  # the draws share the candidate neurons
            runs.append(_open_run(bundle, dataset, method, protocol, chosen, overrides,
                                  subtract_class_mean if method == "heads" else None, classes_key, state, log,
                                  label=method if not draw else f"{method}@seed{seed}", pool=pool))
    geometry = runs[0].protocol.geometry
    maps_dir = Path(save_maps) if save_maps else None
    maps = None
    if maps_dir is not None:
        maps = _prepare_maps_dir(maps_dir, {"tool": "python -m core segeval", "model": info.identity(),
                                            "dataset": dataset.identity(), "protocol": protocol, "geometry": geometry},
                                 runs)
    classifier = None
    if any(run.segmenter is not None for run in runs):
        from core.engine.text import prompt_classifier

        classifier = prompt_classifier(bundle, prompts.prompts)
    size = info.image_size
    starts = range(0, len(dataset), batch_size)
    iterable = progress(starts, desc="segeval", total=len(starts)) if progress else starts
    for start in iterable:
        indices = range(start, min(start + batch_size, len(dataset)))
        todo = {run.label: [i for i in indices if run.pending(i, maps_dir)] for run in runs}
        needed = sorted({i for pending in todo.values() for i in pending})
        if not needed:
            continue
        samples = {i: dataset.sample(i) for i in needed}
        views = {i: mask_view(samples[i].mask, bundle.preprocess, size, geometry) for i in needed}
        other_views = {i: None if samples[i].others is None else
                       np.stack([mask_view(o, bundle.preprocess, size, geometry) for o in samples[i].others])
                       for i in needed}
        if maps is not None:  # listed before they are written, so an interrupted run's files stay ours
            masks = {i: f"{i:05d}_mask.png" for i in needed if not (maps_dir / f"{i:05d}_mask.png").is_file()}
            maps.claim([*masks.values()] + [f"{run.label}/{i:05d}_map.npy" for run in runs for i in todo[run.label]])
            for i, name in masks.items():
                maps.write_image(name, Image.fromarray(views[i].astype(np.uint8) * 255), save=False)
        for run in runs:
            if todo[run.label]:
                pending = todo[run.label]
                _score_batch(run, bundle, [samples[i] for i in pending], [views[i] for i in pending],
                             [other_views[i] for i in pending], classifier, maps)
        if maps is not None:
            maps.save()
    results = [_method_result([run for run in runs if run.method == method], len(dataset)) for method in methods]
    return EvaluationReport(info.as_dict(), dataset.description, dataset.spec, prompts.description, protocol, results,
                            _class_accuracy(runs, dataset), str(maps_dir) if maps_dir else None,
                            _objects_recognised(runs) if composites else None)


def is_composite(dataset: SegmentationDataset) -> bool:
    """Whether the dataset's samples carry other objects' masks (world-pairs, possibly cut by --limit)."""
    from core.segmentation.datasets import WorldPairsSegmentation

    return isinstance(getattr(dataset, "dataset", dataset), WorldPairsSegmentation)


def _check_draws(draws) -> int:
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_RANDOM_DRAWS:
        raise ConfigError(f"random draws must be an integer in 1..{MAX_RANDOM_DRAWS}, got {draws!r}")
    return draws


def _check_methods(methods: Sequence[str], subtract_class_mean, batch_size) -> list[str]:
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ConfigError("no method given")
    for method in methods:
        if method != ORACLE:
            check_method(method)
    if subtract_class_mean is not None and "heads" not in methods:
        raise ConfigError("class-mean subtraction applies to the heads map only (it is linear in the class text); "
                          "no heads method was asked for")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    return methods


def _open_run(bundle: ClipBundle, dataset: SegmentationDataset, method: str, protocol: str, options: MethodOptions,
              overrides: dict, subtract_class_mean, classes_key: str, state: OutputFolder, log, *, label: str,
              pool=None) -> _MethodRun:
    """A method's protocol, segmenter and state file: read back when its settings match, else started afresh."""
    proto = method_protocol(protocol, method, has_labels=dataset.labelled, subtract_class_mean=subtract_class_mean,
                            **overrides)
    segmenter = None if method == ORACLE else Segmenter(bundle, method, options, pool=pool)
    settings = {"version": STATE_VERSION, "model": bundle.info.identity(), "dataset": dataset.identity(),
                "method": method, "options": {} if method == ORACLE else options.record(method),
                "protocol": proto.record(), "classes": None if method == ORACLE else classes_key}
    if segmenter is not None and segmenter.pool is not None:  # the bases and layers actually used
        settings["neurons"] = {"source": segmenter.pool.source, "layers": list(segmenter.pool.layers)}
    name = f"{method}-{_key(settings)}.jsonl"
    path = state.path / name
    run = _MethodRun(method, label, proto, segmenter, settings, path, _read_state(path, settings))
    run.resumed = len(run.records)
    if run.resumed:
        log(f"{label}: {run.resumed} images read back from {path}")
    elif os.path.lexists(path) and path.stat().st_size:
        pass  # our own header, nothing after it yet (checked by _read_state): appended to
    else:
        state.write_text(name, json.dumps({"settings": settings}) + "\n", save=False)
    state.files[name] = None  # an append-only log: listed as this command's own, never replaced or removed
    state.save()
    return run


def _run_summary(run: _MethodRun, n_images: int) -> tuple[dict[str, float | int], dict[str, Any] | None]:
    """(metrics, class-specificity summary or None) of one run over the dataset's images."""
    metrics = SegmentationMetrics()
    for index in range(n_images):
        metrics.add(ImageScores.from_dict(run.records[index]))
    terms = [run.records[index]["specificity"] for index in range(n_images) if "specificity" in run.records[index]]
    return metrics.summary(), (specificity_summary(terms) if terms else None)


SPREAD_KEYS = METRIC_NAMES + ("share_target_above_others", "ap_target_vs_others")


def _method_result(runs: list[_MethodRun], n_images: int) -> MethodResult:
    """One method's result; over several random draws, the mean of each figure with its spread and every draw."""
    first = runs[0]
    description = "oracle: the mask averaged over each patch, upsampled" if first.segmenter is None \
        else first.segmenter.describe()
    summaries = [_run_summary(run, n_images) for run in runs]
    if len(runs) == 1:
        metrics, specificity = summaries[0]
        return MethodResult(first.method, description, first.protocol, metrics, first.resumed, str(first.state_path),
                            specificity)
    seeds = [run.segmenter.options.seed for run in runs]
    draws = [{"seed": seed, **metrics, **({"class_specificity": spec} if spec else {})}
             for seed, (metrics, spec) in zip(seeds, summaries)]
    flat = [{**metrics, **(spec or {})} for metrics, spec in summaries]
    spread = {key: {"std": float(np.std([f[key] for f in flat], ddof=1)), "min": float(min(f[key] for f in flat)),
                    "max": float(max(f[key] for f in flat))} for key in SPREAD_KEYS if key in flat[0]}
    metrics = {key: (float(np.mean([m[key] for m, _ in summaries])) if key != "images" else value)
               for key, value in summaries[0][0].items()}
    specificity = None
    if summaries[0][1] is not None:
        specificity = {key: float(np.mean([s[key] for _, s in summaries]))
                       for key in ("share_target_above_others", "ap_target_vs_others", "mean_target", "mean_others")}
        specificity.update(images=summaries[0][1]["images"], draws=len(runs),
                           share_std=spread["share_target_above_others"]["std"],
                           share_min=spread["share_target_above_others"]["min"],
                           share_max=spread["share_target_above_others"]["max"],
                           ap_std=spread["ap_target_vs_others"]["std"])
    description = (f"{description.replace(f'(seed {seeds[0]})', f'(seeds {seeds[0]}..{seeds[-1]})')}; mean over "
                   f"{len(runs)} random draws")
    return MethodResult(first.method, description, first.protocol, metrics, sum(r.resumed for r in runs),
                        str(first.state_path), specificity, draws, spread)


def _score_batch(run: _MethodRun, bundle: ClipBundle, samples, views, other_views, classifier,
                 maps_out: OutputFolder | None) -> None:
    proto = run.protocol
    masks = torch.from_numpy(np.stack(views))
    chosen = predicted = None
    if run.segmenter is None:
        grids = oracle_grids(masks, bundle.info.grid)
    else:
        pixels = torch.stack([bundle.preprocess(s.image) for s in samples])
        given = None
        if proto.class_source == "given":
            given = torch.tensor([[s.label] for s in samples])
        output = run.segmenter(pixels, Targets(classifier, given, proto.subtract_class_mean))
        grids, chosen, predicted = output.grids, output.chosen[:, 0], output.predicted
    maps = normalise_maps(grids[:, 0], bundle.info.image_size, clamp=proto.clamp).numpy().astype(np.float32)
    predictions = binarise(maps, proto.threshold)
    for row, sample in enumerate(samples):
        scores = image_scores(maps[row], predictions[row], views[row])
        entry = {"index": sample.index, "name": sample.name, "label": sample.label,
                 "chosen": None if chosen is None else int(chosen[row]),
                 "predicted": None if predicted is None else int(predicted[row]), **scores.as_dict()}
        if other_views[row] is not None:
            entry["other_labels"] = list(sample.other_labels)
            entry["specificity"] = specificity_terms(maps[row], views[row], other_views[row])
        if maps_out is not None:
            maps_out.write_array(f"{run.label}/{sample.index:05d}_map.npy", maps[row], save=False)
        _append(run.state_path, entry)
        run.records[sample.index] = entry


def _objects_recognised(runs: list[_MethodRun]) -> float | None:
    """Composites: the share of images whose zero-shot prediction (among all classes) is one of its objects'."""
    for run in runs:
        if run.segmenter is not None:
            hits = [r["predicted"] in [r["label"], *r.get("other_labels", [])] for r in run.records.values()]
            return float(np.mean(hits)) if hits else None
    return None


def _class_accuracy(runs: list[_MethodRun], dataset: SegmentationDataset) -> float | None:
    if not dataset.labelled:
        return None
    for run in runs:
        if run.segmenter is not None:
            hits = [r["predicted"] == r["label"] for r in run.records.values()]
            return float(np.mean(hits)) if hits else None
    return None


def recompute_from_maps(maps_dir: str | Path, method: str) -> dict[str, float | int]:
    """The metrics of `method` from the files `--save-maps` wrote (thresholds from segeval.json)."""
    maps_dir = Path(maps_dir)
    manifest = json.loads((maps_dir / MANIFEST).read_text(encoding="utf-8"))
    if method not in manifest["methods"]:
        raise ConfigError(f"{maps_dir} holds no maps of {method}")
    threshold = manifest["methods"][method]["protocol"]["threshold"]
    metrics = SegmentationMetrics()
    files = sorted((maps_dir / method).glob("*_map.npy"))
    if not files:
        raise DatasetError(f"no maps in {maps_dir / method}")
    for path in files:
        scores = np.load(path)
        mask = np.asarray(Image.open(maps_dir / path.name.replace("_map.npy", "_mask.png"))) > 127
        metrics.add(image_scores(scores, binarise(scores, threshold), mask))
    return metrics.summary()
