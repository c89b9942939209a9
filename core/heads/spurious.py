"""Spurious-cue removal (paper, section 4.3): mean-ablate a head set, measure worst-group accuracy.

A grouped image set has the Waterbirds layout: FOLDER/metadata.csv with a file, a label and a
group column (Waterbirds' own names img_filename, y and place are accepted too; with `place` the
groups are the (label, place) pairs, as in Waterbirds). Zero-shot accuracy is reported overall and
per group for the unmodified model, with the chosen heads mean-ablated, and with the same number
of random heads mean-ablated, averaged over seeded trials. Means come from a reference image set
that the caller chooses and that is reported (the paper code used the evaluated set itself).
Ablation is the direct-effect mean-ablation of core.engine.ablation (final LayerNorm statistics frozen).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from core.engine.ablation import Ablation, ComponentMeans, ablate, image_components
from core.errors import ConfigError, DatasetError
from core.heads.outputs import Head, Progress, check_heads, head_name
from core.engine.images import iter_image_batches
from core.engine.models import ClipBundle, ModelInfo

METADATA = "metadata.csv"
FILE_COLUMNS = ("file", "img_filename")
LABEL_COLUMNS = ("label", "y")
GROUP_COLUMNS = ("group", "place")


class GroupedImages(NamedTuple):
    """Image paths with a class label (indexes classnames) and a group (indexes group_names)."""

    paths: list[Path]
    labels: list[int]
    groups: list[int]
    classnames: list[str]
    group_names: list[str]
    description: str


def grouped_folder(folder: str | os.PathLike, *, classnames: Sequence[str] | None = None,
                   split: str | None = None) -> GroupedImages:
    """Read FOLDER/metadata.csv (see the module docstring); `split` keeps rows whose split column equals it."""
    folder = Path(folder)
    rows, columns = _read_metadata(folder / METADATA)
    file_col, label_col, group_col = (_column(columns, names, folder / METADATA) for names in
                                      (FILE_COLUMNS, LABEL_COLUMNS, GROUP_COLUMNS))
    if split is not None:
        if "split" not in columns:
            raise DatasetError(f"{folder / METADATA} has no 'split' column to select split {split!r}; "
                               f"found: {', '.join(columns)}")
        rows = [row for row in rows if row["split"].strip() == str(split)]
    if not rows:
        raise DatasetError(f"{folder / METADATA} lists no images" + (f" in split {split!r}" if split else ""))
    values = _sorted_values(row[label_col] for row in rows)
    if len(values) < 2:  # any classifier is 100% right on one class: the table would say nothing
        raise DatasetError(f"{folder / METADATA} has one class ({values[0]!r}"
                           f"{f' in split {split!r}' if split is not None else ''}): a spurious-cue test needs at "
                           "least two classes to classify between")
    names = _classnames(values, classnames, folder / METADATA)
    label_of = {value: i for i, value in enumerate(values)}
    labels = [label_of[row[label_col].strip()] for row in rows]
    if group_col == "place":  # Waterbirds: a group is a (label, place) pair
        group_keys = [f"{names[label]} / place {row['place'].strip()}" for label, row in zip(labels, rows)]
    else:
        group_keys = [row[group_col].strip() for row in rows]
    group_names = _sorted_values(group_keys)
    if len(group_names) < 2:  # worst-group accuracy of one group is the overall accuracy: no cue to find
        raise DatasetError(f"{folder / METADATA} has one group ({group_names[0]!r}): a spurious-cue test compares "
                           "groups (e.g. label x background); give at least two")
    group_of = {value: i for i, value in enumerate(group_names)}
    paths = [folder / row[file_col].strip() for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image files listed in {folder / METADATA} are missing, e.g. {missing[0]}")
    description = f"{folder} ({len(paths)} images, {len(names)} classes, {len(group_names)} groups" + \
                  (f", split {split}" if split is not None else "") + ")"
    return GroupedImages(paths, labels, [group_of[key] for key in group_keys], names, group_names, description)


def _read_metadata(path: Path) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise DatasetError(f"no {METADATA} in {path.parent}: a grouped folder needs {METADATA} with file, label "
                           "and group columns (the Waterbirds layout)")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except csv.Error as err:
        raise DatasetError(f"{path} is not a readable CSV table: {err}") from None
    return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in rows], columns


def _column(columns: list[str], names: tuple[str, ...], path: Path) -> str:
    for name in names:
        if name in columns:
            return name
    raise DatasetError(f"{path} needs a {' or '.join(repr(n) for n in names)} column (columns file, label and "
                       f"group; Waterbirds' img_filename, y and place also work); found: {', '.join(columns) or 'none'}")


def _sorted_values(values) -> list[str]:
    unique = {str(v).strip() for v in values}
    try:
        return sorted(unique, key=float)  # numeric labels in numeric order (Waterbirds y = 0, 1)
    except ValueError:
        return sorted(unique)


def _classnames(values: list[str], classnames: Sequence[str] | None, path: Path) -> list[str]:
    if classnames is None:
        return list(values)
    names = [name.strip() for name in classnames]
    if len(names) != len(values) or not all(names):
        raise DatasetError(f"{len(names)} class names given but {path} has {len(values)} label values "
                           f"({', '.join(values)}); give one name per value, in that order")
    return names


def read_head_set(path: str | os.PathLike) -> tuple[list[Head], str]:
    """A head set file: {"heads": [[layer, head], ...], "provenance": "how they were chosen"}."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > 10_000_000:
            raise ConfigError(f"{path} is too large to be a head set file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"head set file not found: {path}") from err
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a head set file") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a JSON head set ({err})") from err
    heads = data.get("heads") if isinstance(data, dict) else None
    if not isinstance(heads, list) or not heads or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in h)
            for h in heads):
        raise ConfigError(f'{path} must hold {{"heads": [[layer, head], ...], "provenance": "..."}} with integer pairs')
    provenance = data.get("provenance")
    return [tuple(h) for h in heads], provenance if isinstance(provenance, str) else f"{path} (no provenance given)"


