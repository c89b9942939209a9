"""The world generator (offline stand-in) draws what the description's words say; descriptions avoid the target."""

import numpy as np
import pytest

from core.adversarial.descriptions import Descriptions, drop_naming, parse_numbered, template_descriptions
from core.adversarial.generators import WorldGenerator, parse_world_words
from core.errors import ConfigError
from core.world import scenes as world


@pytest.mark.parametrize("description, expected", [
    ("a photo of a square, a dotted background", {"shape": "square", "background": "dotted"}),
    ("a red triangle at the top left on a striped background",
     {"shape": "triangle", "colour": "red", "position": "top left", "background": "striped", "count": 1}),
    ("a square with two circles", {"shape": "square", "count": 1}),
    ("two small blue circles, a checkered background", {"shape": "circle", "count": 2, "size": "small",
                                                        "colour": "blue", "background": "checkered"}),
    ("a large star at the bottom right and a pink background", {"shape": "star", "size": "large",
                                                               "position": "bottom right", "background": "pink"}),
    # the first mention of each attribute wins
    ("a square with a circle on a brown background, a gray background", {"shape": "square", "background": "brown"}),
])
def test_rendered_scenes_obey_the_words(description, expected):
    generator = WorldGenerator()
    out = generator.generate([description] * 6, seeds=list(range(6)))
    for image, note in zip(out.images, out.notes):
        labels = note["scene"]
        for attribute, value in expected.items():
            if attribute == "position":
                assert labels["position"] == value
            else:
                assert labels[attribute] == value, (attribute, labels)
        # the image is exactly that scene, rendered by the world
        scene, _ = generator.scene(description, out.seeds[out.images.index(image)])
        assert np.array_equal(np.asarray(image), world.render(scene)[0])
        # and its pixels carry the named colour and background
        drawn, mask = world.render(scene)
        if "colour" in expected:
            assert (drawn[mask > 0] == world.COLOURS[expected["colour"]]).all()
        if "background" in expected:
            assert np.array_equal(drawn[mask == 0], world._background(expected["background"], 64)[mask == 0])
    # unnamed attributes come from the seed: same seed same image, other seeds vary
    again = generator.generate([description], seeds=[3]).images[0]
    assert np.array_equal(np.asarray(again), np.asarray(out.images[3]))
    assert len({np.asarray(im).tobytes() for im in out.images}) > 1
    assert "offline stand-in" in out.generator


@pytest.mark.parametrize("description, expected", [
    # another object's size, colour and count are its own; the world draws only the subject
    ("a square with a small green star", {"shape": "square", "count": 1}),
    ("a photo of a square, two small crosses and something at the bottom", {"shape": "square", "count": 1}),
    # a background is the scene's, whichever object's phrase names it
    ("an image of a square and a star on a dotted background", {"shape": "square", "count": 1, "background": "dotted"}),
    # words that belong to no object describe the subject; words before a noun describe that noun
    ("a picture of a square: blue, small", {"shape": "square", "count": 1, "colour": "blue", "size": "small"}),
    ("a star beside a large red square", {"shape": "star", "count": 1}),
    ("a large red square sits at the top left, next to a small star", {"shape": "square", "count": 1, "size": "large",
                                                                      "colour": "red", "position": "top left"}),
])
def test_words_describe_the_object_they_belong_to(description, expected):
    assert parse_world_words(description) == expected
    out = WorldGenerator().generate([description] * 12, seeds=list(range(12)))
    scenes = [note["scene"] for note in out.notes]
    for attribute in ("colour", "size", "position"):
        values = {scene[attribute] for scene in scenes}
        if attribute in expected:
            assert values == {expected[attribute]}, (attribute, values)
        elif attribute == "size":
            assert values == {"large"}  # the subject's default, not the star's "small"
        else:
            assert len(values) > 1, (attribute, values)  # drawn from the seed, not taken from another object


def test_a_description_without_a_world_shape_is_refused():
    with pytest.raises(ConfigError, match="draws only the world's shapes"):
        WorldGenerator().generate(["a photo of a dog on a beach"], seeds=[0])
    assert parse_world_words("education and scattering") == {}  # no partial-word matches ("cat", "star")


