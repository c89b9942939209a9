"""Datasets: the ImageNet-segmentation .mat loader on a synthetic file in the same layout, folders, the world."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from PIL import Image

from core.errors import CoreError, DatasetError
from core.segmentation.datasets import (FolderSegmentation, ImageNetSegmentation, WorldSegmentation, open_dataset,
                                        write_imagenet_segmentation)
from core.world.scenes import render, sample_scenes, write_scenes


def _pictures(rng, sizes):
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = [(rng.random((h, w)) > 0.6).astype(np.uint8) for h, w in sizes]
    return images, masks


def _write_matlab_layout(path, images, masks, *, mask_sizes=None, mask_values=None):
    """gtsegs_ijcv.mat's layout, written by hand: /value/img and /value/gt hold [N, 1] object references; arrays
    are stored in MATLAB's reversed axis order; each gt entry refers to a 1 x 1 cell that refers to the mask."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        value = f.create_group("value")
        img = value.create_dataset("img", (len(images), 1), dtype=h5py.ref_dtype)
        gt = value.create_dataset("gt", (len(images), 1), dtype=h5py.ref_dtype)
        for i, (image, mask) in enumerate(zip(images, masks)):
            img[i, 0] = refs.create_dataset(f"i{i}", data=image.transpose(2, 1, 0)).ref
            data = mask if mask_values is None else mask * mask_values
            if mask_sizes and i in mask_sizes:
                data = np.zeros(mask_sizes[i], np.uint8)
            cell = refs.create_dataset(f"c{i}", (1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = refs.create_dataset(f"g{i}", data=np.asarray(data).T).ref
            gt[i, 0] = cell.ref
    return path


def _papers_loader(path, index):
    """The papers' ImagenetSegmentation.__getitem__ indexing, transcribed."""
    with h5py.File(path, "r") as f:
        img = np.array(f[f["/value/img"][index, 0]]).transpose((2, 1, 0))
        target = np.array(f[f[f["/value/gt"][index, 0]][0, 0]]).transpose((1, 0))
    return img, target


def test_mat_loader_reads_the_layout(tmp_path):
    rng = np.random.default_rng(2)
    images, masks = _pictures(rng, [(20, 30), (24, 16), (18, 18)])
    path = _write_matlab_layout(tmp_path / "gtsegs_ijcv.mat", images, masks)
    dataset = open_dataset(str(path))
    assert isinstance(dataset, ImageNetSegmentation) and len(dataset) == 3 and not dataset.labelled
    for i in range(3):
        sample = dataset.sample(i)
        reference_image, reference_mask = _papers_loader(path, i)
        assert np.array_equal(np.asarray(sample.image), images[i]) and np.array_equal(reference_image, images[i])
        assert np.array_equal(sample.mask, masks[i].astype(bool)) and np.array_equal(reference_mask, masks[i])
        assert sample.label is None
    assert len(dataset.class_prompts().classnames) == 1000
    # our writer makes the same layout (for subsets of the real file)
    ours = write_imagenet_segmentation(tmp_path / "subset.mat", images[:2], masks[:2])
    for i in range(2):
        image, mask = _papers_loader(ours, i)
        assert np.array_equal(image, images[i]) and np.array_equal(mask, masks[i])
    with pytest.raises(DatasetError, match="exists"):
        write_imagenet_segmentation(ours, images, masks)


def test_mat_files_of_another_layout_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    images, masks = _pictures(rng, [(10, 12), (12, 10)])
    not_hdf5 = tmp_path / "old.mat"
    not_hdf5.write_bytes(b"MATLAB 5.0 MAT-file, not HDF5" + bytes(200))
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        open_dataset(str(not_hdf5))
    other = tmp_path / "other.mat"
    with h5py.File(other, "w") as f:
        f.create_dataset("value/img", data=np.zeros((2, 1)))
    with pytest.raises(DatasetError, match="layout"):
        open_dataset(str(other))
    wrong_size = _write_matlab_layout(tmp_path / "size.mat", images, masks, mask_sizes={1: (5, 5)})
    dataset = open_dataset(str(wrong_size))
    dataset.sample(0)
    with pytest.raises(DatasetError, match="must have its image's size"):
        dataset.sample(1)
    non_binary = _write_matlab_layout(tmp_path / "values.mat", images, [m * 3 + 1 for m in masks])
    with pytest.raises(DatasetError, match="not a binary mask"):
        open_dataset(str(non_binary)).sample(0)
    with pytest.raises(DatasetError, match="out of range"):
        dataset.sample(2)


def _folder(tmp_path, rng, *, labels=True, sizes=((20, 30), (16, 16))):
    root = tmp_path / "folder"
    (root / "images" / "sub").mkdir(parents=True)
    (root / "masks" / "sub").mkdir(parents=True)
    names = []
    for i, (h, w) in enumerate(sizes):
        name = f"sub/img{i}" if i == 0 else f"img{i}"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
        Image.fromarray(((rng.random((h, w)) > 0.5) * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")
        names.append(name)
    if labels:
        with open(root / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "class"])
            writer.writerows([[f"images/{n}.jpg", c] for n, c in zip(names, ["zebra", "apple"])])
    return root, names


def test_folder_of_images_and_masks(tmp_path):
    rng = np.random.default_rng(4)
    root, names = _folder(tmp_path, rng)
    dataset = open_dataset(str(root))
    assert isinstance(dataset, FolderSegmentation) and dataset.labelled and len(dataset) == 2
    prompts = dataset.class_prompts()
    assert prompts.classnames == ["apple", "zebra"] and len(prompts.prompts[0]) == 80
    first = dataset.sample(0)  # images are sorted by path: img1.jpg before sub/img0.jpg
    assert first.name == "images/img1.jpg" and first.label == prompts.classnames.index("apple")
    expected = np.asarray(Image.open(root / "masks" / "img1.png")) > 0
    assert np.array_equal(first.mask, expected)
    (root / "labels.csv").unlink()
    unlabelled = open_dataset(str(root), classnames=["cat", "dog"])
    assert not unlabelled.labelled and unlabelled.class_prompts().classnames == ["cat", "dog"]


def test_folder_bad_inputs(tmp_path):
    rng = np.random.default_rng(5)
    root, names = _folder(tmp_path, rng, labels=False)
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(root / "masks" / "sub" / "img0.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "img1.png")
    dataset = open_dataset(str(root))
    with pytest.raises(DatasetError, match="must have its image's size"):
        dataset.sample(0)
    with pytest.raises(DatasetError, match="not a binary mask"):
        dataset.sample(1)
    (root / "masks" / "img1.png").unlink()
    with pytest.raises(DatasetError, match="have no mask"):
        open_dataset(str(root))
    with pytest.raises(DatasetError, match="images/ and a masks/"):
        open_dataset(str(tmp_path))


def test_world_dataset_and_world_folders(tmp_path):
    dataset = open_dataset("world:5:21")
    assert isinstance(dataset, WorldSegmentation) and len(dataset) == 5 and dataset.labelled
    scenes = sample_scenes(5, 21, split="heldout")
    prompts = dataset.class_prompts()
    assert len(prompts.classnames) == 40 and prompts.prompts[0][0] == "a photo of a red circle."
    for i, scene in enumerate(scenes):
        sample = dataset.sample(i)
        assert np.array_equal(sample.mask, render(scene)[1] > 0)
        assert prompts.classnames[sample.label] == f"{scene.colour} {scene.shape}"
    # a folder written by `python -m core toy scenes`: instance masks, world classes
    folder = write_scenes(tmp_path / "scenes", 5, 21)
    written = open_dataset(str(folder))
    for i in range(5):
        assert np.array_equal(written.sample(i).mask, dataset.sample(i).mask)
        assert written.sample(i).label == dataset.sample(i).label


@pytest.mark.parametrize("spec,message", [
    ("world:0", "at least 1"), ("world:x:1", "needs integers"), ("world:5:1:2", r"world:N\[:SEED\]"),
    ("world:5:-1", "seed >= 0"), ("world:10000000000", "over the limit"), ("", "no dataset"),
    ("/nonexistent/gtsegs_ijcv.mat", "not found"),
])
def test_bad_dataset_specs(spec, message):
    with pytest.raises(CoreError, match=message):
        open_dataset(spec)


def test_public_mode_reads_no_server_paths(tmp_path):
    from core import settings

    with settings.overridden(public=True):
        with pytest.raises(CoreError, match="public server"):
            open_dataset(str(tmp_path))
        assert len(open_dataset("world:3:1")) == 3
