"""core.neurons.sparse: batched OMP equals scikit-learn's OMP and a literal loop."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import sparse_encode
from sklearn.linear_model import orthogonal_mp

from core.errors import ConfigError, IndexRangeError, TextError
from core.neurons.sparse import (
    DICTIONARY_MODES,
    SparseCode,
    decompose_texts,
    iter_omp,
    omp,
    omp_reference,
    prepare_dictionary,
    reconstruct,
    reconstruction_cosine,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Many tiny ops per OMP step: a second thread only adds contention on 2 shared cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def random_embeddings(n_texts, d_out, seed):
    """CLIP-like text embeddings: a shared offset plus noise, so centring matters."""
    generator = torch.Generator().manual_seed(seed)
    offset = 2 * torch.randn(1, d_out, generator=generator, dtype=torch.float64)
    return torch.randn(n_texts, d_out, generator=generator, dtype=torch.float64) + offset


def unit_targets(n_targets, d_out, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n_targets, d_out, generator=generator, dtype=torch.float64), dim=1)


def sklearn_code(targets, dictionary, n_terms):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sklearn warns on early stops
        return sparse_encode(targets.numpy(), dictionary.numpy(), algorithm="omp", n_nonzero_coefs=n_terms)


def assert_matches_sklearn(code, expected, min_agreement=0.99, atol=1e-4):
    dense = code.dense(expected.shape[1]).numpy()
    same_support = ((dense != 0) == (expected != 0)).all(axis=1)
    assert same_support.mean() >= min_agreement
    assert np.abs(dense - expected)[same_support].max() <= atol


@pytest.mark.parametrize("mode", DICTIONARY_MODES)
def test_matches_sklearn_sparse_encode(mode):
    dictionary = prepare_dictionary(random_embeddings(2000, 64, seed=0), mode)
    targets = unit_targets(200, 64, seed=1)
    code = omp(targets, dictionary, 32, batch_size=64)
    assert (code.n_selected == 32).all()
    assert_matches_sklearn(code, sklearn_code(targets, dictionary, 32))


def test_float32_inputs_match_float64_sklearn():
    dictionary = prepare_dictionary(random_embeddings(2000, 64, seed=2), "original").float()
    targets = unit_targets(100, 64, seed=3).float()
    code = omp(targets, dictionary, 32)
    assert code.coefficients.dtype == torch.float32
    assert_matches_sklearn(code, sklearn_code(targets.double(), dictionary.double(), 32))


def test_matches_sklearn_orthogonal_mp_and_selection_order_of_reference():
    dictionary = prepare_dictionary(random_embeddings(300, 32, seed=4), "original")
    targets = unit_targets(12, 32, seed=5)
    code = omp(targets, dictionary, 16)
    expected = orthogonal_mp(X=dictionary.numpy().T, y=targets.numpy().T, n_nonzero_coefs=16).T
    assert_matches_sklearn(code, expected, min_agreement=1.0)
    for row, target in enumerate(targets):
        reference = omp_reference(target, dictionary, 16)
        assert torch.equal(reference.indices[0], code.indices[row])
        torch.testing.assert_close(reference.coefficients[0], code.coefficients[row], rtol=0, atol=1e-10)
        torch.testing.assert_close(reference.residual_norm[0], code.residual_norm[row], rtol=0, atol=1e-10)


def test_planted_sparse_combination_is_recovered_exactly():
    dictionary = prepare_dictionary(random_embeddings(500, 64, seed=6))
    planted = torch.tensor([17, 301, 42, 499, 3])
    weights = torch.tensor([1.0, -0.8, 0.6, -0.45, 0.3], dtype=torch.float64)
    target = (weights @ dictionary[planted])[None]
    code = omp(target, dictionary, 10)
    assert code.n_selected.item() == 5  # stopped early: nothing left to explain
    assert torch.equal(code.indices[0, :5], planted)  # largest weight first
    torch.testing.assert_close(code.coefficients[0, :5], weights, rtol=0, atol=1e-10)
    assert code.residual_norm.item() < 1e-10
    assert (code.indices[0, 5:] == -1).all() and (code.coefficients[0, 5:] == 0).all()


def test_early_stops_match_sklearn():
    dictionary = prepare_dictionary(random_embeddings(200, 32, seed=7))
    targets = torch.stack([dictionary[9], torch.zeros(32, dtype=torch.float64), 2 * dictionary[3] - dictionary[40]])
    code = omp(targets, dictionary, 8)
    assert code.n_selected.tolist() == [1, 0, 2]
    assert code.indices[0, 0].item() == 9
    assert_matches_sklearn(code, sklearn_code(targets, dictionary, 8), min_agreement=1.0, atol=1e-10)


def test_tied_duplicate_atoms_pick_the_lowest_index_like_sklearn():
    dictionary = prepare_dictionary(random_embeddings(60, 8, seed=8))
    dictionary[50] = dictionary[30]
    targets = torch.stack([dictionary[30] + 0.1 * dictionary[12], dictionary[50] - 0.2 * dictionary[7]])
    code = omp(targets, dictionary, 4)
    assert (code.indices[:, 0] == 30).all()
    assert_matches_sklearn(code, sklearn_code(targets, dictionary, 4), min_agreement=1.0, atol=1e-10)


def test_batching_and_iteration_do_not_change_the_result():
    dictionary = prepare_dictionary(random_embeddings(400, 16, seed=9), "original")
    targets = unit_targets(23, 16, seed=10)
    whole = omp(targets, dictionary, 12)
    parts = list(iter_omp(targets, dictionary, 12, batch_size=5, device="cpu"))
    assert [len(part.indices) for part in parts] == [5, 5, 5, 5, 3]
    assert torch.equal(torch.cat([part.indices for part in parts]), whole.indices)
    torch.testing.assert_close(torch.cat([part.coefficients for part in parts]), whole.coefficients, rtol=0, atol=1e-12)


def test_reconstruction_helpers_agree_with_dense_matmul():
    dictionary = prepare_dictionary(random_embeddings(300, 24, seed=11))
    targets = unit_targets(6, 24, seed=12)
    code = omp(targets, dictionary, 10)
    dense = code.dense(300)
    assert dense.shape == (6, 300) and ((dense != 0).sum(1) == code.n_selected).all()
    reconstruction = reconstruct(code, dictionary)
    torch.testing.assert_close(reconstruction, dense @ dictionary)
    torch.testing.assert_close((targets - reconstruction).norm(dim=1), code.residual_norm)
    expected_cosine = torch.nn.functional.cosine_similarity(dense @ dictionary, targets, dim=1)
    torch.testing.assert_close(reconstruction_cosine(code, dictionary, targets), expected_cosine)


def test_decompose_texts_sorts_terms_by_absolute_weight():
    code = SparseCode(
        indices=torch.tensor([[2, 0, 3, -1]]),
        coefficients=torch.tensor([[0.2, -0.9, 0.5, 0.0]]),
        n_selected=torch.tensor([3]),
        residual_norm=torch.tensor([0.1]),
    )
    assert decompose_texts(code, ["a", "b", "c", "d"], 0) == [("a", pytest.approx(-0.9)), ("d", 0.5), ("c", pytest.approx(0.2))]
    with pytest.raises(IndexRangeError, match="row 1"):
        decompose_texts(code, ["a", "b", "c", "d"], 1)
    with pytest.raises(TextError, match="only 3 texts"):
        decompose_texts(code, ["a", "b", "c"], 0)


def test_prepare_dictionary_modes():
    embeddings = random_embeddings(40, 6, seed=13)
    rows = prepare_dictionary(embeddings)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(40, dtype=torch.float64))
    # The paper code, literally (compute_sparse_decomposition.py).
    array = embeddings.numpy()
    scaled = 100 * array / np.linalg.norm(array, axis=1, keepdims=True)
    scaled -= scaled.mean(axis=0)
    expected = 100 * scaled / np.linalg.norm(scaled, axis=0)
    torch.testing.assert_close(prepare_dictionary(embeddings, "original"), torch.from_numpy(expected))
    with pytest.raises(ConfigError, match="normalise_texts, original"):
        prepare_dictionary(embeddings, "columns")
    with pytest.raises(ConfigError, match="all-zero rows"):
        prepare_dictionary(torch.zeros(3, 4))


@pytest.mark.parametrize(
    ("targets", "dictionary", "n_terms", "message"),
    [
        (torch.ones(4), torch.ones(5, 4), 2, "2-D tensor"),
        (torch.ones(2, 3), torch.ones(5, 4), 2, "d_out=3"),
        (torch.ones(2, 4, dtype=torch.long), torch.ones(5, 4), 2, "floating-point"),
        (torch.ones(0, 4), torch.ones(5, 4), 2, "empty"),
        (torch.tensor([[1.0, float("nan")]]), torch.ones(5, 2), 1, "NaN or inf"),
        (torch.ones(2, 4), torch.tensor([[float("inf")] * 4] * 5), 2, "NaN or inf"),
        (torch.ones(2, 4), torch.ones(5, 4), 0, "from 1 to 4"),
        (torch.ones(2, 4), torch.ones(5, 4), 5, "from 1 to 4"),
        (torch.ones(2, 4), torch.ones(3, 4), 4, "from 1 to 3"),
    ],
)
def test_invalid_inputs_raise_config_error(targets, dictionary, n_terms, message):
    with pytest.raises(ConfigError, match=message):
        omp(targets, dictionary, n_terms)


def test_invalid_batch_size_raises_config_error():
    with pytest.raises(ConfigError, match="batch_size"):
        omp(torch.ones(2, 4), torch.eye(4), 2, batch_size=0)


def test_crowded_ties_fall_back_to_full_exact_scoring():
    # 40 copies of one atom: more exact ties than float32 candidates, so the pick cannot be certified.
    dictionary = prepare_dictionary(random_embeddings(300, 16, seed=14))
    copies = torch.arange(100, 300, 5)
    dictionary[copies] = dictionary[7].clone()
    targets = torch.stack([dictionary[7] + 0.05 * dictionary[3], -dictionary[7] + 0.1 * dictionary[50]])
    code = omp(targets, dictionary, 5)
    assert (code.indices[:, 0] == 7).all()
    assert_matches_sklearn(code, sklearn_code(targets, dictionary, 5), min_agreement=1.0, atol=1e-10)
