"""Validations 3 and 4 on the toy model, with the settings fixed in core.circuits.validation.

3. Faithfulness: keeping a neuron's top-k paths keeps more of its second-order ablation effect than random k
   paths, at every k; the median studied neuron keeps 90% with at most 3 paths. Keeping more than attribution
   patching's choice at every k is the issue's target too; measured, it is not met (xfail, strict).
4. Labels predict causes: the permutation test works on planted data; on the toy it is not significant (xfail).
"""

import numpy as np
import pytest
import torch

import core.world  # noqa: F401
from core.artifacts.hub import resolve_bases_source
from core.artifacts.store import load_artifact
from core.circuits import validation as v
from core.circuits.ablation import token_means
from core.engine.models import load_clip
from core.neurons.bases import load_neuron_basis, neuron_layers


@pytest.fixture(scope="module")
def toy_bases():
    bundle = load_clip("toy")
    artifact = load_artifact(resolve_bases_source("toy"), expect_model=bundle.info.identity())
    return bundle, artifact, {layer: load_neuron_basis(artifact, layer) for layer in neuron_layers(artifact)}


@pytest.fixture(scope="module")
def lens_curves(toy_bases):
    """The lens curves of every studied neuron (no hooked re-runs: those are in bench.circuits validation)."""
    bundle, _, bases = toy_bases
    curves = []
    for layer, basis in bases.items():
        stats, images = basis.stats, basis.image_set
        neurons = v.studied_neurons(stats.thresholds)
        means = token_means(bundle.model.visual, layer, images.slice(0, v.MEAN_IMAGES).batches(bundle.preprocess, 64),
                            neurons=neurons)
        for column, neuron in enumerate(neurons):
            ids = stats.top_images[neuron, :v.FAITH_IMAGES].tolist()
            pixels = torch.stack([bundle.preprocess(images.image(i)) for i in ids])
            curves.append(v.faithfulness(bundle.model.visual, pixels, layer, neuron, means[:, column],
                                         stats.pcs[neuron], real=False))
    return curves


@pytest.mark.slow
def test_top_k_paths_keep_more_than_random_k_and_few_paths_suffice(lens_curves):
    assert len(lens_curves) == v.STUDIED_PER_LAYER * 3
    for f in lens_curves:
        kept = f.kept["lens"]
        assert np.all(kept["top"][:-1] > kept["random"][:-1]), (f.layer, f.neuron)
        assert kept["top"][-1] == pytest.approx(1.0) and kept["random"][-1] == pytest.approx(1.0)
        # the lens is additive: ablating every path is the sum of ablating each
        assert f.full_lens == pytest.approx(f.lens_effects.sum())
    assert np.median([f.k_for(v.KEEP_TARGET, "lens") for f in lens_curves]) <= 3


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="measured: the lens ranking keeps less than attribution patching's choice in 4 "
                   "of 84 comparisons (signed effects that cancel); see docs/circuits.md")
def test_top_k_paths_keep_at_least_attribution_patchings_choice_at_every_k(lens_curves):
    for f in lens_curves:
        kept = f.kept["lens"]
        assert np.all(kept["top"] >= kept["attribution"] - 1e-12), (f.layer, f.neuron)


def test_attributes_are_read_from_the_worlds_vocabulary():
    assert v.text_attributes("a photo of a red circle") == {"colour", "shape"}
    assert v.text_attributes("an object at the top left") == {"position"}
    assert v.text_attributes("a dotted background") == {"background"}
    assert v.text_attributes("two squares") == {"count", "shape"}
    assert v.text_attributes("a guitar") == set()
    assert v.head_attribute(["red", "a blue star", "green", "a circle", "a dog"]) == "colour"  # 3 colour, 2 shape
    assert v.head_attribute(["red", "a circle", "a dog"]) is None  # a tie names none
    assert v.neuron_attribute([("a circle", 2.0), ("red", -1.5), ("blue", 1.0)]) == "colour"  # |weight| 2.5 vs 2


def test_the_permutation_test_finds_a_planted_association_and_not_a_missing_one():
    generator = torch.Generator().manual_seed(0)
    heads = {(1, h): ["colour", "shape", "position", "size"][h] for h in range(4)}
    heads.update({(2, h): ["shape", "colour", "size", "position"][h] for h in range(4)})
    attributes = [["colour", "shape", "position", "size"][n % 4] for n in range(80)]
    planted = torch.rand(80, 2, 4, generator=generator) * 0.1
    for n, attribute in enumerate(attributes):
        for (layer, h), name in heads.items():
            if name == attribute:
                planted[n, layer - 1, h] += 1.0
    found = v.labels_predict_causes({0: planted}, {0: attributes}, heads, permutations=2000)
    assert found.statistic > 0.8 and found.p_value < 0.01 and found.n_neurons == 80
    unrelated = torch.rand(80, 2, 4, generator=generator)
    missing = v.labels_predict_causes({0: unrelated}, {0: attributes}, heads, permutations=2000)
    assert missing.p_value > 0.05 and abs(missing.statistic - missing.null_mean) < 3 * missing.null_std


@pytest.mark.xfail(strict=True, reason="measured on the toy: same-attribute heads carry 0.29 of the weight-edge "
                   "(composition) mass vs 0.28 +- 0.05 under the null, p = 0.35 (data edges: 0.30 vs 0.28, p = 0.36, "
                   "python -m bench.circuits validation); see docs/circuits.md")
def test_labels_predict_causes_on_the_toy(toy_bases):
    """With weight edges (no image pass, so that the suite stays fast); bench.circuits runs the data-edge version."""
    from core.circuits.edges import weight_edges
    from core.circuits.report import head_text_map

    bundle, artifact, bases = toy_bases
    layers = sorted(bases)
    texts = head_text_map(artifact, v.LABEL_TERMS)
    heads = {head: v.head_attribute(list(texts[head])) for head in texts if head[0] > layers[0]}
    neurons = {layer: [v.neuron_attribute(bases[layer].words.terms(n, bases[layer].texts))
                       for n in range(bundle.info.d_mlp)] for layer in layers}
    edges = {layer: weight_edges(bundle.model.visual, layer).composition for layer in layers}
    result = v.labels_predict_causes(edges, neurons, heads)
    assert result.n_neurons > 100  # the statistic is over most neurons, not a handful
    assert result.p_value < 0.05
