"""`python -m core reproduce`: every paper table runs end to end here on random weights or the toy world, writes its
JSON with the published numbers next to ours, and its numbers agree with a direct computation."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from PIL import Image

from core.cli import main
from core.engine.models import load_clip
from core.reproduce.published import P1_SEGMENTATION, P1_WATERBIRDS, P2_ABLATIONS, P2_ADVERSARIAL, P2_SEGMENTATION
from core.reproduce.registry import TABLES
from core.world import scenes as world


def _run(tmp_path, capsys, *argv) -> dict:
    out = tmp_path / f"{argv[0]}.json"
    assert main(["reproduce", *argv, "--out", str(out), "--state-dir", str(tmp_path / "state")]) == 0, \
        capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"written: {out}" in printed
    record = json.loads(out.read_text())
    assert record["kind"] == "clipscope-reproduce" and record["table"] == argv[0] and record["run"]["date"]
    assert record["command"].startswith(f"python -m core reproduce {argv[0]}")
    return record


def test_list_names_every_table_with_its_cost_estimate(capsys):
    assert main(["reproduce", "list"]) == 0
    printed = capsys.readouterr().out
    for name in ("p1-ablations", "p1-textspan", "p1-waterbirds", "p1-segmentation", "p2-segmentation",
                 "toy-segmentation", "p2-ablations", "p2-adversarial"):
        assert name in TABLES and name in printed
    assert printed.count("estimate") >= 7


def test_unknown_table_and_foreign_out_file_are_refused(tmp_path, capsys):
    assert main(["reproduce", "p9-nothing"]) == 2 and "unknown table" in capsys.readouterr().err
    foreign = tmp_path / "mine.json"
    foreign.write_text('{"mine": true}')
    assert main(["reproduce", "toy-segmentation", "--limit", "2", "--out", str(foreign)]) == 2
    assert "never replaced" in capsys.readouterr().err and foreign.read_text() == '{"mine": true}'


def test_p1_ablations_baseline_is_the_plain_zero_shot_accuracy(tmp_path, capsys):
    record = _run(tmp_path, capsys, "p1-ablations", "--model", "toy", "--images", "world:24:3", "--label-column",
                  "shape")
    rows = {row["ablation"]: row for row in record["rows"]}
    toy = load_clip("toy")
    assert len(rows) == 4 + toy.info.n_layers + toy.info.n_layers * toy.info.n_heads  # last 4 layers = all 4
    # the unablated row against a literal zero-shot classification of the same scenes
    from core.engine.text import prompt_classifier

    task = world.ZERO_SHOT["shape"]
    names = sorted(task.classnames)
    weights = prompt_classifier(toy, [task.prompts()[task.classnames.index(n)] for n in names])
    scenes = world.sample_scenes(24, 3, split="heldout")
    pixels = torch.stack([toy.preprocess(Image.fromarray(world.render(s)[0])) for s in scenes])
    with torch.no_grad():
        predicted = (toy.model.encode_image(pixels) @ weights.T).argmax(-1)
    truth = torch.tensor([names.index(s.shape) for s in scenes])
    assert rows["baseline"]["accuracy"] == pytest.approx(100 * float((predicted == truth).float().mean()))
    assert record["published"]["ViT-L-14"]["baseline"] == [75.25, "S"]


def test_p1_textspan_gives_every_late_head_its_texts(tmp_path, capsys):
    record = _run(tmp_path, capsys, "p1-textspan", "--model", "toy", "--images", "world:40:3", "--label-column",
                  "shape", "--texts", "toy", "--per-head", "4")
    assert len(record["rows"]) == 16 and all(len(row["top_texts"]) == 4 for row in record["rows"])
    pool = set(world.load_toy_texts())
    assert all(text in pool for row in record["rows"] for text in row["top_texts"])
    assert [row["m"] for row in record["accuracy"]] == [None, 4]
    assert record["published"]["head_roles"]["L22H1"] == "shapes"


def _waterbirds_layout(folder, n=24):
    """World scenes in Waterbirds' own layout: img_filename, y, place, split (test = 2), a train row to skip."""
    (folder / "images").mkdir(parents=True)
    scenes = world.sample_scenes(n, 9, split="heldout", shapes=("circle", "square"))
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_filename", "y", "place", "split"])
        for i, scene in enumerate(scenes):
            Image.fromarray(world.render(scene)[0]).save(folder / "images" / f"{i}.png")
            writer.writerow([f"images/{i}.png", int(scene.shape == "square"), int(scene.background == "striped"),
                             0 if i == 0 else 2])
    return folder


