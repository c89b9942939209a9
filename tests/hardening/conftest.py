"""Files a careless user or an attacker would hand the tool: real files, pipes, links and folders on disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from core.cli import main
from core.world.scenes import render, sample_scenes, write_scenes

MODEL = "Tiny-ViT/none"


def rehash(folder: Path) -> None:
    """Recompute every sha256 and size in an artifact's manifest, as an attacker who edits files would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for rel in manifest["files"]:
        data = (folder / rel).read_bytes()
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(folder: Path, change) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def set_tensor(folder: Path, group: str, name: str, value: torch.Tensor) -> Path:
    path = folder / "tensors" / f"{group}.safetensors"
    tensors = load_file(path)
    tensors[name] = value
    save_file(tensors, path)
    rehash(folder)
    return folder


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> SimpleNamespace:
    """One folder of good inputs and of every kind of bad one, shared by the hardening tests (read-only)."""
    root = tmp_path_factory.mktemp("hostile")
    h = SimpleNamespace(root=root)
    image, _ = render(sample_scenes(1, seed=5, split="heldout")[0])
    h.png = root / "scene.png"
    Image.fromarray(image).save(h.png)
    h.scenes = write_scenes(root / "scenes", 12, seed=1)
    h.images = h.scenes / "images"
    h.pool = root / "pool.txt"
    h.pool.write_text("a red circle\na blue square\ntwo stars\na green cross\na photo of a triangle\n")
    h.templates = root / "templates.txt"
    h.templates.write_text("a photo of a {}.\na drawing of a {}.\n")
    h.heads_json = root / "heads.json"
    h.heads_json.write_text(json.dumps({"heads": [[2, 1]], "provenance": "test"}))
    h.grouped = root / "grouped"
    h.grouped.mkdir()
    rows = ["file,label,group"] + [f"../scenes/images/{i:06d}.png,{i % 2},{i % 4}" for i in range(12)]
    shutil.copytree(h.images, h.grouped / "images")
    rows = ["file,label,group"] + [f"images/{i:06d}.png,{i % 2},{i % 4}" for i in range(12)]
    (h.grouped / "metadata.csv").write_text("\n".join(rows) + "\n")

    # Bad files of every kind.
    h.missing = root / "missing.png"
    h.folder = root / "a_folder"
    h.folder.mkdir()
    (h.folder / "notes.txt").write_text("no images here")
    h.empty = root / "empty.png"
    h.empty.write_bytes(b"")
    h.fifo = root / "pipe.png"
    os.mkfifo(h.fifo)
    h.fifo_txt = root / "pipe.txt"
    os.mkfifo(h.fifo_txt)
    h.zero_link = root / "zero.png"
    h.zero_link.symlink_to("/dev/zero")
    h.loop = root / "loop.png"
    h.loop.symlink_to(root / "loop.png")
    h.text_png = root / "text.png"
    h.text_png.write_text("this is not an image")
    h.garbage = root / "garbage.bin"
    h.garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    h.latin1 = root / "latin1.txt"
    h.latin1.write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    h.binary_txt = root / "binary.txt"
    h.binary_txt.write_bytes(b"\x00\xff\xfe" * 100)
    h.blank_txt = root / "blank.txt"
    h.blank_txt.write_text("\n  \n\t\n")
    h.long_line = root / "long_line.txt"
    h.long_line.write_text("x" * 20_000 + "\n")
    h.plain_pt = root / "plain.pt"
    h.plain_pt.write_text("this is a text file, not a checkpoint\n")
    h.zero_st = root / "zero.safetensors"
    h.zero_st.write_bytes(b"")
    h.bad_st = root / "bad.safetensors"
    h.bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    h.under_file = h.pool / "below" / "x"
    h.nan_tiff = root / "nan.tiff"
    Image.fromarray(np.full((16, 16), np.nan, dtype=np.float32), mode="F").save(h.nan_tiff)
    h.negative_tiff = root / "negative.tiff"
    Image.fromarray(np.full((16, 16), -3.0, dtype=np.float32), mode="F").save(h.negative_tiff)
    h.huge_png = root / "huge.png"
    _png_header_only(h.huge_png, 20_000, 20_000)
    h.bad_templates = {}
    for name, text in {"zero": "a {0} photo\n", "named": "a {x} photo of {}\n", "none": "a photo\n",
                       "two": "{} and {}\n", "brace": "a {} photo {\n"}.items():
        h.bad_templates[name] = root / f"templates_{name}.txt"
        h.bad_templates[name].write_text(text)
    h.bad_heads = {}
    for name, text in {"deep": "[" * 100_000 + "]" * 100_000, "shape": '{"heads": [[1]]}', "text": "heads!",
                       "bool": '{"heads": [[true, 1]]}'}.items():
        h.bad_heads[name] = root / f"heads_{name}.json"
        h.bad_heads[name].write_text(text)
    h.bad_csv = {}
    for name, data in {"latin1": "file,shape\nimages/000000.png,caf\xe9\n".encode("latin-1"),
                       "nul": b"file,shape\nimages/0\x00.png,circle\n", "short": b"file,shape\nimages/000000.png\n",
                       "escape": b"file,shape\n../../../../etc/passwd,circle\n", "nocol": b"a,b\n1,2\n"}.items():
        folder = root / f"csv_{name}"
        folder.mkdir()
        (folder / "labels.csv").write_bytes(data)
        (folder / "metadata.csv").write_bytes(data)
        h.bad_csv[name] = folder

    # Weights: NaN in one parameter of an otherwise loadable checkpoint.
    from core.engine.models import load_clip

    state = {k: v.clone() for k, v in load_clip(MODEL).model.state_dict().items()}
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    h.nan_weights = root / "nan_weights.safetensors"
    save_file(state, h.nan_weights)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("inf"))
    h.inf_weights = root / "inf_weights.safetensors"
    save_file(state, h.inf_weights)

    # A real neuron-bases artifact for the tiny model, and tampered copies of it.
    h.bases = root / "bases"
    assert main(["neurons", "--model", MODEL, "--layer", "1", "--images", "world:24", "--texts", str(h.pool),
                 "--out", str(h.bases), "--k", "5", "--terms", "2", "--batch-size", "12"]) == 0
    h.tampered = _tampered_copies(root / "tampered", h.bases)
    return h


