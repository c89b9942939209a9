"""MLP neurons: streaming statistics vs an in-memory computation, the PCA sign rule and threshold,
planted structure recovered end to end, the ablation experiment, concept discovery."""

import copy
import re

import pytest
import torch

from core.neurons.concepts import discover_concepts
from core.errors import ConfigError, IndexRangeError
from core.engine.models import load_clip
from core.neurons.stats import NeuronStats, TopDeviations, first_principal_components, neuron_stats, rank_order
from core.neurons.texts import (
    NeuronTexts,
    ablated_representations,
    activation_map,
    decompose_neurons,
    image_effects,
    neuron_ablation_accuracies,
    search_neurons,
)
from core.neurons.second_order import second_order_basis, second_order_effects
from core.neurons.sparse import prepare_dictionary
from core.engine.text import encode_texts
from core.engine.trace import trace_vit
from core.world.scenes import load_toy_texts
from tests.conftest import random_pixels

LAYER = 1


def _batches(pixels, size):
    """A re-iterable source of (ids, pixels) batches of uneven size."""
    chunks = [(torch.arange(start, min(start + size, len(pixels))), pixels[start:start + size])
              for start in range(0, len(pixels), size)]
    return lambda: iter(chunks)


def _all_effects(visual, layer, pixels, mode="paper"):
    basis = second_order_basis(visual, layer)
    return second_order_effects(trace_vit(visual, pixels, mlp_layers=[layer]), basis, mode=mode)


def _literal_stats(phi, k):
    """In memory, neuron by neuron, as the paper code does (compute_pcas.py, B.8)."""
    mean = phi.double().mean(0).float()
    deviations = phi - mean  # [image, neuron, d_out]
    norms = deviations.norm(dim=-1)
    out = {"mean": mean, "pcs": [], "thresholds": [], "top_images": [], "top_norms": [], "pc_variance": []}
    for n in range(phi.shape[1]):
        order = norms[:, n].argsort(descending=True, stable=True)[:k]  # ties: lower image id first
        rows = deviations[order, n].double()
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        pc = vh[0]
        positive = int((rows @ pc > 0).sum())
        if positive < k / 2 or (positive == k / 2 and float((rows @ pc).sum()) < 0):
            pc = -pc
        out["pcs"].append(pc.float())
        out["thresholds"].append(norms[order[-1], n])
        out["top_images"].append(order)
        out["top_norms"].append(norms[order, n])
        out["pc_variance"].append((s[0] ** 2 / (s**2).sum()).float())
    return {key: torch.stack(value) if isinstance(value, list) else value for key, value in out.items()}


@pytest.fixture(scope="module")
def tiny_set(tiny):
    pixels = random_pixels(tiny, batch=40, seed=1)
    return tiny.model.visual, pixels, _all_effects(tiny.model.visual, LAYER, pixels)


