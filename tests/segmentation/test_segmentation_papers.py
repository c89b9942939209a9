"""The papers' reproduction script runs end to end (random-weight model, synthetic ImageNet-segmentation file)."""

from __future__ import annotations

import json

import numpy as np

from core.segmentation.datasets import write_imagenet_segmentation
from core.segmentation.papers import main


def test_reproduction_script_on_a_synthetic_file(tmp_path, capsys):
    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8) for _ in range(3)]
    masks = [(rng.random((30, 40)) > 0.7).astype(np.uint8) for _ in range(3)]
    data = write_imagenet_segmentation(tmp_path / "gtsegs_ijcv.mat", images, masks)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\ncar\n")
    out = tmp_path / "rows.json"
    argv = ["--data", str(data), "--p1-model", "Tiny-ViT/none", "--p2-model", "Tiny-ViT-QuickGELU/none",
            "--device", "cpu", "--limit", "2", "--classes", str(classes), "--state-dir", str(tmp_path / "state"),
            "--protocol", "aligned", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "neuron methods skipped" in captured.err
    rows = json.loads(out.read_text())
    methods = {(r["table"], r["protocol"], r["method"]) for r in rows}
    assert ("paper 1", "official", "heads") in methods and ("paper 2", "aligned", "chefer") in methods
    assert all(r["images"] == 2 for r in rows)
    heads = next(r for r in rows if r["table"] == "paper 1" and r["method"] == "heads" and r["protocol"] == "official")
    assert heads["published"] == [75.21, 54.50, 81.61] and "75.21/54.50/81.61" in captured.out
    assert main(argv[:-2] + ["--b32-bases", str(tmp_path / "missing")]) == 2
