"""TextSpan: batched implementation vs the literal paper loop, planted structure, reconstruction, validation."""

import pytest
import torch

from core.errors import ConfigError, IndexRangeError, TextError
from core.heads.textspan import (
    CRITERIA,
    RANK_RTOL,
    SPANS,
    HeadStatistics,
    head_texts,
    reconstruct,
    text_span,
    text_span_from_stats,
    text_span_reference,
)


def _unit(rows):
    return torch.nn.functional.normalize(rows, dim=-1)


def _structured_outputs(n_head=3, n_image=50, d_out=20, seed=0):
    """[head, image, d_out] low-rank-ish outputs with a mean offset and noise."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(n_head, n_image, 8, generator=gen)
    mixing = torch.randn(n_head, 8, d_out, generator=gen) * torch.linspace(1.0, 0.1, 8)[:, None]
    offset = torch.randn(n_head, 1, d_out, generator=gen)
    return latent @ mixing + offset + 0.05 * torch.randn(n_head, n_image, d_out, generator=gen)


def _texts(n_text=40, d_out=20, seed=1):
    return _unit(torch.randn(n_text, d_out, generator=torch.Generator().manual_seed(seed)))


def _span_kwargs(span, n_head=3, rank=10, d_out=20):
    if span == "data":
        return {"span": "data", "rank": rank}
    bases = torch.randn(n_head, rank, d_out, generator=torch.Generator().manual_seed(2))
    return {"span": "weights", "span_bases": bases}


def _centred_orthonormal(n_image, k, seed):
    """[image, k] zero-mean columns of unit norm, orthogonal to each other."""
    raw = torch.randn(n_image, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.linalg.qr(raw - raw.mean(0))[0]


def _planted(scales, n_image=200, d_out=32, n_random=60, noise=1e-3, seed=3, image_seed=None):
    """Outputs = mean + sum_i scales_i z_i t_i^T + noise, with the t_i hidden in a text pool.

    Returns outputs [1, image, d_out], texts [text, d_out], planted pool indices
    and the planted variances (sum over images) along each t_i.
    """
    gen = torch.Generator().manual_seed(seed)
    k = len(scales)
    planted = torch.linalg.qr(torch.randn(d_out, k, generator=gen, dtype=torch.float64))[0].mT
    latent = _centred_orthonormal(n_image, k, seed if image_seed is None else image_seed) * torch.tensor(scales, dtype=torch.float64)
    outputs = latent @ planted + torch.randn(d_out, generator=gen, dtype=torch.float64)
    outputs = outputs + noise * torch.randn(n_image, d_out, generator=gen, dtype=torch.float64)
    pool = torch.cat([planted, _unit(torch.randn(n_random, d_out, generator=gen, dtype=torch.float64))])
    order = torch.randperm(len(pool), generator=gen)
    positions = torch.argsort(order)[:k]  # where each planted text landed
    return outputs.float()[None], pool[order].float(), positions, torch.tensor(scales) ** 2


@pytest.mark.parametrize("span", SPANS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_matches_literal_paper_loop(criterion, span):
    outputs, texts = _structured_outputs(), _texts()
    kwargs = dict(n_texts=8, criterion=criterion, **_span_kwargs(span))
    ours = text_span(outputs, texts, **kwargs)
    literal, literal_reconstruction = text_span_reference(outputs, texts, **kwargs)
    assert torch.equal(ours.text_indices, literal.text_indices)
    for field in ("variance_explained", "cumulative_variance", "mean", "directions"):
        torch.testing.assert_close(getattr(ours, field).double(), getattr(literal, field).double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.total_variance.double(), literal.total_variance.double(), atol=0, rtol=1e-5)
    torch.testing.assert_close(reconstruct(outputs, ours), literal_reconstruction, atol=1e-5, rtol=1e-5)
    assert ours.params == {"criterion": criterion, "span": span, "rank": 10, "n_texts": 8, "ranks": [10, 10, 10],
                           "rank_rtol": RANK_RTOL}


def test_chunking_over_heads_does_not_change_the_result():
    outputs, texts = _structured_outputs(n_head=5), _texts()
    whole = text_span(outputs, texts, n_texts=6, rank=10)
    chunked = text_span(outputs, texts, n_texts=6, rank=10, chunk_heads=2)
    assert torch.equal(whole.text_indices, chunked.text_indices)
    torch.testing.assert_close(whole.directions, chunked.directions)
    torch.testing.assert_close(whole.variance_explained, chunked.variance_explained)
    in_double = text_span(outputs.double(), texts.double(), n_texts=6, rank=10)
    assert torch.equal(whole.text_indices, in_double.text_indices)
    assert in_double.directions.dtype == torch.float64
    torch.testing.assert_close(whole.directions, in_double.directions.float())


@pytest.mark.parametrize("criterion", CRITERIA)
def test_planted_texts_come_back_in_order_with_their_variances(criterion):
    outputs, texts, positions, planted_variance = _planted([2.8, 2.0, 1.4, 1.0])
    result = text_span(outputs, texts, n_texts=4, rank=16, criterion=criterion)
    assert result.text_indices[0].tolist() == positions.tolist()
    expected_fraction = planted_variance / result.total_variance[0]
    torch.testing.assert_close(result.variance_explained[0], expected_fraction, atol=2e-3, rtol=0)
    assert result.cumulative_variance[0, -1] > 0.99


def test_criteria_differ_where_deflated_texts_have_unequal_norms():
    # Variances 10, 1, 1.2 along e0, e1, e2. After e0 is taken, text (e0+e1)/sqrt2
    # keeps norm 0.71 along e1 (captures 0.5), text 0.8e0+0.6e2 keeps 0.6 along e2
    # (captures 0.43 unnormalised, but 1.2 as a unit direction).
    d_out, eye = 6, torch.eye(6, dtype=torch.float64)
    latent = _centred_orthonormal(100, 3, seed=4) * torch.tensor([10, 1, 1.2], dtype=torch.float64).sqrt()
    outputs = (latent @ eye[:3])[None].float()
    texts = torch.stack([eye[0], (eye[0] + eye[1]) / 2**0.5, 0.8 * eye[0] + 0.6 * eye[2], eye[3]]).float()
    by_std = text_span(outputs, texts, n_texts=2, rank=d_out, criterion="std")
    by_variance = text_span(outputs, texts, n_texts=2, rank=d_out, criterion="explained_variance")
    assert by_std.text_indices[0].tolist() == [0, 1]
    assert by_variance.text_indices[0].tolist() == [0, 2]
    assert by_variance.cumulative_variance[0, -1] > by_std.cumulative_variance[0, -1]


def test_near_duplicate_of_a_picked_text_is_never_picked():
    # The near-duplicate's residual after the first pick is 1e-5 long but points
    # exactly along the second planted direction (which is left out of the pool),
    # so only the norm guard keeps the normalised criterion from picking it.
    outputs, texts, positions, _ = _planted([2.0, 1.0], n_random=10)
    first, second = texts[positions[0]], texts[positions[1]]
    near_duplicate = _unit(first + 1e-5 * second)
    keep = torch.arange(len(texts)) != positions[1]
    pool = torch.cat([texts[keep], near_duplicate[None]])
    first_in_pool = int(keep[: positions[0]].sum())
    result = text_span(outputs, pool, n_texts=2, rank=16, criterion="explained_variance")
    picks = set(result.text_indices[0].tolist())
    assert picks & {first_in_pool, len(pool) - 1}  # one of the two twins comes first
    assert picks != {first_in_pool, len(pool) - 1}  # but never both


@pytest.mark.parametrize("criterion", CRITERIA)
def test_cumulative_variance_is_monotone_and_at_most_one(criterion):
    result = text_span(_structured_outputs(), _texts(), n_texts=10, rank=10, criterion=criterion)
    assert (result.variance_explained >= -1e-7).all()
    assert (result.cumulative_variance.diff(dim=1) >= -1e-7).all()
    assert (result.cumulative_variance <= 1 + 1e-6).all()
    torch.testing.assert_close(result.cumulative_variance, result.variance_explained.cumsum(1))


def test_directions_are_mutually_orthogonal():
    result = text_span(_structured_outputs(), _texts(), n_texts=8, rank=10)
    unit = _unit(result.directions)
    gram = unit @ unit.mT
    torch.testing.assert_close(gram, torch.eye(8).expand_as(gram), atol=1e-5, rtol=0)


def test_reconstruct_with_all_directions_reproduces_outputs_in_the_span():
    # Centred outputs in a 5-dim subspace; with the mean the uncentred data spans 6 dims.
    gen = torch.Generator().manual_seed(5)
    subspace = torch.linalg.qr(torch.randn(20, 5, generator=gen))[0].mT
    outputs = (torch.randn(2, 60, 5, generator=gen) @ subspace + torch.randn(2, 1, 20, generator=gen))
    result = text_span(outputs, _texts(), n_texts=6, rank=6)
    torch.testing.assert_close(reconstruct(outputs, result), outputs, atol=1e-5, rtol=1e-5)
    partial_error = (reconstruct(outputs, result, n_terms=3) - outputs).norm()
    assert partial_error > 1e-2


def test_reconstruct_on_new_images_is_mean_plus_projection():
    outputs, texts = _structured_outputs(n_image=80, seed=0), _texts()
    fit, held_out = outputs[:, :50], outputs[:, 50:]
    result = text_span(fit, texts, n_texts=5, rank=10)
    for n_terms in (0, 2, 5):
        expected = torch.empty_like(held_out)
        for head in range(held_out.shape[0]):
            mean = fit[head].mean(0)
            expected[head] = mean
            for direction in result.directions[head, :n_terms]:
                for image in range(held_out.shape[1]):
                    coefficient = (held_out[head, image] - mean) @ direction / (direction @ direction)
                    expected[head, image] += coefficient * direction
        torch.testing.assert_close(reconstruct(held_out, result, n_terms=n_terms), expected, atol=1e-5, rtol=1e-5)


def test_planted_fit_generalises_to_a_disjoint_image_set():
    fit, texts, _, _ = _planted([2.0, 1.5, 1.0], seed=6)
    fresh = _planted([2.0, 1.5, 1.0], seed=6, image_seed=7)[0]  # other images, same directions and mean
    noiseless = _planted([2.0, 1.5, 1.0], seed=6, image_seed=7, noise=0.0)[0]
    result = text_span(fit, texts, n_texts=3, rank=16)
    rebuilt = reconstruct(fresh, result)
    # Projecting on the 3 fitted directions removes the noise outside them.
    assert (rebuilt - noiseless).norm() < 0.5 * (fresh - noiseless).norm()
    signal = (noiseless - noiseless.mean(1, keepdim=True)).norm()
    assert (rebuilt - noiseless).norm() / signal < 0.01
    assert (reconstruct(fresh, result, n_terms=2) - noiseless).norm() / signal > 0.1


def test_head_texts_pairs_texts_with_their_variance():
    outputs, texts, positions, _ = _planted([2.0, 1.0], n_random=5)
    names = [f"text {i}" for i in range(len(texts))]
    result = text_span(outputs, texts, n_texts=2, rank=16)
    pairs = head_texts(result, names, 0)
    assert [name for name, _ in pairs] == [f"text {i}" for i in positions.tolist()]
    assert [fraction for _, fraction in pairs] == result.variance_explained[0].tolist()
    with pytest.raises(IndexRangeError, match="head 1"):
        head_texts(result, names, 1)
    with pytest.raises(TextError, match="same pool"):
        head_texts(result, names[:1], 0)


def test_pool_spanning_too_few_directions_is_reported():
    outputs = _structured_outputs(n_head=1)
    base = _texts(n_text=2)
    texts = torch.cat([base, _unit(base[0] + base[1])[None], _unit(base[0] - 2 * base[1])[None]])
    with pytest.raises(ConfigError, match="fewer directions than n_texts"):
        text_span(outputs, texts, n_texts=3, rank=10)


def _bad(**changes):
    args = {"head_outputs": _structured_outputs(), "text_embeddings": _texts(), "n_texts": 5, "rank": 10}
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (_bad(head_outputs=_structured_outputs(n_image=8)), ConfigError, r"fewer images \(8\) than the rank \(10\)"),
        (_bad(rank=21, head_outputs=_structured_outputs(n_image=30)), ConfigError, r"rank \(21\) exceeds d_out \(20\)"),
        (_bad(n_texts=41, rank=20), ConfigError, r"exceeds the number of texts in the pool \(40\)"),
        (_bad(n_texts=11), ConfigError, r"n_texts \(11\) exceeds the rank \(10\)"),
        (_bad(n_texts=0), ConfigError, "n_texts must be a positive integer"),
        (_bad(criterion="cosine"), ConfigError, "unknown criterion 'cosine'"),
        (_bad(span="pca"), ConfigError, "unknown span 'pca'"),
        (_bad(span="weights", rank=None), ConfigError, "needs span_bases"),
        (_bad(span_bases=torch.randn(3, 10, 20)), ConfigError, "only used with span='weights'"),
        (_bad(span="weights", span_bases=torch.randn(3, 10, 19), rank=None), ConfigError, "span_bases must have shape"),
        (_bad(span="weights", span_bases=torch.randn(3, 8, 20)), ConfigError, r"rank \(10\) disagrees with span_bases, which has rank 8"),
        (_bad(span="weights", span_bases=torch.zeros(3, 4, 20), rank=None, n_texts=2), ConfigError, "rank-deficient"),
        (_bad(head_outputs=_structured_outputs().index_fill(1, torch.tensor([3]), float("nan"))), ConfigError, "NaN"),
        (_bad(text_embeddings=_texts().index_fill(0, torch.tensor([7]), float("inf"))), ConfigError, "NaN or infinite"),
        (_bad(text_embeddings=_texts(d_out=16)), TextError, "dimension 16"),
        (_bad(head_outputs=torch.zeros(50, 20)), ConfigError, r"\[head, image, d_out\]"),
        (_bad(head_outputs=torch.zeros(3, 50, 20, dtype=torch.long)), ConfigError, "floating-point"),
        (_bad(chunk_heads=0), ConfigError, "chunk_heads must be a positive integer"),
    ],
)
def test_invalid_arguments_raise_clear_errors(args, error, message):
    with pytest.raises(error, match=message):
        text_span(**args)


def test_reconstruct_rejects_mismatched_inputs():
    result = text_span(_structured_outputs(), _texts(), n_texts=4, rank=10)
    with pytest.raises(ConfigError, match="to match the TextSpan result"):
        reconstruct(torch.zeros(2, 5, 20), result)
    with pytest.raises(ConfigError, match="n_terms must be between 0 and 4"):
        reconstruct(_structured_outputs(), result, n_terms=5)


# ---------------------------------------------------------------- sufficient statistics

def test_statistics_of_shards_merge_into_those_of_all_images():
    outputs = _structured_outputs(n_image=60).double()
    whole = HeadStatistics.from_outputs(outputs)
    parts = [HeadStatistics.from_outputs(outputs[:, lo:hi]) for lo, hi in ((0, 25), (25, 26), (26, 60))]
    merged = HeadStatistics.zeros(3, 20)
    for part in parts:
        merged = merged.merge(part)
    assert merged.count == whole.count == 60
    torch.testing.assert_close(merged.sum, whole.sum, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(merged.gram, whole.gram, atol=1e-12, rtol=1e-12)
    centred = outputs - outputs.mean(1, keepdim=True)
    torch.testing.assert_close(merged.centred_gram(), centred.mT @ centred, atol=1e-10, rtol=1e-10)
    back = HeadStatistics.from_tensors(merged.tensors())
    assert back.count == 60 and torch.equal(back.gram, merged.gram)
    with pytest.raises(ConfigError, match="same heads"):
        merged.merge(HeadStatistics.zeros(2, 20))


@pytest.mark.parametrize("span", SPANS)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_text_span_from_statistics_is_text_span(criterion, span):
    outputs, texts = _structured_outputs(n_head=5, n_image=60), _texts()
    kwargs = dict(n_texts=8, criterion=criterion, **_span_kwargs(span, n_head=5))
    direct = text_span(outputs, texts, **kwargs)
    from_stats = text_span_from_stats(HeadStatistics.from_outputs(outputs), texts, chunk_heads=2, **kwargs)
    assert torch.equal(direct.text_indices, from_stats.text_indices)
    assert direct.params == from_stats.params
    for field in ("variance_explained", "mean", "directions", "total_variance"):
        torch.testing.assert_close(getattr(direct, field), getattr(from_stats, field), atol=1e-6, rtol=1e-6)
    # statistics merged from two shards give the same texts
    halves = HeadStatistics.from_outputs(outputs[:, :23]).merge(HeadStatistics.from_outputs(outputs[:, 23:]))
    assert torch.equal(text_span_from_stats(halves, texts, **kwargs).text_indices, direct.text_indices)


def test_invalid_statistics_raise_clear_errors():
    stats = HeadStatistics.from_outputs(_structured_outputs())
    with pytest.raises(ConfigError, match="HeadStatistics"):
        text_span_from_stats(_structured_outputs(), _texts(), n_texts=4, rank=10)
    with pytest.raises(ConfigError, match=r"need at least 2 images"):
        text_span_from_stats(HeadStatistics(1, stats.sum, stats.gram), _texts(), n_texts=4, rank=10)
    with pytest.raises(ConfigError, match=r"stats.gram must have shape"):
        text_span_from_stats(HeadStatistics(50, stats.sum, stats.gram[:, :4]), _texts(), n_texts=4, rank=10)
    with pytest.raises(ConfigError, match="NaN"):
        text_span_from_stats(HeadStatistics(50, stats.sum * float("nan"), stats.gram), _texts(), n_texts=4, rank=10)


# ---------------------------------------------------------------- numerical rank and ties

def _low_rank_outputs(n_head=2, n_image=120, d_out=24, centred_rank=5, seed=8):
    """float32 outputs whose centred part spans `centred_rank` dims, plus a mean: numerical rank centred_rank + 1."""
    gen = torch.Generator().manual_seed(seed)
    subspace = torch.linalg.qr(torch.randn(n_head, d_out, centred_rank, generator=gen))[0].mT
    scales = torch.linspace(1.0, 0.05, centred_rank)[:, None]
    latent = torch.randn(n_head, n_image, centred_rank, generator=gen)
    return (latent @ (scales * subspace) + torch.randn(n_head, 1, d_out, generator=gen)).float()


@pytest.mark.parametrize("criterion", CRITERIA)
def test_span_rank_is_capped_at_the_numerical_rank(criterion):
    outputs, texts = _low_rank_outputs(), _texts(n_text=60, d_out=24)
    result = text_span(outputs, texts, n_texts=5, rank=16, criterion=criterion)
    assert result.params["rank"] == 16 and result.params["ranks"] == [6, 6]
    singular = torch.linalg.svdvals(outputs.double())
    assert ((singular > RANK_RTOL * singular[:, :1]).sum(1) == 6).all()  # what "numerical rank" means
    # Literal port at the same rank: the same texts; at rank 16 it projects on rounding noise.
    literal, _ = text_span_reference(outputs, texts, n_texts=5, rank=result.params["ranks"], criterion=criterion)
    assert torch.equal(result.text_indices, literal.text_indices)
    torch.testing.assert_close(result.variance_explained, literal.variance_explained, atol=1e-5, rtol=0)
    # The directions lie in the outputs' span: with as many texts as its rank the reconstruction is exact.
    full = text_span(outputs, texts, n_texts=6, rank=16, criterion=criterion)
    torch.testing.assert_close(reconstruct(outputs, full), outputs, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("criterion", CRITERIA)
def test_chosen_texts_do_not_depend_on_image_order(criterion):
    outputs, texts = _low_rank_outputs(n_head=3), _texts(n_text=60, d_out=24)
    reference = text_span(outputs, texts, n_texts=5, rank=16, criterion=criterion)
    for seed in range(3):
        order = torch.randperm(outputs.shape[1], generator=torch.Generator().manual_seed(seed))
        permuted = text_span(outputs[:, order], texts, n_texts=5, rank=16, criterion=criterion)
        assert torch.equal(permuted.text_indices, reference.text_indices)
        torch.testing.assert_close(permuted.variance_explained, reference.variance_explained, atol=1e-6, rtol=0)


def test_more_texts_than_the_numerical_rank_is_refused():
    outputs, texts = _low_rank_outputs(), _texts(n_text=60, d_out=24)
    with pytest.raises(ConfigError, match=r"numerical rank .* row 0: 6; .* at most 6"):
        text_span(outputs, texts, n_texts=7, rank=16)


def test_ties_go_to_the_lowest_pool_index():
    outputs, texts, positions, _ = _planted([2.0, 1.0], n_random=10)
    first = int(positions[0])
    # A copy of the first planted text appended after it, and one put before it: the earlier copy wins.
    pool = torch.cat([texts[first][None], texts, texts[first][None]])
    result = text_span(outputs, pool, n_texts=2, rank=16)
    assert int(result.text_indices[0, 0]) == 0
    literal, _ = text_span_reference(outputs, pool, n_texts=2, rank=16)
    assert torch.equal(result.text_indices, literal.text_indices)
    # Copies that differ by float32 rounding of their embedding (1e-7) still tie.
    nudged = pool.clone()
    nudged[0] = nudged[0] * (1 - 1e-7)
    assert int(text_span(outputs, nudged, n_texts=2, rank=16).text_indices[0, 0]) == 0


def test_picks_among_pure_noise_go_to_the_lowest_valid_index():
    # Centred outputs along e0 only (plus a mean along e1): after e0 every score is rounding noise.
    n_image, d_out = 40, 6
    latent = _centred_orthonormal(n_image, 1, seed=9)
    outputs = (latent @ torch.eye(d_out, dtype=torch.float64)[:1] + torch.eye(d_out, dtype=torch.float64)[1])[None]
    texts = _unit(torch.randn(12, d_out, generator=torch.Generator().manual_seed(10), dtype=torch.float64))
    texts[3] = torch.eye(d_out, dtype=torch.float64)[0]
    result = text_span(outputs.float(), texts.float(), n_texts=2, rank=2)
    assert result.params["ranks"] == [2]
    assert result.text_indices[0].tolist() == [3, 0]
    assert result.variance_explained[0, 1] < 1e-6


# ---------------------------------------------------------------- the span's eigenvectors (fast path vs full eigh)

def _gram_matrices():
    """Gram matrices of float32 data as TextSpan builds them: full rank, low rank (rounding noise beyond it),
    a cluster of equal singular values, and an exact repeat of one row."""
    generator = torch.Generator().manual_seed(5)
    data = [torch.randn(300, 48, generator=generator),
            torch.randn(300, 6, generator=generator) @ torch.randn(6, 48, generator=generator),
            torch.linalg.qr(torch.randn(300, 48, generator=generator))[0] * 3.0]
    data.append(torch.cat([data[0][:, :1]] * 2 + [data[0][:, 2:]], 1))
    outputs = torch.stack([d.float() for d in data]).double()
    return outputs.mT @ outputs


@pytest.mark.parametrize("k", [1, 10, 47, 48])
def test_top_eigenvectors_equal_the_full_decomposition(k):
    from core.heads.textspan import _top_eigh

    grams = _gram_matrices()
    values, vectors = _top_eigh(grams, k)
    full_values, full_vectors = torch.linalg.eigh(grams)
    scale = full_values[:, -1:].abs()
    assert torch.allclose(values / scale, full_values / scale, atol=1e-13, rtol=0)
    assert vectors.shape == (len(grams), 48, k)
    assert torch.allclose(vectors.mT @ vectors, torch.eye(k, dtype=torch.float64).expand(len(grams), k, k), atol=1e-12)
    # each vector is an eigenvector of its value (residual at rounding level)
    residual = grams @ vectors - vectors * full_values[:, -k:, None].mT
    assert float((residual.norm(dim=1) / scale).max()) < 1e-12
    # the top-k subspace is the full decomposition's wherever it is well defined (a gap after the k-th value)
    for index in range(len(grams)):
        gap = full_values[index, -k] - (full_values[index, -k - 1] if k < 48 else -float("inf"))
        if gap > 1e-6 * scale[index, 0]:
            ours, theirs = vectors[index], full_vectors[index, :, -k:]
            assert torch.allclose(ours @ ours.T, theirs @ theirs.T, atol=1e-9)


def test_span_gram_as_diagonal_plus_rank_one_equals_the_explicit_product():
    from core.heads.textspan import HeadStatistics, _span_of

    outputs = _structured_outputs(n_image=60).double()
    stats = HeadStatistics.from_outputs(outputs)
    texts = _texts().double()
    span = _span_of(stats, texts, None, 10)
    explicit = span.basis @ stats.centred_gram() @ span.basis.mT
    assert torch.allclose(span.span_gram, explicit, atol=1e-9 * float(explicit.abs().max()))
    coords = texts @ span.basis.mT
    assert torch.allclose(span.captured, ((coords @ explicit) * coords).sum(-1), rtol=1e-9, atol=1e-9)
