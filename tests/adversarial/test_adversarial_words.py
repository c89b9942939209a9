"""Word scoring equals the literal sum of paper 2's eq. 6; the synonym filter; neuron ranking."""

import pytest
import torch

from core.adversarial.directions import class_direction
from core.adversarial.neurons import layer_bases, random_neurons, top_neurons
from core.adversarial.words import (filter_words, naming_pattern, names_any, plural_forms, score_words, similar_words,
                                    top_words)
from core.engine.models import load_clip
from core.errors import ConfigError, TextError


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy")


@pytest.fixture(scope="module")
def bases(toy):
    return layer_bases(toy)


def test_default_layers_are_the_last_three_the_bases_cover(bases, toy):
    assert sorted(bases) == [0, 1, 2]
    with pytest.raises(ConfigError, match="not 3"):
        layer_bases(toy, layers=[3])


def test_top_neurons_rank_by_absolute_projection_on_v(toy, bases):
    v = class_direction(toy, "square", "triangle").v
    chosen = top_neurons(v, bases, 20)
    literal = sorted(((abs(float(bases[l].stats.pcs[n].float() @ v)), -l, -n) for l in bases
                      for n in range(len(bases[l].stats.pcs))), reverse=True)[:20]
    assert [(r["layer"], r["neuron"]) for r in chosen.rows()] == [(-l, -n) for _, l, n in literal]
    for row in chosen.rows():
        assert row["projection"] == pytest.approx(float(bases[row["layer"]].stats.pcs[row["neuron"]].float() @ v), abs=1e-6)
    again = random_neurons(v, bases, 20, seed=4)
    assert again.rows() == random_neurons(v, bases, 20, seed=4).rows() != random_neurons(v, bases, 20, seed=5).rows()


def test_word_scores_equal_the_literal_sum_over_neurons(toy, bases):
    v = class_direction(toy, "circle", "star").v
    chosen = top_neurons(v, bases, 30)
    scores = score_words(chosen, bases)
    texts = scores.texts
    literal = {}
    pairs = {}
    for row in chosen.rows():
        basis = bases[row["layer"]]
        projection = float(basis.stats.pcs[row["neuron"]].float() @ v)
        for index, gamma in zip(basis.words.indices[row["neuron"]].tolist(),
                                basis.words.coefficients[row["neuron"]].tolist()):
            if index >= 0:
                literal[texts[index]] = literal.get(texts[index], 0.0) + gamma * projection
                pairs[texts[index]] = max(pairs.get(texts[index], -float("inf")), gamma * projection)
    assert len(literal) > 10
    for j, text in enumerate(texts):
        assert float(scores.scores[j]) == pytest.approx(literal.get(text, 0.0), rel=1e-5, abs=1e-6)
    per_pair = score_words(chosen, bases, per_pair=True)
    for j, text in enumerate(texts):
        assert float(per_pair.scores[j]) == pytest.approx(pairs.get(text, 0.0), rel=1e-5, abs=1e-6)


def test_plurals_and_word_boundaries():
    assert plural_forms("cross") == ["cross", "crosses"]
    assert plural_forms("butterfly") == ["butterflies", "butterfly"]
    assert plural_forms("cats") == ["cat", "cats"]
    assert plural_forms("stop sign") == ["stop sign", "stop signs"]
    pattern = naming_pattern(["cat"])
    assert names_any("a cat on a mat", pattern) == "cat"
    assert names_any("two Cats", pattern) == "Cats"
    assert names_any("education", pattern) is None and names_any("catalogue", pattern) is None
    assert names_any("a wild-cat", pattern) is None
    assert names_any("a big stop  sign", naming_pattern(["stop sign"])) == "stop  sign"


def test_filter_drops_names_plurals_blocked_and_similar_words(toy, bases):
    v = class_direction(toy, "square", "triangle").v
    scores = score_words(top_neurons(v, bases, 100), bases)
    filtered = filter_words(toy, scores, "triangle", threshold=1.0, block=["star"])
    kept = [scores.texts[j] for j in filtered.kept]
    reasons = {r["text"]: r["reason"] for r in filtered.removed}
    assert not any("triangle" in text for text in kept)
    assert any(r.startswith("names 'triangles'") for r in reasons.values())
    assert not any(" star" in f" {text}" or "stars" in text for text in kept)
    assert any(r.startswith("blocked") for r in reasons.values())
    assert all(float(scores.scores[a]) >= float(scores.scores[b]) for a, b in zip(filtered.kept, filtered.kept[1:]))
    # the similarity threshold: measure every kept word's cosine to the target, cut between two of them
    from core.engine.text import encode_texts

    embeddings = encode_texts(toy, kept + ["triangle"])
    cosine = sorted(zip((embeddings[:-1] @ embeddings[-1]).tolist(), kept))
    cut = (cosine[-1][0] + cosine[-2][0]) / 2
    strict = filter_words(toy, scores, "triangle", threshold=cut, block=["star"])
    assert cosine[-1][1] not in [scores.texts[j] for j in strict.kept]
    assert cosine[-2][1] in [scores.texts[j] for j in strict.kept]
    assert any(r["reason"].startswith("similar to 'triangle'") for r in strict.removed)
    # nothing left: a clear error, never an empty list
    with pytest.raises(ConfigError, match="no words left after filtering"):
        top_words(filter_words(toy, scores, "triangle", threshold=-1.0), 25)


def test_similar_words_baseline_excludes_the_target_itself(toy, bases):
    texts = next(iter(bases.values())).texts
    similar = similar_words(toy, texts, "triangle", k=10)
    assert len(similar.words) == 10 and not any("triangle" in w for w in similar.words)
    assert similar.scores == sorted(similar.scores, reverse=True)


def test_bad_classes(toy):
    with pytest.raises(ConfigError, match="same"):
        class_direction(toy, "square", " Square ")
    with pytest.raises(TextError, match="empty"):
        class_direction(toy, "square", "   ")
    with pytest.raises(TextError, match="tokenizes to nothing"):
        class_direction(toy, "square", "\x00\x00")
