"""`neurons`, `concepts` and `second-order` commands: artifacts that verify, resuming, clear errors (exit 2)."""

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from core.progress import NullProgress
from core.artifacts.store import ArtifactWriter, load_artifact, read_manifest, text_pool_identity, verify_artifact
from core.cli import main
from core.errors import BasesError
from core.engine.models import load_clip
from core.neurons.bases import BuildOptions, ImageSet, build_neuron_bases, load_neuron_basis
from core.neurons.stats import neuron_stats
from core.neurons.texts import image_effects
from core.world.scenes import load_toy_texts, write_scenes

MODEL = "Tiny-ViT/none"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    out = tmp_path_factory.mktemp("bases") / "tiny-neurons"
    assert main(["neurons", "--model", MODEL, "--layer", "0", "1", "--images", "world:40", "--texts", "toy",
                 "--out", str(out), "--k", "8", "--terms", "6", "--batch-size", "16"]) == 0
    return out


def test_neurons_artifact_verifies_and_matches_the_engine(bases):
    assert verify_artifact(bases) == []
    manifest = read_manifest(bases)
    params = manifest["algorithms"]["neurons"]
    assert params["dictionary"] == "normalise_texts" and params["k"] == 8 and params["terms"] == 6
    assert params["layers"] == [0, 1] and params["mode"] == "paper" and params["coefficient"] == 100.0
    assert manifest["image_set"]["count"] == 40 and manifest["text_pool"]["name"] == "toy"
    bundle = load_clip(MODEL)
    artifact = load_artifact(bases, expect_model=bundle.info.identity())
    basis = load_neuron_basis(artifact, 1)
    images = ImageSet.world(40, seed=0)
    stats = neuron_stats(bundle.model.visual, 1, lambda: images.batches(bundle.preprocess, 16), k=8)
    assert torch.equal(basis.stats.top_images, stats.top_images)
    # directions and means are stored in float16 (bases stay small): equal to the engine within its precision
    torch.testing.assert_close(basis.stats.pcs, stats.pcs, atol=2e-3, rtol=0)
    torch.testing.assert_close(basis.stats.mean, stats.mean, atol=2e-3, rtol=1e-3)
    assert basis.stats.mean.shape == (bundle.info.d_mlp, bundle.info.d_out)
    rows = artifact.table("neuron_terms")
    assert {row["layer"] for row in rows} == {0, 1} and len(rows) == 2 * bundle.info.d_mlp * 6
    first = [row for row in rows if row["layer"] == 1 and row["neuron"] == 5]
    expected = basis.words.terms(5, basis.texts)
    assert [row["text"] for row in first] == [text for text, _ in expected]
    assert [row["weight"] for row in first] == pytest.approx([weight for _, weight in expected], abs=1e-6)
    assert "dictionary normalise_texts" in basis.describe() and "40 generated world scenes" in basis.describe()


def test_interrupted_build_resumes_from_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "resume"
    bundle = load_clip(MODEL)
    calls = []

    class InterruptSecondPass(NullProgress):  # core.progress.Progress
        def tqdm(self, iterable, total=None, desc=None):
            calls.append(desc)
            if "deviations" in desc:
                raise KeyboardInterrupt
            return iterable

    with pytest.raises(KeyboardInterrupt):
        build_neuron_bases(bundle, out, layers=[1], image_set=ImageSet.world(24, seed=0), texts=load_toy_texts(),
                           pool_name="toy", options=BuildOptions(k=5, batch_size=16), progress=InterruptSecondPass())
    means = out / "tensors" / "neuron_means_L1.safetensors"
    written = means.stat().st_mtime_ns
    assert "unfinished" in verify_artifact(out)[0]
    assert main(["neurons", "--model", MODEL, "--layer", "1", "--images", "world:24", "--texts", "toy",
                 "--out", str(out), "--k", "5", "--batch-size", "16"]) == 0
    assert "means read back from an earlier run (24 images)" in capsys.readouterr().err
    assert means.stat().st_mtime_ns == written and verify_artifact(out) == []


