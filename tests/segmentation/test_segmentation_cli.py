"""`segment` and `segeval`: the files they write, resuming, saved maps that reproduce the metrics, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.progress import NullProgress
from core.cli import main
from core.engine.models import load_clip
from core.segmentation.datasets import open_dataset
from core.segmentation.evaluate import evaluate, recompute_from_maps

ROOT = Path(__file__).resolve().parents[2]


def test_segment_writes_maps_masks_overlays_and_the_argmax_view(scene_png, tmp_path, capsys):
    out = tmp_path / "seg"
    argv = ["segment", "--image", str(scene_png), "--text", "a red circle", "--text", "a blue square",
            "--background", "a gray background", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "model: toy" in printed and "heads" in printed and "a blue square" in printed
    record = json.loads((out / "segment.json").read_text())
    assert record["texts"] == ["a red circle", "a blue square", "a gray background"] and record["method"] == "heads"
    assert record["subtract_mean_over_texts"] is True and record["background_text"] == "a gray background"
    for name in record["files"]:
        assert (out / name).is_file()
    scores = np.load(out / "00_a_red_circle_map.npy")
    assert scores.dtype == np.float32 and scores.shape == (64, 64) and scores.min() == 0 and scores.max() == 1
    mask = np.asarray(Image.open(out / "00_a_red_circle_mask.png"))
    assert set(np.unique(mask)) <= {0, 255} and np.array_equal(mask > 0, scores > scores.mean(dtype=np.float64))
    labels = np.load(out / "labels.npy")
    assert labels.shape == (64, 64) and labels.min() >= -1 and labels.max() <= 1  # the background text never wins
    assert Image.open(out / "00_a_red_circle_map.png").width > 64 + 40  # the colour scale sits beside the map
    # the same folder again: our own files are replaced
    assert main(argv[:-2] + ["--out", str(out), "--method", "raw-attention", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "raw-attention"


@pytest.mark.parametrize("extra,message", [
    (["--text", ""], "empty"),
    ([f"--text=t{i}" for i in range(17)], "at most 16"),
    (["--text", "a", "--method", "lrp"], "unknown method"),
    (["--text", "a", "--method", "heads", "--random"], "--random"),
    (["--text", "a", "--threshold", "high"], "threshold"),
    (["--text", "a", "--heads", "9.0"], "out of range"),
    (["--text", "a", "--text", "a"], "twice"),
])
def test_segment_bad_input(scene_png, tmp_path, capsys, extra, message):
    assert main(["segment", "--image", str(scene_png), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_segment_never_writes_into_a_foreign_folder(scene_png, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["segment", "--image", str(scene_png), "--text", "a", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "notes.txt").read_text() == "mine"


def test_segeval_saved_maps_reproduce_the_metrics(tmp_path, capsys):
    maps = tmp_path / "maps"
    argv = ["segeval", "--dataset", "world:10:13", "--method", "heads", "--method", "raw-attention", "--method",
            "oracle", "--save-maps", str(maps), "--state-dir", str(tmp_path / "state"), "--json", "--batch-size", "4"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["protocol"] == "aligned" and report["model"] == "toy" and report["class_accuracy"] is not None
    for result in report["results"]:
        assert result["images"] == 10
        saved = recompute_from_maps(maps, result["method"])
        for key in ("pixel_accuracy", "miou", "map", "ap_foreground", "miou_per_image"):
            assert saved[key] == pytest.approx(result[key], abs=1e-12), (result["method"], key)
    assert sorted(p.name for p in maps.glob("*_mask.png"))[:2] == ["00000_mask.png", "00001_mask.png"]
    scores = np.load(maps / "heads" / "00003_map.npy")
    assert scores.dtype == np.float32 and scores.shape == (64, 64) and 0 <= scores.min() and scores.max() <= 1
    manifest = json.loads((maps / "segeval.json").read_text())
    assert set(manifest["methods"]) == {"heads", "raw-attention", "oracle"}
    # the table
    assert main(argv[:-3] + ["--batch-size", "4"]) == 0
    table = capsys.readouterr().out
    assert "AP-fg / oracle" in table and "read back" in table and "pixel acc" in table


def test_segeval_resumes_an_interrupted_run(tmp_path, capsys):
    toy = load_clip("toy")
    dataset = open_dataset("world:12:14")
    state = tmp_path / "state"

    class InterruptAfterTwo(NullProgress):  # core.progress.Progress
        def tqdm(self, iterable, total=None, desc=None):
            for number, item in enumerate(iterable):
                if number == 2:
                    raise KeyboardInterrupt
                yield item

    with pytest.raises(KeyboardInterrupt):
        evaluate(toy, dataset, ["heads", "rollout"], batch_size=3, state_dir=state, progress=InterruptAfterTwo())
    state_file = next(state.glob("heads-*.jsonl"))
    with open(state_file, "a") as handle:
        handle.write('{"index": 6, "cut sh')  # a line cut short by the interruption
    resumed = evaluate(toy, dataset, ["heads", "rollout"], batch_size=3, state_dir=state)
    assert [r.resumed for r in resumed.results] == [6, 6]
    fresh = evaluate(toy, dataset, ["heads", "rollout"], batch_size=3, state_dir=tmp_path / "fresh")
    for a, b in zip(resumed.results, fresh.results):
        assert a.metrics == b.metrics  # the same batches: bit for bit
    # other batches round differently (batched matrix products); AP can move where pixels tie within float noise
    other = evaluate(toy, dataset, ["heads", "rollout"], batch_size=5, state_dir=tmp_path / "other")
    for a, b in zip(resumed.results, other.results):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-5)
    # the command line reads them all back
    assert main(["segeval", "--dataset", "world:12:14", "--method", "heads", "--state-dir", str(state)]) == 0
    assert "12 images read back" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--method", "heads", "--protocol", "paper"], "unknown protocol"),
    (["--method", "heads", "--protocol", "official", "--threshold", "0.4"], "official protocol fixes"),
    (["--method", "lrp"], "unknown method"),
    (["--method", "rollout", "--subtract-class-mean", "yes"], "heads map only"),
    (["--method", "heads", "--dataset", "/nonexistent"], "not found"),
    (["--method", "neurons", "--model", "Tiny-ViT/none", "--bases", str(ROOT / "core/data/toy/bases")], "model"),
])
def test_segeval_bad_input(tmp_path, capsys, extra, message):
    argv = ["segeval", "--dataset", "world:3:13", "--state-dir", str(tmp_path / "state"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_segeval_never_writes_maps_into_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "keep.npy").write_bytes(b"mine")
    assert main(["segeval", "--dataset", "world:3:13", "--method", "heads", "--save-maps", str(tmp_path / "maps"),
                 "--state-dir", str(tmp_path / "state")]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "maps" / "keep.npy").read_bytes() == b"mine"


def test_commands_are_listed():
    from core.cli import build_parser

    text = build_parser().format_help()
    assert "segment" in text and "segeval" in text
