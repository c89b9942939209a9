"""The workbench features of the tabs' logic (core.explorer), without Gradio: retrieval without the query, views
that lead to each other, segmentation scored on a user's own masks, mean ablation on the toy world's groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.explorer.heads import WORLD, retrieve_similar


def test_retrieval_leaves_out_the_query_example_from_the_world_gallery():
    kept = retrieve_similar("toy", None, "example:2", 3, 1, WORLD, None, None, 4, "cosine", "paper",
                            exclude_query=False)
    left = retrieve_similar("toy", None, "example:2", 3, 1, WORLD, None, None, 4, "cosine", "paper",
                            galleries=kept.galleries)
    assert kept.items[0][1].endswith("+1.0000")  # example 2 is in the gallery: it finds itself first
    assert [caption.split(" ", 1)[1] for _, caption in left.items[:3]] == \
        [caption.split(" ", 1)[1] for _, caption in kept.items[1:]]
    assert "left out" in left.info and "kept" in kept.info


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, desc=None):
        self.calls.append((fraction, desc))

    def tqdm(self, iterable, total=None, desc=None):  # never used: Passes draws one bar
        raise AssertionError("a pass must not start a bar of its own")


def test_one_overall_bar_with_a_time_estimate_across_passes():
    from core.explorer.passes import Passes

    now = [0.0]
    recorder = Recorder()
    passes = Passes(recorder, [("loading the model", 1), ("encoding the text pool", 1), ("head outputs", 8)],
                    clock=lambda: now[0])
    passes(0.5, desc="loading model toy")  # a report within pass 1
    now[0] = 1.0
    passes(0.1, desc="encoding the text pool")  # names pass 2: it begins
    for _ in passes.tqdm(range(4), total=4, desc="head outputs"):
        now[0] += 2.0
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # one bar, never going back
    assert fractions[:3] == pytest.approx([0.05, 0.1, 0.2])
    assert "pass 3 of 3" in recorder.calls[-1][1] and "pass 1 of 3" in recorder.calls[0][1]
    # halfway through the last pass: 60 % done after 5 s, so about 3 s left
    assert recorder.calls[-3][0] == pytest.approx(0.6) and "about 3 s left" in recorder.calls[-3][1]


def test_segmentation_and_retrieval_report_one_bar():
    from core.explorer.segmentation import segment

    recorder = Recorder()
    segment("toy", None, "example:0", "a green cross", "", "heads", "rollout", progress=recorder)
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and len(fractions) >= 4
    assert any("segmenting with rollout (pass 3 of 4)" in d for _, d in recorder.calls)
    recorder = Recorder()
    retrieve_similar("toy", None, "example:1", 3, 0, WORLD, None, None, 3, "cosine", "paper", progress=recorder)
    assert [f for f, _ in recorder.calls] == sorted(f for f, _ in recorder.calls)
    assert any("indexing the gallery (pass 2 of 3)" in d for _, d in recorder.calls)


@pytest.mark.slow  # the exhaustive baseline (8,008 head sets) and 700 scenes: ~20 s on 2 cores
def test_mean_ablation_panel_gives_the_toy_removal_numbers(capsys):
    """The panel's numbers are `python -m core toy removal`'s, for heads named by a label and for typed heads; the
    background heads' ablation lifts the worst group above almost every random head set (the planted cue)."""
    import json

    from core.cli import main
    from core.explorer.ablation import measure_ablation
    from core.links.codec import decode

    view = measure_ablation("toy-biased", "", "background", per_group=30)
    assert main(["toy", "removal", "--model", "toy-biased", "--n", "30", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert view.summary[0]["worst group %"] == round(100 * cli["base"]["worst_group"], 2)
    assert view.summary[1]["worst group %"] == round(100 * cli["ablated"]["worst_group"], 2)
    assert view.summary[1]["overall %"] == round(100 * cli["ablated"]["overall"], 2)
    assert [list(h) for h in view.report.heads] == cli["heads"]
    assert view.summary[1]["worst group %"] > view.summary[0]["worst group %"]  # the planted cue's carriers
    assert view.summary[4]["worst group %"] >= 90  # against every set of as many heads
    assert "python -m core toy removal --model toy-biased --n 30" in view.info
    state = decode(view.link.query, tab="heads").state
    assert state.ablate == "label:background" and state.images == 30

    typed = measure_ablation("toy-biased", "3.1, 3.3", "", per_group=30)
    command = next(line for line in typed.link.markdown.splitlines() if "toy removal" in line)
    assert command.endswith("--heads 3.1,3.3")
    assert main(command.split()[3:] + ["--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["heads"] == [[3, 1], [3, 3]]
    assert typed.summary[1]["worst group %"] == round(100 * cli["ablated"]["worst_group"], 2)
    assert typed.report.baseline.summary()["sets"] == 6  # every pair of heads from layer 3 on (C(4, 2))
    assert {row["group"] for row in typed.groups} == set(typed.report.group_names) and len(typed.groups) == 4


# ---------------------------------------------------------------- views that lead to each other

def test_every_ranking_table_row_opens_its_head_or_neuron():
    from core.explorer.decomposition import decompose
    from core.explorer.heads import explain_image
    from core.explorer.navigation import row_links, row_target
    from core.links.codec import decode

    decomposition = decompose("toy", None, "example:0", "a green cross", "paper")
    explained = explain_image("toy", None, "example:1", "a circle", 3, 0, None, "paper")
    for table in (decomposition.table, explained.ranked):
        row = table[0]
        target = row_target(list(row), list(row.values()))
        assert target.kind == "head" and (target.layer, target.index) == (row["layer"], row.get("head index",
                                                                                              row["head"]))
    # a label in any cell (Circuits' paths, in-edges), index columns (Adversarial), a neuron within the tab's layer
    assert row_target(["path", "edge"], ["L2H0", 0.07]).label == "L2H0"
    assert row_target(["neuron", "weight edge"], ["L1.n17", 0.3]).label == "L1.n17"
    assert row_target(["layer", "neuron", "<v, r_n>"], [2, 40, 0.5]).label == "L2.n40"
    assert row_target(["neuron", "cosine", "top texts"], [12, 0.4, "x"], layer=2).label == "L2.n12"
    assert row_target(["neuron", "cosine"], [12, 0.4]) is None  # no layer: nothing to open
    assert row_target(["text", "weight"], ["a red circle", 0.3]) is None

    row = explained.ranked[0]
    markdown = row_links(list(row), list(row.values()), row["head"], model="toy", image="example:1",
                         texts=["a circle"])
    queries = [part.split("](?")[1].rstrip(")") for part in markdown.split(" · ")]
    heads = decode(queries[0], tab="heads").state
    assert (heads.tab, heads.model, heads.layer, heads.head, heads.image) == \
        ("heads", "toy", row["layer"], row["head index"], "example:1")
    neuron = row_links(["neuron", "cosine"], [12, 0.4], model="toy", layer=2)
    links = [decode(part.split("](?")[1].rstrip(")"), tab="neurons").state for part in neuron.split(" · ")]
    assert (links[0].tab, links[0].layer, links[0].neuron) == ("neurons", 2, 12)
    assert links[1].image == "example:0"  # its activation map: the map it segments by
    assert links[2].tab == "segmentation" and links[2].method == "neurons"
    assert links[3].tab == "circuits" and (links[3].layer, links[3].neuron) == (2, 12)


def test_a_neuron_links_to_its_map_and_the_link_restores_it():
    from core.explorer.neurons import open_link, show_neuron

    shown = show_neuron("toy", None, 2, 5)
    query = shown.info.split("[Its activation map on example:0 (the map it segments by)](?")[1].split(")")[0]
    linked = open_link(query, default_tab="neurons")
    picture, info = linked.view.on_image  # the neuron's activation map on the example
    assert "Neuron 5 of layer 2" in info and "example 0" in info and picture.width > 100


def test_a_heads_text_retrieves_images_with_that_property():
    """L3H1 of the toy model writes the background (its TextSpan texts name backgrounds): retrieving by each of its
    background texts finds scenes with that background far above the gallery's base rate (world labels)."""
    import numpy as np
    from PIL import Image

    from core.explorer.heads import head_texts
    from core.explorer.navigation import retrieve_by_text
    from core.world import scenes as world
    from core.world.examples import EXAMPLE_SEED, example_images

    paths = example_images(48)
    backgrounds = [world.scene_at(i, EXAMPLE_SEED).labels()["background"] for i in range(48)]
    by_pixels = {np.asarray(Image.open(p).convert("RGB")).tobytes(): i for i, p in enumerate(paths)}
    texts = [row["text"] for row in head_texts("toy", 3, 1).rows]
    checked = 0
    for text in texts:
        named = [b for b in world.BACKGROUNDS if b in text]
        if len(named) != 1 or backgrounds.count(named[0]) < 3:
            continue
        found = retrieve_by_text("toy", 3, 1, text, WORLD, None, None, 4)
        hits = sum(backgrounds[by_pixels[np.asarray(image.convert("RGB")).tobytes()]] == named[0]
                   for image, _ in found.items)
        assert hits >= 2 and hits / 4 > 2 * backgrounds.count(named[0]) / 48, (text, hits)
        checked += 1
    assert checked >= 3


# ---------------------------------------------------------------- segmentation on a visitor's own data

@pytest.fixture
def own_uploads(tmp_path):
    """Three held-out world scenes and their true masks, as a visitor would upload them (masks named *_mask.png)."""
    from PIL import Image

    from core.world import scenes as world

    images, masks = [], []
    for i, scene in enumerate(world.sample_scenes(3, seed=31, split="heldout")):
        picture, labels = world.render(scene, 64)
        images.append(tmp_path / f"scene{i}.png")
        masks.append(tmp_path / f"scene{i}_mask.png")
        Image.fromarray(picture).save(images[-1])
        Image.fromarray(((labels > 0) * 255).astype("uint8")).save(masks[-1])
    return [str(p) for p in images], [str(p) for p in masks[::-1]]  # masks in another order: matched by name


@pytest.mark.slow  # every method twice (the panel, then segeval): ~20 s on 2 cores
def test_own_images_and_masks_scored_by_every_method_as_segeval(own_uploads, tmp_path, capsys):
    import json

    from core.cli import main
    from core.explorer.own_data import evaluate_uploads
    from core.segmentation.names import METHODS

    images, masks = own_uploads
    view = evaluate_uploads("toy", images, masks, "a shape", work=tmp_path)
    assert [row["method"] for row in view.rows] == list(METHODS)  # every method, side by side
    assert len(view.grids) == 3 and len(view.per_image) == 3 * len(METHODS)
    folder = next(tmp_path.glob("own-segmentation-*"))
    assert main(["segeval", "--model", "toy", "--dataset", str(folder), *sum((["--method", m] for m in METHODS), []),
                 "--random-draws", "1", "--state-dir", str(tmp_path / "cli-state"), "--json"]) == 0
    cli = {r["method"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    for row in view.rows:
        assert row["mIoU %"] == round(100 * cli[row["method"]]["miou"], 2)
        assert row["mAP %"] == round(100 * cli[row["method"]]["map"], 2)
        assert row["AP-foreground %"] == round(100 * cli[row["method"]]["ap_foreground"], 2)
    # per image: the mean of the images' AP is the dataset's mAP
    for row in view.rows:
        aps = [r["AP %"] for r in view.per_image if r["method"] == row["method"]]
        assert sum(aps) / 3 == pytest.approx(row["mAP %"], abs=0.02)
    assert "python -m core segeval --model toy --dataset YOUR_FOLDER --method heads" in view.info


def test_own_data_is_checked_and_bounded(own_uploads, tmp_path):
    from PIL import Image

    from core import settings
    from core.errors import CoreError
    from core.explorer.own_data import evaluate_uploads, pair_uploads

    images, masks = own_uploads
    assert [Path(m).name for _, m in pair_uploads(images, masks)] == [f"scene{i}_mask.png" for i in range(3)]
    with pytest.raises(CoreError, match="one mask per image"):
        pair_uploads(images, masks[:2])
    grey = tmp_path / "grey_mask.png"
    Image.new("L", (64, 64), 128).save(grey)
    with pytest.raises(CoreError, match="not a binary mask"):
        evaluate_uploads("toy", images[:1], [str(grey)], "a shape", ["heads"], work=tmp_path)
    small = tmp_path / "small_mask.png"
    Image.new("L", (32, 32), 0).save(small)
    with pytest.raises(CoreError, match="must have its image's size"):
        evaluate_uploads("toy", images[:1], [str(small)], "a shape", ["heads"], work=tmp_path)
    settings.configure(public=True)
    try:
        with pytest.raises(CoreError, match="At most 8 images"):
            evaluate_uploads("toy", images * 3, masks * 3, "a shape", work=tmp_path)
    finally:
        settings.configure(public=None)


@pytest.mark.slow  # a server and every method: over 20 s on 2 cores
def test_own_data_panel_over_the_api_in_public_mode(own_uploads, tmp_path):
    """The Segmentation tab's panel, as a client calls it on a public server: uploads in, metrics and grids out."""
    from gradio_client import Client, handle_file

    from tests.browser import ROOT, app_server

    images, masks = own_uploads
    env = {"CLIPSCOPE_PUBLIC": "1", "CLIPSCOPE_MODELS": "toy", "CLIPSCOPE_MODEL": "toy",
           "CLIPSCOPE_CACHE": str(tmp_path / "cache")}
    with app_server(ROOT / "spaces" / "segmentation" / "app.py", env) as url:
        client = Client(url, verbose=False)
        info, table, per_image, grids = client.predict(
            "toy", [handle_file(p) for p in images], [handle_file(p) for p in masks], "a shape", ["heads", "rollout"],
            api_name="/evaluate_own")
    assert "python -m core segeval --model toy" in info and "/tmp" not in info
    assert [row[0] for row in table["data"]] == ["heads", "rollout"] and len(per_image["data"]) == 6
    assert len(grids) == 3


def test_neuron_statistics_report_one_bar_over_their_passes(tmp_path, monkeypatch):
    from core.explorer.neurons import WORLD, compute_statistics

    monkeypatch.setenv("CLIPSCOPE_CACHE", str(tmp_path))
    recorder = Recorder()
    compute_statistics("toy", 2, WORLD, 40, None, None, None, 5, "normalise_texts", progress=recorder)
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    descriptions = " ".join(d for _, d in recorder.calls if d)
    for name in ("layer 2: means (pass 2 of 4)", "layer 2: top-5 deviations (pass 3 of 4)",
                 "sparse text decomposition (pass 4 of 4)"):
        assert name in descriptions
