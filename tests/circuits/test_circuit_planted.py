"""Validation 2, a planted circuit (no training): a hand-built tiny open_clip ViT whose weights route neuron 0 of
MLP 0 into head 0 of layer 1 (which writes the target direction) and head 1 of layer 2 (which writes its
negation), every other path orthogonal. The edges must recover exactly those two paths with the right signs."""

import copy
import math

import pytest
import torch

from core.circuits.ablation import lens_path_effects, real_path_effects, token_means
from core.circuits.edges import data_edges, select_active, weight_edges
from core.engine.models import load_clip
from core.engine.trace import trace_vit
from core.neurons.second_order import MODES, second_order_basis, second_order_effects
from tests.conftest import random_pixels

NEURON = 0
EXCITATORY, INHIBITORY = (1, 0), (2, 1)  # (layer, head)
PLANTED = {EXCITATORY: +1, INHIBITORY: -1}
WIDTH, HEADS, D_HEAD = 32, 2, 16


@pytest.fixture(scope="module")
def planted():
    """(bundle, visual): Tiny-ViT-Planted with the circuit written into its weights."""
    bundle = load_clip("Tiny-ViT-Planted/none")
    visual = copy.deepcopy(bundle.model.visual)
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(WIDTH, WIDTH, generator=generator)
    raw[:, 0] = 1.0
    q, _ = torch.linalg.qr(raw)  # column 0 spans the all-ones vector; the others are orthogonal to it
    a, b, out, free = q[:, 1], q[:, 2], q[:, 3], q[:, 4:]  # every direction orthogonal to LayerNorm's mean

    def in_free(rows: int) -> torch.Tensor:  # [rows, WIDTH] rows spread over the free directions only
        return torch.randn(rows, free.shape[1], generator=generator) @ free.T / math.sqrt(free.shape[1])

    blocks = visual.transformer.resblocks
    with torch.no_grad():
        for block in blocks:  # no bias and no LayerNorm affine: no bias or mean share reaches any path
            block.ln_1.weight.fill_(1.0)
            block.ln_1.bias.zero_()
            block.attn.in_proj_bias.zero_()
            block.attn.out_proj.bias.zero_()
        visual.ln_post.weight.fill_(1.0)
        visual.ln_post.bias.zero_()
        mlp = blocks[0].mlp
        mlp.c_proj.weight.copy_(in_free(mlp.c_proj.weight.shape[1]).T)  # every other neuron writes free directions
        mlp.c_proj.bias.zero_()
        mlp.c_proj.weight[:, NEURON] = 0.2 * (a + b)  # the neuron writes a + b
        mlp.c_fc.weight[NEURON] = 0.1 * torch.randn(WIDTH, generator=generator)
        mlp.c_fc.bias[NEURON] = 1.5  # positive activation at every token
        for index in (1, 2):
            attn = blocks[index].attn
            attn.in_proj_weight[2 * WIDTH:] = in_free(WIDTH)  # values read only free directions...
            attn.out_proj.weight.copy_(in_free(WIDTH).T)  # ...and heads write only free directions
        # ...except the planted reads and writes
        blocks[1].attn.in_proj_weight[2 * WIDTH + 0 * D_HEAD] = a
        blocks[1].attn.out_proj.weight[:, 0 * D_HEAD] = out
        blocks[2].attn.in_proj_weight[2 * WIDTH + 1 * D_HEAD] = b
        blocks[2].attn.out_proj.weight[:, 1 * D_HEAD] = -out
        visual.proj.copy_(torch.cat([out[:, None], free[:, :visual.proj.shape[1] - 1]], 1))
    return bundle, visual


def _found(matrix: torch.Tensor, later_layers, relative: float = 1e-3) -> dict:
    """{(layer, head): sign} of the edges above `relative` of the largest."""
    limit = relative * float(matrix.abs().max())
    return {(later_layers[i], h): (1 if float(matrix[i, h]) > 0 else -1)
            for i in range(matrix.shape[0]) for h in range(matrix.shape[1]) if abs(float(matrix[i, h])) > limit}


def _precision_recall(found: dict) -> tuple[float, float]:
    right = sum(1 for path, sign in found.items() if PLANTED.get(path) == sign)
    return right / max(len(found), 1), right / len(PLANTED)


def test_weight_edges_find_the_planted_paths(planted):
    _, visual = planted
    target = torch.eye(visual.proj.shape[1])[:1]  # the direction both planted heads write (+ and -)
    edges = weight_edges(visual, 0, neurons=[NEURON], targets=target, target="out")
    assert _precision_recall(_found(edges.signed[0], edges.later_layers)) == (1.0, 1.0)
    found = _found(edges.composition[0], edges.later_layers)  # unsigned: the same two paths
    assert set(found) == set(PLANTED)
    torch.testing.assert_close(edges.signed[0, 0, 0], -edges.signed[0, 1, 1])  # one read, one negated write


@pytest.mark.parametrize("mode", MODES)
def test_data_edges_find_the_planted_paths(planted, mode):
    bundle, visual = planted
    pixels = random_pixels(bundle, batch=6, seed=3)
    batches = [(torch.arange(6), pixels)]
    target = torch.eye(visual.proj.shape[1])[:1]
    edges = data_edges(visual, 0, batches, target, neurons=[NEURON], target="out", mode=mode)
    assert _precision_recall(_found(edges.mean[0], edges.later_layers)) == (1.0, 1.0)
    # the neuron's whole effect lies along the target: the two planted paths, nothing else
    phi = second_order_effects(trace_vit(visual, pixels, mlp_layers=[0]), second_order_basis(visual, 0), mode=mode,
                               neurons=[NEURON])[:, 0]
    assert float(phi[:, 1:].abs().max()) <= 1e-5 * float(phi[:, 0].abs().max())


def test_edges_against_the_neurons_first_pc(planted):
    """Against r_n (paper 2's direction) the two planted paths have opposite signs and nothing else counts."""
    bundle, visual = planted
    pixels = random_pixels(bundle, batch=12, seed=4)
    batches = lambda: [(torch.arange(12), pixels)]  # noqa: E731
    active = select_active(visual, 0, batches, neurons=[NEURON], k=4)
    edges = data_edges(visual, 0, batches(), active.pcs, neurons=[NEURON], active=active.ids, target="r_n")
    found = _found(edges.mean[0], edges.later_layers)
    assert set(found) == set(PLANTED) and found[EXCITATORY] == -found[INHIBITORY]


def test_ablation_moves_the_output_only_through_the_planted_paths(planted):
    bundle, visual = planted
    pixels = random_pixels(bundle, batch=8, seed=5)
    target = torch.eye(visual.proj.shape[1])[0]
    means = token_means(visual, 0, [(torch.arange(8), random_pixels(bundle, batch=8, seed=6))], neurons=[NEURON])[:, 0]
    lens = lens_path_effects(visual, pixels, 0, NEURON, means, target).abs().mean(0)
    assert set(_found(lens, (1, 2))) == set(PLANTED)
    singles = torch.eye(4, dtype=torch.bool).reshape(4, 2, 2)
    real = real_path_effects(visual, pixels, 0, NEURON, means, singles, target).abs().mean(1).reshape(2, 2)
    order = sorted(((float(real[i, h]), (i + 1, h)) for i in range(2) for h in range(2)), reverse=True)
    assert {path for _, path in order[:2]} == set(PLANTED)
