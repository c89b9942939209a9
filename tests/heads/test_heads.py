"""Attention heads over image sets: head outputs, spans, TextSpan fitting, completeness, retrieval,
spurious-cue removal and the per-image helpers, each against a literal per-image computation."""

import csv
import itertools
import json
import math

import pytest
import torch

from core.engine.ablation import Ablation, ablate, component_means, image_components
from core.heads.completeness import completeness_accuracies, completeness_representation
from core.engine.contributions import direct_effects, fold_weights
from core.engine.decomposition import decompose_image
from core.errors import ConfigError, DatasetError, IndexRangeError, TextError
from core.heads.outputs import (check_heads, default_heads, difference_map, fit_text_span, head_outputs,
                        head_outputs_from_batches, head_token_maps, image_head_texts, parse_heads, rank_heads,
                        weight_span_bases)
from core.engine.images import load_image
from core.heads.retrieval import build_gallery, load_gallery, nearest, query_contributions, save_gallery
from core.heads.spurious import (grouped_folder, head_set_population, percentile_of, random_head_sets, read_head_set,
                                 set_accuracies, spurious_report)
from core.engine.text import zero_shot_classifier
from core.heads.textspan import text_span_reference
from core.engine.trace import trace_vit
from core.world.scenes import heldout_scenes, write_scenes
from tests.conftest import random_pixels


def _unit(rows):
    return torch.nn.functional.normalize(rows, dim=-1)


