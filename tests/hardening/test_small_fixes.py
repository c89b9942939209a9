"""Issue 20, items 11 and 12: each smaller fault, reproduced, then refused clearly or made to work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import settings
from core.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Tiny-ViT/none"


def _run(args: list[str], **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=120)


# ---------------------------------------------------------------- item 11: world:SEED:INDEX up to 9999

@pytest.mark.parametrize("index", [1999, 2000, 5000, 9999])
def test_public_links_to_world_scenes_work_up_to_the_stated_bound(index):
    from core.explorer.decomposition import decompose
    from core.explorer.segmentation import segment
    from core.links.images import MAX_SCENE_INDEX, describe_ref, image_from_ref
    from core.world.scenes import render, sample_scenes

    assert MAX_SCENE_INDEX == 9999
    ref = f"world:7:{index}"
    expected = render(sample_scenes(index + 1, 7, split="heldout")[index], 64)[0]  # locally: no public bound
    with settings.overridden(public=True):
        import numpy as np

        assert np.array_equal(np.asarray(image_from_ref(ref)), expected)
        assert f"world scene {index} of seed 7" in describe_ref(ref)
        assert decompose("toy", None, ref, "a red circle", "paper") is not None
        view = segment("toy", None, ref, "a red circle\na blue square", None, "heads", None, None)
        assert view is not None


# ---------------------------------------------------------------- item 12

@pytest.mark.parametrize("content", ["{not json", b"\xff\xfe not utf-8"])
def test_an_invalid_model_configs_file_is_one_line(tmp_path, scene_png, content):
    bad = tmp_path / "configs"
    bad.mkdir()
    (bad / "Broken.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    result = _run(["decompose", "--model", "toy", "--image", str(scene_png), "--text", "a"],
                  CLIPSCOPE_MODEL_CONFIGS=str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.count("error: ") == 1 and "Broken.json" in result.stderr


@pytest.fixture(scope="module")
def neuron_bases(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bases") / "b"
    assert main(["neurons", "--model", MODEL, "--layer", "1", "--images", "world:12", "--texts", "toy", "--out",
                 str(out), "--k", "3", "--terms", "2"]) == 0
    return out


@pytest.mark.parametrize("texts", [{"a": 1}, ["a", 2], ["other", "texts"]])
def test_bases_verify_refuses_the_texts_the_loaders_refuse(tmp_path, neuron_bases, capsys, texts):
    from tests.hardening.conftest import rehash

    folder = tmp_path / "b"
    shutil.copytree(neuron_bases, folder)
    (folder / "extra" / "texts.json").write_text(json.dumps(texts))
    rehash(folder)
    assert main(["bases", "verify", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "texts" in err and err.count("error: ") == 1, err
    image = tmp_path / "x.png"  # and the loader says the same
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(image)
    assert main(["concepts", "--model", MODEL, "--image", str(image), "--bases", str(folder), "--layer", "1"]) == 2
    assert "texts" in capsys.readouterr().err


def test_bases_verify_still_passes_good_bases(neuron_bases, capsys):
    assert main(["bases", "verify", str(neuron_bases)]) == 0


def _grouped(folder: Path, rows: list[tuple[int, str, str]]) -> Path:
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    lines = ["file,label,group"]
    for index, label, group in rows:
        Image.new("RGB", (32, 32), (index * 40 % 255, 0, 0)).save(folder / "images" / f"{index}.png")
        lines.append(f"images/{index}.png,{label},{group}")
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("rows, words", [
    ([(i, "square", f"g{i % 2}") for i in range(4)], "one class"),
    ([(i, "square", "all") for i in range(4)], "one class"),
    ([(i, ["square", "circle"][i % 2], "all") for i in range(4)], "one group"),
])
def test_spurious_refuses_one_class_or_one_group(tmp_path, capsys, rows, words):
    folder = _grouped(tmp_path / "g", rows)
    assert main(["spurious", "--model", MODEL, "--images", str(folder), "--heads", "2.1", "--templates", "simple",
                 "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert words in err and "100" not in err, err


ADVERSARIAL = ["adversarial", "--model", "toy-biased", "--present", "square", "--target", "triangle", "--images", "2",
               "--descriptions", "1", "--repeats", "1", "--neurons", "5", "--words", "3"]


@pytest.mark.parametrize("extra", [["--size", "128"], ["--steps", "4"], ["--checkpoint", "org/name"],
                                   ["--revision", "0" * 40]])
def test_adversarial_refuses_sd_options_with_the_world_generator(tmp_path, capsys, extra):
    out = tmp_path / "adv"
    assert main(ADVERSARIAL + ["--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert extra[0] in err and "--generator sd" in err, err
    assert not out.exists()


@pytest.mark.parametrize("extra, words", [(["--size", "100"], "multiple of 8"), (["--steps", "0"], "at least 1"),
                                          (["--size", "100000"], "multiple of 8")])
def test_adversarial_checks_sd_options_before_any_work(tmp_path, capsys, extra, words):
    assert main(ADVERSARIAL + ["--generator", "sd", "--out", str(tmp_path / "adv"), *extra]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["toy"], ["bases"], []])
def test_a_missing_subcommand_is_an_error_line_and_exit_2(argv):
    result = _run(argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "required" in lines[0], result.stderr
