"""Indirect effects of neurons: the batched re-run against a literal full forward with a hook per neuron."""

from __future__ import annotations

import copy

import pytest
import torch

from core.engine.models import load_clip
from core.errors import ConfigError
from core.neurons.indirect import ablated_embeddings, activation_means, indirect_effects, indirect_stats
from tests.conftest import random_pixels


def _literal(visual, pixels, layer, means, neuron=None):
    """visual(pixels) with neuron `neuron` (or every neuron) of `layer` replaced by its per-token mean."""
    def replace(_module, inputs):
        hidden = inputs[0].clone()
        if neuron is None:
            hidden[:] = means
        else:
            hidden[..., neuron] = means[:, neuron]
        return (hidden,)

    handle = visual.transformer.resblocks[layer].mlp.c_proj.register_forward_pre_hook(replace)
    try:
        with torch.no_grad():
            return visual(pixels)
    finally:
        handle.remove()


@pytest.mark.parametrize("spec", ["Tiny-ViT/none", "Tiny-ViT-LayerScale/none"])
def test_indirect_effects_match_a_literal_rerun_per_neuron(spec):
    bundle = load_clip(spec)
    visual = copy.deepcopy(bundle.model.visual).double()  # float64: the effects are differences of embeddings
    pixels = random_pixels(bundle, batch=3, seed=1).double()
    means, count = activation_means(visual, 1, [random_pixels(bundle, batch=4, seed=2).double()])
    means = means.double()
    assert count == 4 and means.shape[0] == bundle.info.grid[0] * bundle.info.grid[1] + 1
    with torch.no_grad():
        y = visual(pixels)
    neurons = torch.tensor([0, 7, 100])
    effects = indirect_effects(visual, pixels, 1, means, neurons=neurons, chunk=2)
    for column, neuron in enumerate(neurons.tolist()):
        literal = 100 * (y - _literal(visual, pixels, 1, means, neuron)) / y.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(effects[:, column], literal, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(ablated_embeddings(visual, pixels, 1, means), _literal(visual, pixels, 1, means),
                               atol=1e-10, rtol=1e-8)


def test_indirect_stats_and_bad_layers(tiny):
    visual = tiny.model.visual
    batches = [(torch.arange(4 * i, 4 * i + 4), random_pixels(tiny, batch=4, seed=10 + i)) for i in range(2)]
    means, _ = activation_means(visual, 0, [p for _, p in batches])
    stats = indirect_stats(visual, 0, lambda: iter(batches), means, k=5)
    assert stats["n_images"] == 8 and stats["pcs"].shape == (visual.transformer.resblocks[0].mlp.c_fc.out_features, 24)
    assert ((stats["pc_variance"] >= 0) & (stats["pc_variance"] <= 1 + 1e-6)).all()
    norms = stats["pcs"].norm(dim=-1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=1e-5)
    with pytest.raises(ConfigError, match="last"):
        activation_means(visual, 2, [])
