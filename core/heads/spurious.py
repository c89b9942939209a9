"""Spurious-cue removal (paper, section 4.3): mean-ablate a head set, measure worst-group accuracy.

A grouped image set has the Waterbirds layout: FOLDER/metadata.csv with a file, a label and a
group column (Waterbirds' own names img_filename, y and place are accepted too; with `place` the
groups are the (label, place) pairs, as in Waterbirds). Zero-shot accuracy is reported overall and
per group for the unmodified model and with the chosen heads mean-ablated, against the population of
head sets of the same size from the same layers: every such set when there are at most
`EXHAUSTIVE_LIMIT` (10,000; e.g. C(16, 6) = 8,008 on the toy models), else `samples` (>= 1,000) seeded
random sets. The report gives the population's mean, spread and quantiles and the chosen set's
percentile in it. Means come from a reference image set that the caller chooses and that is reported
(the paper code used the evaluated set itself). Ablation is the direct-effect mean-ablation of
core.engine.ablation (final LayerNorm statistics frozen).

Fast population: mean-ablation of direct effects is linear, so with the classifier C a set S changes every
image's logits by sum_{h in S} (mean_h - c_h) C^T. One pass over the images keeps, per image, the logits
and each candidate head's logit change [image, head, class] (float64); every set's logits are then a sum
of rows, thousands of sets per matrix product, with no further model run. `trials` seeded sets are also
ablated the literal way (`core.engine.ablation.ablate`) and listed, which the tests compare with the
fast path.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from core.engine.ablation import Ablation, ComponentMeans, ablate, image_components
from core.errors import ConfigError, DatasetError
from core.heads.outputs import Head, Progress, check_heads, head_name
from core.engine.images import iter_image_batches
from core.engine.models import ClipBundle, ModelInfo

METADATA = "metadata.csv"
EXHAUSTIVE_LIMIT = 10_000  # every head set of the chosen size when there are at most this many
MIN_SAMPLES = 1_000  # else at least this many seeded random sets
_SET_CHUNK = 512  # sets per matrix product (bounds memory: chunk x images x classes float64)
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
    if not isinstance(trials, int) or trials < 0:
        raise ConfigError(f"trials must be a non-negative integer, got {trials!r}")
    if count > len(pool):
        raise ConfigError(f"cannot draw {count} random heads from {len(pool)} heads of layers {layers}")
    generator = torch.Generator().manual_seed(seed)
    return [[pool[i] for i in torch.randperm(len(pool), generator=generator)[:count].tolist()] for _ in range(trials)]


def head_set_population(n_heads: int, size: int, *, samples: int = MIN_SAMPLES, seed: int = 0,
                        limit: int = EXHAUSTIVE_LIMIT) -> tuple[torch.Tensor, str, int]:
    """(sets [set, size] of indices into n_heads candidates, "all" | "sampled", number of possible sets).

    Every set (lexicographic order) when there are at most `limit`, else `samples` distinct sets drawn
    uniformly with a seeded generator (each sorted)."""
    if not 1 <= size <= n_heads:
        raise ConfigError(f"cannot choose sets of {size} heads from {n_heads} heads")
    total = math.comb(n_heads, size)
    if total <= limit:
        return torch.tensor(list(combinations(range(n_heads), size)), dtype=torch.long), "all", total
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < MIN_SAMPLES:
        raise ConfigError(f"there are {total:,} sets of {size} heads: sample at least {MIN_SAMPLES:,} of them, "
                          f"got {samples!r}")
    generator = torch.Generator().manual_seed(seed)
    seen: set[tuple[int, ...]] = set()
    sets = []
    while len(sets) < samples:  # distinct sets; collisions are rare when total > limit
        drawn = tuple(sorted(torch.randperm(n_heads, generator=generator)[:size].tolist()))
        if drawn not in seen:
            seen.add(drawn)
            sets.append(drawn)
    return torch.tensor(sets, dtype=torch.long), "sampled", total


def set_accuracies(base_logits: torch.Tensor, head_deltas: torch.Tensor, sets: torch.Tensor, labels: torch.Tensor,
                   groups: torch.Tensor, n_groups: int, *, chunk: int = _SET_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(worst-group accuracy [set], overall accuracy [set]) of every head set, from linear logit changes.

    base_logits [image, class]; head_deltas [image, head, class], each candidate head's logit change when it
    is mean-ablated alone; sets [set, size] head indices. Set s's logits = base + sum of its heads' rows.
    """
    base_logits, head_deltas = base_logits.double(), head_deltas.double()
    sizes = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, groups, torch.ones(len(groups), dtype=torch.float64))
    present = sizes > 0
    worst, overall = [], []
    for start in range(0, len(sets), chunk):
        part = sets[start:start + chunk]
        membership = torch.zeros(len(part), head_deltas.shape[1], dtype=torch.float64)
        membership.scatter_(1, part, 1.0)
        logits = base_logits[None] + torch.einsum("sh,ihc->sic", membership, head_deltas)
        correct = (logits.argmax(-1) == labels[None]).double()  # [set, image]
        hits = torch.zeros(len(part), n_groups, dtype=torch.float64).index_add_(1, groups, correct)
        per_group = torch.where(present, hits / sizes.clamp_min(1), torch.inf)
        worst.append(per_group.min(1).values)
        overall.append(correct.mean(1))
    return torch.cat(worst), torch.cat(overall)


