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
        "background": rng.choice(TEXTS),
        "compare": rng.choice(TABS[tab].methods) if TABS[tab].methods else None,
        "neurons": rng.randrange(1, 100_001), "words": rng.randrange(1, 10_001), "images": rng.randrange(1, 1001),
        "repeats": rng.randrange(1, 11), "seed": rng.choice([0, 7, 2**31 - 1]), "baselines": rng.random() < 0.5,
        "similarity": rng.choice([0.9, -1.0, 1.0, 0.1 + 0.2, 0.0]),
        "judge": rng.choice(["toy", "toy-biased", "ViT-B-32/openai"]),
        "layers": tuple(rng.sample(range(24), rng.randrange(1, 4))),
        "block": rng.choice(["red", "dotted,striped", "a b,c"]),
    }
    kept = {name: value for name, value in values.items()
            if (name if name != "texts" else "text") in params and rng.random() < 0.8}
    if TABS[tab].dotted_head and "head" in kept:
        kept["head"] = f"{rng.randrange(0, 48)}.{rng.randrange(0, 16)}"  # LAYER.HEAD
    if tab == "adversarial" and "texts" in kept:
        kept["texts"] = tuple(rng.sample(["square", "triangle", "circle", "a red cross"], 2))  # present, target
    return ViewState(tab, **kept)


@pytest.mark.parametrize("tab", ["decomposition", "heads", "neurons", "circuits", "segmentation", "adversarial"])
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
    ("tab=segmentation&compare=lrp", "Ignored compare='lrp'"),
    ("tab=segmentation&method=sd", "Ignored method='sd'"),
    ("tab=segmentation&background=", "Ignored background=''"),
    ("tab=segmentation&neurons=5", "The segmentation tab has no 'neurons'"),
    ("tab=adversarial&method=heads", "Ignored method='heads'"),
    ("tab=adversarial&neurons=0", "Ignored neurons='0'"),
    ("tab=adversarial&images=1001", "Ignored images='1001'"),
    ("tab=adversarial&repeats=11", "Ignored repeats='11'"),
    ("tab=adversarial&seed=2147483648", "Ignored seed='2147483648'"),
    ("tab=adversarial&seed=-1", "Ignored seed='-1'"),
    ("tab=adversarial&baselines=true", "Ignored baselines='true'"),
    ("tab=adversarial&similarity=1.5", "Ignored similarity='1.5'"),
    ("tab=adversarial&similarity=nan", "Ignored similarity='nan'"),
    ("tab=adversarial&judge=../x", "Ignored judge="),
    ("tab=adversarial&layers=1,,2", "Ignored layers='1,,2'"),
    ("tab=adversarial&layers=a", "Ignored layers='a'"),
    ("tab=adversarial&block=red,,blue", "Ignored block='red,,blue'"),
    ("tab=adversarial&image=example:0", "The adversarial tab has no 'image'"),
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


def test_public_mode_refuses_a_judge_outside_the_allow_list():
    read = decode("tab=adversarial&model=toy&judge=ViT-B-32/openai", tab="decomposition", public=True,
                  allowed_models=["toy"])
    assert read.state == ViewState("adversarial", model="toy") and "not offered" in read.notice_text()


def test_segmentation_and_adversarial_links_are_readable():
    state = ViewState("segmentation", model="toy", image="example:0", texts=("a green cross", "a red circle"),
                      background="a pink background", method="heads", compare="rollout", threshold=0.5)
    assert encode(state) == ("tab=segmentation&model=toy&text=a+green+cross&text=a+red+circle&image=example:0"
                             "&method=heads&threshold=0.5&background=a+pink+background&compare=rollout")
    state = ViewState("adversarial", model="toy-biased", texts=("square", "triangle"), method="world", neurons=100,
                      words=25, images=20, repeats=1, seed=0, baselines=False, similarity=0.9, judge="toy",
                      layers=(1, 2, 3), block="red,dotted")
    assert encode(state) == ("tab=adversarial&model=toy-biased&text=square&text=triangle&method=world&neurons=100"
                             "&words=25&images=20&repeats=1&seed=0&baselines=no&similarity=0.9&judge=toy&layers=1,2,3"
                             "&block=red,dotted")


