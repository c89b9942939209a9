"""Composites of objects of different classes (world-pairs), class specificity and random-neuron draws, each
against ground truth: the exact per-object masks, a literal transcription of the scores, single-seed runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from core.cli import main
from core.engine.models import load_clip
from core.errors import ConfigError, DatasetError
from core.segmentation.datasets import WorldPairsSegmentation, open_dataset, world_class_prompts
from core.segmentation.evaluate import evaluate
from core.segmentation.methods import MethodOptions
from core.segmentation.metrics import specificity_summary, specificity_terms, wilson_interval
from core.world import scenes as world
from core.world.composites import CompositeObject, CompositeScene, render_composite, sample_composites

SEED = 61  # held out: not the benchmark's seeds (4721, 8377)


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy")


def test_composites_hold_objects_of_different_classes_with_exact_masks():
    scenes = sample_composites(60, SEED)
    assert scenes[:10] == sample_composites(10, SEED)  # scene i does not depend on n
    assert scenes != sample_composites(60, SEED + 1)
    for scene in scenes:
        assert len(set(scene.classes)) == 2 and len({o.cell for o in scene.objects}) == 2
        image, mask = render_composite(scene)
        assert set(np.unique(mask)) == {0, 1, 2}
        for k, obj in enumerate(scene.objects):
            alone_image, alone_mask = world.render(scene.single(obj))
            assert np.array_equal(mask == k + 1, alone_mask > 0)  # every pixel of the object, nothing else
            assert (image[mask == k + 1] == world.COLOURS[obj.colour]).all()
        background, _ = world.render(scene.single(scene.objects[0]))
        assert np.array_equal(image[mask == 0], background[mask == 0])
    # uniform enough to be a benchmark: every class and background appears as the mapped object over 500 scenes
    many = sample_composites(500, SEED)
    assert len({s.classes[0] for s in many}) == 40 and len({s.background for s in many}) == len(world.BACKGROUNDS)
    three = sample_composites(5, SEED, objects=3)
    assert all(len(set(s.classes)) == 3 for s in three)


def test_composites_refuse_repeated_classes_and_bad_counts():
    obj = CompositeObject("circle", "red", "large", 0, (0.0, 0.0))
    with pytest.raises(ConfigError, match="different classes"):
        CompositeScene("gray", (obj, CompositeObject("circle", "red", "small", 4, (0.0, 0.0))))
    with pytest.raises(ConfigError, match="2..4"):
        sample_composites(3, 0, objects=5)


def test_world_pairs_dataset_gives_the_first_object_and_the_others_as_negatives():
    dataset = open_dataset("world-pairs:12:61")
    assert isinstance(dataset, WorldPairsSegmentation) and len(dataset) == 12 and dataset.labelled
    names = world_class_prompts().classnames
    for i in range(12):
        sample, scene = dataset.sample(i), dataset.scenes[i]
        _, mask = render_composite(scene)
        assert np.array_equal(sample.mask, mask == 1) and np.array_equal(sample.others[0], mask == 2)
        assert names[sample.label] == scene.classes[0] and [names[j] for j in sample.other_labels] == [scene.classes[1]]
    assert open_dataset("world-pairs:4:61:3").sample(0).others.shape[0] == 2


@pytest.mark.parametrize("spec,message", [("world-pairs:x", "integers"), ("world-pairs:5:1:9", "2..4"),
                                          ("world-pairs:5:-1", "seed"), ("world-pairs:1:2:3:4", "world-pairs:N")])
def test_bad_world_pairs_specs(spec, message):
    with pytest.raises(DatasetError, match=message):
        open_dataset(spec)


def test_specificity_terms_match_a_literal_computation():
    rng = np.random.default_rng(0)
    target = np.zeros((16, 16), bool)
    target[2:6, 2:6] = True
    other = np.zeros((16, 16), bool)
    other[9:14, 8:12] = True
    for _ in range(20):
        scores = rng.random((16, 16))
        terms = specificity_terms(scores, target, other[None])
        mean_a, mean_b = scores[target].mean(), scores[other].mean()
        assert terms["mean_target"] == pytest.approx(mean_a) and terms["mean_others"] == [pytest.approx(mean_b)]
        assert terms["specific"] == (mean_a > mean_b)
        pixels = target | other
        assert terms["ap_target_vs_others"] == pytest.approx(average_precision_score(target[pixels], scores[pixels]))
    perfect = specificity_terms(target.astype(float), target, other[None])
    assert perfect["specific"] and perfect["ap_target_vs_others"] == 1.0
    # a tie (e.g. both objects clamped to 0) is not specific; an object cropped away leaves the image unscored
    assert not specificity_terms(np.zeros((16, 16)), target, other[None])["specific"]
    gone = specificity_terms(np.ones((16, 16)), target, np.zeros((1, 16, 16), bool))
    assert not gone["scored"] and math.isnan(gone["ap_target_vs_others"])
    summary = specificity_summary([perfect, gone, specificity_terms(other.astype(float), target, other[None])])
    assert summary["images"] == 2 and summary["unscored_images"] == 1 and summary["share_target_above_others"] == 0.5
    assert summary["share_interval_95"] == pytest.approx(list(wilson_interval(1, 2)))
    low, high = wilson_interval(80, 100)
    assert low == pytest.approx(0.7112, abs=1e-3) and high == pytest.approx(0.8666, abs=1e-3)


def test_the_oracle_is_specific_and_a_text_free_map_cannot_prefer_the_named_object(toy, tmp_path):
    report = evaluate(toy, open_dataset("world-pairs:24:61"), ["oracle", "rollout"], state_dir=tmp_path)
    oracle, rollout = report.class_specificity["oracle"], report.class_specificity["rollout"]
    assert oracle["share_target_above_others"] == 1.0 and oracle["ap_target_vs_others"] == 1.0
    # rollout's map does not depend on the text: swapping which object is named flips every verdict
    dataset = open_dataset("world-pairs:24:61")
    swapped = evaluate(toy, _Swapped(dataset), ["rollout"], state_dir=tmp_path / "swapped")
    assert rollout["specific_images"] + swapped.class_specificity["rollout"]["specific_images"] <= 24
    saved = report.as_dict()
    assert set(saved["class_specificity"]) == {"oracle", "rollout"} and 0 <= saved["objects_recognised"] <= 1
    with pytest.raises(ConfigError, match="aligned protocol"):
        evaluate(toy, dataset, ["heads"], protocol="official", state_dir=tmp_path)
    with pytest.raises(ConfigError, match="aligned protocol"):
        evaluate(toy, dataset, ["heads"], class_source="predicted", state_dir=tmp_path)


class _Swapped(WorldPairsSegmentation):
    """The same composites with the roles of the two objects exchanged (the second object is mapped)."""

    def __init__(self, dataset):
        self.__dict__.update(dataset.__dict__)
        self.spec = dataset.spec + ":swapped"

    def sample(self, index):
        from dataclasses import replace

        sample = super().sample(index)
        return replace(sample, mask=sample.others[0], others=sample.mask[None], label=sample.other_labels[0],
                       other_labels=(sample.label,))


def test_random_neuron_draws_are_the_single_seed_runs_with_their_spread(toy, tmp_path):
    dataset = open_dataset("world-pairs:6:61")
    options = MethodOptions(seed=3, top_k=20)
    pooled = evaluate(toy, dataset, ["random-neurons"], options=options, random_draws=3, state_dir=tmp_path)
    result = pooled.result("random-neurons")
    singles = [evaluate(toy, dataset, ["random-neurons"], options=MethodOptions(seed=s, top_k=20),
                        state_dir=tmp_path / f"s{s}").result("random-neurons") for s in (3, 4, 5)]
    assert [d["seed"] for d in result.draws] == [3, 4, 5]
    for key in ("ap_foreground", "miou", "map"):
        values = [s.metrics[key] for s in singles]
        assert result.metrics[key] == pytest.approx(np.mean(values))
        assert result.spread[key]["std"] == pytest.approx(np.std(values, ddof=1))
        assert result.spread[key]["min"] == pytest.approx(min(values))
    shares = [s.class_specificity["share_target_above_others"] for s in singles]
    assert result.class_specificity["share_target_above_others"] == pytest.approx(np.mean(shares))
    assert result.class_specificity["draws"] == 3 and "seeds 3..5" in result.description
    with pytest.raises(ConfigError, match="random draws"):
        evaluate(toy, dataset, ["random-neurons"], random_draws=0, state_dir=tmp_path)


def test_segeval_reports_class_specificity_in_text_and_json(tmp_path, capsys):
    argv = ["segeval", "--dataset", "world-pairs:6:61", "--method", "heads", "--method", "oracle",
            "--state-dir", str(tmp_path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "class specificity" in printed and "mean A > mean B" in printed
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["class_specificity"]["oracle"]["share_target_above_others"] == 1.0
    assert set(report["class_specificity"]) == {"heads", "oracle"}
    assert main(argv + ["--protocol", "official"]) == 2
    assert "aligned protocol" in capsys.readouterr().err
    assert main(argv + ["--random-draws", "0"]) == 2


@pytest.mark.slow
def test_heads_name_the_object_on_composites_and_text_free_maps_do_not(toy, tmp_path):
    """The property the papers claim, against ground truth: the heads map for a class is higher on that class's
    object than on the other object far above chance (>= 80 of 120 images: binomial p < 1e-3), and far
    above rollout, whose map cannot depend on which object is named."""
    report = evaluate(toy, open_dataset("world-pairs:120:61"), ["heads", "rollout"], state_dir=tmp_path)
    heads, rollout = report.class_specificity["heads"], report.class_specificity["rollout"]
    assert heads["specific_images"] >= 80, heads
    assert heads["share_target_above_others"] >= rollout["share_target_above_others"] + 0.15, (heads, rollout)
    assert heads["ap_target_vs_others"] > rollout["ap_target_vs_others"]
