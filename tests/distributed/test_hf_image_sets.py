"""Hugging Face `datasets` as image sets, offline: saved with save_to_disk, as parquet, streamed, and refused."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.artifacts.store import load_artifact
from core.cli import main
from core.engine.imagesets import parse_image_set
from core.errors import ConfigError, DatasetError
from core.world.scenes import render, sample_scenes

datasets = pytest.importorskip("datasets")
N = 96


def _png(scene) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render(scene)[0]).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The first N held-out world scenes (seed 1) as a dataset: an Image column, a ClassLabel, a caption."""
    scenes = sample_scenes(N, 1, split="heldout")
    shapes = sorted({s.shape for s in scenes})
    features = datasets.Features({"picture": datasets.Image(), "shape": datasets.ClassLabel(names=shapes),
                                  "caption": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict({"picture": [{"bytes": _png(s), "path": None} for s in scenes],
                                          "shape": [s.shape for s in scenes], "caption": [str(s) for s in scenes]},
                                         features=features)
    root = tmp_path_factory.mktemp("datasets")
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(root / "dict"))
    (root / "parquet").mkdir()
    dataset.to_parquet(str(root / "parquet" / "train.parquet"))
    datasets.Dataset.from_dict({"caption": ["a", "b"]}).save_to_disk(str(root / "captions"))
    return root


@pytest.mark.parametrize("form", ["dict:train", "dict:train:picture", "dict:train?stream", "parquet:train"])
def test_a_local_dataset_reads_the_same_images_by_global_id(saved, form):
    spec = f"hf:{saved}/{form}"
    image_set, world = parse_image_set(spec), parse_image_set("world:96:1", generator_split="heldout")
    assert image_set.count == N and image_set.params["column"] == "picture"
    for index in (0, 41, N - 1):
        assert np.array_equal(np.asarray(image_set.image(index)), np.asarray(world.image(index)))
    batches = list(image_set.shard(2, 3).batches(lambda image: torch.from_numpy(np.asarray(image).copy()), 10))
    ids = torch.cat([ids for ids, _ in batches])
    assert ids.tolist() == list(range(64, 96))
    assert torch.equal(batches[0][1][0], torch.from_numpy(np.asarray(world.image(64)).copy()))
    assert parse_image_set(spec).identity() == image_set.identity()  # stable


def test_streamed_and_map_style_datasets_have_one_identity(saved):
    assert (parse_image_set(f"hf:{saved}/dict:train?stream").fingerprint()
            == parse_image_set(f"hf:{saved}/dict:train").fingerprint())


def test_labels_come_from_a_class_label_column(saved):
    labelled = parse_image_set(f"hf:{saved}/dict:train", label_column="shape")
    scenes = sample_scenes(N, 1, split="heldout")
    assert [labelled.classnames[label] for label in labelled.labels] == [s.shape for s in scenes]
    files = labelled.labelled_images()
    assert len(files.paths) == N and Image.open(files.paths[3]).size == (64, 64)


@pytest.mark.parametrize("form, message", [
    ("captions:train", "has no image column"),
    ("dict:train:caption", "not an image column"),
    ("dict:train:nope", "has no column 'nope'"),
    ("dict:validation", "no split 'validation'"),
])
def test_bad_local_datasets_are_refused_clearly(saved, form, message):
    with pytest.raises(DatasetError, match=message):
        parse_image_set(f"hf:{saved}/{form}")


def test_an_offline_hub_dataset_not_in_the_cache_is_refused_clearly():
    with pytest.raises(DatasetError, match="not in the local Hugging Face cache"):
        parse_image_set("hf:nobody/no-such-images@" + "0" * 40 + ":validation")


def test_an_unpinned_hub_dataset_is_refused():
    with pytest.raises(ConfigError, match="pin the Hub dataset"):
        parse_image_set("hf:nobody/no-such-images:validation")


@pytest.mark.slow
def test_bases_from_a_local_dataset_equal_bases_from_the_same_images(saved, tmp_path):
    common = ["bases", "build", "--model", "toy", "--texts", "toy", "--layers", "3", "--neuron-layers", "2",
              "--rank", "16", "--per-head", "6", "--k", "8", "--batch-size", "16", "--shard-size", "32"]
    assert main(common + ["--images", f"hf:{saved}/dict:train", "--out", str(tmp_path / "hf")]) == 0
    assert main(common + ["--images", "world:96:1", "--out", str(tmp_path / "world")]) == 0
    from_hf, from_world = load_artifact(tmp_path / "hf"), load_artifact(tmp_path / "world")
    assert from_hf.manifest["image_set"]["kind"] == "hf" and from_hf.json("image_set")["params"]["split"] == "train"
    for group in ("textspan_L3H0", "textspan_L3H2", "neurons_L2", "neuron_means_L2"):
        a, b = from_hf.tensors(group), from_world.tensors(group)
        assert all(torch.equal(a[name], b[name]) for name in a), group
