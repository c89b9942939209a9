"""Nothing the tool did not write is ever replaced or deleted, with or without --overwrite.

Every writer replaces only files its own manifest (or the file's own metadata) lists as its own: the bases
writer (textspan, neurons, bases build), `toy scenes`, `second-order` and `toy train`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.artifacts.store import ArtifactWriter, load_artifact
from core.cli import main
from core.errors import BasesError, OutputError

MODEL = "Tiny-ViT/none"


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _textspan(out: Path, images: Path, *extra: str) -> list[str]:
    return ["textspan", "--model", MODEL, "--images", str(images), "--texts", "toy", "--out", str(out),
            "--layers", "2", "--rank", "4", "--per-head", "2", *extra]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from core.world.scenes import write_scenes

    return write_scenes(tmp_path_factory.mktemp("scenes") / "s", 10, seed=4)


# ---------------------------------------------------------------- the bases writer

@pytest.mark.parametrize("name, content", [("README.md", "# my notes\n"),
                                           ("manifest.json", '{"mine": true}\n'),
                                           (".clipscope-progress.json", "my own file\n")])
@pytest.mark.parametrize("overwrite", [False, True])
def test_textspan_never_replaces_a_users_readme_or_manifest(tmp_path, scenes, capsys, name, content, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(content)
    before = _digest(out)
    assert main(_textspan(out, scenes / "images", *(["--overwrite"] if overwrite else []))) == 2
    err = capsys.readouterr().err
    assert "never" in err or "not clipscope bases" in err, err
    assert _digest(out) == before


def test_textspan_overwrite_replaces_its_own_build_and_keeps_the_users_files(tmp_path, scenes, capsys):
    out = tmp_path / "out"
    assert main(_textspan(out, scenes / "images")) == 0
    (out / "notes.txt").write_text("mine")
    (out / "images").mkdir()
    (out / "images" / "my_photo.png").write_bytes(b"\x89PNG mine")
    assert main(_textspan(out, scenes / "images", "--per-head", "3")) == 2  # another build, no --overwrite
    assert "notes.txt" in capsys.readouterr().err.splitlines()[-1]  # named, and kept
    assert main(_textspan(out, scenes / "images", "--per-head", "3", "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "images" / "my_photo.png").read_bytes() == b"\x89PNG mine"
    assert load_artifact(out).manifest["algorithms"]["textspan"]["n_texts"] == 3


def test_an_edited_card_is_never_replaced(tmp_path, scenes, capsys):
    out = tmp_path / "out"
    assert main(_textspan(out, scenes / "images")) == 0
    card = out / "README.md"
    card.write_text(card.read_text() + "\nMy own remarks.\n")
    before = _digest(out)
    assert main(_textspan(out, scenes / "images", "--per-head", "3", "--overwrite")) == 2
    assert "README.md is not the card clipscope wrote" in capsys.readouterr().err
    assert _digest(out) == before


def test_a_users_file_where_a_group_would_go_is_never_replaced(tmp_path):
    out = tmp_path / "out"
    (out / "tensors").mkdir(parents=True)
    (out / "tensors" / "g.safetensors").write_bytes(b"mine")
    model = {"spec": "x", "arch": "a", "pretrained": "p", "weights_sha256": None, "random_init": True}
    with pytest.raises(BasesError, match="never deleted"):  # refused before any work, whatever overwrite says
        ArtifactWriter(out, model=model, overwrite=True)
    (out / "tensors" / "g.safetensors").unlink()
    writer = ArtifactWriter(out, model=model, overwrite=True)
    (out / "tensors" / "g.safetensors").write_bytes(b"mine")  # dropped there during a long build
    with pytest.raises(OutputError, match="never replaced"):
        writer.add_tensors("g", {"t": torch.zeros(2)})
    assert (out / "tensors" / "g.safetensors").read_bytes() == b"mine"


def test_a_linked_section_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "tensors").symlink_to(elsewhere)
    model = {"spec": "x", "arch": "a", "pretrained": "p", "weights_sha256": None, "random_init": True}
    with pytest.raises(OutputError, match="not a plain folder"):
        ArtifactWriter(out, model=model, overwrite=True)
    assert list(elsewhere.iterdir()) == []


def test_a_fifo_manifest_in_the_output_is_refused_without_waiting(tmp_path, scenes, capsys):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.json")
    assert main(_textspan(out, scenes / "images", "--overwrite")) == 2
    assert "not written by clipscope" in capsys.readouterr().err
    assert (out / "manifest.json").exists() and not (out / "manifest.json").is_file()


@pytest.mark.parametrize("command", ["neurons", "bases build"])
def test_other_bases_writers_keep_a_users_readme(tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# mine\n")
    argv = {"neurons": ["neurons", "--model", MODEL, "--layer", "1", "--images", "world:12", "--texts", "toy",
                        "--out", str(out), "--k", "3", "--terms", "2", "--overwrite"],
            "bases build": ["bases", "build", "--model", MODEL, "--images", "world:12", "--texts", "toy", "--out",
                            str(out), "--layers", "2", "--neuron-layers", "1", "--per-head", "2", "--rank", "4",
                            "--k", "3", "--terms", "2", "--overwrite"]}[command]
    assert main(argv) == 2
    assert "README.md is not the card clipscope wrote" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["README.md"] and (out / "README.md").read_text() == "# mine\n"


# ---------------------------------------------------------------- toy scenes

def _scenes(out: Path, n: int, *extra: str) -> list[str]:
    return ["toy", "scenes", "--n", str(n), "--seed", "0", "--out", str(out), *extra]


def test_toy_scenes_overwrite_keeps_the_users_photo(tmp_path):
    out = tmp_path / "scenes"
    assert main(_scenes(out, 6)) == 0
    photo = out / "images" / "my_photo.png"
    Image.new("RGB", (8, 8), "blue").save(photo)
    (out / "README.md").write_text("my notes")
    mine = photo.read_bytes()
    assert main(_scenes(out, 6)) == 2  # not empty, no --overwrite
    assert main(_scenes(out, 4, "--overwrite")) == 0
    assert photo.read_bytes() == mine and (out / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png",
                                                                   "000003.png", "my_photo.png"]
    assert len((out / "labels.csv").read_text().splitlines()) == 5


def test_toy_scenes_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert main(_scenes(out, 3)) == 0
    (out / "images" / "000001.png").write_bytes(b"my own picture")  # the user replaced one of ours
    (out / "images" / "000005.png").write_bytes(b"another of mine")  # and put one where a new scene would go
    before = _digest(out)
    assert main(_scenes(out, 8, "--overwrite")) == 2
    assert "never replaced" in capsys.readouterr().err
    assert _digest(out) == before


def test_toy_scenes_refuses_a_foreign_folder_of_images(tmp_path, capsys):
    out = tmp_path / "photos"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(out / "images" / "000000.png")
    (out / "labels.csv").write_text("my,own,table\n")
    before = _digest(out)
    assert main(_scenes(out, 2, "--overwrite")) == 2
    assert "never replaced" in capsys.readouterr().err
    assert _digest(out) == before


def test_toy_scenes_removes_only_its_own_stale_scenes(tmp_path):
    out = tmp_path / "scenes"
    assert main(_scenes(out, 5)) == 0
    (out / "masks" / "000004.png").write_bytes(b"edited by the user")
    assert main(_scenes(out, 2, "--overwrite")) == 0  # scenes 2..4 are stale: removed, except the edited mask
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000000.png", "000001.png", "000004.png"]
    assert (out / "masks" / "000004.png").read_bytes() == b"edited by the user"
    assert main(_scenes(out, 5, "--overwrite")) == 2  # a target again, and not ours: refused
    assert (out / "masks" / "000004.png").read_bytes() == b"edited by the user"


# ---------------------------------------------------------------- single files: second-order, toy train

def test_second_order_replaces_only_its_own_file(tmp_path, capsys):
    from core.world.scenes import render, sample_scenes

    image, _ = render(sample_scenes(1, seed=2, split="heldout")[0])
    Image.fromarray(image).save(tmp_path / "scene.png")
    mine = tmp_path / "mine.safetensors"
    save_file({"x": torch.zeros(3)}, mine, metadata={"owner": "me"})
    before = mine.read_bytes()
    argv = ["second-order", "--model", MODEL, "--layer", "1", "--image", str(tmp_path / "scene.png"), "--out"]
    assert main(argv + [str(mine), "--overwrite"]) == 2
    assert "was not written by" in capsys.readouterr().err and mine.read_bytes() == before
    ours = tmp_path / "phi.safetensors"
    assert main(argv + [str(ours)]) == 0
    assert main(argv + [str(ours)]) == 2  # exists, no --overwrite
    assert main(argv + [str(ours), "--overwrite"]) == 0


def test_toy_train_never_replaces_foreign_weights_or_cards(tmp_path):
    from core.world.toy import check_training_outputs

    weights = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, weights)  # a user's file: no toy metadata
    with pytest.raises(OutputError, match="not written by"):
        check_training_outputs(weights, overwrite=True)
    weights.unlink()
    (tmp_path / "MODEL_CARD.md").write_text("# my model\n")
    with pytest.raises(OutputError, match="MODEL_CARD.md exists and was not written"):
        check_training_outputs(weights, overwrite=True)
    check_training_outputs(weights, overwrite=True, card=False)  # no card written: the user's card is not touched
    (tmp_path / "MODEL_CARD.md").unlink()
    (tmp_path / "card.json").write_text(json.dumps({"mine": 1}))
    with pytest.raises(OutputError, match="card.json exists and was not written"):
        check_training_outputs(weights, overwrite=True)


def test_toy_train_accepts_its_own_weights_with_overwrite_only(tmp_path):
    from core.errors import ConfigError
    from core.paths import TOY_WEIGHTS
    from core.world.toy import check_training_outputs, is_toy_weights

    assert is_toy_weights(TOY_WEIGHTS)
    weights = tmp_path / "toy.safetensors"
    weights.write_bytes(TOY_WEIGHTS.read_bytes())
    with pytest.raises(ConfigError, match="pass --overwrite"):
        check_training_outputs(weights, overwrite=False, card=False)
    check_training_outputs(weights, overwrite=True, card=False)
