"""Experiments that check the circuit lens on the toy model; every setting is fixed here, before measuring.

- `faithfulness`: keep a neuron's top-k paths, mean-ablate the rest, and measure the share of its second-order
  ablation effect that is kept, as a curve over k; the same budget chosen at random (many draws) and by
  attribution patching (gradient x activation per path). The share is measured both in the lens (exact under
  frozen LayerNorm: additive over paths) and in the real model (hooked re-runs, `core.circuits.ablation`).
- `labels_predict_causes`: do heads whose TextSpan labels name an attribute of the generated world carry more
  of the data edges of neurons whose sparse terms name the same attribute than a permutation null?

The settings below were fixed before the first measurement and are not tuned on what came out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.circuits.ablation import attribution_scores, lens_path_effects, real_path_effects
from core.neurons.second_order import COEFFICIENT

# ---------------------------------------------------------------- settings (fixed before measuring)
STUDIED_PER_LAYER = 4  # per bases layer, the neurons with the largest threshold tau_n (largest significant effect)
FAITH_IMAGES = 16  # each neuron's top images (the bases' top-k ranking, paper 2's "active" images) averaged over
MEAN_IMAGES = 256  # the first images of the bases' image set give the per-token mean activations (mean ablation)
RANDOM_DRAWS_LENS = 1000  # random k-path sets per k in the lens (cheap: additive)
RANDOM_DRAWS_REAL = 10  # random k-path sets per k in the real model (each is a hooked re-run of the images)
KEEP_TARGET = 0.9  # report the smallest k that keeps this share
SEED = 0
LABEL_TERMS = 5  # TextSpan texts per head and sparse terms per neuron read for their attribute
PERMUTATIONS = 10_000


# ---------------------------------------------------------------- 3. faithfulness

@dataclass(frozen=True)
class Faithfulness:
    """Kept share of one neuron's second-order ablation effect, per k = 1..P (P paths)."""

    layer: int
    neuron: int
    paths: list[tuple[int, int]]  # (later layer, head), in the tensor order
    lens_effects: np.ndarray  # [path] mean lens effect of ablating each path alone
    attribution: np.ndarray  # [path] mean attribution-patching estimate of the same
    top_order: list[int]  # paths by |lens effect|, ties by index
    attribution_order: list[int]  # paths by |attribution|
    full_lens: float  # all paths ablated, lens
    full_real: float  # all paths ablated, real model
    kept: dict[str, dict[str, np.ndarray]]  # evaluation ("lens"/"real") -> choice ("top", "attribution",
    #                                         "random", "random_std") -> [k] kept share, k = 1..P

    def k_for(self, share: float = KEEP_TARGET, evaluation: str = "lens") -> int:
        """The smallest k whose top-k paths keep at least `share` (P when none does before)."""
        curve = self.kept[evaluation]["top"]
        hits = np.nonzero(curve >= share)[0]
        return int(hits[0]) + 1 if len(hits) else len(curve)


def _order(scores: np.ndarray) -> list[int]:
    """Indices by |score| descending, ties by index (never float noise: a stable sort on rounded magnitudes)."""
    magnitude = np.round(np.abs(scores), 12)
    return [int(i) for i in np.argsort(-magnitude, kind="stable")]