def test_p1_waterbirds_reads_the_waterbirds_layout_and_ranks_the_heads_among_every_set(tmp_path, capsys):
    folder = _waterbirds_layout(tmp_path / "waterbirds")
    record = _run(tmp_path, capsys, "p1-waterbirds", "--model", "Tiny-ViT/none", "--images", str(folder),
                  "--heads", "2.1,2.2")
    row = record["rows"][0]
    assert row["random_kind"] == "all" and row["random_sets"] == math.comb(4, 2) and 0 <= row["chosen_percentile_worst"] <= 100
    settings = record["settings"][0]
    assert settings["classes"].startswith("landbird, waterbird") and settings["paper_extras"] is True
    assert settings["report"]["count"] == 23  # the split-0 row is left out
    assert record["published"]["ViT-L-14"] == dict(zip(("base", "top random", "ours"), P1_WATERBIRDS["ViT-L-14"]))


@pytest.mark.slow
def test_segmentation_tables_on_the_toy_world(tmp_path, capsys):
    p1 = _run(tmp_path, capsys, "p1-segmentation", "--model", "toy", "--data", "world:4:3")
    assert {row["protocol"] for row in p1["rows"]} == {"official", "aligned"}
    heads = next(r for r in p1["rows"] if r["method"] == "heads" and r["protocol"] == "official")
    assert heads["published"] is None  # the toy is not the paper's model
    assert p1["published"]["heads"]["miou"] == P1_SEGMENTATION["heads"][1]
    p2 = _run(tmp_path, capsys, "p2-segmentation", "--model", "toy", "--data", "world:4:3")
    random_rows = [r for r in p2["rows"] if r["method"] == "random-neurons"]
    assert len(random_rows) == 2 and all(r["draws"] == 10 and "std" in r["spread"]["ap_foreground"] for r in random_rows)
    assert p2["published"]["neurons"]["map"] == P2_SEGMENTATION["neurons"][2]
    toy = _run(tmp_path, capsys, "toy-segmentation", "--limit", "2")
    benchmarks = toy["models"]["toy"]["benchmarks"]
    assert set(benchmarks) == {"single", "pairs", "pairs-confirm"}
    assert benchmarks["pairs"]["class_specificity"]["oracle"]["share_target_above_others"] == 1.0
    assert "class_specificity" not in benchmarks["single"]


def test_p2_ablations_runs_both_effects_and_their_pcs(tmp_path, capsys):
    record = _run(tmp_path, capsys, "p2-ablations", "--model", "Tiny-ViT/none", "--images", "world:8:3",
                  "--label-column", "shape", "--means-from", "world:6:4")
    quantities = {row["quantity"]: row for row in record["rows"]}
    assert len(quantities) == 5 and all(0 <= row["ours"] <= 100 + 1e-6 for row in record["rows"])
    assert quantities["accuracy, indirect effects mean-ablated"]["published"] is None  # not the paper's model
    assert record["published"]["second-order accuracy"] == P2_ABLATIONS["second-order accuracy"]
    assert record["settings"][0]["pc_images_indirect"] == 6


@pytest.mark.slow
def test_p2_adversarial_runs_the_pipeline_with_its_baselines(tmp_path, capsys):
    record = _run(tmp_path, capsys, "p2-adversarial", "--model", "toy-biased", "--generator", "world", "--task",
                  "square:triangle", "--repeats", "1", "--limit", "10")
    methods = {row["method"]: row for row in record["rows"]}
    assert set(methods) == {"second-order", "random neurons", "similar words"}
    assert all(row["valid_images"] == [10] for row in record["rows"])
    assert record["published"]["dog -> deer"]["second-order"] == list(P2_ADVERSARIAL[("dog", "deer")]["second-order"])