def random_head_sets(info: ModelInfo, count: int, trials: int, seed: int,
                     layers: Sequence[int] | None = None) -> list[list[Head]]:
    """`trials` sets of `count` distinct heads drawn uniformly from `layers` (default all), seeded."""
    layers = list(range(info.n_layers)) if layers is None else list(layers)
    pool = check_heads([(l, h) for l in layers for h in range(info.n_heads)], info)
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be a positive integer, got {trials!r}")
    if count > len(pool):
        raise ConfigError(f"cannot draw {count} random heads from {len(pool)} heads of layers {layers}")
    generator = torch.Generator().manual_seed(seed)
    return [[pool[i] for i in torch.randperm(len(pool), generator=generator)[:count].tolist()] for _ in range(trials)]


class GroupAccuracy(NamedTuple):
    overall: float
    per_group: list[float]  # NaN for a group with no images
    worst: float
    worst_group: int


def group_accuracy(correct: torch.Tensor, groups: torch.Tensor, n_groups: int) -> GroupAccuracy:
    """Accuracy overall and per group from correct [image] (bool) and groups [image] (group index)."""
    hits = torch.zeros(n_groups).index_add_(0, groups, correct.float())
    sizes = torch.zeros(n_groups).index_add_(0, groups, torch.ones(len(groups)))
    per_group = torch.where(sizes > 0, hits / sizes.clamp_min(1), torch.nan)
    worst = int(torch.where(sizes > 0, per_group, torch.inf).argmin())
    return GroupAccuracy(float(correct.float().mean()), per_group.tolist(), float(per_group[worst]), worst)


@dataclass
class SpuriousReport:
    heads: list[Head]
    provenance: str
    base: GroupAccuracy
    ablated: GroupAccuracy
    random_heads: list[list[Head]]
    random: list[GroupAccuracy]
    classnames: list[str]
    group_names: list[str]
    count: int
    evaluated_on: str
    means_from: str
    means_from_evaluated_set: bool
    convention: str
    seed: int
    random_layers: list[int]
    paper_extras: bool = False
    skipped: list[str] = field(default_factory=list)

    def random_summary(self) -> dict[str, float]:
        """Mean and std (over trials; 0 for one trial) of the random heads' overall and worst-group accuracy."""
        out = {}
        for name in ("overall", "worst"):
            values = torch.tensor([getattr(r, name) for r in self.random], dtype=torch.float64)
            out[f"{name}_mean"] = float(values.mean())
            out[f"{name}_std"] = float(values.std()) if len(values) > 1 else 0.0
        return out

    def to_json(self) -> dict:
        def accuracy(result: GroupAccuracy) -> dict:
            per_group = {name: None if math.isnan(v) else v for name, v in zip(self.group_names, result.per_group)}
            return {"overall": result.overall, "worst_group": result.worst,
                    "worst_group_name": self.group_names[result.worst_group], "per_group": per_group}

        return {"heads": [list(h) for h in self.heads], "provenance": self.provenance, "count": self.count,
                "evaluated_on": self.evaluated_on, "means_from": self.means_from,
                "means_from_evaluated_set": self.means_from_evaluated_set, "convention": self.convention,
                "paper_extras": self.paper_extras,
                "classnames": self.classnames, "base": accuracy(self.base), "ablated": accuracy(self.ablated),
                "random": {"seed": self.seed, "layers": self.random_layers, **self.random_summary(),
                           "trials": [{"heads": [list(h) for h in heads], **accuracy(result)}
                                      for heads, result in zip(self.random_heads, self.random)]},
                "skipped": self.skipped}


