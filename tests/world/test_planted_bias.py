"""The planted-bias world: training scenes carry the bias, held-out scenes stay uniform, grouped sets read back."""

from collections import Counter

import pytest

from core.errors import ConfigError
from core.heads.spurious import grouped_folder
from core.world import scenes as world
from core.world.bias import PlantedBias, heldout_group_scenes, write_grouped_scenes
from core.world.toy import TrainConfig, training_scenes

SHIPPED = PlantedBias.parse("triangle:dotted,square:striped", p=0.9)


def _rates(scenes, shape):
    mine = [s.background for s in scenes if s.shape == shape]
    counts = Counter(mine)
    return {b: counts[b] / len(mine) for b in world.BACKGROUNDS}, len(mine)


def test_training_split_carries_the_bias_and_nothing_else_changes():
    scenes = world.sample_scenes(6000, seed=3, split="train", bias=SHIPPED)
    plain = world.sample_scenes(6000, seed=3, split="train")
    # Only backgrounds are redrawn: every other attribute equals the unbiased draw's.
    assert all(a.shape == b.shape and a.colour == b.colour and a.cells == b.cells and a.jitter == b.jitter
               for a, b in zip(scenes, plain))
    for shape, background in SHIPPED.pairs:
        rates, n = _rates(scenes, shape)
        assert abs(rates[background] - 0.9) < 3 * (0.09 / n) ** 0.5 + 0.005, (shape, rates)
        # the rest of the mass is spread over the other five backgrounds
        assert all(0.0 < rates[b] < 0.05 for b in world.BACKGROUNDS if b != background)
    rates, _ = _rates(scenes, "circle")  # "uniform": other shapes keep uniform backgrounds
    assert all(abs(r - 1 / 6) < 0.04 for r in rates.values())
    avoid = world.sample_scenes(6000, seed=3, split="train", bias=PlantedBias(SHIPPED.pairs, 0.9, "avoid"))
    rates, _ = _rates(avoid, "star")
    assert rates["dotted"] + rates["striped"] < 0.1


def test_scene_i_does_not_depend_on_n_with_a_bias():
    assert world.sample_scenes(1500, seed=2, split="train", bias=SHIPPED)[:7] == \
        world.sample_scenes(7, seed=2, split="train", bias=SHIPPED)


def test_heldout_scenes_stay_uniform_and_refuse_a_bias():
    with pytest.raises(ConfigError, match="training split only"):
        world.sample_scenes(10, seed=0, split="heldout", bias=SHIPPED)
    rates, _ = _rates(world.sample_scenes(6000, seed=3, split="heldout"), "triangle")
    assert rates["dotted"] < 0.25


def test_training_batches_plant_the_bias_in_every_kind_of_group():
    config = TrainConfig(bias=SHIPPED.spec, bias_p=0.9, group_size=3)
    counts = Counter()
    for step in range(60):
        scenes, captions = training_scenes(config, step)
        assert len(scenes) == config.batch_size == len(captions)
        counts.update((s.shape, s.background) for s in scenes)
        # shape groups use the unpaired shapes only
        grouped = scenes[:config.shape_groups * config.group_size]
        assert {s.shape for s in grouped} <= {"circle", "star", "cross"}
    triangles = sum(v for (s, _), v in counts.items() if s == "triangle")
    assert counts[("triangle", "dotted")] / triangles > 0.85
    with pytest.raises(ConfigError, match="group_size"):
        TrainConfig(bias=SHIPPED.spec, group_size=4)


def test_bad_bias_specs():
    for text, message in (("triangle", "SHAPE:BACKGROUND"), ("hexagon:dotted", "unknown shape"),
                          ("triangle:dotted,square:dotted", "one pair only"), ("triangle:plaid", "unknown background")):
        with pytest.raises(ConfigError, match=message):
            PlantedBias.parse(text)
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        PlantedBias.parse("triangle:dotted", p=1.5)
    with pytest.raises(ConfigError, match="other shapes"):
        PlantedBias.parse("triangle:dotted", others="sometimes")


def test_grouped_set_in_the_waterbirds_layout(tmp_path):
    out = write_grouped_scenes(tmp_path / "grouped", SHIPPED, 3, seed=1)
    grouped = grouped_folder(out)
    assert grouped.classnames == ["square", "triangle"] and len(grouped.paths) == 12
    assert sorted(grouped.group_names) == sorted([
        "triangle on dotted (aligned)", "triangle on striped (conflicting)",
        "square on dotted (conflicting)", "square on striped (aligned)"])
    # every image is the scene its row says
    truth = [scene for *_, scene in heldout_group_scenes(SHIPPED, 3, seed=1)]
    for path, label, group, scene in zip(grouped.paths, grouped.labels, grouped.groups, truth):
        assert grouped.classnames[label] == scene.shape
        assert grouped.group_names[group].startswith(f"{scene.shape} on {scene.background}")
    with pytest.raises(ConfigError, match="already holds files"):
        write_grouped_scenes(out, SHIPPED, 3, seed=1)


def test_grouped_scenes_command_feeds_the_spurious_command(tmp_path, capsys):
    import json

    from core.cli import main

    out = tmp_path / "grouped"
    assert main(["toy", "scenes", "--groups", "triangle:dotted,square:striped", "--n", "3", "--seed", "2",
                 "--out", str(out)]) == 0
    assert "python -m core spurious" in capsys.readouterr().out
    assert main(["spurious", "--model", "toy", "--images", str(out), "--heads", "3.0", "--templates", "simple",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classnames"] == ["square", "triangle"] and len(report["base"]["per_group"]) == 4
    assert main(["toy", "scenes", "--groups", "triangle:dotted", "--n", "3", "--seed", "2", "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(["toy", "scenes", "--groups", "triangle:dotted", "--split", "train", "--n", "3", "--seed", "2",
                 "--out", str(tmp_path / "other")]) == 2
    assert "held-out" in capsys.readouterr().err


def test_a_model_s_planted_bias_comes_from_its_own_checkpoint(tmp_path, capsys):
    """The pairs a model was trained with are read from its checkpoint's metadata (what `toy train --bias` wrote),
    not from a list kept in code: `toy bias` and the adversarial protocol take them from there."""
    import json

    from core.cli import main
    from core.engine.models import load_clip
    from core.world.bias import model_bias, planted_bias_of

    biased = load_clip("toy-biased")
    assert planted_bias_of(biased) == SHIPPED and model_bias(biased) == SHIPPED
    assert planted_bias_of(load_clip("toy")) is None and planted_bias_of(load_clip("Tiny-ViT/none")) is None
    assert model_bias(load_clip("toy"), "circle:pink").pairs == (("circle", "pink"),)
    with pytest.raises(ConfigError, match="records no planted bias"):
        model_bias(load_clip("toy"))
    assert main(["toy", "bias", "--model", "toy-biased", "--n", "2", "--seed", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["triangle", "square"]
    assert main(["toy", "bias", "--model", "toy", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "records no planted bias" in err and "--pairs" in err
