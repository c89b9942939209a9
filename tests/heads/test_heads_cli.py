"""The textspan, retrieve and spurious commands: artifacts that verify, resuming, JSON output, clear errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.artifacts.store import load_artifact, verify_artifact
from core.cli import main
from core.heads.bases import artifact_result, group_name, head_text_rows
from core.heads.textspan import RANK_RTOL
from core.world.scenes import write_scenes

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Tiny-ViT/none"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """30 held-out scenes (labels.csv, plus a Waterbirds-style metadata.csv) and a small text pool."""
    folder = write_scenes(tmp_path_factory.mktemp("cli") / "world", 30, seed=9)
    with open(folder / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "group"])
        writer.writerows([row["file"], row["shape"], row["background"]] for row in rows)
    pool = folder.parent / "pool.txt"
    texts = (ROOT / "core" / "data" / "toy_texts.txt").read_text().splitlines()[:60]
    pool.write_text("\n".join(texts[:30] + ["", texts[3]] + texts[30:]) + "\n")  # one empty, one duplicate line
    return folder, pool


def _textspan(world, out, *extra):
    folder, pool = world
    return ["textspan", "--model", MODEL, "--images", str(folder / "images"), "--texts", str(pool),
            "--rank", "12", "--per-head", "4", "--out", str(out), *extra]


def test_textspan_writes_a_verifiable_artifact_and_resumes(world, tmp_path, capsys):
    out = tmp_path / "bases"
    assert main(_textspan(world, out, "--layers", "1", "2")) == 0
    captured = capsys.readouterr()
    assert "line 31: empty, skipped" in captured.err and "duplicate" in captured.err
    assert "L2H3" in captured.out and "fitted 8 heads" in captured.out
    assert verify_artifact(out) == []
    artifact = load_artifact(out, expect_model={"spec": MODEL, "arch": "Tiny-ViT", "pretrained": "none",
                                                "weights_sha256": None, "random_init": True})
    assert artifact.manifest["algorithms"]["textspan"] == {"n_texts": 4, "rank": 12, "criterion": "std", "span": "data",
                                                           "rank_rtol": RANK_RTOL}
    assert artifact.manifest["text_pool"]["count"] == 60 and artifact.manifest["image_set"]["count"] == 30
    heads, result = artifact_result(artifact)
    assert heads == [(l, h) for l in (1, 2) for h in range(4)] and result.text_indices.shape == (8, 4)
    rows = head_text_rows(artifact, (2, 3))
    texts = (ROOT / "core" / "data" / "toy_texts.txt").read_text().splitlines()[:60]
    assert [row["text"] for row in rows] == [texts[i] for i in result.text_indices[-1].tolist()]
    assert rows[-1]["cumulative_variance"] == pytest.approx(float(result.cumulative_variance[-1, -1]))
    assert artifact.tensors("head_means")["mean"].shape == (3, 4, 24)

    # resume: a lost head is recomputed, the others are left untouched
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "tensors").iterdir()}
    lost = out / "tensors" / f"{group_name((1, 2))}.safetensors"
    lost_bytes = lost.read_bytes()
    lost.unlink()
    assert main(_textspan(world, out, "--layers", "1", "2", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["computed"] == [[1, 2]]
    for path, (mtime, content) in files.items():
        assert path.read_bytes() == (lost_bytes if path == lost else content)
        if path != lost:
            assert path.stat().st_mtime_ns == mtime
    assert verify_artifact(out) == []

    # a different build into the same folder is refused, not mixed in
    assert main(_textspan(world, out, "--layers", "1", "2", "--criterion", "explained_variance")) == 2
    assert "another build" in capsys.readouterr().err


def test_textspan_weights_span_with_completeness_check(world, tmp_path, capsys):
    folder, _ = world
    out = tmp_path / "weights"
    args = _textspan(world, out, "--span", "weights", "--heads", "2.0,2.1", "--evaluate", str(folder),
                     "--label-column", "shape", "--templates", "simple", "--m", "1", "4", "--json")
    args.remove("--rank"), args.remove("12")
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    completeness = summary["completeness"]
    assert [row["m"] for row in completeness["rows"]] == [1, 4] and completeness["count"] == 30
    assert completeness["earlier_layers_mean_ablated"] is True and completeness["first_layer"] == 2
    artifact = load_artifact(out)
    assert artifact.json("completeness") == completeness
    assert artifact.manifest["metrics"]["accuracy_m4"] == completeness["rows"][1]["accuracy"]
    assert {row["rank"] for row in artifact.table("textspan")} == {13}  # d_head 12 + the LayerNorm mean offset


def test_textspan_head_out_of_range_exits_2(world, tmp_path, capsys):
    assert main(_textspan(world, tmp_path / "out", "--heads", "3.0")) == 2
    assert "layer 3 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_textspan_fewer_images_than_rank_exits_2(world, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    for path in sorted((world[0] / "images").iterdir())[:10]:
        (small / path.name).write_bytes(path.read_bytes())
    args = _textspan(world, tmp_path / "out", "--layers", "2")
    args[args.index("--images") + 1] = str(small)
    assert main(args) == 2
    assert "fewer images (10) than the rank (12)" in capsys.readouterr().err


def test_textspan_empty_pool_exits_2_in_a_subprocess(world, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    args = _textspan(world, tmp_path / "out")
    args[args.index("--texts") + 1] = str(empty)
    env = {**os.environ, "CLIPSCOPE_MODEL_CONFIGS": str(ROOT / "tests" / "model_configs"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 2 and "has no non-empty lines" in done.stderr and "Traceback" not in done.stderr


def test_retrieve_returns_the_query_first(world, capsys):
    folder, _ = world
    query = sorted((folder / "images").iterdir())[4]
    args = ["retrieve", "--model", MODEL, "--image", str(query), "--gallery", str(folder / "images"), "--layer", "2",
            "--head", "1", "--k", "3", "--json"]
    assert main(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["results"][0]["path"] == str(query) and found["results"][0]["score"] == pytest.approx(1, abs=1e-5)
    assert len(found["results"]) == 3 and found["results"][1]["score"] <= found["results"][0]["score"]
    assert main(args[:-1] + ["--metric", "dot"]) == 0  # second run reads the cached gallery index
    assert "L2H1" in capsys.readouterr().out
    assert main(args[:8] + ["2", "--head", "7"]) == 2
    assert "head 7 is out of range" in capsys.readouterr().err


def test_spurious_json_and_missing_columns(world, tmp_path, capsys):
    folder, _ = world
    head_file = tmp_path / "heads.json"
    head_file.write_text(json.dumps({"heads": [[2, 1], [2, 2]], "provenance": "test heads"}))
    args = ["spurious", "--model", MODEL, "--images", str(folder), "--heads", str(head_file), "--trials", "2",
            "--templates", "simple", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provenance"] == "test heads" and report["means_from_evaluated_set"] is True
    assert report["count"] == 30 and len(report["random"]["trials"]) == 2
    population = report["random_sets"]  # every set of 2 heads from layer 2 of a 4-head model
    assert population["kind"] == "all" and population["sets"] == 6 and 0 <= population["chosen_percentile_worst"] <= 100
    assert population["worst"]["min"] <= population["worst"]["mean"] <= population["worst"]["max"]
    for key in ("base", "ablated"):
        per_group = [v for v in report[key]["per_group"].values() if v is not None]
        assert report[key]["worst_group"] == min(per_group)
    assert main(args[:-1] + ["--heads", "2.1,2.2", "--means-from", str(folder / "images")]) == 0
    printed = capsys.readouterr().out
    assert "worst group" in printed and "WARNING" not in printed and "given on the command line" in printed
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.csv").write_text("img,label\nx.png,a\n")
    assert main(["spurious", "--model", MODEL, "--images", str(bad), "--heads", "2.1"]) == 2
    assert "found: img, label" in capsys.readouterr().err
