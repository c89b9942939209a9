"""The toy model's shipped bases: verified, loaded for the right model, and equal to a fresh build."""

import pytest
import torch

from core.artifacts.store import load_artifact, verify_artifact
from core.cli import main
from core.errors import BasesError
from core.artifacts.hub import resolve_bases_source
from core.engine.models import load_clip


@pytest.fixture(scope="module")
def shipped():
    return load_artifact(resolve_bases_source("toy"), expect_model=load_clip("toy").info.identity())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh") / "bases"
    assert main(["bases", "build", "--model", "toy", "--images", "world:2000:1", "--texts", "toy", "--out", str(out),
                 "--layers", "3", "--neuron-layers", "2"]) == 0
    return load_artifact(out)


def test_shipped_bases_verify_and_describe_what_made_them(shipped):
    assert verify_artifact(shipped.path) == []
    manifest = shipped.manifest
    assert manifest["model"]["spec"] == "toy" and manifest["text_pool"]["name"] == "toy"
    assert set(manifest["algorithms"]) == {"textspan", "neurons"}
    assert "2000 generated world scenes" in manifest["image_set"]["description"]


def test_shipped_bases_refuse_another_model(shipped):
    with pytest.raises(BasesError, match="toy"):
        load_artifact(shipped.path, expect_model=load_clip("Tiny-ViT/none").info.identity())


def test_shipped_bases_equal_a_fresh_build(shipped, fresh):
    for head in range(4):
        a, b = shipped.tensors(f"textspan_L3H{head}"), fresh.tensors(f"textspan_L3H{head}")
        assert torch.equal(a["indices"][:5], b["indices"][:5])
        assert torch.allclose(a["variance_explained"], b["variance_explained"], atol=1e-4)
    for group in ("neurons_L2", "sparse_L2"):
        a, b = shipped.tensors(group), fresh.tensors(group)
        for name in a:
            if a[name].is_floating_point():
                assert torch.allclose(a[name], b[name], atol=1e-3, rtol=1e-3), (group, name)
    assert torch.equal(shipped.tensors("neurons_L2")["top_images"][:, :10], fresh.tensors("neurons_L2")["top_images"][:, :10])