def test_a_tab_alone_refuses_links_to_other_tabs():
    read = decode("tab=heads&layer=1", tab="neurons", public=False, only_tab=True)
    assert read.state == ViewState("neurons") and "shows only the neurons tab" in read.notice_text()


def test_adding_a_tab_is_one_registration():
    try:
        register_tab("scratch", ("model", "image", "text", "method", "threshold"), methods=("textspan", "lrp"))
        state = ViewState("scratch", model="toy", image="world:1:2", texts=("a circle",), method="lrp",
                          threshold=0.5)
        assert decode(encode(state), tab="decomposition", public=False).state == state
        with pytest.raises(ValueError):
            register_tab("broken", ("colour",))
    finally:
        TABS.pop("scratch", None)


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


def test_a_segmentation_link_restores_the_view_and_its_maps():
    from core.explorer.segmentation import open_link, segment

    view = segment("toy", None, "world:5:2", "a red circle\na blue square", "a striped background", "heads",
                   "rollout", 0.4)
    assert view.link.query == ("tab=segmentation&model=toy&text=a+red+circle&text=a+blue+square&image=world:5:2"
                               "&method=heads&threshold=0.4&background=a+striped+background&compare=rollout")
    linked = open_link(view.link.query, default_tab="decomposition")
    assert linked.applies and linked.notice == "" and linked.view.link == view.link
    assert linked.view.info == view.info and "IoU rollout" in view.info  # a world scene: its true mask is known
    for method in ("heads", "rollout"):
        assert np.array_equal(linked.view.results[method].maps, view.results[method].maps)
    # an invalid threshold or an upload is dropped with a notice; the rest of the view still opens
    linked = open_link("tab=segmentation&model=toy&image=example:1&threshold=7&colour=red", default_tab="decomposition")
    assert "Ignored threshold=7.0" in linked.notice and "'colour'" in linked.notice
    assert linked.view.threshold is None and linked.view.texts == default_texts("example:1")
    linked = open_link("tab=segmentation&image=upload&text=a+cat", default_tab="decomposition")
    assert linked.view is None and "uploaded image" in linked.notice and linked.state.texts == ("a cat",)
    # an uploaded picture: the link says it cannot travel (an upload of an example still gets its true mask)
    from core.world.examples import example_images

    uploaded = segment("toy", example_images()[0], None, "a green cross", "", "heads")
    assert "image=upload" in uploaded.link.query and "cannot travel in the link" in uploaded.link.markdown
    assert "YOUR_IMAGE.png" in uploaded.link.markdown and "IoU heads" in uploaded.info


def test_a_segmentation_link_in_public_mode_keeps_to_the_allow_list(monkeypatch):
    from core.explorer.segmentation import open_link

    monkeypatch.setenv("CLIPSCOPE_PUBLIC", "1")
    monkeypatch.setenv("CLIPSCOPE_MODELS", "toy")
    linked = open_link("tab=segmentation&model=Tiny-ViT/none&image=example:0&text=a+green+cross",
                       default_tab="decomposition")
    assert "'Tiny-ViT/none' is not offered on this public server" in linked.notice
    assert linked.view.spec == "toy" and "model=toy" in linked.view.link.query  # the default model's view


