"""The generated world: determinism, exact masks, caption grammar, the zero-shot spec, text pool, files and CLI."""

import argparse
import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.cli import toy
from core.errors import ConfigError
from core.world.scenes import (BACKGROUNDS, COLOURS, COUNTS, LABEL_COLUMNS, PLAIN_BACKGROUNDS, POSITIONS, SHAPE_PLURALS,
                        SHAPES, SIZES, TEXT_POOL_PATH, TEXTURE_TONES, ZERO_SHOT, Scene, build_toy_texts, caption,
                        heldout_scenes, load_toy_texts, object_geometry, render, render_batch, sample_scenes,
                        write_scenes)

REPO = Path(__file__).resolve().parents[2]
POSITION_RE = re.compile(r"\bat the ((?:top|bottom) (?:left|right)|top|bottom|left|right|center)\b")


@pytest.fixture(scope="module")
def scenes():
    return sample_scenes(400, seed=7)


def captions_for(scenes, seed=0):
    rng = np.random.default_rng(seed)
    return [caption(scene, rng) for scene in scenes]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_scenes_images_and_captions():
    first, second = sample_scenes(50, seed=3), sample_scenes(50, seed=3)
    assert first == second
    for a, b in zip(render_batch(first, 48), render_batch(second, 48)):
        np.testing.assert_array_equal(a, b)
    assert captions_for(first, seed=5) == captions_for(second, seed=5)


def test_different_seeds_and_splits_differ():
    base = sample_scenes(50, seed=3)
    assert base != sample_scenes(50, seed=4)
    heldout = sample_scenes(50, seed=3, split="heldout")
    assert not set(base) & set(heldout)
    assert not np.array_equal(render_batch(base)[0], render_batch(heldout)[0])
    assert captions_for(base, seed=1) != captions_for(base, seed=2)


def test_scene_i_does_not_depend_on_n():
    many = sample_scenes(1500, seed=11, split="heldout")  # spans two sampling blocks
    assert sample_scenes(1100, seed=11, split="heldout") == many[:1100]
    assert sample_scenes(3, seed=11, split="heldout") == many[:3]


# ----------------------------------------------------------------------------- rendering


def _inside_polygon(x, y, vertices):
    """Literal even-odd ray casting."""
    inside = False
    for (x1, y1), (x2, y2) in zip(vertices, vertices[1:] + vertices[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def _star_vertices(inner=0.45):
    angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
    return [(r * math.cos(a), r * math.sin(a)) for a, r in zip(angles, [1.0, inner] * 5)]


LITERAL_SHAPES = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -0.9), (1.0, 0.9), (-1.0, 0.9)],
    "star": _star_vertices(),
    "cross": [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
              (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)],
}


def _literal_mask(scene, image_size):
    """Slow reference: test every pixel centre against every object, one at a time."""
    mask = np.zeros((image_size, image_size), np.uint8)
    for k in range(scene.count):
        cx, cy, half = object_geometry(scene, k, image_size)
        for row in range(image_size):
            for col in range(image_size):
                u, v = (col + 0.5 - cx) / half, (row + 0.5 - cy) / half
                if scene.shape == "circle":
                    inside = u * u + v * v <= 1.0
                else:
                    inside = _inside_polygon(u, v, LITERAL_SHAPES[scene.shape])
                if inside:
                    mask[row, col] = k + 1
    return mask


@pytest.mark.parametrize("image_size", [32, 50, 64])
def test_vectorised_render_matches_literal_per_pixel(image_size):
    # Every shape and size, at a size divisible by 3 and at two that are not.
    for shape in SHAPES:
        for size in SIZES:
            scene = sample_scenes(1, seed=len(shape) + image_size, shapes=shape, sizes=size, count=2)[0]
            _, mask = render(scene, image_size)
            np.testing.assert_array_equal(mask, _literal_mask(scene, image_size), err_msg=f"{shape} {size}")


def _cell_bounds(cell, image_size):
    row, col = divmod(cell, 3)
    side = image_size / 3
    return row * side, (row + 1) * side, col * side, (col + 1) * side


