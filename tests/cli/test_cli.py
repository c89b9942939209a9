"""The command line: the documented JSON schema, and clear errors with exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs"), "HF_HUB_OFFLINE": "1"}


def test_decompose_json_schema(scene_png):
    out = subprocess.run(
        [sys.executable, "-m", "core", "decompose", "--model", "Tiny-ViT-LayerScale/none", "--image", str(scene_png),
         "--text", "a red circle", "--json"], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("model", "text", "cosine", "reconstruction_error", "heads", "mlps", "embedding_term", "convention"):
        assert key in data
    assert data["model"] == "Tiny-ViT-LayerScale/none" and data["text"] == "a red circle"
    assert len(data["heads"]) == 3 and all(len(row) == 4 for row in data["heads"]) and len(data["mlps"]) == 3
    total = data["embedding_term"] + sum(data["mlps"]) + sum(map(sum, data["heads"]))
    assert total == pytest.approx(data["cosine"], abs=1e-5)
    assert data["reconstruction_error"] < 1e-5 and data["random_weights"] is True


def test_decompose_several_texts_and_table(scene_png, capsys):
    assert main(["decompose", "--model", "Tiny-ViT/none", "--image", str(scene_png), "--text", "a", "--text", "b"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "reconstruction error" in printed and printed.count("cos(image, text):") == 2
    assert "units: cosine x100" in printed  # the table is x100, as the tabs show it (docs/cli.md, Units)
    assert main(["decompose", "--model", "Tiny-ViT/none", "--image", str(scene_png), "--text", "a", "--text", "b",
                 "--json"]) == 0
    assert [item["text"] for item in json.loads(capsys.readouterr().out)] == ["a", "b"]


@pytest.mark.parametrize("argv,message", [
    (["--model", "ViT-Q-99/none"], "unknown architecture"),
    (["--model", "ViT-B-32/not_a_tag"], "unknown pretrained tag"),
    (["--model", "ViT-B-32/openai"], "could not obtain weights"),
    (["--model", "Tiny-ViT/missing.safetensors"], "not found"),
    (["--model", "RN50/none"], "ResNet"),
    (["--text", " "], "empty"),
    (["--image", "MISSING"], "not found"),
    (["--image", "NOTIMAGE"], "not an image"),
])
def test_decompose_errors_exit_2(scene_png, tmp_path, capsys, argv, message):
    (tmp_path / "not.png").write_text("hello")
    defaults = {"--model": "Tiny-ViT/none", "--image": str(scene_png), "--text": "a circle"}
    for flag, value in zip(argv[::2], argv[1::2]):
        defaults[flag] = {"MISSING": str(tmp_path / "none.png"), "NOTIMAGE": str(tmp_path / "not.png")}.get(value, value)
    args = ["decompose"] + [item for pair in defaults.items() for item in pair]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_corrupt_checkpoint_is_named(tmp_path, capsys, scene_png):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x00" * 100)
    assert main(["decompose", "--model", f"Tiny-ViT/{bad}", "--image", str(scene_png), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated or corrupted" in err


def test_ablate_json(tmp_path, capsys):
    from core.world.scenes import write_scenes

    folder = write_scenes(tmp_path / "scenes", 20, seed=3)
    assert main(["ablate", "--model", "Tiny-ViT/none", "--images", str(folder), "--label-column", "shape",
                 "--templates", "simple", "--heads", "2.1,2.3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "Tiny-ViT/none" and "the evaluation set itself" in data["means_from"]
    assert set(data["accuracy"]) >= {"baseline", "all MLPs", "CLS->CLS paths", "attention layers 0..2", "heads 2.1,2.3"}
    assert all(0.0 <= value <= 1.0 for value in data["accuracy"].values())
    assert main(["ablate", "--model", "Tiny-ViT/none", "--images", str(folder), "--heads", "x"]) == 2