def test_template_descriptions_name_the_shown_class_and_weight_words_by_score():
    words, scores = ["a dotted background", "dotted", "red", "a star"], [5.0, 3.0, 1.0, 0.0]
    batch = template_descriptions("square", words, scores, n=200, seed=1)
    assert len(batch) == 200 and all("square" in text for text in batch.texts)
    assert not any("a star" in text for text in batch.texts)  # a zero score is never drawn
    counts = {w: sum(w in t for t in batch.texts) for w in ("a dotted background", "red")}
    assert counts["a dotted background"] > counts["red"]
    assert template_descriptions("square", words, scores, n=5, seed=1).texts == batch.texts[:5]


def test_descriptions_naming_the_target_are_dropped():
    batch = Descriptions(["a square with triangles", "a square, dotted", "Triangle-free square", "a circle"], "given")
    kept = drop_naming(batch, "triangle", present="square")
    assert kept.texts == ["a square, dotted", "Triangle-free square"]
    assert [d["reason"] for d in kept.dropped] == ["names the target ('triangles')", "does not name 'square'"]
    assert parse_numbered("Here you go:\n1. a square\n2) a dotted square\n\nthanks") == ["a square", "a dotted square"]


# ---------------------------------------------------------------- the stand-in's rules are flags (WorldRules)

from core.adversarial.generators import WorldRules  # noqa: E402


def test_unnamed_size_rule_draws_only_the_size_and_never_overrides_a_named_one():
    seeds = list(range(40))
    plain = WorldGenerator().generate(["a photo of a square, a dotted background"] * 40, seeds)
    random = WorldGenerator(WorldRules(unnamed_size="random")).generate(["a photo of a square, a dotted background"] * 40,
                                                                        seeds)
    small = WorldGenerator(WorldRules(unnamed_size="small")).generate(["a photo of a square"] * 5, seeds[:5])
    assert {n["scene"]["size"] for n in plain.notes} == {"large"}
    assert {n["scene"]["size"] for n in random.notes} == {"small", "large"}
    assert {n["scene"]["size"] for n in small.notes} == {"small"}
    # its own random stream: every other attribute is the default rules' draw
    for a, b in zip(plain.notes, random.notes):
        assert {k: v for k, v in a["scene"].items() if k != "size"} == {k: v for k, v in b["scene"].items() if k != "size"}
    named = WorldGenerator(WorldRules(unnamed_size="small")).generate(["a large square"] * 5, seeds[:5])
    assert {n["scene"]["size"] for n in named.notes} == {"large"}
    assert "unnamed size random" in random.generator and "rules" not in plain.generator


@pytest.mark.parametrize("description, rules, expected", [
    # scope of a background word: the whole scene (default) or only its own object's
    ("an image of a square and a star on a dotted background", {}, {"shape": "square", "count": 1, "background": "dotted"}),
    ("an image of a square and a star on a dotted background", {"background_scope": "subject"},
     {"shape": "square", "count": 1}),
    ("a photo of a square, a dotted background", {"background_scope": "subject"},
     {"shape": "square", "count": 1, "background": "dotted"}),  # a background of no object is the subject's
    ("a square on a dotted background with a star", {"background_scope": "subject"},
     {"shape": "square", "count": 1, "background": "dotted"}),
    # every word describes the subject: the rule before commit ca53128 (the star's words go to the square)
    ("a square with a small green star", {"word_scope": "subject"},
     {"shape": "square", "count": 1, "size": "small", "colour": "green"}),
    ("a square with a star on a dotted background", {"word_scope": "subject", "background_scope": "subject"},
     {"shape": "square", "count": 1}),
])
def test_scope_rules_decide_who_the_words_describe(description, rules, expected):
    assert parse_world_words(description, WorldRules(**rules)) == expected
    scene, named = WorldGenerator(WorldRules(**rules)).scene(description, 3)
    assert named == expected
    assert all(scene.labels()[k] == v for k, v in expected.items())


def test_bad_rules_are_refused():
    for rules in ({"unnamed_size": "huge"}, {"word_scope": "object"}, {"background_scope": "everywhere"}):
        with pytest.raises(ConfigError, match="world-generator rule"):
            WorldRules(**rules)