def faithfulness(visual: nn.Module, pixels: torch.Tensor, layer: int, neuron: int, means: torch.Tensor,
                 target: torch.Tensor, *, mode: str = "paper", coefficient: float = COEFFICIENT,
                 random_draws_lens: int = RANDOM_DRAWS_LENS, random_draws_real: int = RANDOM_DRAWS_REAL,
                 seed: int = SEED, real: bool = True) -> Faithfulness:
    """Kept-share curves of one neuron on `pixels` (its active images), against its target (e.g. r_n).

    real=False skips the hooked re-runs (the "real" curves are then NaN)."""
    lens = lens_path_effects(visual, pixels, layer, neuron, means, target, mode=mode, coefficient=coefficient)
    n_later, n_heads = lens.shape[1:]
    n_paths = n_later * n_heads
    paths = [(layer + 1 + p // n_heads, p % n_heads) for p in range(n_paths)]
    lens_effects = lens.mean(0).reshape(-1).double().cpu().numpy()
    attribution = attribution_scores(visual, pixels, layer, neuron, means, target,
                                     coefficient=coefficient).mean(0).reshape(-1).double().cpu().numpy()
    top, chosen_by_attribution = _order(lens_effects), _order(attribution)
    rng = np.random.default_rng([seed, layer, neuron])
    ks = range(1, n_paths + 1)
    random_real = {k: [rng.permutation(n_paths)[:k] for _ in range(random_draws_real)] for k in ks}
    kept_sets: list[list[int]] = [[]]  # run 0 keeps nothing: every path ablated, the full effect
    labels = []
    for k in ks:
        kept_sets += [top[:k], chosen_by_attribution[:k]] + [list(s) for s in random_real[k]]
        labels += [(k, "top"), (k, "attribution")] + [(k, "random")] * random_draws_real
    masks = torch.ones(len(kept_sets), n_paths, dtype=torch.bool)  # each run ablates the complement of its kept set
    for row, kept in enumerate(kept_sets):
        masks[row, kept] = False
    if real:
        real_effects = real_path_effects(visual, pixels, layer, neuron, means, masks.reshape(-1, n_later, n_heads),
                                         target, coefficient=coefficient).mean(1).double().cpu().numpy()
    else:
        real_effects = np.full(len(kept_sets), np.nan)
    full_real, full_lens = float(real_effects[0]), float(lens_effects.sum())
    kept_real = {choice: np.zeros(n_paths) for choice in ("top", "attribution")}
    random_values: dict[int, list[float]] = {k: [] for k in ks}
    for (k, choice), effect in zip(labels, real_effects[1:]):
        share = (full_real - effect) / full_real
        if choice == "random":
            random_values[k].append(share)
        else:
            kept_real[choice][k - 1] = share
    lens_random = np.array([[lens_effects[rng.permutation(n_paths)[:k]].sum() / full_lens
                             for _ in range(random_draws_lens)] for k in ks])
    kept = {
        "lens": {"top": np.cumsum(lens_effects[top]) / full_lens,
                 "attribution": np.cumsum(lens_effects[chosen_by_attribution]) / full_lens,
                 "random": lens_random.mean(1), "random_std": lens_random.std(1)},
        "real": {**kept_real, "random": np.array([np.mean(random_values[k]) for k in ks]),
                 "random_std": np.array([np.std(random_values[k]) for k in ks])},
    }
    return Faithfulness(layer, neuron, paths, lens_effects, attribution, top, chosen_by_attribution, full_lens,
                        full_real, kept)


def studied_neurons(thresholds: torch.Tensor, per_layer: int = STUDIED_PER_LAYER) -> list[int]:
    """The `per_layer` neurons with the largest tau_n (ties by index)."""
    order = np.argsort(-np.round(thresholds.double().numpy(), 9), kind="stable")
    return [int(n) for n in order[:per_layer]]


# ---------------------------------------------------------------- 4. labels predict causes

def attribute_words() -> dict[str, set[str]]:
    """Words that name each attribute of the generated world (its own vocabulary, core.world.scenes)."""
    from core.world import scenes

    return {"colour": set(scenes.COLOURS), "shape": set(scenes.SHAPES) | set(scenes.SHAPE_PLURALS.values()),
            "size": set(scenes.SIZES), "position": {w for p in scenes.POSITIONS for w in p.split()},
            "background": set(scenes.BACKGROUNDS) | {"background"}, "count": {"one", "two"}}


def text_attributes(text: str, words: dict[str, set[str]] | None = None) -> set[str]:
    """The attributes a text names, by whole words."""
    words = words or attribute_words()
    tokens = set(re.findall(r"[a-z]+", text.lower()))
    return {attribute for attribute, vocabulary in words.items() if tokens & vocabulary}


def head_attribute(texts: list[str], n: int = LABEL_TERMS) -> str | None:
    """The attribute most of a head's first `n` TextSpan texts name (at least 2 of them; a tie names none)."""
    words = attribute_words()
    counts: dict[str, int] = {}
    for text in texts[:n]:
        for attribute in text_attributes(text, words):
            counts[attribute] = counts.get(attribute, 0) + 1
    return _unique_best(counts, minimum=2)


def neuron_attribute(terms: list[tuple[str, float]], n: int = LABEL_TERMS) -> str | None:
    """The attribute carrying the most |weight| among a neuron's first `n` sparse terms (a tie names none)."""
    words = attribute_words()
    weights: dict[str, float] = {}
    for text, weight in terms[:n]:
        for attribute in text_attributes(text, words):
            weights[attribute] = weights.get(attribute, 0.0) + abs(weight)
    return _unique_best(weights, minimum=1e-12)


def _unique_best(scores: dict, minimum: float) -> str | None:
    if not scores:
        return None
    best = max(scores.values())
    winners = [a for a, s in scores.items() if s == best]
    return winners[0] if len(winners) == 1 and best >= minimum else None


@dataclass(frozen=True)
class LabelTest:
    statistic: float  # mean share of |edge| mass on heads that name the neuron's attribute
    null_mean: float
    null_std: float
    p_value: float
    n_neurons: int  # labelled neurons with at least one later head of their attribute
    head_attributes: dict[tuple[int, int], str | None]
    permutations: int


def labels_predict_causes(edges: dict[int, torch.Tensor], neuron_attributes: dict[int, list[str | None]],
                          head_attributes: dict[tuple[int, int], str | None], *, permutations: int = PERMUTATIONS,
                          seed: int = SEED) -> LabelTest:
    """edges: layer -> [neuron, later, head] edge magnitudes (|mean data edge|); neuron_attributes: layer ->
    attribute per neuron; head_attributes: (layer, head) -> attribute. The null permutes the head attributes
    over every head that can receive an edge (layers after the first neuron layer)."""
    heads = sorted(head_attributes)
    names = sorted({a for a in head_attributes.values() if a is not None}
                   | {a for attributes in neuron_attributes.values() for a in attributes if a is not None})
    code = {name: i for i, name in enumerate(names)}
    labels = np.array([code.get(head_attributes[h], -1) for h in heads])  # -1: a head that names no attribute
    position = {h: i for i, h in enumerate(heads)}
    masses, reached_rows, row_attributes = [], [], []  # per labelled neuron: |edge| shares over all heads
    for layer, magnitudes in edges.items():
        n_later, n_heads = magnitudes.shape[1:]
        reached = [position[(layer + 1 + p // n_heads, p % n_heads)] for p in range(n_later * n_heads)]
        for neuron, attribute in enumerate(neuron_attributes[layer]):
            mass = magnitudes[neuron].reshape(-1).double().cpu().numpy()
            if attribute is None or mass.sum() <= 0:
                continue
            row, hit = np.zeros(len(heads)), np.zeros(len(heads), dtype=bool)
            row[reached], hit[reached] = mass / mass.sum(), True
            masses.append(row)
            reached_rows.append(hit)
            row_attributes.append(code[attribute])
    masses = np.array(masses).reshape(-1, len(heads))
    reached_rows = np.array(reached_rows, dtype=bool).reshape(-1, len(heads))
    row_attributes = np.array(row_attributes, dtype=int)

    def statistic(assignment: np.ndarray) -> tuple[float, int]:
        """Mean share of |edge| mass on heads of the neuron's attribute, over neurons that reach such a head."""
        same = assignment[None, :] == row_attributes[:, None]  # [neuron, head]
        counted = (same & reached_rows).any(1)
        shares = (masses * same).sum(1)[counted]
        return (float(shares.mean()) if len(shares) else 0.0), int(counted.sum())

    observed, count = statistic(labels)
    rng = np.random.default_rng(seed)
    null = np.array([statistic(rng.permutation(labels))[0] for _ in range(permutations)])
    p_value = (1 + int((null >= observed).sum())) / (1 + permutations)
    return LabelTest(observed, float(null.mean()), float(null.std()), p_value, count, dict(head_attributes),
                     permutations)