@pytest.mark.parametrize("image_size", [32, 37, 64])
def test_masks_match_rendered_pixels_exactly(scenes, image_size):
    images, masks = render_batch(scenes[:150], image_size)
    assert images.shape == (150, image_size, image_size, 3) and images.dtype == np.uint8
    assert masks.shape == (150, image_size, image_size) and masks.dtype == np.uint8
    for scene, image, mask in zip(scenes, images, masks):
        colour = np.array(COLOURS[scene.colour], np.uint8)
        assert set(np.unique(mask)) == set(range(scene.count + 1))
        assert (image[mask > 0] == colour).all()
        assert not (image[mask == 0] == colour).all(axis=-1).any()
        background_tones = ([PLAIN_BACKGROUNDS[scene.background]] if scene.background in PLAIN_BACKGROUNDS
                            else list(TEXTURE_TONES))
        assert {tuple(p) for p in image[mask == 0]} <= set(background_tones)
        for k, cell in enumerate(scene.cells, start=1):
            rows, cols = np.nonzero(mask == k)
            top, bottom, left, right = _cell_bounds(cell, image_size)
            assert rows.size > 0
            assert top <= rows.min() and rows.max() + 1 <= bottom and left <= cols.min() and cols.max() + 1 <= right


def test_render_batch_equals_render_one_by_one(scenes):
    images, masks = render_batch(scenes[:20], 40)
    for scene, image, mask in zip(scenes, images, masks):
        single_image, single_mask = render(scene, 40)
        np.testing.assert_array_equal(image, single_image)
        np.testing.assert_array_equal(mask, single_mask)


def test_large_objects_are_larger_than_small_ones():
    areas = {size: np.mean([(render(s)[1] > 0).sum() for s in sample_scenes(60, seed=2, sizes=size, count=1)])
             for size in SIZES}
    assert areas["large"] > 2 * areas["small"]


# ----------------------------------------------------------------------------- sampling


def test_every_attribute_value_appears(scenes):
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.colour for s in scenes} == set(COLOURS)
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {s.count for s in scenes} == set(COUNTS)
    assert {s.position for s in scenes if s.count == 1} == set(POSITIONS)
    assert all(len(set(s.cells)) == s.count for s in scenes)


def test_filters_restrict_attribute_values():
    chosen = sample_scenes(100, seed=1, shapes=["star", "cross"], colours="blue", sizes=["small"],
                           backgrounds=["dotted"], positions=["top left", "center"], count=2)
    assert {s.shape for s in chosen} == {"star", "cross"}
    assert {(s.colour, s.size, s.background, s.position) for s in chosen} == {("blue", "small", "dotted",
                                                                               "top left+center")}


def test_labels_and_position_names():
    scene = Scene("star", "white", "large", (8, 0), "striped")
    assert scene.cells == (8, 0) and scene.count == 2 and scene.position == "bottom right+top left"
    assert scene.labels() == {"shape": "star", "colour": "white", "size": "large",
                              "position": "bottom right+top left", "background": "striped", "count": 2}


# ----------------------------------------------------------------------------- captions


def _mentioned(text):
    words = re.findall(r"[a-z]+", text)
    return words, {
        "shape": any(s in words or SHAPE_PLURALS[s] in words for s in SHAPES),
        "colour": any(c in words for c in COLOURS),
        "size": any(z in words for z in SIZES),
        "position": POSITION_RE.search(text) is not None,
        "background": "background" in words,
        "count": "one" in words or "two" in words,
    }


def test_captions_name_some_attributes_and_omit_others(scenes):
    mentions = [_mentioned(text)[1] for text in captions_for(scenes)]
    for attribute in mentions[0]:
        named = sum(m[attribute] for m in mentions)
        assert 0 < named < len(mentions), attribute
    assert all(any(m.values()) for m in mentions)
    # Naming everything (as "a photo of one large red circle at the top left on a striped background") is rare.
    assert sum(all(m.values()) for m in mentions) < len(mentions) / 10


def test_caption_words_agree_with_scene_labels(scenes):
    for scene, text in zip(scenes, captions_for(scenes, seed=3)):
        words, _ = _mentioned(text)
        plural = scene.count == 2
        pair = re.fullmatch(r"(?:[a-z ]+ )?an? ([a-z ]+) and another \1( on a \w+ background)?", text)
        for shape in SHAPES:
            assert (shape in words) <= (shape == scene.shape and (not plural or pair is not None)), text
            assert (SHAPE_PLURALS[shape] in words) <= (shape == scene.shape and plural), text
        assert all(c == scene.colour for c in COLOURS if c in words), text
        assert all(z == scene.size for z in SIZES if z in words), text
        assert all(b == scene.background for b in BACKGROUNDS if b in words), text
        assert ("one" in words) <= (not plural) and ("two" in words) <= plural, text
        assert ({"object", "shape", "something"} & set(words) == set()) or not plural, text
        assert ({"objects", "shapes", "are"} & set(words) == set()) or plural, text
        position = POSITION_RE.search(text)
        if position:
            assert not plural and position.group(1) == scene.position, text
        else:
            assert not {"top", "bottom", "left", "right", "center"} & set(words), text


