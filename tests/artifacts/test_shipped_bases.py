"""The toy models' shipped bases: verified, loaded for the right model, and equal to a fresh build."""

import pytest
import torch

from core.artifacts.store import load_artifact, verify_artifact
from core.cli import main
from core.errors import BasesError
from core.artifacts.hub import resolve_bases_source
from core.engine.models import load_clip


# Each shipped model and its bases command's options (docs/models.md), besides the image set and pool.
BUILDS = {"toy": [], "toy-biased": ["--terms", "8"], "toy-biased-2": ["--terms", "8"]}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def model(request):
    return request.param


@pytest.fixture(scope="module")
def shipped(model):
    return load_artifact(resolve_bases_source(model), expect_model=load_clip(model).info.identity())


@pytest.fixture(scope="module")
def fresh(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh") / "bases"
    assert main(["bases", "build", "--model", model, "--images", "world:2000:1", "--texts", "toy", "--out", str(out),
                 "--layers", "3", "--neuron-layers", "2", *BUILDS[model]]) == 0
    return load_artifact(out)


def test_shipped_bases_verify_and_describe_what_made_them(model, shipped):
    assert verify_artifact(shipped.path) == []
    manifest = shipped.manifest
    assert manifest["model"]["spec"] == model and manifest["text_pool"]["name"] == "toy"
    assert set(manifest["algorithms"]) == {"textspan", "neurons", "sharding"}  # docs/models.md's command (bases build)
    assert manifest["metrics"]["textspan_rank_max"] <= 27  # 24-wide heads plus 3 offsets: the numerical rank
    assert "2000 generated world scenes" in manifest["image_set"]["description"]


def test_shipped_bases_refuse_another_model(shipped):
    with pytest.raises(BasesError, match="toy"):
        load_artifact(shipped.path, expect_model=load_clip("Tiny-ViT/none").info.identity())


def _tie_groups(norms: torch.Tensor) -> list[slice]:
    """Runs of positions whose stored (float16) norms are within one float16 step of their neighbour's.

    The ranking was made on float32 norms, so the order inside such a run is decided by differences
    below what is stored (and, on another CPU, below float32 rounding); between runs it is not.
    """
    values = norms.float()
    close = (values[1:] - values[:-1]).abs() <= 2 * torch.finfo(torch.float16).eps * values[:-1].abs()
    groups, start = [], 0
    for position, same in enumerate(close.tolist(), 1):
        if not same:
            groups.append(slice(start, position))
            start = position
    return groups + [slice(start, len(values))]


def _assert_same_ranking(ids_a, ids_b, norms):
    """Equal image ids at every rank, up to the order inside runs of equal stored norms (not the last run,
    whose members beyond k are not stored)."""
    for neuron in range(len(ids_a)):
        groups = _tie_groups(norms[neuron])
        for group in groups[:-1]:
            assert sorted(ids_a[neuron, group].tolist()) == sorted(ids_b[neuron, group].tolist()), (neuron, group)
        if groups[-1].stop - groups[-1].start == 1:
            assert ids_a[neuron, -1] == ids_b[neuron, -1], neuron


def _close(a, b, name):
    """float32 values to 1e-5 (relative) or 1e-4 of the tensor's largest entry; values stored in float16 to one float16 step.

    The scale, not each entry, sets the tolerance: the artifact was built on another CPU, and a basis direction's small
    entries carry the rounding of the whole Gram matrix (BLAS kernels differ across CPUs, e.g. AVX2 vs AVX-512)."""
    if a.dtype == torch.float16 or b.dtype == torch.float16:
        torch.testing.assert_close(a.float(), b.float(), rtol=2 * torch.finfo(torch.float16).eps, atol=1e-4, msg=name)
    else:
        scale = float(b.abs().max()) if b.numel() else 0.0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=max(1e-6, 1e-4 * scale), msg=name)


@pytest.mark.slow
def test_shipped_bases_equal_a_fresh_build(shipped, fresh):
    """What is deterministic compares exactly (chosen texts, their span ranks, the neurons' top images and
    text supports); floats to float32 or float16 rounding."""
    assert fresh.manifest["algorithms"]["textspan"] == shipped.manifest["algorithms"]["textspan"]
    neurons = {**shipped.manifest["algorithms"]["neurons"], "layers": [2]}  # the fresh build has one layer
    assert fresh.manifest["algorithms"]["neurons"] == neurons
    for head in range(4):
        a, b = shipped.tensors(f"textspan_L3H{head}"), fresh.tensors(f"textspan_L3H{head}")
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["rank"], b["rank"]), head
        assert int(a["rank"][0]) == 27  # 24-wide heads plus 3 offsets: capped below the requested 80
        for name in ("variance_explained", "cumulative", "mean", "directions", "total_variance"):
            _close(a[name], b[name], f"L3H{head} {name}")
    _close(shipped.tensors("head_means")["mean"], fresh.tensors("head_means")["mean"], "head_means")
    a, b = shipped.tensors("neurons_L2"), fresh.tensors("neurons_L2")
    _assert_same_ranking(a["top_images"], b["top_images"], a["top_norms"])
    for name in ("pcs", "thresholds", "top_norms", "pc_variance"):
        _close(a[name], b[name], f"neurons_L2 {name}")
    _close(shipped.tensors("neuron_means_L2")["mean"], fresh.tensors("neuron_means_L2")["mean"], "neuron means")
    a, b = shipped.tensors("sparse_L2"), fresh.tensors("sparse_L2")
    assert torch.equal(a["indices"], b["indices"])
    for name in ("coefficients", "reconstruction_cosine"):
        _close(a[name], b[name], f"sparse_L2 {name}")


def test_tie_groups_split_where_stored_norms_differ():
    norms = torch.tensor([5.0, 4.0, 4.0, 4.001, 3.0, 2.0, 2.0], dtype=torch.float16)
    assert _tie_groups(norms) == [slice(0, 1), slice(1, 4), slice(4, 5), slice(5, 7)]
    ids = torch.tensor([[7, 1, 2, 3, 9, 4, 5]])
    _assert_same_ranking(ids, torch.tensor([[7, 3, 1, 2, 9, 5, 6]]), norms[None])  # last run may differ
    with pytest.raises(AssertionError):
        _assert_same_ranking(ids, torch.tensor([[7, 1, 2, 9, 3, 4, 5]]), norms[None])