def _distribution(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    q = torch.quantile(values, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {"mean": float(values.mean()), "std": float(values.std()) if len(values) > 1 else 0.0,
            "min": float(values.min()), "q05": float(q[0]), "median": float(q[1]), "q95": float(q[2]),
            "max": float(values.max())}


def percentile_of(value: float, population: torch.Tensor) -> float:
    """Mid-rank percentile of `value` in `population`: 100 x (share strictly below + half the share equal)."""
    population = population.double()
    below = float((population < value).double().mean())
    equal = float((population == value).double().mean())
    return 100.0 * (below + 0.5 * equal)


@dataclass
class HeadSetBaseline:
    """Every head set of one size from `layers` (or a seeded sample), with each set's accuracies."""

    kind: str  # "all" | "sampled"
    layers: list[int]
    size: int
    possible: int  # number of sets of this size from these layers
    seed: int
    sets: list[list[Head]]
    worst: torch.Tensor  # [set] worst-group accuracy
    overall: torch.Tensor  # [set]

    def summary(self, chosen: "GroupAccuracy | None" = None) -> dict:
        out = {"kind": self.kind, "sets": len(self.sets), "possible_sets": self.possible, "size": self.size,
               "layers": self.layers, "seed": self.seed if self.kind == "sampled" else None,
               "worst": _distribution(self.worst), "overall": _distribution(self.overall)}
        if chosen is not None:
            out["chosen_percentile_worst"] = percentile_of(chosen.worst, self.worst)
            out["chosen_percentile_overall"] = percentile_of(chosen.overall, self.overall)
            out["share_at_least_chosen_worst"] = float((self.worst.double() >= chosen.worst).double().mean())
            out["chosen_minus_mean_worst"] = chosen.worst - float(self.worst.double().mean())
        return out

    def describe(self) -> str:
        what = (f"all {len(self.sets):,} sets" if self.kind == "all"
                else f"{len(self.sets):,} random sets (seed {self.seed}) of the {self.possible:,}")
        return f"{what} of {self.size} heads from layers {self.layers}"


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
    baseline: HeadSetBaseline | None = None  # the population of head sets of the same size

    def random_summary(self) -> dict[str, float]:
        """Mean and std of the random head sets' overall and worst-group accuracy: over the whole population
        (every set, or the sampled ones), else over the seeded trials (0 for one trial)."""
        if self.baseline is not None:
            summary = self.baseline.summary(self.ablated)
            return {"overall_mean": summary["overall"]["mean"], "overall_std": summary["overall"]["std"],
                    "worst_mean": summary["worst"]["mean"], "worst_std": summary["worst"]["std"],
                    "sets": summary["sets"], "kind": summary["kind"],
                    "chosen_percentile_worst": summary["chosen_percentile_worst"]}
        out = {}
        for name in ("overall", "worst"):
            values = torch.tensor([getattr(r, name) for r in self.random], dtype=torch.float64)
            out[f"{name}_mean"] = float(values.mean()) if len(values) else math.nan
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
                "random_sets": None if self.baseline is None else self.baseline.summary(self.ablated),
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
    trials: int = 0,
    seed: int = 0,
    random_layers: Sequence[int] | None = None,
    paper_extras: bool = False,
    batch_size: int = 32,
    progress: Progress | None = None,
    samples: int = MIN_SAMPLES,
    exhaustive_limit: int = EXHAUSTIVE_LIMIT,
) -> SpuriousReport:
    """Overall and worst-group zero-shot accuracy: base, `heads` mean-ablated, and every head set of the same
    size mean-ablated (the population baseline; see the module docstring).

    classifier: [class, d_out] in grouped.classnames order. random_layers: where random heads are
    drawn from (default: from the first chosen head's layer to the last layer, where the paper's
    heads live, so the baseline ablates heads of comparable direct effect). paper_extras: also
    mean-ablate every MLP and every head of the layers before the last 4 in the chosen and random
    conditions, as the paper code's Waterbirds setting does. trials: seeded random sets also ablated
    the literal way and listed (default none). samples, seed: the sampled population when there are
    more than `exhaustive_limit` sets.
    """
    heads = check_heads(heads, bundle.info)
    if classifier.shape[0] != len(grouped.classnames):
        raise ConfigError(f"classifier has {classifier.shape[0]} classes, the image set {len(grouped.classnames)}")
    if random_layers is None:
        random_layers = list(range(min(l for l, _ in heads), bundle.info.n_layers))
    random_sets = random_head_sets(bundle.info, len(heads), trials, seed, random_layers)
    pool = check_heads([(l, h) for l in random_layers for h in range(bundle.info.n_heads)], bundle.info)
    population, kind, possible = head_set_population(len(pool), len(heads), samples=samples, seed=seed,
                                                     limit=exhaustive_limit)
    early = tuple(range(max(0, bundle.info.n_layers - 4))) if paper_extras else ()
    ablations = [Ablation(name, mlps=paper_extras, attention_layers=early, heads=tuple(chosen)) for name, chosen in
                 [("chosen", heads)] + [(f"random {i}", s) for i, s in enumerate(random_sets)]]
    context = Ablation("context", mlps=paper_extras, attention_layers=early)  # what every set is ablated on top of
    correct, seen, skipped, linear = _correct_per_condition(bundle, grouped, classifier, means, ablations, context,
                                                            pool, batch_size, progress)
    groups = torch.tensor(grouped.groups)[seen]
    results = [group_accuracy(torch.cat(c), groups, len(grouped.group_names)) for c in correct]
    worst, overall = set_accuracies(linear[0], linear[1], population, torch.tensor(grouped.labels)[seen], groups,
                                    len(grouped.group_names))
    baseline = HeadSetBaseline(kind, list(random_layers), len(heads), possible, seed,
                               [[pool[i] for i in row] for row in population.tolist()], worst, overall)
    return SpuriousReport(heads, provenance, results[0], results[1], random_sets, results[2:], list(grouped.classnames),
                          list(grouped.group_names), len(seen), grouped.description, means.description,
                          means_from_evaluated_set, means.convention, seed, list(random_layers), paper_extras, skipped,
                          baseline)


def _correct_per_condition(bundle, grouped, classifier, means, ablations, context, pool, batch_size, progress):
    """(per condition, base first: bool tensors per batch; image indices seen; skipped files; (logits with the
    context ablation [image, class], each pool head's logit change [image, head, class]), float64)."""
    labels = torch.tensor(grouped.labels)
    classifier = classifier.to(bundle.device)
    correct: list[list[torch.Tensor]] = [[] for _ in range(len(ablations) + 1)]
    seen: list[int] = []
    skipped: list[str] = []
    base_logits, head_deltas = [], []
    layer_of = torch.tensor([l for l, _ in pool])
    head_of = torch.tensor([h for _, h in pool])
    covered = torch.tensor([l in context.attention_layers for l, _ in pool])  # already ablated by the context
    weights = classifier.double().T
    batches = iter_image_batches(grouped.paths, bundle.preprocess, batch_size, skipped=skipped)
    for indices, pixels in progress(batches) if progress else batches:
        parts = image_components(bundle, pixels, convention=means.convention)
        representations = [parts.representation()] + [ablate(parts, means.means, a) for a in ablations]
        truth = labels[indices].to(bundle.device)
        for row, rep in enumerate(representations):
            correct[row].append(((rep @ classifier.T).argmax(-1) == truth).cpu())
        base_logits.append((ablate(parts, means.means, context).double() @ weights).cpu())
        change = (means.means.heads - parts.heads)[:, layer_of, head_of].double() @ weights  # [batch, head, class]
        head_deltas.append(torch.where(covered.to(change.device)[None, :, None], 0.0, change).cpu())
        seen += indices
    if not seen:
        raise DatasetError(f"no readable images in {grouped.description}")
    return correct, seen, skipped, (torch.cat(base_logits), torch.cat(head_deltas))


def describe_heads(heads: Sequence[Head]) -> str:
    return ", ".join(head_name(h) for h in heads)
