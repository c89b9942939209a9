"""Direct-effect mean-ablation: the arithmetic, the streaming means, and accuracy on labelled folders."""

import pytest
import torch

from core.engine.ablation import (Ablation, ablate, ablation_accuracies, component_means, image_components,
                           means_from_batches, standard_ablations)
from core.errors import IndexRangeError
from core.engine.images import image_folder
from core.engine.text import zero_shot_classifier
from core.world.scenes import write_scenes
from tests.conftest import random_pixels


@pytest.fixture(scope="module")
def parts_and_means(tiny):
    pixels = random_pixels(tiny, batch=6, seed=3)
    parts = image_components(tiny, pixels)
    means = means_from_batches(tiny, [pixels[:3], pixels[3:]], description="six random images")
    return parts, means


def test_components_sum_to_the_unit_representation(tiny, parts_and_means):
    parts, means = parts_and_means
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(tiny.model.encode_image(random_pixels(tiny, batch=6, seed=3)), dim=-1)
    assert torch.allclose(parts.representation(), reference, atol=1e-5)
    assert means.count == 6
    assert torch.allclose(means.means.heads[0], parts.heads.mean(0), atol=1e-6)


def test_ablation_arithmetic(parts_and_means):
    parts, means = parts_and_means
    m = means.means
    assert torch.allclose(ablate(parts, m, Ablation("none")), parts.representation())
    expected = parts.representation() - parts.mlps.sum(1) - parts.embedding_term + m.mlps.sum(1) + m.embedding_term
    assert torch.allclose(ablate(parts, m, Ablation("mlps", mlps=True)), expected, atol=1e-6)
    layer1 = parts.representation() - parts.heads[:, 1].sum(1) + m.heads[:, 1].sum(1)
    assert torch.allclose(ablate(parts, m, Ablation("l1", attention_layers=(1,))), layer1, atol=1e-6)
    # a head ablated whole keeps its mean; the CLS path is replaced only for the other heads
    both = ablate(parts, m, Ablation("both", heads=((1, 2),), cls_to_cls=True))
    manual = (parts.representation() - parts.heads[:, 1, 2] + m.heads[:, 1, 2]
              + (m.cls_to_cls - parts.cls_to_cls).sum((1, 2)) - (m.cls_to_cls - parts.cls_to_cls)[:, 1, 2])
    assert torch.allclose(both, manual, atol=1e-6)
    everything = Ablation("all", mlps=True, attention_layers=tuple(range(parts.heads.shape[1])))
    ablated = ablate(parts, m, everything)
    assert torch.allclose(ablated, ablated[:1].expand_as(ablated), atol=1e-6)  # every image becomes the mean
    with pytest.raises(IndexRangeError):
        ablate(parts, m, Ablation("bad", heads=((0, 9),)))


def test_standard_table_rows():
    names = [a.name for a in standard_ablations(3, per_layer=True)]
    assert names[:4] == ["baseline", "all MLPs", "CLS->CLS paths", "MLPs + CLS->CLS"]
    assert "attention layers 0..2" in names and "attention layer 1 only" in names


def _folder_from_scenes(tmp_path, name, seed):
    import csv
    import shutil

    source = write_scenes(tmp_path / f"{name}-raw", 24, seed)
    folder = tmp_path / name
    with open(source / "labels.csv") as handle:
        for row in csv.DictReader(handle):
            (folder / row["shape"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / row["file"], folder / row["shape"] / row["file"].split("/")[-1])
    return folder


def test_accuracy_on_a_labelled_folder_matches_plain_zero_shot(tiny, tmp_path):
    evaluation = image_folder(_folder_from_scenes(tmp_path, "eval", 1))
    reference = _folder_from_scenes(tmp_path, "ref", 2)
    classifier = zero_shot_classifier(tiny, evaluation.classnames, ["a photo of a {}."])
    means = component_means(tiny, sorted(reference.rglob("*.png")), description="reference folder")
    report = ablation_accuracies(tiny, evaluation, classifier, means, standard_ablations(3),
                                 classifier_description="simple", batch_size=7)
    from core.engine.images import load_image
    pixels = torch.stack([tiny.preprocess(load_image(p)) for p in evaluation.paths])
    with torch.inference_mode():
        predicted = (tiny.model.encode_image(pixels) @ classifier.T).argmax(-1)
    plain = float((predicted == torch.tensor(evaluation.labels)).float().mean())
    rows = dict(report.rows)
    assert rows["baseline"] == pytest.approx(plain)
    assert report.n_images == 24 and report.means_count == 24 and report.means_from == "reference folder"
