"""`python -m core circuit` and `bases build --circuits`: the numbers add up, say what produced them, and bad
input is one line with exit status 2."""

import json

import pytest
import torch

from core.artifacts.store import load_artifact, verify_artifact
from core.circuits.bases import circuit_layers, load_weight_edges
from core.circuits.edges import weight_edges
from core.cli import main
from core.engine.models import load_clip
from core.neurons.bases import load_neuron_basis


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_out_edges_from_the_shipped_bases(capsys):
    """The toy's bases were built on world:2000:1 (held out): their top images and PCs are reused."""
    result = _json(capsys, ["circuit", "--model", "toy", "--layer", "1", "--neuron", "5", "--images",
                            "world:2000:1:heldout", "--top", "5", "--json"])
    assert result["model"] == "toy" and result["component"] == "L1.n5" and result["convention"] == "paper"
    assert "first PC" in result["target"] and "from the bases" in result["provenance"]["active"]
    assert result["active_images"] == 100 and len(result["paths"]) == 5
    full = _json(capsys, ["circuit", "--model", "toy", "--layer", "1", "--neuron", "5", "--images",
                          "world:2000:1:heldout", "--top", "8", "--json"])
    # 8 later heads: every path is listed, the edges sum to mean <phi_n, r_n>, shares to 1 in magnitude
    assert sum(p["data_edge"] for p in full["paths"]) == pytest.approx(full["data_total"], rel=1e-5, abs=1e-7)
    assert sum(abs(p["share"]) for p in full["paths"]) == pytest.approx(1.0, rel=1e-5)
    strengths = [abs(p["data_edge"]) for p in full["paths"]]
    assert strengths == sorted(strengths, reverse=True)
    assert all(p["sign"] == ("excitatory" if p["data_edge"] > 0 else "inhibitory") for p in full["paths"])
    assert all(p["head_texts"] for p in full["paths"]) and full["terms"]  # TextSpan texts and sparse terms


def test_weights_only_and_in_edges(capsys):
    result = _json(capsys, ["circuit", "--model", "toy", "--layer", "0", "--neuron", "3", "--weights-only",
                            "--target", "a red circle", "--json"])
    assert result["target"] == "text 'a red circle'" and len(result["paths"]) == 12
    assert all(p["data_edge"] is None and 0 <= p["composition"] <= 1 for p in result["paths"])
    head = _json(capsys, ["circuit", "--model", "toy", "--head", "2.1", "--top", "4", "--json"])
    assert head["component"] == "L2H1" and len(head["in_edges"]) == 4 and head["head_texts"]
    assert {row["layer"] for row in head["in_edges"]} <= {0, 1}
    weights = [abs(row["weight_edge"]) for row in head["in_edges"]]
    assert weights == sorted(weights, reverse=True)
    assert main(["circuit", "--model", "toy", "--layer", "1", "--neuron", "5", "--weights-only"]) == 0
    text = capsys.readouterr().out
    assert "model: toy" in text and "L2H0" in text and "first PC" in text


@pytest.mark.parametrize("argv, words", [
    (["--layer", "1", "--neuron", "5"], "--images"),
    (["--layer", "3", "--neuron", "5", "--weights-only"], "no later attention layers"),
    (["--layer", "1", "--neuron", "384", "--weights-only"], "neuron 384 is out of range"),
    (["--layer", "1"], "--neuron"),
    (["--head", "9.1"], "out of range"),
    (["--head", "two"], "LAYER.HEAD"),
    (["--head", "0.1"], "layer 0"),
    (["--head", "2.1", "--neuron", "3"], "one of them"),
    (["--layer", "1", "--neuron", "5", "--weights-only", "--images", "world:10"], "no images"),
    (["--layer", "1", "--neuron", "5", "--weights-only", "--target", " "], "target"),
    (["--layer", "1", "--neuron", "5", "--images", "world:10", "--k", "50"], "k = 50"),
    (["--layer", "1", "--neuron", "5", "--weights-only", "--bases", "/nonexistent/bases"], "bases"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, words):
    assert main(["circuit", "--model", "toy", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and words in err, err


def test_bases_build_stores_every_neurons_weight_edges(tmp_path, capsys):
    out = tmp_path / "bases"
    assert main(["bases", "build", "--model", "Tiny-ViT/none", "--images", "world:40:2", "--texts", "toy",
                 "--out", str(out), "--layers", "2", "--neuron-layers", "0", "1", "--k", "8", "--per-head", "3",
                 "--rank", "10", "--batch-size", "20", "--circuits"]) == 0
    capsys.readouterr()
    assert verify_artifact(out) == []
    bundle = load_clip("Tiny-ViT/none")
    artifact = load_artifact(out, expect_model=bundle.info.identity())
    assert circuit_layers(artifact) == [0, 1] and artifact.manifest["algorithms"]["circuits"]["layers"] == [0, 1]
    for layer in (0, 1):
        stored = load_weight_edges(artifact, layer)
        pcs = load_neuron_basis(artifact, layer).stats.pcs
        computed = weight_edges(bundle.model.visual, layer, targets=pcs, target="r_n")
        torch.testing.assert_close(stored.composition, computed.composition)
        torch.testing.assert_close(stored.signed, computed.signed)
    result = _json(capsys, ["circuit", "--model", "Tiny-ViT/none", "--layer", "0", "--neuron", "2", "--weights-only",
                            "--bases", str(out), "--json"])
    assert result["provenance"]["weights"] == "stored in the bases"
    strongest = float(load_weight_edges(artifact, 0).signed[2].abs().max())
    assert abs(result["paths"][0]["weight_edge"]) == pytest.approx(strongest, rel=1e-6)
    # without --circuits nothing is stored, and the edges are computed from the weights
    assert load_weight_edges(load_artifact("core/data/toy/bases"), 1) is None