@pytest.mark.parametrize("store", [torch.float32, torch.float16])
def test_streaming_stats_equal_in_memory_computation(tiny_set, store):
    visual, pixels, phi = tiny_set
    k = 8
    stats = neuron_stats(visual, LAYER, _batches(pixels, 7), k=k, store_dtype=store)
    literal = _literal_stats(phi, k)
    assert stats.n_images == 40 and stats.k == k and stats.layer == LAYER
    torch.testing.assert_close(stats.mean, literal["mean"], rtol=1e-5, atol=1e-5)
    assert torch.equal(stats.top_images, literal["top_images"])
    torch.testing.assert_close(stats.top_norms, literal["top_norms"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.thresholds, literal["thresholds"], rtol=1e-4, atol=1e-5)
    tolerance = 1e-4 if store == torch.float32 else 3e-3
    torch.testing.assert_close(stats.pcs, literal["pcs"], rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(stats.pc_variance, literal["pc_variance"], rtol=tolerance, atol=tolerance)


def test_image_set_smaller_than_k_is_refused(tiny_set):
    visual, pixels, _ = tiny_set
    with pytest.raises(ConfigError, match="image set has 5 readable images but k = 10"):
        neuron_stats(visual, LAYER, _batches(pixels[:5], 4), k=10)
    with pytest.raises(ConfigError, match="has no later attention layers"):
        neuron_stats(visual, 2, _batches(pixels, 8), k=2)


def test_top_k_merge_and_threshold_on_planted_norms():
    generator = torch.Generator().manual_seed(0)
    n_images, neurons, d_out, k = 20, 3, 6, 5
    directions = torch.nn.functional.normalize(torch.randn(n_images, neurons, d_out, generator=generator), dim=-1)
    norms = torch.stack([torch.randperm(n_images, generator=generator) + 1.0 for _ in range(neurons)], 1)
    deviations = directions * norms[..., None]  # |deviation| = 1..20, shuffled per neuron
    top = TopDeviations(neurons, k, d_out, dtype=torch.float32, device=torch.device("cpu"))
    for start in range(0, n_images, 3):
        part = slice(start, start + 3)
        top.update(torch.arange(n_images)[part], deviations[part], norms[part])
    kept_norms, ids = top.ranking()
    assert torch.equal(kept_norms, torch.tensor([[20.0, 19, 18, 17, 16]] * neurons))  # tau = 16, the 5th largest
    for n in range(neurons):
        assert torch.equal(norms[ids[n], n], kept_norms[n])
        torch.testing.assert_close(top.vectors[n], deviations[top.ids[n], n])  # each slot holds its image's vector


def test_pca_sign_rule_and_variance_share():
    v = torch.nn.functional.normalize(torch.tensor([1.0, 2.0, -1.0, 0.5]), dim=0)
    w = torch.nn.functional.normalize(torch.tensor([2.0, -1.0, 0.0, 0.0]), dim=0)  # orthogonal to v
    mostly_positive = torch.tensor([3.0, 2.5, 2.0, 1.5, 1.2, 1.1, -4.0, -3.0, -2.0, -1.0])  # 6 of 10 positive
    rows = torch.stack([mostly_positive[:, None] * v, -mostly_positive[:, None] * v])  # second: 4 of 10 positive
    pcs, share = first_principal_components(rows)
    torch.testing.assert_close(pcs[0], v)
    torch.testing.assert_close(pcs[1], -v)  # flipped: now 6 of 10 project positively
    torch.testing.assert_close(share, torch.ones(2))
    # rows c_i v + e_i w with c orthogonal to e: singular values |c| > |e|, the PC keeps |c|^2 of the energy
    extra = torch.tensor([0.5, -0.5] * 5)
    extra -= (extra @ mostly_positive) / (mostly_positive @ mostly_positive) * mostly_positive
    mixed = mostly_positive[:, None] * v + extra[:, None] * w
    pcs, share = first_principal_components(mixed[None])
    expected = (mostly_positive**2).sum() / ((mostly_positive**2).sum() + (extra**2).sum())
    torch.testing.assert_close(share[0], expected)
    assert float(pcs[0] @ v) > 0.99
    # a neuron that never deviates has no direction
    pcs, share = first_principal_components(torch.zeros(1, 10, 4))
    assert torch.equal(pcs, torch.zeros(1, 4)) and float(share[0]) == 0.0


def _top_ids(norms, k, arrival, batch):
    """Stream norms [image, neuron] in the given arrival order and batch size; the kept (norms, ids)."""
    n_images, neurons = norms.shape
    top = TopDeviations(neurons, k, 2, dtype=torch.float32, device=torch.device("cpu"))
    for start in range(0, n_images, batch):
        ids = arrival[start:start + batch]
        top.update(ids, torch.zeros(len(ids), neurons, 2), norms[ids])
    return top.ranking()


def test_top_k_ties_go_to_the_lowest_image_id_whatever_the_arrival_order():
    # Norms from 3 values only: ties everywhere, including across the k-th place.
    generator = torch.Generator().manual_seed(1)
    norms = torch.randint(1, 4, (30, 5), generator=generator).float()
    k = 7
    expected_norms, expected_ids = [], []
    for n in range(5):  # the strict total order, written out: norm descending, then id ascending
        ranked = sorted(range(30), key=lambda i: (-float(norms[i, n]), i))[:k]
        expected_ids.append(ranked)
        expected_norms.append([float(norms[i, n]) for i in ranked])
    for seed, batch in ((0, 1), (1, 4), (2, 30), (3, 11)):
        arrival = torch.randperm(30, generator=torch.Generator().manual_seed(seed))
        kept_norms, ids = _top_ids(norms, k, arrival, batch)
        assert ids.tolist() == expected_ids and kept_norms.tolist() == expected_norms
    order = rank_order(torch.tensor([[1.0, 2.0, 2.0, 1.0]]), torch.tensor([[9, 7, 3, 0]]))
    assert order.tolist() == [[2, 1, 3, 0]]


def test_pca_sign_does_not_depend_on_the_solver_or_on_rows_at_zero():
    v = torch.nn.functional.normalize(torch.tensor([1.0, -3.0, 2.0, 0.5]), dim=0)
    w = torch.nn.functional.normalize(torch.tensor([3.0, 1.0, 0.0, 0.0]), dim=0)  # orthogonal to v
    # One row along v, one against it, two orthogonal to it (projections are rounding noise): a tie.
    rows = torch.stack([2.0 * v, -1.0 * v, 1e-3 * w, -1e-3 * w])
    pcs, _ = first_principal_components(rows[None])
    torch.testing.assert_close(pcs[0], v)  # the summed projections (2 - 1) are positive
    flipped, _ = first_principal_components(-rows[None])
    torch.testing.assert_close(flipped[0], -v)
    # Votes and sum both tie: the largest-magnitude entry of r (-3 along v) is made positive.
    symmetric = torch.stack([v, -v, 2 * v, -2 * v])
    pcs, _ = first_principal_components(torch.stack([symmetric, -symmetric]))
    torch.testing.assert_close(pcs, torch.stack([-v, -v]))
    # Row order does not change the result beyond float64 rounding; with `order` it is the same bits.
    generator = torch.Generator().manual_seed(5)
    deviations = torch.randn(6, 10, 8, generator=generator)
    shuffle = torch.stack([torch.randperm(10, generator=generator) for _ in range(6)])
    shuffled = deviations.gather(1, shuffle[:, :, None].expand(-1, -1, 8))
    back = shuffle.argsort(dim=1)
    assert torch.equal(first_principal_components(shuffled, back)[0], first_principal_components(deviations)[0])


def test_neuron_stats_do_not_depend_on_image_order_batch_size_or_threads(tiny_set):
    visual, pixels, _ = tiny_set
    stats = neuron_stats(visual, LAYER, _batches(pixels, 7), k=8)
    order = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(2))
    chunks = [(order[start:start + 16], pixels[order[start:start + 16]]) for start in range(0, len(pixels), 16)]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shuffled = neuron_stats(visual, LAYER, lambda: iter(chunks), k=8)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(shuffled.top_images, stats.top_images)
    for name in ("mean", "pcs", "top_norms", "pc_variance"):
        torch.testing.assert_close(getattr(shuffled, name), getattr(stats, name), atol=1e-6, rtol=1e-6)


def _plant_text(visual, layer, neuron, head, target, scale):
    """Make neuron `neuron` of MLP `layer` write, through head `head` of the next layer only, along `target`.

    Its output column is put in the null space of the other heads' value maps (so they ignore it),
    and that head's out-projection is bent so the neuron's value lands on `target` after ln_post and proj.
    """
    visual = copy.deepcopy(visual)
    block = visual.transformer.resblocks[layer + 1]
    heads, width = block.attn.num_heads, block.attn.embed_dim
    d_head = width // heads
    w_v = block.attn.in_proj_weight[2 * width:].reshape(heads, d_head, width) * block.ln_1.weight
    others = torch.cat([w_v[h] for h in range(heads) if h != head])
    null = torch.linalg.svd(others)[2][others.shape[0]:]  # rows span the null space of the other heads
    column = null.T @ torch.randn(null.shape[0], generator=torch.Generator().manual_seed(3))
    value = w_v[head] @ column  # [d_head]
    to_out = visual.ln_post.weight[:, None] * visual.proj  # [d_model, d_out]
    w_o = block.attn.out_proj.weight[:, head * d_head:(head + 1) * d_head]
    missing = torch.linalg.lstsq(to_out.T, (scale * target - to_out.T @ w_o @ value)[:, None]).solution[:, 0]
    with torch.no_grad():
        block.attn.out_proj.weight[:, head * d_head:(head + 1) * d_head] += torch.outer(missing, value) / value.dot(value)
        visual.transformer.resblocks[layer].mlp.c_proj.weight[:, neuron] = column
    return visual


@pytest.mark.parametrize("mode", ["linear", "paper"])
def test_planted_text_comes_first(tiny, mode):
    texts = load_toy_texts()
    embeddings = encode_texts(tiny, texts)
    target_index = texts.index("a boat")
    layer, neuron = 1, 7  # the last layer with a later attention layer: one path to plant
    visual = _plant_text(tiny.model.visual, layer, neuron, head=2, target=embeddings[target_index], scale=20.0)
    pixels = random_pixels(tiny, batch=24, seed=5)
    stats = neuron_stats(visual, layer, _batches(pixels, 8), k=8, mode=mode)
    words = decompose_neurons(stats.pcs, embeddings)
    assert words.dictionary_mode == "normalise_texts" and words.indices.shape[1] == tiny.info.d_out // 4
    first_text, first_weight = words.terms(neuron, texts)[0]
    assert first_text == "a boat"
    assert abs(first_weight) > 0.9 and float(words.reconstruction_cosine[neuron]) > 0.999
    if mode == "linear":  # the effect is exactly along the text: so is the PC, up to the sign rule
        assert abs(float(stats.pcs[neuron] @ embeddings[target_index])) == pytest.approx(1.0, abs=1e-4)
    # search by text finds the planted neuron (towards or against the text, by the sign rule)
    sign = 1.0 if first_weight > 0 else -1.0
    assert search_neurons(stats.pcs, sign * embeddings[target_index], top=3)[0][0] == neuron


def test_decompose_neurons_records_mode_and_skips_dead_neurons(tiny):
    texts = load_toy_texts()[:60]
    embeddings = encode_texts(tiny, texts)
    generator = torch.Generator().manual_seed(2)
    pcs = torch.nn.functional.normalize(torch.randn(5, tiny.info.d_out, generator=generator), dim=-1)
    pcs[3] = 0.0
    for mode in ("normalise_texts", "original"):
        words = decompose_neurons(pcs, embeddings, n_terms=6, dictionary_mode=mode)
        assert words.dictionary_mode == mode and words.indices.shape == (5, 6)
        assert (words.indices[3] == -1).all() and float(words.reconstruction_cosine[3]) == 0.0
        dictionary = prepare_dictionary(embeddings, mode)
        for n in (0, 4):
            literal = words.coefficients[n] @ dictionary[words.indices[n]]
            assert float(words.reconstruction_cosine[n]) == pytest.approx(
                float(torch.nn.functional.cosine_similarity(literal, pcs[n], dim=0)), abs=1e-5)
            weights = [abs(w) for _, w in words.terms(n, texts)]
            assert weights == sorted(weights, reverse=True) and len(weights) == 6
    with pytest.raises(ConfigError, match="dictionary mode"):
        decompose_neurons(pcs, embeddings, dictionary_mode="columns")
    with pytest.raises(IndexRangeError):
        words.terms(5, texts)


def test_ablations_against_literal_sums(tiny_set, tiny):
    visual, pixels, phi = tiny_set
    stats = neuron_stats(visual, LAYER, _batches(pixels, 16), k=10)
    trace = trace_vit(visual, pixels, mlp_layers=[LAYER])
    generator = torch.Generator().manual_seed(4)
    units = torch.nn.functional.normalize(torch.randn_like(stats.pcs, generator=generator), dim=-1)
    reps = ablated_representations(trace.embedding, phi, stats, {"random": units})
    base = 100 * torch.nn.functional.normalize(trace.embedding, dim=-1)
    for b in range(3):
        ablated = base[b].clone()
        kept_big, kept_small, pc_sum, unit_sum = (torch.zeros_like(ablated) for _ in range(4))
        for n in range(phi.shape[1]):
            delta = phi[b, n] - stats.mean[n]
            ablated += stats.mean[n] - phi[b, n]
            (kept_big if delta.norm() > stats.thresholds[n] else kept_small).add_(delta)
            pc_sum += (delta @ stats.pcs[n]) * stats.pcs[n]
            unit_sum += (delta @ units[n]) * units[n]
        expected = {"baseline": base[b], "mean-ablated layer": ablated, "without significant": ablated + kept_small,
                    "without insignificant": ablated + kept_big, "rank-1: PC #1": ablated + pc_sum,
                    "random": ablated + unit_sum}
        for name, value in expected.items():
            torch.testing.assert_close(reps[name][b], value, rtol=1e-4, atol=1e-4)
    # mean-ablating with the means of these very images keeps their average representation
    torch.testing.assert_close(reps["mean-ablated layer"].mean(0), base.mean(0), rtol=1e-4, atol=1e-4)
    # the baseline row is plain zero-shot classification with encode_image
    classifier = torch.nn.functional.normalize(torch.randn(3, tiny.info.d_out, generator=generator), dim=-1)
    labels = (tiny.model.encode_image(pixels) @ classifier.T).argmax(-1)
    labels[::5] = (labels[::5] + 1) % 3
    accuracies, count = neuron_ablation_accuracies(visual, stats, [(pixels[:20], labels[:20]), (pixels[20:], labels[20:])],
                                                   classifier)
    assert count == 40 and accuracies["baseline"] == pytest.approx(32 / 40)


def test_concepts_equal_the_literal_formula():
    generator = torch.Generator().manual_seed(6)
    neurons, d_out, n_texts, terms = 12, 8, 30, 4
    mean = torch.randn(neurons, d_out, generator=generator)
    stats = NeuronStats(layer=3, mean=mean, pcs=torch.zeros(neurons, d_out), thresholds=torch.full((neurons,), 2.5),
                        top_images=torch.zeros(neurons, 5, dtype=torch.long), top_norms=torch.zeros(neurons, 5),
                        pc_variance=torch.zeros(neurons), n_images=50)
    words = NeuronTexts(torch.randint(0, n_texts, (neurons, terms), generator=generator),
                        torch.randn(neurons, terms, generator=generator), torch.zeros(neurons), "normalise_texts")
    words.indices[0, -1] = -1  # an early-stopped code
    texts = [f"word {j}" for j in range(n_texts)]
    phi = mean + torch.randn(neurons, d_out, generator=generator)
    concepts = discover_concepts(phi, stats, words, texts, top=5)
    scores = [0.0] * n_texts
    active = []
    for n in range(neurons):
        norm = float((phi[n] - mean[n]).norm())
        if norm > 2.5:
            active.append(n)
            for j, gamma in zip(words.indices[n].tolist(), words.coefficients[n].tolist()):
                if j >= 0:
                    scores[j] += gamma * norm
    assert sorted(concepts.neurons) == active and 0 < len(active) < neurons
    best = sorted(((s, f"word {j}") for j, s in enumerate(scores) if s > 0), reverse=True)[:5]
    assert [text for text, _ in concepts.words] == [text for _, text in best]
    assert [score for _, score in concepts.words] == pytest.approx([score for score, _ in best])
    with pytest.raises(ConfigError):
        discover_concepts(phi[:3], stats, words, texts)


def test_activation_map_is_the_neurons_patch_activations(tiny):
    pixels = random_pixels(tiny, batch=2, seed=3)
    phi, trace = image_effects(tiny.model.visual, LAYER, pixels)
    grid = tiny.info.grid
    heat = activation_map(trace, LAYER, 11, grid, image=1)
    assert heat.shape == grid
    torch.testing.assert_close(heat.flatten(), trace.mlp_post[LAYER][1, 1:, 11])
    assert phi.shape == (2, tiny.info.d_mlp, tiny.info.d_out)
    with pytest.raises(IndexRangeError):
        activation_map(trace, LAYER, tiny.info.d_mlp, grid)


def _names(words: list[str], labels: dict) -> bool:
    """Whether any of the words names the scene's colour or background."""
    pattern = rf"\b({labels['colour']}|{labels['background']})\b"
    return any(re.search(pattern, word) for word in words)


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
def test_concepts_on_the_toy_model_name_the_scene():
    """Concept discovery with the shipped toy bases names the scene's colour or background among its top-10
    words for most held-out scenes, far more often than the same words name another scene's (control).
    Shape words are left out: they come up for most scenes whatever the scene's shape (measured: 72% of
    scenes get their own shape among the top-10 words, 76% another scene's), so they would test nothing."""
    from core.neurons.concepts import image_concepts
    from core.neurons.bases import find_neuron_bases, load_neuron_basis
    from core.world.scenes import heldout_scenes

    bundle = load_clip("toy")
    basis = load_neuron_basis(find_neuron_bases(bundle), TOY_LAYER)
    scenes = list(heldout_scenes(TOY_SCENES, seed=21))
    words = [[text for text, _ in image_concepts(bundle, basis, image, top=10).words] for image, _, _ in scenes]
    labels = [labels for _, labels, _ in scenes]
    rate = sum(_names(w, l) for w, l in zip(words, labels)) / len(labels)
    control = sum(_names(w, labels[(i + 1) % len(labels)]) for i, w in enumerate(words)) / len(labels)
    assert rate >= TOY_MIN_RATE and rate - control >= TOY_MIN_MARGIN, (rate, control)


# Measured on the shipped toy model and bases (see the closing note); asserted a little below.
TOY_LAYER, TOY_SCENES, TOY_MIN_RATE, TOY_MIN_MARGIN = 2, 200, 0.72, 0.10  # measured: 0.78 vs 0.645