def test_second_order_writes_phi(tmp_path, scene_png, capsys):
    out = tmp_path / "phi.safetensors"
    args = ["second-order", "--model", MODEL, "--layer", "1", "--image", str(scene_png), "--out", str(out)]
    assert main(args) == 0
    bundle = load_clip(MODEL)
    with safe_open(str(out), "pt") as handle:
        phi, metadata = handle.get_tensor("phi"), handle.metadata()
    assert phi.shape == (bundle.info.d_mlp, bundle.info.d_out)
    assert metadata["model"] == MODEL and metadata["layer"] == "1" and metadata["mode"] == "paper"
    assert metadata["coefficient"] == "100.0"
    expected, _ = image_effects(bundle.model.visual, 1, bundle.preprocess(Image.open(scene_png).convert("RGB"))[None])
    torch.testing.assert_close(phi, expected[0])
    capsys.readouterr()
    assert main(args) == 2  # never overwritten silently
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["second-order", "--layer", "2"], "has no later attention layers"),
    (["second-order", "--layer", "7"], "layer 7 is out of range"),
    (["second-order", "--layer", "1", "--out", "phi.npy"], "must end in .safetensors"),
    (["neurons", "--layer", "1", "--images", "world:6", "--k", "10"], "image set has 6 readable images but k = 10"),
    (["neurons", "--layer", "2", "--images", "world:20"], "has no later attention layers"),
    (["neurons", "--layer", "1", "--images", "world:20", "--terms", "500"], "n_terms must be an integer from 1"),
    (["neurons", "--layer", "1", "--images", "EMPTY"], "no images"),
    (["concepts", "--bases", "MISSING"], "no bases folder"),
    (["concepts"], "no neuron bases are configured for model Tiny-ViT/none"),
])
def test_bad_input_exits_2(tmp_path, scene_png, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("CLIPSCOPE_BASES", raising=False)
    (tmp_path / "empty").mkdir()
    defaults = {"--model": MODEL, "--image": str(scene_png), "--out": str(tmp_path / "out.safetensors")}
    if argv[0] == "neurons":
        defaults = {"--model": MODEL, "--texts": "toy", "--out": str(tmp_path / "bases"), "--k": "5"}
    elif argv[0] == "concepts":
        defaults = {"--model": MODEL, "--image": str(scene_png)}
    for flag, value in zip(argv[1::2], argv[2::2]):
        defaults[flag] = {"EMPTY": str(tmp_path / "empty"), "MISSING": str(tmp_path / "none")}.get(value, value)
    if defaults.get("--out") == "phi.npy":
        defaults["--out"] = str(tmp_path / "phi.npy")
    assert main([argv[0]] + [item for pair in defaults.items() for item in pair]) == 2
    assert message in capsys.readouterr().err


def test_another_text_pool_is_refused_on_resume(bases, tmp_path, capsys):
    pool = tmp_path / "pool.txt"
    pool.write_text("a dog\na cat\na boat\n")
    assert main(["neurons", "--model", MODEL, "--layer", "0", "1", "--images", "world:40", "--texts", str(pool),
                 "--out", str(bases), "--k", "8", "--terms", "3"]) == 2
    assert "another build" in capsys.readouterr().err and verify_artifact(bases) == []


def test_stored_texts_must_match_the_manifests_pool(tmp_path):
    texts = load_toy_texts()
    writer = ArtifactWriter(tmp_path / "bad", model=load_clip(MODEL).info.identity(),
                            text_pool=text_pool_identity(texts, "toy"), algorithms={"neurons": {"layers": [1]}})
    writer.add_json("texts", texts[::-1])
    writer.finalize()
    with pytest.raises(BasesError, match="text pool does not match the stored embeddings"):
        load_neuron_basis(load_artifact(tmp_path / "bad"), 1)


def test_concepts_json_and_text(bases, scene_png, capsys):
    assert main(["concepts", "--model", MODEL, "--image", str(scene_png), "--bases", str(bases), "--layer", "1",
                 "--top", "4", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["layer"] == 1 and len(result["words"]) <= 4
    assert all(item["norm"] > item["threshold"] for item in result["activated"])
    scores = [item["score"] for item in result["words"]]
    assert scores == sorted(scores, reverse=True) and all(score > 0 for score in scores)
    assert result["provenance"]["dictionary"] == "normalise_texts" and result["provenance"]["text_pool"] == "toy"
    assert main(["concepts", "--model", MODEL, "--image", str(scene_png), "--bases", str(bases)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("activated neurons") == 2 and "dictionary normalise_texts" in printed
    assert main(["concepts", "--model", MODEL, "--image", str(scene_png), "--bases", str(bases), "--layer", "2"]) == 2


def test_image_folder_statistics_and_ablation_experiment(tmp_path, capsys):
    images = write_scenes(tmp_path / "stats", 30, seed=6) / "images"
    folder = write_scenes(tmp_path / "eval", 24, seed=5)
    out = tmp_path / "with-eval"
    assert main(["neurons", "--model", MODEL, "--layer", "1", "--images", str(images), "--texts", "toy", "--out",
                 str(out), "--k", "6", "--evaluate", str(folder), "--label-column", "shape", "--templates", "simple",
                 "--dictionary", "original", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dictionary"] == "original" and "column 'shape', 24 images" in summary["evaluated_on"]
    assert summary["image_set"] == f"30 images under {images.resolve()}"
    basis = load_neuron_basis(load_artifact(out), 1)
    top = int(basis.stats.top_images[3, 0])
    assert basis.image_set.image(top).tobytes() == Image.open(images / f"{top:06d}.png").convert("RGB").tobytes()
    accuracy = {row["ablation"]: row["accuracy"] for row in summary["ablations"]}
    assert set(accuracy) == {"baseline", "mean-ablated layer", "without significant", "without insignificant",
                             "rank-1: PC #1", "rank-1: sparse text reconstruction"}
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    manifest = read_manifest(out)
    assert manifest["metrics"]["L1_accuracy_baseline"] == accuracy["baseline"]
    assert verify_artifact(out) == []
