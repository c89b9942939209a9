"""Spurious-cue removal (paper 1, section 4.3) shown on a model whose spurious cue is known: `toy-biased`.

1. Choose heads from their TextSpan labels the way a person reading them would: a head is a
   "background head" when most of its top texts name a background (a background name or the word
   "background").
2. Mean-ablate them (direct-effect mean-ablation; means from uniform held-out scenes that are not
   the evaluated ones).
3. Report overall and worst-group binary shape accuracy on the grouped held-out set (Waterbirds'
   four groups, transposed) against every head set of the same size (C(16, 6) = 8,008 on the toy
   models), with the chosen set's percentile among them.

>>> heads, provenance, labels = background_heads(find_bases(bundle))
>>> report = bias_removal_report(bundle, PlantedBias.parse(SHIPPED), heads, provenance)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from core.errors import BasesError, ConfigError
from core.world import scenes as world
from core.world.bias import PlantedBias, write_grouped_scenes

BACKGROUND_WORDS = (*world.BACKGROUNDS, "background", "backgrounds")
DEFAULT_TOP = 5
DEFAULT_SHARE = 0.6
REMOVAL_SEED = 7  # held-out scenes the removal is evaluated on (not the card's, not the means')
MEANS_SEED = 99


def _names_background(text: str, words: Sequence[str]) -> bool:
    return re.search(r"\b(" + "|".join(map(re.escape, words)) + r")\b", text.lower()) is not None


def head_labels(artifact) -> dict[tuple[int, int], list[tuple[str, float]]]:
    """(layer, head) -> [(text, variance explained)] in TextSpan's selection order, from bases' textspan table."""
    if not artifact.has("textspan"):
        raise BasesError(f"the bases at {artifact.path} hold no TextSpan labels; build them with "
                         "`python -m core bases build`")
    labels: dict[tuple[int, int], list[tuple[int, str, float]]] = {}
    for row in artifact.table("textspan"):
        labels.setdefault((int(row["layer"]), int(row["head"])), []).append(
            (int(row["order"]), str(row["text"]), float(row["variance_explained"])))
    return {head: [(text, v) for _, text, v in sorted(rows)] for head, rows in sorted(labels.items())}


def background_heads(artifact, *, top: int = DEFAULT_TOP, share: float = DEFAULT_SHARE,
                     words: Sequence[str] = BACKGROUND_WORDS) -> tuple[list[tuple[int, int]], str, list[dict]]:
    """Heads at least `share` of whose first `top` TextSpan texts name a background.

    Returns (heads, provenance sentence, one row per head: layer, head, fraction, top texts, chosen).
    """
    if not 1 <= top <= 100 or not 0 < share <= 1:
        raise ConfigError(f"top must be in 1..100 and share in (0, 1], got {top}, {share}")
    rows = []
    for (layer, head), texts in head_labels(artifact).items():
        first = [text for text, _ in texts[:top]]
        fraction = sum(_names_background(t, words) for t in first) / max(len(first), 1)
        rows.append({"layer": layer, "head": head, "fraction": fraction, "texts": first, "chosen": fraction >= share})
    heads = [(r["layer"], r["head"]) for r in rows if r["chosen"]]
    if not heads:
        raise ConfigError(f"no head has {share:.0%} of its top {top} TextSpan texts naming a background; lower the share")
    where = "/".join(Path(artifact.path).parts[-3:])
    provenance = f"chosen from TextSpan labels ({where}): heads at least {share:.0%} of whose top {top} texts name a background"
    return heads, provenance, rows


def _scene_folders(bias: PlantedBias, n_per_group: int, seed: int, n_means: int, means_seed: int) -> tuple[Path, Path]:
    """Grouped evaluation scenes and uniform held-out means scenes, written once under the cache."""
    from core.engine.text import cache_dir

    root = cache_dir() / "world-scenes"
    grouped = root / f"groups-{bias.spec.replace(':', '-').replace(',', '_')}-n{n_per_group}-seed{seed}-v{world.WORLD_VERSION}"
    if not (grouped / "metadata.csv").is_file():
        import os
        import uuid

        from core.writes import OutputFolder

        tmp = root / f"{grouped.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # one per writer: none collide
        write_grouped_scenes(tmp, bias, n_per_group, seed)  # removes what it wrote if it fails
        try:
            tmp.rename(grouped)
        except OSError:  # another process finished the same set first: keep theirs, remove ours
            OutputFolder(tmp, "grouped-scenes", require="any").clear()
    means = root / f"heldout-n{n_means}-seed{means_seed}-v{world.WORLD_VERSION}"
    if not (means / "labels.csv").is_file():
        world.write_scenes(means, n_means, means_seed, split="heldout", overwrite=True)
    return grouped, means


def bias_removal_report(bundle, bias: PlantedBias, heads: Sequence[tuple[int, int]], provenance: str, *,
                        n_per_group: int = 200, seed: int = REMOVAL_SEED, n_means: int = 500,
                        means_seed: int = MEANS_SEED, trials: int = 0, random_seed: int = 0,
                        random_layers: Sequence[int] | None = None, batch_size: int = 64, samples: int = 1000):
    """`core.heads.spurious.spurious_report` on the grouped held-out set of `bias`, classes = its shapes: against
    every head set of the same size (or `samples` seeded ones past 10,000), plus `trials` literal random sets."""
    from core.engine.ablation import component_means
    from core.engine.images import image_files
    from core.engine.text import prompt_classifier
    from core.heads.spurious import grouped_folder, spurious_report

    if trials < 0:
        raise ConfigError(f"trials must be >= 0, got {trials}")
    grouped_dir, means_dir = _scene_folders(bias, n_per_group, seed, n_means, means_seed)
    grouped = grouped_folder(grouped_dir)
    task = world.ZERO_SHOT["shape"]
    classifier = prompt_classifier(bundle, [task.prompts()[task.classnames.index(c)] for c in grouped.classnames])
    means = component_means(bundle, image_files(means_dir / "images"),
                            description=f"{n_means} uniform held-out world scenes (seed {means_seed})",
                            batch_size=batch_size, skipped=[])
    return spurious_report(bundle, grouped, classifier, heads, means, provenance=provenance, trials=trials,
                           seed=random_seed, random_layers=random_layers, batch_size=batch_size, samples=samples)