@pytest.mark.slow
def test_the_segmentation_command_gives_the_views_numbers(tmp_path):
    from core.explorer.segmentation import segment

    view = segment("toy", None, "world:5:2", "a red circle\na blue square", "a striped background", "heads",
                   "rollout", 0.4)
    lines = reproduce_commands(decode(view.link.query, tab="decomposition", public=False).state)
    assert lines[0].startswith("python -m core toy scenes") and len(lines) == 3  # the scene, then each method
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "CLIPSCOPE_CACHE": str(tmp_path / "cache")}
    for line in lines:
        args = __import__("shlex").split(line)
        assert args[:3] == ["python", "-m", "core"]
        out = subprocess.run([sys.executable, "-m", "core", *args[3:], *(["--json"] if "segment" in args else [])],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        if "segment" in args:
            method = args[args.index("--method") + 1]
            printed = json.loads(out.stdout)
            result = view.results[method]
            assert printed["texts"] == result.texts and printed["threshold"] == 0.4
            assert [printed["cosine"][t] for t in result.texts] == pytest.approx(result.cosine, abs=1e-6)
            for i in range(len(result.texts)):
                folder = tmp_path / f"seg-{method}"
                saved = np.load(next(folder.glob(f"{i:02d}_*_map.npy")))
                assert np.allclose(saved, result.maps[i], atol=1e-5)
                mask = np.asarray(Image.open(next(folder.glob(f"{i:02d}_*_mask.png")))) > 0
                assert np.array_equal(mask, result.masks(0.4)[i])


ADVERSARIAL = dict(images=12, repeats=2, baselines=True, judge="toy", block="red, blue", layers="1 2", seed=3)


def test_an_adversarial_link_restores_the_settings_that_give_the_same_run():
    from core.explorer.adversarial import generate, open_link

    view = generate("toy-biased", "square", "triangle", **ADVERSARIAL)
    # the link spells out the neuron count the run used (the model's default: 19 on a 96-dimension embedding)
    assert view.link.query == ("tab=adversarial&model=toy-biased&text=square&text=triangle&method=world&neurons=19"
                               "&words=25&images=12&repeats=2&seed=3&baselines=yes&similarity=0.9&judge=toy&layers=1,2"
                               "&block=red,blue")
    linked = open_link(view.link.query + "&zoom=2", default_tab="decomposition")
    assert linked.applies and linked.view is None and linked.link == view.link  # restores, does not run
    assert "press **Generate**" in linked.notice and "'zoom'" in linked.notice
    s = linked.state
    again = generate(s.model, *s.texts, layers=s.layers, neurons=s.neurons, words=s.words, similarity=s.similarity,
                     judge=s.judge, generator=s.method, images=s.images, repeats=s.repeats, baselines=s.baselines,
                     seed=s.seed, block=s.block)
    assert again.success == view.success and again.words == view.words and again.link == view.link
    # a link that leaves settings out gets the tab's defaults, spelled out in its canonical link; the neuron
    # count stays the model's default until a run resolves it
    linked = open_link("tab=adversarial&text=circle", default_tab="decomposition")
    s = linked.state
    assert (s.texts, s.images, s.repeats, s.baselines, s.neurons, s.method) == (("circle", "triangle"), 100, 3, True,
                                                                                None, "world")
    assert "&images=100&" in linked.link.query and "neurons" not in linked.link.query
    command = next(line for line in linked.link.markdown.splitlines() if "core adversarial" in line)
    assert "--neurons" not in command and "--images 100" in command


def test_an_adversarial_link_in_public_mode(monkeypatch):
    from core.explorer.adversarial import open_link

    monkeypatch.setenv("CLIPSCOPE_PUBLIC", "1")
    monkeypatch.setenv("CLIPSCOPE_MODELS", "toy")
    linked = open_link("tab=adversarial&model=toy-biased&judge=ViT-B-32/openai&images=500&text=square&text=circle"
                       "&text=cross", default_tab="decomposition")
    assert linked.state.model == "toy-biased"  # the toy models are this tab's even off the allow-list
    assert "'ViT-B-32/openai' is not offered" in linked.notice and linked.state.judge == "toy"
    assert "Ignored images=500: this server allows at most 100" in linked.notice and linked.state.images == 100
    assert "Kept the first two texts" in linked.notice and linked.state.texts == ("square", "circle")
    linked = open_link("tab=adversarial&model=ViT-L-14/openai", default_tab="decomposition")
    assert "not offered" in linked.notice and not linked.applies  # nothing left to restore: the notice only


@pytest.mark.slow
def test_the_adversarial_command_gives_the_views_numbers(tmp_path):
    from core.explorer.adversarial import generate

    view = generate("toy-biased", "square", "triangle", **ADVERSARIAL)
    [line] = reproduce_commands(decode(view.link.query, tab="decomposition", public=False).state)
    args = __import__("shlex").split(line)
    assert args[:3] == ["python", "-m", "core"] and "--similarity-model" in args and "--baselines" in args
    out = subprocess.run([sys.executable, "-m", "core", *args[3:], "--json"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                      "PYTHONPATH": str(ROOT), "CLIPSCOPE_CACHE": str(tmp_path / "c")})
    assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout)
    assert printed["summary"] == view.report.summary()
