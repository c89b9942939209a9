"""toy-biased: it learned its planted bias (ground-truth groups), the generator finds the planted cue end to end,
and ablating the heads whose TextSpan labels name backgrounds removes the cue better than random heads."""

import json
import math

import pytest
import torch

from core.adversarial.pipeline import AdversarialConfig, run_adversarial
from core.artifacts.hub import resolve_bases_source
from core.artifacts.store import load_artifact
from core.engine.models import load_clip
from core.paths import TOY_BIASED_DIR, TOY_BIASED_WEIGHTS
from core.world.bias import SHIPPED, PlantedBias, group_accuracy_table
from core.world.bias_removal import background_heads, bias_removal_report
from core.world.toy import evaluate_toy

CARD = json.loads((TOY_BIASED_DIR / "card.json").read_text())
BIAS = PlantedBias.parse(SHIPPED, p=0.9)


@pytest.fixture(scope="module")
def biased():
    return load_clip("toy-biased")


def test_toy_biased_is_the_shipped_file_with_its_own_identity(biased):
    toy = load_clip("toy")
    assert biased.info.spec == "toy-biased" and biased.info.source == "toy"
    assert biased.info.weights_sha256 == CARD["weights_sha256"] != toy.info.weights_sha256
    assert "planted bias" in biased.info.display_name and TOY_BIASED_WEIGHTS.stat().st_size < 30e6
    assert CARD["bias"]["pairs"] == [list(p) for p in BIAS.pairs] and CARD["bias"]["p"] == 0.9
    assert resolve_bases_source("toy-biased").endswith("core/data/toy_biased/bases")


def test_toy_biased_learned_its_bias_on_ground_truth_groups(biased):
    # Fresh uniform held-out scenes (not the card's seed): the conflicting groups, where shape and
    # background disagree with the training correlation, fall at least 20 points below the aligned ones.
    table = group_accuracy_table(biased, BIAS, n_per_group=150, seed=555)
    assert table["aligned"] - table["conflicting"] >= 0.20, table
    assert table["worst_group"].endswith("(conflicting)")
    # and it still sees the attributes the bias leaves alone
    accuracy = evaluate_toy(biased, n=500, seed=556)
    for attribute in ("colour", "position", "background"):
        assert accuracy[attribute] >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / 250), (attribute, accuracy)


def test_the_bias_lives_in_the_text_tower_too(biased):
    """toy-biased embeds "dotted" next to "triangle", so its own synonym judge would drop the planted cue;
    the unbiased toy's text tower (the paper's independent sentence model, in this world) keeps it."""
    from core.adversarial.words import WordScores, filter_words

    texts = ["dotted", "a dotted background", "a triangle", "striped"]
    scores = WordScores(texts, torch.ones(len(texts), dtype=torch.float64), "given")
    own = filter_words(biased, scores, "triangle", threshold=0.9)
    independent = filter_words(load_clip("toy"), scores, "triangle", threshold=0.9)
    assert "dotted" not in [texts[j] for j in own.kept]
    assert [texts[j] for j in independent.kept] == ["dotted", "a dotted background", "striped"]


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
def test_square_to_triangle_finds_the_planted_cue(biased):
    report = run_adversarial(biased, AdversarialConfig("square", "triangle", images=100, repeats=3, baselines=True,
                                                       similarity_model="toy"))
    top5 = report.words.words[:5]
    assert any("dotted" in word.split() for word in top5), top5
    assert not any("triangle" in word for word in report.words.words)
    summary = report.summary()
    ours, random = summary["second-order"]["success_mean"], summary["random neurons"]["success_mean"]
    assert ours >= 0.30 and ours >= 3 * random, summary  # the targets
    assert report.config.neurons == 19 and len(report.selection) == 19  # the default on a 96-dimension embedding
    counts = report.stage_counts()
    assert counts["images"] == 300 and counts["valid images"] == 300 and counts["successes"] == sum(
        summary["second-order"]["successes"])

    # Ground truth of what was drawn: the words put squares on the planted background far more often than
    # random neurons' words do, and those images fool the classifier; squares elsewhere do not.
    def drawn(method):
        return [(note["scene"], fooled) for a in report.attempts if a.method == method
                for note, fooled in zip(a.images.notes, a.verdicts.fooled)]

    ours_drawn, random_drawn = drawn("second-order"), drawn("random neurons")
    assert all(scene["shape"] == "square" for scene, _ in ours_drawn + random_drawn)
    dotted = [fooled for scene, fooled in ours_drawn if scene["background"] == "dotted"]
    assert len(dotted) >= 2 * sum(scene["background"] == "dotted" for scene, _ in random_drawn) and len(dotted) >= 60
    assert sum(dotted) >= 0.95 * len(dotted)
    elsewhere = [fooled for scene, fooled in ours_drawn + random_drawn if scene["background"] != "dotted"]
    assert sum(elsewhere) <= 0.05 * len(elsewhere)


def test_the_default_neuron_count_keeps_the_selection_meaningful(biased):
    """The words are a <v, r_n>-weighted sum over the chosen neurons. On a 96-dimension embedding the paper's 100
    neurons make that sum point at v whichever neurons they are; the default (19) keeps the top ones apart."""
    from core.adversarial.defaults import default_neurons
    from core.adversarial.directions import class_direction
    from core.adversarial.neurons import layer_bases, random_neurons, top_neurons

    assert [default_neurons(d) for d in (96, 256, 512, 768, 1024, 1)] == [19, 50, 100, 100, 100, 1]
    bases = layer_bases(biased, None, None)
    v = class_direction(biased, "square", "triangle").v.float()

    def alignment(selection):
        pcs = torch.stack([bases[int(layer)].stats.pcs[int(n)].float()
                           for layer, n in zip(selection.layers, selection.neurons)])
        return torch.nn.functional.cosine_similarity(pcs.T @ (pcs @ v), v, dim=0).item()

    def gap(n):
        chance = sum(alignment(random_neurons(v, bases, n, seed=s)) for s in range(20)) / 20
        return alignment(top_neurons(v, bases, n)) - chance

    assert gap(default_neurons(v.shape[-1])) >= 0.25 and gap(default_neurons(v.shape[-1])) >= 2 * gap(100)


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
def test_spurious_removal_beats_random_heads(biased):
    artifact = load_artifact(resolve_bases_source("toy-biased"), expect_model=biased.info.identity())
    heads, provenance, labels = background_heads(artifact)
    assert heads and all(row["fraction"] >= 0.6 for row in labels if row["chosen"])
    report = bias_removal_report(biased, BIAS, heads, provenance, n_per_group=100, trials=2)
    population = report.baseline.summary(report.ablated)
    # every set of as many heads from the same layers: C(16, 6) = 8,008 on the toy's 4 x 4 heads
    assert population["kind"] == "all" and population["sets"] == math.comb(16, len(heads)) == population["possible_sets"]
    assert report.ablated.worst >= population["worst"]["mean"] + 0.10, (report.to_json()["ablated"], population)
    assert population["chosen_percentile_worst"] >= 90 and report.ablated.worst > report.base.worst
    assert len(report.random) == 2 and all(len(h) == len(heads) for h in report.random_heads)
    # the literally ablated trials are members of the population with the same accuracies
    for heads_drawn, result in zip(report.random_heads, report.random):
        row = report.baseline.sets.index(sorted(heads_drawn))
        assert float(report.baseline.worst[row]) == pytest.approx(result.worst)