def _png_header_only(path: Path, width: int, height: int) -> None:
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))


def _tampered_copies(root: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """name -> (artifact folder, regex the refusal must match)."""
    root.mkdir()
    made: dict[str, tuple[Path, str]] = {}

    def copy(name: str) -> Path:
        folder = root / name
        shutil.copytree(good, folder, symlinks=True)
        return folder

    group = "tensors/neurons_L1.safetensors"

    folder = copy("corrupt_data_rehashed")
    (folder / group).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!" + b"\x00" * 64)
    rehash(folder)
    made[folder.name] = (folder, "not a readable safetensors")

    folder = copy("wrong_shape_rehashed")
    set_tensor(folder, "neurons_L1", "pcs", torch.zeros(7, 3))
    made[folder.name] = (folder, r"pcs has shape \[7, 3\]")

    folder = copy("index_out_of_range")
    set_tensor(folder, "neurons_L1", "top_images", torch.full((192, 5), 10_000, dtype=torch.int32))
    made[folder.name] = (folder, "outside 0..")

    folder = copy("nan_tensor")
    tensors = load_file(folder / group)
    set_tensor(folder, "neurons_L1", "pcs", torch.full_like(tensors["pcs"], float("nan")))
    made[folder.name] = (folder, "NaN or infinite")

    folder = copy("inf_threshold")
    set_tensor(folder, "neurons_L1", "thresholds", torch.full_like(tensors["thresholds"], float("inf")))
    made[folder.name] = (folder, "NaN or infinite")

    folder = copy("deep_manifest")
    (folder / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    made[folder.name] = (folder, "nested too deeply|not valid JSON|not a JSON object")

    folder = copy("manifest_is_folder")
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir()
    made[folder.name] = (folder, "is a folder")

    folder = copy("manifest_is_fifo")
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    made[folder.name] = (folder, "not a regular file")

    folder = copy("manifest_to_dev_zero")
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to("/dev/zero")
    made[folder.name] = (folder, "outside the artifact folder")

    folder = copy("data_to_system_file")
    (folder / group).unlink()
    (folder / group).symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    rehash(folder)
    made[folder.name] = (folder, "outside the artifact folder")

    folder = copy("data_is_fifo")
    (folder / group).unlink()
    os.mkfifo(folder / group)
    made[folder.name] = (folder, "not a regular file")

    folder = copy("count_many")
    edit_manifest(folder, lambda m: m["image_set"].__setitem__("count", "many"))
    made[folder.name] = (folder, "image_set count must be an integer")

    folder = copy("nan_metric")
    text = (folder / "manifest.json").read_text()
    manifest = json.loads(text)
    key = next(iter(manifest["metrics"]))
    (folder / "manifest.json").write_text(text.replace(json.dumps(manifest["metrics"][key]), "NaN", 1))
    made[folder.name] = (folder, "NaN is not valid JSON|finite")

    folder = copy("huge_metric")
    edit_manifest(folder, lambda m: m["metrics"].__setitem__("x", "1e999"))
    made[folder.name] = (folder, "metrics must be finite numbers")

    folder = copy("bytes_not_int")
    edit_manifest(folder, lambda m: m["files"][group].__setitem__("bytes", "12"))
    made[folder.name] = (folder, "needs sha256")

    folder = copy("oversize_manifest")
    edit_manifest(folder, lambda m: m.__setitem__("notes", "x" * 17_000_000))
    made[folder.name] = (folder, "over the limit")

    folder = copy("not_an_object")
    (folder / "manifest.json").write_text("[1, 2, 3]")
    made[folder.name] = (folder, "not a JSON object")

    folder = copy("path_escape")
    edit_manifest(folder, lambda m: m["files"].__setitem__("tensors/../../../etc/passwd", {"sha256": "0" * 64,
                                                                                            "bytes": 1}))
    made[folder.name] = (folder, "not a tensors/, tables/ or extra/ data file")

    folder = copy("random_init_text")
    edit_manifest(folder, lambda m: m["model"].__setitem__("random_init", "yes"))
    made[folder.name] = (folder, "random_init has the wrong type")

    folder = copy("layers_not_ints")
    edit_manifest(folder, lambda m: m["algorithms"]["neurons"].__setitem__("layers", "all"))
    made[folder.name] = (folder, "not a list of integers")

    folder = copy("texts_not_list")
    (folder / "extra" / "texts.json").write_text('{"a": 1}')
    rehash(folder)
    made[folder.name] = (folder, "not a list of texts")

    folder = copy("latin1_manifest")
    (folder / "manifest.json").write_bytes((folder / "manifest.json").read_bytes() + b"\xe9")
    made[folder.name] = (folder, "not UTF-8|not valid JSON")
    return made
