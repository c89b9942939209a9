"""The engine's one image-set type: every kind indexable by global id, shardable, with a path-free identity."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.engine.imagesets import ImageSet, parse_image_set, register_generator
from core.errors import ConfigError, DatasetError, ImageError

ROOT = Path(__file__).resolve().parents[2]


def _folder(root: Path, n: int = 7) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(root / f"img{i}.png")
    return root


def _value(image: Image.Image) -> int:
    return int(np.asarray(image)[0, 0, 0])


def _ids(shard, batch=2, skipped=None):
    return [ids.tolist() for ids, _ in shard.batches(lambda image: torch.zeros(1), batch, skipped)]


def test_a_folder_by_global_id_and_its_shards(tmp_path):
    images = parse_image_set(str(_folder(tmp_path)))
    assert images.kind == "folder" and len(images) == 7 and _value(images.image(3)) == 90
    shards = [images.shard(s, 3) for s in range(3)]
    assert [list(shard.ids) for shard in shards] == [[0, 1, 2], [3, 4], [5, 6]]  # as datasets' contiguous shards
    assert _ids(images.slice(2, 7)) == [[2, 3], [4, 5], [6]]


def test_unreadable_images_are_skipped_without_moving_batch_boundaries(tmp_path):
    _folder(tmp_path)
    (tmp_path / "img2.png").write_bytes(b"not a png")
    images = ImageSet.folder(tmp_path)
    skipped: list[str] = []
    assert _ids(images.slice(0, 7), 3, skipped) == [[0, 1], [3, 4, 5], [6]]
    assert len(skipped) == 1 and "img2.png" in skipped[0]
    with pytest.raises(ImageError):
        _ids(images.slice(0, 7), 3)


def test_identity_holds_no_absolute_path_and_follows_the_content(tmp_path):
    first, second = _folder(tmp_path / "a"), _folder(tmp_path / "b")
    a, b = ImageSet.folder(first), ImageSet.folder(second)
    assert a.fingerprint() == b.fingerprint()  # the same files under another root (another node's mount)
    assert str(tmp_path) not in str({k: v for k, v in a.identity().items() if k != "description"})
    (second / "img0.png").write_bytes((second / "img0.png").read_bytes() + b"\0")
    assert ImageSet.folder(second).fingerprint() != a.fingerprint()


def test_labelled_folders_and_labels_csv(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "tree" / name / "x.png")
    tree = parse_image_set(str(tmp_path / "tree"), labelled=True)
    assert tree.classnames == ["cat", "dog"] and tree.labels == [0, 1]
    flat = _folder(tmp_path / "flat", 3)
    (flat / "labels.csv").write_text("file,kind\nimg0.png,b\nimg1.png,a\nimg2.png,b\n")
    table = parse_image_set(str(flat), label_column="kind")
    assert table.classnames == ["a", "b"] and table.labels == [1, 0, 1] and _value(table.image(1)) == 30
    assert table.labelled_images().paths[2].name == "img2.png"
    with pytest.raises(DatasetError, match="kind"):
        parse_image_set(str(flat), label_column="colour")


def test_uploaded_files_keep_their_order(tmp_path):
    _folder(tmp_path)
    uploads = ImageSet.files([tmp_path / "img5.png", tmp_path / "img1.png"])
    assert uploads.kind == "files" and [_value(uploads.image(i)) for i in range(2)] == [150, 30]
    with pytest.raises(DatasetError, match="missing"):
        ImageSet.files([tmp_path / "nope.png"])


def test_generated_world_scenes_render_by_id_and_export_losslessly():
    from core.world.scenes import render, sample_scenes

    scenes = parse_image_set("world:12:3:heldout")
    assert scenes.params == {"n": 12, "seed": 3, "split": "heldout", "world_version": scenes.params["world_version"]}
    expected = render(sample_scenes(12, 3, split="heldout")[7])[0]
    assert np.array_equal(np.asarray(scenes.image(7)), expected)
    assert np.array_equal(np.asarray(Image.open(scenes.local_paths()[7]).convert("RGB")), expected)
    assert parse_image_set("world:5", generator_split="heldout").params["split"] == "heldout"
    assert ImageSet.from_record(scenes.record()) == scenes
    for bad in ("world:x", "world:5:1:nosuchsplit", "world:0"):
        with pytest.raises(ConfigError):
            parse_image_set(bad)


def test_any_registered_generator_is_an_image_set():
    class Noise:
        def params(self, n, seed, split):
            return {"n": n, "seed": seed}

        def describe(self, params):
            return f"{params['n']} noise images"

        def render(self, params, ids):
            return [Image.new("RGB", (4, 4), (i, params["seed"], 0)) for i in ids]

    register_generator("noise", Noise())
    images = parse_image_set("noise:9:4")
    assert images.image(6).getpixel((0, 0)) == (6, 4, 0) and _ids(images.shard(1, 2), 2) == [[5, 6], [7, 8]]
    with pytest.raises(ConfigError, match="no image generator 'nothing'"):
        ImageSet.generated("nothing", 3)


def test_the_engine_never_imports_the_packages_above_it():
    above = ("core.world", "core.heads", "core.neurons", "core.cli", "core.distributed", "core.artifacts")
    offenders = []
    for path in (ROOT / "core" / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(above)]
    assert not offenders
    neurons = ast.parse((ROOT / "core" / "neurons" / "bases.py").read_text())
    assert not [n for n in ast.walk(neurons) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("core.world")]
