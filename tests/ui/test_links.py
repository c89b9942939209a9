"""Deep links: state -> query -> state is exact, bad links are read with notices, and a link's command reproduces
its numbers."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.links.codec import MAX_TEXTS, TABS, ViewState, decode, encode, register_tab
from core.links.commands import reproduce_commands
from core.links.images import default_texts, describe_ref, image_from_ref, parse_image_ref

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a red circle", "two blue squares", "a star & a cross?", "50% gray = background", "émoji 🔭 ok",
         "plus+sign", "slash/and:colon", "#hash"]


def random_state(tab: str, rng: random.Random) -> ViewState:
    params = TABS[tab].params
    values = {
        "model": rng.choice(["toy", "ViT-B-16/laion2b_s34b_b88k", "hf-hub:org/name", "Tiny-ViT/none"]),
        "bases": rng.choice([f"org/clip-bases@{SHA}", f"a.b/c-d_e@{SHA}"]),
        "layer": rng.randrange(0, 48), "head": rng.randrange(0, 16), "neuron": rng.randrange(0, 5000),
        "texts": tuple(rng.sample(TEXTS, rng.randrange(1, 5))),
        "image": rng.choice(["example:0", "example:5", "world:0:0", "world:2147483647:9999", "upload"]),
        "convention": rng.choice(["paper", "centered"]),
        "method": rng.choice(TABS[tab].methods) if TABS[tab].methods else None,
        "threshold": rng.choice([1.0, 0.5, 2.25, 1e-3, 0.1 + 0.2]),
        "shown": rng.randrange(0, 4),
    }
    kept = {name: value for name, value in values.items()
            if (name if name != "texts" else "text") in params and rng.random() < 0.8}
    return ViewState(tab, **kept)


@pytest.mark.parametrize("tab", ["decomposition", "heads", "neurons"])
def test_state_to_link_to_state_is_exact(tab):
    rng = random.Random(tab)
    for _ in range(200):
        state = random_state(tab, rng)
        query = encode(state)
        read = decode(query, tab="decomposition", public=False)
        assert read.state == state, query
        assert encode(read.state) == query
        assert all(n.startswith("This link was made with an uploaded image") for n in read.notices), read.notices


def test_links_are_readable_and_stable():
    state = ViewState("heads", model="ViT-B-16/openai", layer=10, head=3, texts=("a red circle",),
                      image="world:3:14", method="centered")
    assert encode(state) == ("tab=heads&model=ViT-B-16/openai&layer=10&head=3&text=a+red+circle&image=world:3:14"
                             "&method=centered")


@pytest.mark.parametrize("query, notice", [
    ("tab=nope&layer=1", "There is no tab 'nope'"),
    ("tab=heads&layer=-1", "Ignored layer='-1'"),
    ("tab=heads&layer=1e9", "Ignored layer='1e9'"),
    ("tab=heads&head=3.5", "Ignored head='3.5'"),
    ("tab=heads&image=example:99", "Ignored image='example:99'"),
    ("tab=heads&image=/etc/passwd", "Ignored image='/etc/passwd'"),
    ("tab=heads&image=world:1", "Ignored image='world:1'"),
    ("tab=heads&model=../../etc/passwd", "Ignored model="),
    ("tab=heads&model=ViT-B-16//abs/path", "Ignored model="),
    ("tab=heads&bases=org/name@main", "Ignored bases='org/name@main'"),
    ("tab=heads&bases=/srv/bases", "Ignored bases='/srv/bases'"),
    ("tab=heads&convention=sideways", "Ignored convention='sideways'"),
    ("tab=heads&method=euclid", "Ignored method='euclid'"),
    ("tab=neurons&threshold=nan", "Ignored threshold='nan'"),
    ("tab=neurons&threshold=-1", "Ignored threshold='-1'"),
    ("tab=neurons&threshold=inf", "Ignored threshold='inf'"),
    ("tab=decomposition&neuron=5", "The decomposition tab has no 'neuron'"),
    ("tab=heads&layer=1&layer=2", "Ignored a repeated 'layer'"),
    ("tab=heads&text=" + "x" * 201, "Ignored text="),
    ("tab=heads&text=", "Ignored text=''"),
    ("tab=heads&colour=red", "unknown link parameter 'colour'"),
    ("tab=heads&" + "x" * 9000, "longer than"),
])
def test_invalid_parameters_are_ignored_with_a_notice(query, notice):
    read = decode(query, tab="decomposition", public=False)
    assert notice in read.notice_text(), read.notices
    assert encode(read.state).startswith("tab=")  # what survives is a valid link again


def test_too_many_texts_keeps_the_first_ones():
    read = decode("&".join(f"text=t{i}" for i in range(MAX_TEXTS + 3)) + "&tab=heads", tab="decomposition",
                  public=False)
    assert read.state.texts == tuple(f"t{i}" for i in range(MAX_TEXTS))
    assert "repeated 'text'" in read.notice_text()


def test_gradio_parameters_are_ignored_silently():
    read = decode("__theme=dark&tab=heads&layer=2", tab="decomposition", public=False)
    assert read.notices == () and read.state == ViewState("heads", layer=2)


def test_public_mode_refuses_models_outside_the_allow_list():
    read = decode("tab=heads&model=ViT-B-32/none&layer=1", tab="decomposition", public=True, allowed_models=["toy"])
    assert read.state == ViewState("heads", layer=1)
    assert "not offered on this public server" in read.notice_text()
    read = decode("tab=heads&model=toy", tab="decomposition", public=True, allowed_models=["toy"])
    assert read.state.model == "toy" and not read.notices


def test_a_tab_alone_refuses_links_to_other_tabs():
    read = decode("tab=heads&layer=1", tab="neurons", public=False, only_tab=True)
    assert read.state == ViewState("neurons") and "shows only the neurons tab" in read.notice_text()


def test_adding_a_tab_is_one_registration():
    try:
        register_tab("segmentation", ("model", "image", "text", "method", "threshold"), methods=("textspan", "lrp"))
        state = ViewState("segmentation", model="toy", image="world:1:2", texts=("a circle",), method="lrp",
                          threshold=0.5)
        assert decode(encode(state), tab="decomposition", public=False).state == state
        with pytest.raises(ValueError):
            register_tab("broken", ("colour",))
    finally:
        TABS.pop("segmentation", None)


def test_image_references_render_the_world_scenes(tmp_path):
    assert parse_image_ref("example:3").ref == "example:3" and parse_image_ref("upload").ref == "upload"
    for bad in ("example:6", "world:-1:0", "world:1:10000", "file:/etc/passwd", "", "world:1:2:3"):
        with pytest.raises(ValueError):
            parse_image_ref(bad)
    # world:SEED:INDEX is exactly what the command line writes for that seed
    from core.cli import main

    assert main(["toy", "scenes", "--n", "4", "--seed", "11", "--out", str(tmp_path / "s")]) == 0
    written = np.asarray(Image.open(tmp_path / "s" / "images" / "000003.png").convert("RGB"))
    assert np.array_equal(np.asarray(image_from_ref("world:11:3")), written)
    from core.world.examples import example_images

    shipped = np.asarray(Image.open(example_images()[2]).convert("RGB"))
    assert np.array_equal(np.asarray(image_from_ref("example:2")), shipped)
    assert describe_ref("example:0").startswith("example 0 (a small green cross")
    assert default_texts("example:0")[0] == "a green cross"  # the default texts describe the first example


@pytest.mark.slow
def test_the_decomposition_command_gives_the_views_numbers(tmp_path):
    from core.explorer.decomposition import decompose

    view = decompose("toy", None, "world:5:2", "a red circle\na striped background", "centered")
    lines = reproduce_commands(decode(view.link.query, tab="decomposition", public=False).state)
    assert lines[0].startswith("python -m core toy scenes") and "--convention centered" in lines[-1]
    for line in lines:
        args = __import__("shlex").split(line)
        assert args[:3] == ["python", "-m", "core"]
        out = subprocess.run([sys.executable, "-m", "core", *args[3:], *(["--json"] if "decompose" in args else [])],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                                  "CLIPSCOPE_CACHE": str(tmp_path / "cache")})
        assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout)
    assert [o["text"] for o in printed] == view.texts
    for i, row in enumerate(printed):
        assert row["cosine"] == pytest.approx(float(view.result.cosine[i]), abs=1e-6)
        assert np.allclose(row["heads"], view.result.heads[:, :, i].numpy(), atol=1e-6)