@torch.no_grad()
def spurious_report(
    bundle: ClipBundle,
    grouped: GroupedImages,
    classifier: torch.Tensor,
    heads: Sequence[Head],
    means: ComponentMeans,
    *,
    provenance: str = "",
    means_from_evaluated_set: bool = False,
    trials: int = 5,
    seed: int = 0,
    random_layers: Sequence[int] | None = None,
    paper_extras: bool = False,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> SpuriousReport:
    """Overall and worst-group zero-shot accuracy: base, `heads` mean-ablated, random heads mean-ablated.

    classifier: [class, d_out] in grouped.classnames order. random_layers: where random heads are
    drawn from (default: from the first chosen head's layer to the last layer, where the paper's
    heads live, so the baseline ablates heads of comparable direct effect). paper_extras: also
    mean-ablate every MLP and every head of the layers before the last 4 in the chosen and random
    conditions, as the paper code's Waterbirds setting does.
    """
    heads = check_heads(heads, bundle.info)
    if classifier.shape[0] != len(grouped.classnames):
        raise ConfigError(f"classifier has {classifier.shape[0]} classes, the image set {len(grouped.classnames)}")
    if random_layers is None:
        random_layers = list(range(min(l for l, _ in heads), bundle.info.n_layers))
    random_sets = random_head_sets(bundle.info, len(heads), trials, seed, random_layers)
    early = tuple(range(max(0, bundle.info.n_layers - 4))) if paper_extras else ()
    ablations = [Ablation(name, mlps=paper_extras, attention_layers=early, heads=tuple(chosen)) for name, chosen in
                 [("chosen", heads)] + [(f"random {i}", s) for i, s in enumerate(random_sets)]]
    correct, seen, skipped = _correct_per_condition(bundle, grouped, classifier, means, ablations, batch_size, progress)
    groups = torch.tensor(grouped.groups)[seen]
    results = [group_accuracy(torch.cat(c), groups, len(grouped.group_names)) for c in correct]
    return SpuriousReport(heads, provenance, results[0], results[1], random_sets, results[2:], list(grouped.classnames),
                          list(grouped.group_names), len(seen), grouped.description, means.description,
                          means_from_evaluated_set, means.convention, seed, list(random_layers), paper_extras, skipped)


def _correct_per_condition(bundle, grouped, classifier, means, ablations, batch_size, progress):
    """(per condition, base first: bool tensors per batch; image indices seen; skipped files)."""
    labels = torch.tensor(grouped.labels)
    classifier = classifier.to(bundle.device)
    correct: list[list[torch.Tensor]] = [[] for _ in range(len(ablations) + 1)]
    seen: list[int] = []
    skipped: list[str] = []
    batches = iter_image_batches(grouped.paths, bundle.preprocess, batch_size, skipped=skipped)
    for indices, pixels in progress(batches) if progress else batches:
        parts = image_components(bundle, pixels, convention=means.convention)
        representations = [parts.representation()] + [ablate(parts, means.means, a) for a in ablations]
        truth = labels[indices].to(bundle.device)
        for row, rep in enumerate(representations):
            correct[row].append(((rep @ classifier.T).argmax(-1) == truth).cpu())
        seen += indices
    if not seen:
        raise DatasetError(f"no readable images in {grouped.description}")
    return correct, seen, skipped


def describe_heads(heads: Sequence[Head]) -> str:
    return ", ".join(head_name(h) for h in heads)