def test_pairs_are_sometimes_named_with_singular_shape_words(scenes):
    pairs = [text for scene, text in zip(scenes, captions_for(scenes, seed=5)) if scene.count == 2]
    paired = [text for text in pairs if " and another " in text]
    assert 0.1 * len(pairs) < len(paired) < 0.5 * len(pairs)
    assert not [text for text in paired if re.search(r"\b(two|are|one)\b", text)]


def test_caption_is_deterministic_given_rng_state(scenes):
    assert captions_for(scenes[:30], seed=9) == captions_for(scenes[:30], seed=9)


def test_always_named_attributes_are_named_and_others_still_vary(scenes):
    rng = np.random.default_rng(4)
    texts = [caption(scene, rng, always="shape") for scene in scenes]
    mentions = [_mentioned(text)[1] for text in texts]
    assert all(m["shape"] for m in mentions)
    assert 0 < sum(m["colour"] for m in mentions) < len(mentions)
    rng = np.random.default_rng(4)
    both = [_mentioned(caption(scene, rng, always=("shape", "background")))[1] for scene in scenes]
    assert all(m["shape"] and m["background"] for m in both)


# ----------------------------------------------------------------------------- zero-shot spec and text pool


def test_zero_shot_spec_covers_every_attribute_value():
    assert set(ZERO_SHOT) == {"shape", "colour", "position", "background", "count"}
    values = {"shape": SHAPES, "colour": tuple(COLOURS), "position": POSITIONS, "background": BACKGROUNDS,
              "count": COUNTS}
    single, double = Scene("circle", "red", "small", (0,), "gray"), Scene("circle", "red", "small", (0, 1), "gray")
    for name, task in ZERO_SHOT.items():
        assert task.attribute == name and tuple(task.labels) == values[name]
        assert len(task.classnames) == len(task.labels) == len(set(task.classnames))
        assert len(task.templates) >= 3 and all(t.count("{}") + t.count("{plural}") == 1 for t in task.templates)
        prompts = task.prompts()
        assert len(prompts) == len(task.classnames) and all(len(p) == len(task.templates) for p in prompts)
        assert all(name_ in text for name_, texts in zip(task.classnames, prompts) for text in texts)
        assert task.applies_to(single.labels()) and task.applies_to(double.labels()) == (name != "position")


def test_zero_shot_prompts_are_grammatical():
    texts = [t for task in ZERO_SHOT.values() for prompts in task.prompts() for t in prompts]
    assert not [t for t in texts if re.search(r"\ba [aeiou]|\bone (objects|shapes)\b", t)]
    assert "a photo of an orange object." in ZERO_SHOT["colour"].prompts()[list(COLOURS).index("orange")]


def test_text_pool_file_equals_its_builder():
    built = build_toy_texts()
    assert TEXT_POOL_PATH.read_text(encoding="utf-8") == "\n".join(built) + "\n"
    assert load_toy_texts() == built
    assert len(built) == len(set(built)) and all(t.strip() == t and t for t in built)
    assert 200 <= len(built) <= 600
    assert {name for task in ZERO_SHOT.values() for name in task.classnames} <= set(built)
    assert {"red", "a red object", "a red circle", "striped background", "two objects"} <= set(built)


def test_text_pool_has_distractors_outside_the_world():
    vocabulary = set(SHAPES) | set(SHAPE_PLURALS.values()) | set(COLOURS) | set(SIZES) | set(BACKGROUNDS)
    vocabulary |= {"object", "objects", "shape", "shapes", "something", "background", "one", "two"}
    vocabulary |= {w for p in POSITIONS for w in p.split()}
    distractors = [t for t in load_toy_texts() if not vocabulary & set(re.findall(r"[a-z]+", t))]
    assert len(distractors) >= 50


# ----------------------------------------------------------------------------- errors


def _scene():
    return Scene("circle", "red", "large", (4,), "gray")


