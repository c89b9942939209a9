"""Every tab's download (core.explorer.downloads): the numbers the tab shows, the command line's schema, the view's
provenance, and no server path in any file."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from core import settings
from core.cli import main
from core.errors import ConfigError
from core.explorer import downloads
from core.explorer.decomposition import decompose
from core.explorer.segmentation import segment
from core.links.images import image_ref_path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _no_server_path(files: dict[str, bytes]) -> None:
    for name, data in files.items():
        if name.endswith((".json", ".csv")):
            text = data.decode("utf-8")
            assert ROOT not in text, f"{name} names the checkout"
            assert "/tmp/" not in text and "/root/" not in text, name


def test_decomposition_download_is_decompose_json_and_the_tables_numbers(tmp_path, capsys):
    texts = ["a green cross", "a red circle"]
    view = decompose("toy", None, "example:0", "\n".join(texts), "paper", layer="3", head=1)
    files = downloads.read_archive(downloads.decomposition_archive(view, tmp_path))
    assert set(files) == {"decomposition.json", "decomposition.csv", "provenance.json"}
    objects = json.loads(files["decomposition.json"])

    # The command line on the same image file gives the same objects (keys and numbers).
    capsys.readouterr()
    assert main(["decompose", "--model", "toy", "--image", image_ref_path("example:0"),
                 *sum((["--text", t] for t in texts), []), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert len(cli) == len(objects) == 2
    for mine, theirs in zip(objects, cli):
        assert set(mine) - set(theirs) == {"provenance"}  # the same schema, with the provenance added
        assert mine["text"] == theirs["text"] and mine["device"] == theirs["device"]
        np.testing.assert_allclose(mine["heads"], theirs["heads"], atol=1e-6)
        np.testing.assert_allclose(mine["mlps"], theirs["mlps"], atol=1e-6)
        assert mine["cosine"] == pytest.approx(theirs["cosine"], abs=1e-6)

    # The CSV holds the tab's table (text shown: the first) in the tab's unit and order of magnitude.
    rows = _csv_rows(files["decomposition.csv"])
    column = next(c for c in view.table[0] if c.startswith("contribution"))
    assert column in rows[0]
    shown = {(int(r["layer"]), int(r["head"])): float(r[column]) for r in rows
             if r["text"] == texts[0] and r["head"] != ""}
    for row in view.table:
        assert round(shown[(row["layer"], row["head"])], 4) == row[column]
    totals = {r["text"]: float(r[column]) for r in rows if r["component"] == "total (cosine)"}
    for text, obj in zip(texts, objects):
        assert totals[text] == pytest.approx(obj["cosine"] * 100, abs=1e-9)
        parts = sum(float(r[column]) for r in rows if r["text"] == text and r["component"] != "total (cosine)")
        assert parts == pytest.approx(totals[text], abs=1e-3)  # embedding + MLPs + heads = cosine

    record = json.loads(files["provenance.json"])
    assert record["model"] == "toy" and record["image"] == "example:0" and record["convention"] == "paper"
    assert record["texts"] == texts and record["device"] == "cpu"
    assert record["link"] == f"?{view.link.query}"
    assert any(c.startswith("python -m core decompose") for c in record["commands"])
    assert objects[0]["provenance"]["link"] == record["link"]
    _no_server_path(files)


def test_segmentation_download_is_what_segment_writes(tmp_path):
    view = segment("toy", None, "example:0", "a green cross\na red circle", "a pink background", "heads", "rollout")
    files = downloads.read_archive(downloads.segmentation_archive(view, tmp_path))
    out = tmp_path / "cli"
    assert main(["segment", "--model", "toy", "--image", image_ref_path("example:0"), "--text", "a green cross",
                 "--text", "a red circle", "--background", "a pink background", "--method", "heads",
                 "--out", str(out)]) == 0
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    ours = {name.split("/", 1)[1] for name in files if name.startswith("heads/")}
    assert ours == written  # the same files, by the same names
    for name in written:
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(io.BytesIO(files[f"heads/{name}"])), np.load(out / name), atol=1e-6)
        elif name.endswith("_mask.png"):
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(files[f"heads/{name}"]))),
                                  np.asarray(Image.open(out / name)))
    assert any(name.startswith("rollout/") and name.endswith("_map.npy") for name in files)  # the compared method
    # The IoU table equals the one the tab shows, and the truth mask is the view's.
    iou = _csv_rows(files["iou.csv"])
    for row in iou:
        assert (f"| {row['text']} | {row['scored against']} | {float(row['IoU heads']):.3f} | "
                f"{float(row['IoU rollout']):.3f} |") in view.info
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(files["truth_mask.png"]))) > 0, view.truth[0])
    segment_json = json.loads(files["heads/segment.json"])
    assert segment_json["image"] == "example:0" and segment_json["provenance"]["link"] == f"?{view.link.query}"
    _no_server_path(files)


def test_tables_download_keeps_the_shown_rows_and_the_link(tmp_path):
    from core.explorer.heads import explain_image, heads_link

    shown = explain_image("toy", None, "example:1", "a circle\na square", 3, 0, None, "paper")
    panel = heads_link("toy", None, 3, 0, "a circle\na square", "example:1", "paper", "cosine")
    path = downloads.tables_archive(tmp_path, "heads", "heads-L3H0", {"ranked heads": shown.ranked,
                                    "top texts": shown.top_texts, "empty": []}, panel.query, panel.markdown,
                                    notes=[shown.info], pool="toy")
    files = downloads.read_archive(path)
    assert set(files) == {"ranked-heads.csv", "top-texts.csv", "provenance.json"}
    ranked = _csv_rows(files["ranked-heads.csv"])
    assert [r["head"] for r in ranked] == [r["head"] for r in shown.ranked]
    column = next(c for c in shown.ranked[0] if c.startswith("score"))
    assert [float(r[column]) for r in ranked] == [r[column] for r in shown.ranked]
    record = json.loads(files["provenance.json"])
    assert record["tab"] == "heads" and record["model"] == "toy" and record["image"] == "example:1"
    assert record["text_pool"] == "toy" and record["commands"] and record["link"].startswith("?tab=heads")
    with pytest.raises(ConfigError, match="Nothing to download"):
        downloads.tables_archive(tmp_path, "heads", "x", {"a": []}, panel.query, panel.markdown)


def test_public_downloads_name_no_server_path(tmp_path):
    settings.configure(public=True)
    try:
        notes = [f"Evaluated on {ROOT}/core/data/toy/bases and /srv/private/images/cat.png"]
        path = downloads.tables_archive(tmp_path, "neurons", "n", {"terms": [{"text": f"{ROOT}/secret", "w": 1.0}]},
                                        "tab=neurons&model=toy", "", notes=notes, bases=f"{ROOT}/core/data/toy/bases")
        files = downloads.read_archive(path)
        _no_server_path(files)
        record = json.loads(files["provenance.json"])
        assert record["bases"] == "core/data/toy/bases"
        assert "/srv/private" not in files["provenance.json"].decode()
    finally:
        settings.configure(public=None)


def test_adversarial_download_carries_provenance_and_no_server_path(tmp_path):
    from core.explorer.adversarial import generate

    view = generate("toy-biased", "square", "triangle", images=8, repeats=1, baselines=False, judge="toy")
    files = downloads.read_archive(downloads.adversarial_archive(view.report, tmp_path))
    assert {"results.csv", "words.csv", "neurons.csv", "summary.json", "provenance.json"} <= set(files)
    assert not any(name.startswith(".clipscope") for name in files)
    record = json.loads(files["provenance.json"])
    assert record["model"] == "toy-biased" and record["link"] == f"?{view.link.query}"
    assert any(line.startswith("python -m core adversarial") for line in record["commands"])
    summary = json.loads(files["summary.json"])
    assert summary["bases"] == "core/data/toy_biased/bases" and summary["provenance"]["device"] == "cpu"
    # the success rates the tab shows are the summary's
    for row in view.success:
        assert round(100 * summary["summary"][row["method"]]["success_mean"], 1) == row["success %"]
    _no_server_path(files)