def _random_texts(n, d_out, seed):
    return _unit(torch.randn(n, d_out, generator=torch.Generator().manual_seed(seed)))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """24 held-out world scenes on disk with their labels."""
    folder = write_scenes(tmp_path_factory.mktemp("scenes") / "world", 24, seed=5)
    with open(folder / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    return folder, [folder / row["file"] for row in rows], rows


def _literal_contribution(bundle, path, layer, head):
    """One image, one head: its direct effect divided by |encode_image| (batch of one)."""
    pixels = bundle.preprocess(load_image(path))[None]
    effects = direct_effects(trace_vit(bundle.model.visual, pixels), fold_weights(bundle.model.visual))
    with torch.inference_mode():
        norm = bundle.model.encode_image(pixels).norm()
    return effects.heads[0, layer, head] / norm


# ---------------------------------------------------------------- heads and head outputs

def test_parse_and_check_heads(tiny):
    assert parse_heads("2.1, 0.3 2.1") == [(2, 1), (0, 3), (2, 1)]
    assert check_heads(parse_heads("2.1,0.3,2.1"), tiny.info) == [(2, 1), (0, 3)]
    assert default_heads(tiny.info) == [(l, h) for l in range(3) for h in range(4)]
    assert default_heads(tiny.info, last_layers=1) == [(2, h) for h in range(4)]
    with pytest.raises(ConfigError, match="layer.head"):
        parse_heads("2-1")
    with pytest.raises(IndexRangeError, match="head 4 is out of range"):
        check_heads([(0, 4)], tiny.info)


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
def test_head_outputs_match_a_literal_per_image_loop(tiny, scenes, tmp_path):
    _, paths, _ = scenes
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    chosen = [(2, 1), (0, 3), (1, 0)]
    skipped = []
    fitted = head_outputs(tiny, paths[:5] + [broken] + paths[5:7], chosen, batch_size=3, skipped=skipped)
    assert fitted.outputs.shape == (3, 7, tiny.info.d_out) and fitted.count == 7 and len(skipped) == 1
    literal = torch.stack([torch.stack([_literal_contribution(tiny, p, l, h) for p in paths[:7]]) for l, h in chosen])
    torch.testing.assert_close(fitted.outputs, literal, atol=1e-6, rtol=1e-5)
    every_head = torch.stack([torch.stack([torch.stack([_literal_contribution(tiny, p, l, h) for h in range(4)])
                                           for l in range(3)]) for p in paths[:7]])
    torch.testing.assert_close(fitted.head_means, every_head.mean(0), atol=1e-6, rtol=1e-5)


def test_weight_span_holds_every_head_output(tiny):
    heads = default_heads(tiny.info)
    bases = weight_span_bases(tiny.model.visual, heads)
    fitted = head_outputs_from_batches(tiny, [random_pixels(tiny, 6, seed=1)], heads, capacity=6)
    folded = fold_weights(tiny.model.visual)
    for row, (layer, head) in enumerate(heads):
        basis = bases[row]
        rows = torch.cat([folded.head_out[layer, head], folded.out_bias[layer][None], folded.ones_proj[None],
                          folded.beta_proj[None]])
        assert basis.shape[0] == torch.linalg.matrix_rank(rows.double()) == tiny.info.d_head + 1  # zero biases at init
        torch.testing.assert_close(basis @ basis.T, torch.eye(len(basis)), atol=1e-5, rtol=0)
        outputs = fitted.outputs[row]
        torch.testing.assert_close(outputs @ basis.T @ basis, outputs, atol=1e-6, rtol=1e-4)


def test_fit_text_span_with_ragged_weight_spans_equals_one_call_per_head():
    gen = torch.Generator().manual_seed(0)
    d_out = 16
    bases = [torch.linalg.qr(torch.randn(d_out, r, generator=gen))[0].T for r in (5, 4, 5)]
    outputs = torch.stack([torch.randn(40, len(b), generator=gen) @ b + torch.randn(d_out, generator=gen) for b in bases])
    texts = _random_texts(30, d_out, seed=1)
    merged = fit_text_span(outputs, texts, n_texts=3, span="weights", span_bases=bases)
    assert merged.params["ranks"] == [5, 4, 5]
    for row, basis in enumerate(bases):
        literal, _ = text_span_reference(outputs[row:row + 1], texts, n_texts=3, span="weights", span_bases=basis[None])
        assert merged.text_indices[row].tolist() == literal.text_indices[0].tolist()
        torch.testing.assert_close(merged.directions[row], literal.directions[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged.variance_explained[row], literal.variance_explained[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="disagrees"):
        fit_text_span(outputs, texts, n_texts=3, rank=5, span="weights", span_bases=bases)
    with pytest.raises(ConfigError, match="fewer images"):
        fit_text_span(outputs[:, :4], texts, n_texts=3, rank=5)


# ---------------------------------------------------------------- completeness

@pytest.fixture(scope="module")
def full_rank_fit(tiny):
    """TextSpan of every head on a weights span with as many texts as the span's rank."""
    heads = default_heads(tiny.info)
    fitted = head_outputs_from_batches(tiny, [random_pixels(tiny, 12, seed=2)], heads, capacity=12)
    bases = weight_span_bases(tiny.model.visual, heads)
    rank = bases[0].shape[0]
    result = fit_text_span(fitted.outputs, _random_texts(60, tiny.info.d_out, seed=3), n_texts=rank, span="weights",
                           span_bases=bases)
    return heads, fitted, result, rank


def test_completeness_at_the_full_weights_rank_is_the_plain_model(tiny, full_rank_fit):
    heads, fitted, result, rank = full_rank_fit
    pixels = random_pixels(tiny, 8, seed=4)  # not the fit images
    effects = direct_effects(trace_vit(tiny.model.visual, pixels), fold_weights(tiny.model.visual)).scores()
    kept = effects.embedding_term + effects.mlps.sum(1)
    rebuilt = completeness_representation(kept, effects.heads, result, heads, fitted.head_means, rank,
                                          ablate_earlier=False)
    with torch.inference_mode():
        plain = _unit(tiny.model.encode_image(pixels))
    torch.testing.assert_close(rebuilt, plain, atol=1e-5, rtol=0)
    classifier = _random_texts(5, tiny.info.d_out, seed=5)
    labels = torch.arange(8) % 5
    report = completeness_accuracies(tiny, [(pixels[:5], labels[:5]), (pixels[5:], labels[5:])], classifier, result,
                                     heads, fitted.head_means, [1, rank], ablate_earlier=False)
    plain_accuracy = float(((plain @ classifier.T).argmax(-1) == labels).float().mean())
    assert report.baseline == pytest.approx(plain_accuracy)
    assert dict(report.rows)[rank] == pytest.approx(plain_accuracy)
    assert report.count == 8


def test_completeness_with_few_texts_and_earlier_layers_ablated_matches_a_literal_loop(tiny, full_rank_fit):
    heads, fitted, result, _ = full_rank_fit
    late = [(2, h) for h in range(4)]
    rows = [heads.index(h) for h in late]
    late_result = result._replace(**{name: getattr(result, name)[rows] for name in result._fields[:6]})
    pixels = random_pixels(tiny, 3, seed=6)
    parts = image_components(tiny, pixels)
    kept = parts.embedding_term + parts.mlps.sum(1)
    fast = completeness_representation(kept, parts.heads, late_result, late, fitted.head_means, 2)
    for image in range(3):
        literal = kept[image].clone()
        for layer in range(3):
            for head in range(4):
                contribution = parts.heads[image, layer, head]
                if layer < 2:
                    literal += fitted.head_means[layer, head]
                    continue
                row = late.index((layer, head))
                reconstruction = late_result.mean[row].clone()
                for direction in late_result.directions[row, :2]:
                    coefficient = (contribution - late_result.mean[row]) @ direction / (direction @ direction)
                    reconstruction += coefficient * direction
                literal += reconstruction
        torch.testing.assert_close(fast[image], literal, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="m must be between"):
        completeness_accuracies(tiny, [], _random_texts(2, 24, 0), late_result, late, fitted.head_means, [99])


# ---------------------------------------------------------------- property retrieval

def test_retrieval_finds_the_query_first_and_matches_a_literal_loop(tiny, scenes, tmp_path):
    _, paths, _ = scenes
    gallery = paths[:10]
    heads = [(2, h) for h in range(4)]
    index = build_gallery(tiny, gallery, heads, description="ten scenes", batch_size=4)
    query = query_contributions(tiny, gallery[3], [(2, 1)])[0]
    found = nearest(index, query, (2, 1), k=10)
    assert found[0][0] == 3 and found[0][1] == pytest.approx(1.0, abs=1e-5)
    literal_cos = [float(_unit(_literal_contribution(tiny, p, 2, 1)) @ _unit(query)) for p in gallery]
    assert [i for i, _ in found] == sorted(range(10), key=lambda i: -literal_cos[i])
    assert [s for _, s in found] == pytest.approx(sorted(literal_cos, reverse=True), abs=1e-5)
    dots = nearest(index, query, (2, 1), k=3, metric="dot")
    literal_dot = sorted((float(_literal_contribution(tiny, p, 2, 1) @ query) for p in gallery), reverse=True)
    assert [s for _, s in dots] == pytest.approx(literal_dot[:3], rel=1e-4)
    centered = nearest(index, query, (2, 1), k=10, metric="centered")
    mean = torch.stack([_literal_contribution(tiny, p, 2, 1) for p in gallery]).mean(0)
    literal_centered = [float(_unit(_literal_contribution(tiny, p, 2, 1) - mean) @ _unit(query - mean)) for p in gallery]
    assert centered[0][0] == 3
    assert [s for _, s in centered] == pytest.approx(sorted(literal_centered, reverse=True), abs=1e-4)
    saved = load_gallery(save_gallery(index, tmp_path / "index.safetensors"), expect_model=tiny.info.identity())
    assert saved.paths == index.paths and saved.heads == heads and torch.equal(saved.outputs, index.outputs)
    with pytest.raises(IndexRangeError, match="L0H0"):
        nearest(index, query, (0, 0))


# ---------------------------------------------------------------- spurious-cue removal

def _grouped(scenes, tmp_path, columns=("file", "label", "group")):
    folder, paths, rows = scenes
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row["file"], row["shape"], row["background"]][: len(columns)])
    return folder


def test_spurious_report_matches_a_direct_computation(tiny, scenes, tmp_path):
    folder = _grouped(scenes, tmp_path)
    grouped = grouped_folder(folder)
    assert grouped.classnames == sorted({r["shape"] for r in scenes[2]})
    classifier = zero_shot_classifier(tiny, grouped.classnames, ["a photo of a {}."])
    means = component_means(tiny, grouped.paths, description="the evaluated set")
    heads = [(2, 1), (2, 3)]
    report = spurious_report(tiny, grouped, classifier, heads, means, trials=3, seed=7, batch_size=5)
    pixels = torch.stack([tiny.preprocess(load_image(p)) for p in grouped.paths])
    parts = image_components(tiny, pixels)
    labels, groups = torch.tensor(grouped.labels), torch.tensor(grouped.groups)

    def worst_and_overall(rep):
        correct = ((rep @ classifier.T).argmax(-1) == labels).float()
        per_group = [float(correct[groups == g].mean()) for g in range(len(grouped.group_names)) if (groups == g).any()]
        return min(per_group), float(correct.mean())

    assert (report.base.worst, report.base.overall) == pytest.approx(worst_and_overall(parts.representation()))
    ablated = ablate(parts, means.means, Ablation("chosen", heads=tuple(heads)))
    assert (report.ablated.worst, report.ablated.overall) == pytest.approx(worst_and_overall(ablated))
    assert report.random_heads == random_head_sets(tiny.info, 2, 3, seed=7, layers=[2])
    assert all(len(set(s)) == 2 and all(l == 2 for l, _ in s) for s in report.random_heads)
    for heads_drawn, result in zip(report.random_heads, report.random):
        expected = worst_and_overall(ablate(parts, means.means, Ablation("r", heads=tuple(heads_drawn))))
        assert (result.worst, result.overall) == pytest.approx(expected)
    # the population baseline: every set of 2 heads from layer 2 (C(4, 2) = 6), each equal to a literal ablation
    baseline = report.baseline
    assert baseline.kind == "all" and baseline.possible == 6 and len(baseline.sets) == 6
    assert sorted(map(tuple, baseline.sets)) == sorted(itertools.combinations([(2, h) for h in range(4)], 2))
    literal = [worst_and_overall(ablate(parts, means.means, Ablation("s", heads=tuple(s)))) for s in baseline.sets]
    assert baseline.worst.tolist() == pytest.approx([w for w, _ in literal])
    assert baseline.overall.tolist() == pytest.approx([o for _, o in literal])
    summary = report.random_summary()
    worsts = torch.tensor([w for w, _ in literal], dtype=torch.float64)
    assert summary["worst_mean"] == pytest.approx(float(worsts.mean()))
    assert summary["worst_std"] == pytest.approx(float(worsts.std()))
    below, equal = float((worsts < report.ablated.worst).double().mean()), float((worsts == report.ablated.worst).double().mean())
    assert summary["chosen_percentile_worst"] == pytest.approx(100 * (below + equal / 2))
    saved = json.loads(json.dumps(report.to_json()))
    assert saved["ablated"]["worst_group"] == report.ablated.worst and saved["random_sets"]["sets"] == 6
    extras = spurious_report(tiny, grouped, classifier, heads, means, trials=1, seed=7, paper_extras=True)
    with_mlps = ablate(parts, means.means, Ablation("paper", mlps=True, heads=tuple(heads)))  # 3 layers: none before the last 4
    assert (extras.ablated.worst, extras.ablated.overall) == pytest.approx(worst_and_overall(with_mlps))
    assert extras.base == report.base and extras.to_json()["paper_extras"] is True
    for heads_set, worst, overall in zip(extras.baseline.sets, extras.baseline.worst, extras.baseline.overall):
        expected = worst_and_overall(ablate(parts, means.means, Ablation("p", mlps=True, heads=tuple(heads_set))))
        assert (float(worst), float(overall)) == pytest.approx(expected)


def test_head_set_population_is_exhaustive_up_to_the_limit_then_sampled_and_seeded():
    sets, kind, possible = head_set_population(16, 6)
    assert kind == "all" and possible == 8008 and len(sets) == 8008 == len({tuple(r) for r in sets.tolist()})
    assert all(list(r) == sorted(r) and len(set(r)) == 6 for r in sets.tolist()[:50])
    sampled, kind, possible = head_set_population(48, 15, samples=1000, seed=3)
    assert kind == "sampled" and possible == math.comb(48, 15) and len({tuple(r) for r in sampled.tolist()}) == 1000
    assert torch.equal(sampled, head_set_population(48, 15, samples=1000, seed=3)[0])
    assert not torch.equal(sampled, head_set_population(48, 15, samples=1000, seed=4)[0])
    with pytest.raises(ConfigError, match="at least 1,000"):
        head_set_population(48, 15, samples=10)


def test_set_accuracies_add_head_changes_linearly():
    """Two images, two classes, three heads: the set {0, 2} moves image 0 to class 1 and leaves image 1."""
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    deltas = torch.zeros(2, 3, 2)
    deltas[0, 0, 1], deltas[0, 2, 1], deltas[1, 1, 0] = 0.6, 0.6, 5.0
    worst, overall = set_accuracies(base, deltas, torch.tensor([[0, 2], [0, 1], [1, 2]]), torch.tensor([1, 1]),
                                    torch.tensor([0, 1]), 2)
    assert overall.tolist() == [1.0, 0.0, 0.0] and worst.tolist() == [1.0, 0.0, 0.0]
    assert percentile_of(0.5, torch.tensor([0.0, 0.5, 1.0, 1.0])) == pytest.approx(37.5)


def test_grouped_folder_errors_and_waterbirds_columns(scenes, tmp_path):
    folder = _grouped(scenes, tmp_path, columns=("file", "label"))
    with pytest.raises(DatasetError, match="found: file, label"):
        grouped_folder(folder)
    folder = _grouped(scenes, tmp_path, columns=("img_filename", "y", "place"))
    grouped = grouped_folder(folder, classnames=[f"class {i}" for i in range(len({r['shape'] for r in scenes[2]}))])
    assert all(name.startswith("class ") and " / place " in name for name in grouped.group_names)
    with pytest.raises(DatasetError, match="one name per value"):
        grouped_folder(folder, classnames=["a", "b"])


def test_head_set_file(tmp_path):
    path = tmp_path / "heads.json"
    path.write_text(json.dumps({"heads": [[2, 1], [1, 0]], "provenance": "read from TextSpan"}))
    assert read_head_set(path) == ([(2, 1), (1, 0)], "read from TextSpan")
    path.write_text(json.dumps({"heads": [[2, "1"]]}))
    with pytest.raises(ConfigError, match="integer pairs"):
        read_head_set(path)


# ---------------------------------------------------------------- one image

def test_image_head_texts_match_the_projected_contribution(tiny, scenes):
    path = scenes[1][0]
    texts = _random_texts(30, tiny.info.d_out, seed=8)
    top = image_head_texts(tiny, str(path), (1, 2), texts, k=5)
    literal = _literal_contribution(tiny, path, 1, 2) @ texts.T
    assert [i for i, _ in top] == literal.argsort(descending=True)[:5].tolist()
    assert [s for _, s in top] == pytest.approx(literal.sort(descending=True).values[:5].tolist(), abs=1e-6)
    with pytest.raises(TextError):
        image_head_texts(tiny, str(path), (1, 2), texts[:, :5])


def test_token_maps_ranked_heads_and_difference(tiny):
    image, _, _ = next(heldout_scenes(1, seed=3))
    result = decompose_image(tiny, image, ["a red circle", "a blue square"])
    scores = result.heads[:, :, 0]
    ranked = rank_heads(scores, k=4)
    assert [r["score"] for r in ranked] == sorted(scores.flatten().tolist(), reverse=True)[:4]
    assert scores[ranked[0]["layer"], ranked[0]["head"]] == ranked[0]["score"]
    maps = head_token_maps(result.tokens, result.grid, (2, 1))
    assert maps.shape == (2, *result.grid)
    # patch tokens plus the class token add up to the head's score
    torch.testing.assert_close(maps.sum((1, 2)) + result.tokens[2, 1, 0], result.heads[2, 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(difference_map(maps), maps[0] - maps[1])
    with pytest.raises(TextError, match="two texts"):
        difference_map(maps[:1])
    with pytest.raises(IndexRangeError):
        head_token_maps(result.tokens, result.grid, (3, 0))