@pytest.mark.parametrize("call, message", [
    (lambda: sample_scenes(-1, 0), "n must"),
    (lambda: sample_scenes(3, -2), "seed must"),
    (lambda: sample_scenes(3, 0, split="test"), "train, heldout"),
    (lambda: sample_scenes(3, 0, shapes=["hexagon"]), "circle, square"),
    (lambda: sample_scenes(3, 0, colours=["pink"]), "red, green"),
    (lambda: sample_scenes(3, 0, backgrounds=["plaid"]), "striped"),
    (lambda: sample_scenes(3, 0, sizes=["medium"]), "small, large"),
    (lambda: sample_scenes(3, 0, positions=["middle"]), "top left"),
    (lambda: sample_scenes(3, 0, shapes=[]), "circle"),
    (lambda: sample_scenes(3, 0, count=3), "1 or 2"),
    (lambda: sample_scenes(3, 0, count=0), "1 or 2"),
    (lambda: sample_scenes(3, 0, count=2, positions=["center"]), "positions"),
    (lambda: render(_scene(), 16), ">= 32"),
    (lambda: render(_scene(), 0), ">= 32"),
    (lambda: render(_scene(), 64.0), ">= 32"),
    (lambda: render_batch([_scene()], 31), ">= 32"),
    (lambda: heldout_scenes(3, image_size=8), ">= 32"),
    (lambda: Scene("circle", "red", "large", (9,), "gray"), "0..8"),
    (lambda: Scene("circle", "red", "large", (2, 2), "gray"), "distinct"),
    (lambda: Scene("circle", "red", "large", (2,), "gray", ((1.5, 0.0),)), "jitter"),
    (lambda: Scene("oval", "red", "large", (2,), "gray"), "circle"),
    (lambda: caption(_scene(), 0), "Generator"),
    (lambda: caption(_scene(), np.random.default_rng(0), always=("hue",)), "unknown attribute 'hue'"),
    (lambda: caption(_scene(), np.random.default_rng(0), only=True), "only=True needs"),
])
def test_bad_parameters_raise_config_error(call, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        call()


# ----------------------------------------------------------------------------- held-out ground truth and files


def test_heldout_scenes_yield_rendered_ground_truth():
    expected = sample_scenes(5, seed=2, split="heldout", count=1)
    items = list(heldout_scenes(5, seed=2, image_size=48, count=1))
    assert len(items) == 5
    for scene, (image, labels, mask) in zip(expected, items):
        want_image, want_mask = render(scene, 48)
        assert isinstance(image, Image.Image) and image.size == (48, 48) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), want_image)
        np.testing.assert_array_equal(mask, want_mask)
        assert labels == scene.labels()


def _read_table(folder):
    with open(folder / "labels.csv", newline="", encoding="utf-8") as table:
        reader = csv.DictReader(table)
        return reader.fieldnames, list(reader)


def test_cli_writes_scenes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "scenes"
    command = [sys.executable, "-m", "core", "toy", "scenes", "--n", "6", "--seed", "3", "--out", str(out),
               "--size", "40"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "6" in done.stdout and str(out) in done.stdout
    columns, rows = _read_table(out)
    assert tuple(columns) == LABEL_COLUMNS and len(rows) == 6
    for scene, row in zip(sample_scenes(6, 3, split="heldout"), rows):
        image, mask = render(scene, 40)
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["file"])), image)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "masks" / Path(row["file"]).name)), mask)
        assert {k: row[k] for k in LABEL_COLUMNS[1:-1]} == {k: str(v) for k, v in scene.labels().items()}
        assert row["caption"]
    # The refusal is checked in-process: each `python -m core` start imports every command module.
    before = (out / "labels.csv").read_bytes()
    parser = argparse.ArgumentParser()
    toy.register(parser.add_subparsers())
    args = parser.parse_args(command[3:])
    with pytest.raises(ConfigError, match="not empty.*--overwrite"):
        args.func(args)
    assert (out / "labels.csv").read_bytes() == before


def test_overwrite_replaces_only_written_scenes(tmp_path):
    write_scenes(tmp_path, 5, seed=0, split="train")
    (tmp_path / "notes.txt").write_text("mine")
    first_captions = [row["caption"] for row in _read_table(tmp_path)[1]]
    write_scenes(tmp_path, 2, seed=0, split="train", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000000.png", "000001.png"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["000000.png", "000001.png"]
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert [row["caption"] for row in _read_table(tmp_path)[1]] == first_captions[:2]


def test_write_scenes_rejects_a_file_as_folder(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        write_scenes(target, 1, seed=0, overwrite=True)
