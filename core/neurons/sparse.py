"""Sparse text decomposition of directions: batched Orthogonal Matching Pursuit.

Paper 2 (section 4; `compute_sparse_decomposition.py`) explains each neuron's
principal component, a unit vector in d_out, as a sparse signed combination of
text embeddings found with OMP (128 terms). The paper code calls scikit-learn's
`SparseCoder(transform_algorithm="omp")`, which precomputes a [text, text] Gram
matrix and copies it once per target (30k texts: ~40 min, ~11 GB).

`omp` returns the same codes as scikit-learn's float64 OMP (`sparse_encode`,
`orthogonal_mp`) without any [text, text] matrix:

* one [batch, text] correlation matmul per selected term, batched over
  targets (the only expensive step, done in float32);
* the best `_CANDIDATES` texts by float32 score are re-scored exactly in
  float64 against the raw (not re-normalised) atoms, as scikit-learn scores
  them. The pick is certified: the best exact score must beat every other
  text's float32 score plus a worst-case rounding bound; rows where it does
  not (crowds of near-ties, a vanishing residual) are re-scored in full in
  float64. So the chosen atom is always the float64 argmax;
* incremental batched (inverse) Cholesky factors of the selected atoms' Gram
  matrix and float64 least squares for the coefficients;
* scikit-learn's early stops: the best correlation squared falls below float64
  eps, the best atom is already selected, or the new atom is (numerically) in
  the span of the selected ones.

Ties go to the lowest text index. scikit-learn breaks ties by position in an
internally swapped order, which differs only for exactly tied atoms one of
which sits at an index below `n_terms`.

Runs wherever the inputs are (or on `device`). Memory: the dictionary twice
(float32 and float64) plus, per batch of b targets, about
8 * b * n_terms * (d_out + 2 * n_terms) + 4 * b * text bytes (256 targets,
128 terms, d_out 512, 30k texts: ~230 MB).

Usage:
    dictionary = prepare_dictionary(text_embeddings)           # [text, d_out]
    code = omp(principal_components, dictionary, n_terms=128)  # SparseCode
    decompose_texts(code, texts, row=0)  # [(text, weight), ...] by |weight|
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from core.errors import ConfigError, TextError, check_index

DICTIONARY_MODES = ("normalise_texts", "original")
DEFAULT_N_TERMS = 128
DEFAULT_BATCH_SIZE = 256
# scikit-learn's stopping threshold for float64 input (np.finfo(float64).eps).
EPS = torch.finfo(torch.float64).eps
# Texts re-scored exactly per step. Near-ties closer than the float32 error
# bound (~1e-4 relative) among more texts than this trigger a full rescore.
_CANDIDATES = 8


class SparseCode(NamedTuple):
    """Sparse codes of a batch of targets over a dictionary of texts.

    indices: LongTensor [batch, n_terms], dictionary rows in selection order;
        -1 pads the end of rows where OMP stopped early.
    coefficients: [batch, n_terms], weight of each selected row (0 on padding).
    n_selected: LongTensor [batch], number of rows selected (< n_terms when
        OMP stopped early, e.g. on an exact reconstruction).
    residual_norm: [batch], ||target - coefficients @ dictionary[indices]||.
    """

    indices: Tensor
    coefficients: Tensor
    n_selected: Tensor
    residual_norm: Tensor

    def dense(self, n_texts: int) -> Tensor:
        """[batch, text] coefficient matrix, zero off the support (scikit-learn's layout)."""
        return _sparse_matrix(self, n_texts).to_dense()


def prepare_dictionary(text_embeddings: Tensor, mode: str = "normalise_texts") -> Tensor:
    """[text, d_out] -> [text, d_out] dictionary for `omp`.

    "normalise_texts": each text vector L2-normalised (OMP assumes unit atoms).
    "original": the paper code's dictionary: rows normalised, centred over
    texts, then each d_out COLUMN scaled to norm 100; rows are not unit norm.
    """
    _check_matrix("text_embeddings", text_embeddings, "text, d_out")
    if mode not in DICTIONARY_MODES:
        raise ConfigError(f"unknown dictionary mode {mode!r}; choose one of {', '.join(DICTIONARY_MODES)}")
    row_norms = text_embeddings.norm(dim=1, keepdim=True)
    if (row_norms == 0).any():
        raise ConfigError("text_embeddings has all-zero rows; drop those texts before building a dictionary")
    rows = text_embeddings / row_norms
    if mode == "normalise_texts":
        return rows
    # The paper code scales rows by 100 first; the column normalisation cancels it.
    centred = rows - rows.mean(dim=0)
    column_norms = centred.norm(dim=0)
    if (column_norms == 0).any():
        raise ConfigError("'original' mode needs texts that differ in every coordinate (centring left a zero column)")
    return 100 * centred / column_norms


def omp(
    targets: Tensor,
    dictionary: Tensor,
    n_terms: int = DEFAULT_N_TERMS,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> SparseCode:
    """Orthogonal Matching Pursuit of each target over the dictionary rows.

    targets [batch, d_out], dictionary [text, d_out] -> SparseCode with
    n_terms columns. Equals scikit-learn's float64
    `sparse_encode(targets, dictionary, algorithm="omp", n_nonzero_coefs=n_terms)`.
    Runs on `device` (default: the targets' device), `batch_size` targets at a
    time; `iter_omp` yields the batches for progress reporting.
    """
    parts = list(iter_omp(targets, dictionary, n_terms, batch_size=batch_size, device=device))
    return SparseCode(*(torch.cat(fields) for fields in zip(*parts)))


def iter_omp(
    targets: Tensor,
    dictionary: Tensor,
    n_terms: int = DEFAULT_N_TERMS,
    *,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[SparseCode]:
    """`omp` one batch of targets at a time: yields SparseCode for rows [i, i + batch_size)."""
    batch_size = _check_omp_inputs(targets, dictionary, n_terms, batch_size)
    device = targets.device if device is None else torch.device(device)
    scorer = _Scorer.build(dictionary, device)
    out_dtype = torch.promote_types(targets.dtype, dictionary.dtype)
    for start in range(0, len(targets), batch_size):
        chunk = targets[start : start + batch_size].to(device, torch.float64)
        code = _omp_batch(chunk, scorer, n_terms)
        yield code._replace(coefficients=code.coefficients.to(out_dtype), residual_norm=code.residual_norm.to(out_dtype))


def reconstruct(code: SparseCode, dictionary: Tensor) -> Tensor:
    """[batch, d_out]: sum of each row's coefficients times its selected dictionary rows."""
    matrix = _sparse_matrix(code, len(dictionary))
    return torch.sparse.mm(matrix, dictionary.to(matrix.dtype))


def reconstruction_cosine(code: SparseCode, dictionary: Tensor, targets: Tensor) -> Tensor:
    """[batch]: cosine similarity between each target and its reconstruction."""
    reconstruction = reconstruct(code, dictionary)
    return torch.nn.functional.cosine_similarity(reconstruction, targets.to(reconstruction), dim=-1)


def decompose_texts(code: SparseCode, texts: list[str], row: int) -> list[tuple[str, float]]:
    """(text, signed weight) terms of one row of the code, sorted by |weight| descending."""
    check_index("row", row, len(code.indices))
    count = int(code.n_selected[row])
    indices = code.indices[row, :count].tolist()
    weights = code.coefficients[row, :count].tolist()
    if indices and max(indices) >= len(texts):
        raise TextError(f"the code selects text {max(indices)} but only {len(texts)} texts were given; pass the pool the dictionary was built from")
    terms = [(texts[index], weight) for index, weight in zip(indices, weights)]
    return sorted(terms, key=lambda term: -abs(term[1]))


def omp_reference(target: Tensor, dictionary: Tensor, n_terms: int) -> SparseCode:
    """Slow textbook OMP of one target [d_out] (loop, lstsq per step), for tests; batch of one."""
    atoms, goal = dictionary.double(), target.double()
    support: list[int] = []
    coefficients = goal.new_zeros(0)
    residual = goal
    for _ in range(n_terms):
        correlations = atoms @ residual
        best = int(correlations.abs().argmax())
        if best in support or correlations[best] ** 2 < EPS:
            break
        if support and _distance_to_span(atoms[best], atoms[support]) ** 2 <= EPS:
            break
        support.append(best)
        coefficients = torch.linalg.lstsq(atoms[support].T, goal[:, None]).solution[:, 0]
        residual = goal - atoms[support].T @ coefficients
    padding = n_terms - len(support)
    return SparseCode(
        indices=torch.tensor([support + [-1] * padding]),
        coefficients=torch.cat([coefficients, goal.new_zeros(padding)])[None],
        n_selected=torch.tensor([len(support)]),
        residual_norm=residual.norm()[None],
    )


def _distance_to_span(vector: Tensor, basis: Tensor) -> Tensor:
    """Distance from vector [d_out] to the span of basis rows [n, d_out]."""
    fit = torch.linalg.lstsq(basis.T, vector[:, None]).solution[:, 0]
    return (vector - basis.T @ fit).norm()


class _Scorer(NamedTuple):
    """Dictionary copies for scoring texts against residuals.

    fast [d_out, text] float32 (contiguous: the fast matmul layout), exact
    [text, d_out] float64, error_bound: |fast score - exact score| <=
    error_bound * ||residual|| for every text.
    """

    fast: Tensor
    exact: Tensor
    error_bound: float

    @classmethod
    def build(cls, dictionary: Tensor, device: torch.device) -> "_Scorer":
        exact = dictionary.to(device, torch.float64)
        fast = exact.T.to(torch.float32).contiguous()
        # Worst case: both inputs rounded, d_out + 1 roundings in the sum, output rounded.
        unit = torch.finfo(torch.float32).eps / 2
        relative = 4 * _input_roundoff(device) + 2 * (dictionary.shape[1] + 1) * unit
        return cls(fast, exact, relative * float(exact.norm(dim=1).max()))


def _input_roundoff(device: torch.device) -> float:
    """Unit roundoff of a float32 matmul's inputs; cuBLAS may round them to TF32."""
    if device.type == "cuda" and (torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"):
        return 2.0**-11
    return torch.finfo(torch.float32).eps / 2


class _Pursuit(NamedTuple):
    """State of the targets still being pursued (n = n_terms; unfilled entries are 0).

    rows [live] (their rows in the batch), targets [live, d_out], indices
    [live, n], atoms [live, n, d_out] (selected rows), atom_dot_target
    [live, n], gram [live, n, n] (the atoms' Gram matrix), inverse_cholesky
    [live, n, n] (inverse of its lower Cholesky factor), coefficients
    [live, n], residual [live, d_out]. Steps use leading slices (views) and
    batched matmuls only: no LAPACK calls, no copies.
    """

    rows: Tensor
    targets: Tensor
    indices: Tensor
    atoms: Tensor
    atom_dot_target: Tensor
    gram: Tensor
    inverse_cholesky: Tensor
    coefficients: Tensor
    residual: Tensor

    @classmethod
    def start(cls, targets: Tensor, n_terms: int) -> "_Pursuit":
        batch, d_out = targets.shape
        rows = torch.arange(batch, device=targets.device)
        indices = torch.full((batch, n_terms), -1, dtype=torch.long, device=targets.device)
        zeros = targets.new_zeros
        square = (batch, n_terms, n_terms)
        return cls(rows, targets, indices, zeros(batch, n_terms, d_out), zeros(batch, n_terms), zeros(square), zeros(square), zeros(batch, n_terms), targets.clone())

    def subset(self, keep: Tensor) -> "_Pursuit":
        return _Pursuit(*(field[keep] for field in self))

    def write(self, code: SparseCode, n_selected: int) -> None:
        """Store these rows' results into code (their final state)."""
        code.indices[self.rows] = self.indices
        code.coefficients[self.rows] = self.coefficients
        code.n_selected[self.rows] = n_selected
        code.residual_norm[self.rows] = self.residual.norm(dim=-1)


def _omp_batch(targets: Tensor, scorer: _Scorer, n_terms: int) -> SparseCode:
    """OMP of float64 targets [batch, d_out]; only the scorer's matmul is in float32."""
    batch = len(targets)
    code = SparseCode(
        torch.full((batch, n_terms), -1, dtype=torch.long, device=targets.device),
        targets.new_zeros(batch, n_terms),
        torch.zeros(batch, dtype=torch.long, device=targets.device),
        targets.new_zeros(batch),
    )
    state = _Pursuit.start(targets, n_terms)
    for step in range(n_terms):
        best, best_correlation = _select_atom(state, step, scorer)
        new_atom = scorer.exact[best.clamp(min=0)]
        gram_row, row, diagonal_squared = _cholesky_row(state, step, new_atom)
        keep = (best >= 0) & (best_correlation**2 >= EPS) & (diagonal_squared > EPS)
        if not keep.all():  # rare: finished rows leave the batch
            state.subset(~keep).write(code, step)
            state, best, new_atom = state.subset(keep), best[keep], new_atom[keep]
            gram_row, row, diagonal_squared = gram_row[keep], row[keep], diagonal_squared[keep]
            if len(state.rows) == 0:
                return code
        _append_atom(state, step, best, new_atom, gram_row, row, diagonal_squared)
    state.write(code, n_terms)
    return code


def _select_atom(state: _Pursuit, step: int, scorer: _Scorer) -> tuple[Tensor, Tensor]:
    """scikit-learn's pick for each live row at this step.

    Returns (text index [live], |correlation| [live]); index -1 where an
    already selected atom correlates at least as much (scikit-learn then stops).
    """
    best, best_correlation = _best_unselected(state.residual, state.indices[:, :step], scorer)
    if step == 0:
        return best, best_correlation
    # scikit-learn's correlations of the selected atoms: X'y - G gamma (~0 up to rounding).
    fitted = torch.einsum("bij,bj->bi", state.gram[:, :step, :step], state.coefficients[:, :step])
    selected_correlation = (state.atom_dot_target[:, :step] - fitted).abs().amax(dim=1)
    # Selected atoms come first in scikit-learn's order, so they win ties.
    return torch.where(selected_correlation >= best_correlation, -1, best), best_correlation


def _cholesky_row(state: _Pursuit, step: int, new_atom: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For new_atom [live, d_out]: its Gram row against the selected atoms [live, step],
    the new Cholesky row [live, step] and its squared diagonal [live] (scikit-learn's Lkk)."""
    gram_row = torch.einsum("bnd,bd->bn", state.atoms[:, :step], new_atom)
    row = torch.einsum("bij,bj->bi", state.inverse_cholesky[:, :step, :step], gram_row)
    return gram_row, row, (new_atom * new_atom).sum(-1) - (row * row).sum(-1)


def _append_atom(state: _Pursuit, step: int, best: Tensor, new_atom: Tensor, gram_row: Tensor, row: Tensor, diagonal_squared: Tensor) -> None:
    """Add the step-th atom to every live row, refit the coefficients, update the residual."""
    state.indices[:, step] = best
    state.atoms[:, step] = new_atom
    state.atom_dot_target[:, step] = (new_atom * state.targets).sum(-1)
    state.gram[:, step, :step] = gram_row
    state.gram[:, :step, step] = gram_row
    state.gram[:, step, step] = (new_atom * new_atom).sum(-1)
    # Inverse of [[L, 0], [row, diagonal]] is [[L^-1, 0], [-row L^-1 / diagonal, 1 / diagonal]].
    diagonal = diagonal_squared.sqrt()
    inverse = state.inverse_cholesky[:, : step + 1, : step + 1]
    inverse[:, step, :step] = -torch.einsum("bi,bij->bj", row, inverse[:, :step, :step]) / diagonal[:, None]
    inverse[:, step, step] = 1 / diagonal
    # Least squares on the support: coefficients = L^-T L^-1 (atoms . target).
    half = torch.einsum("bij,bj->bi", inverse, state.atom_dot_target[:, : step + 1])
    coefficients = torch.einsum("bij,bi->bj", inverse, half)
    state.coefficients[:, : step + 1] = coefficients
    state.residual[:] = state.targets - torch.einsum("bn,bnd->bd", coefficients, state.atoms[:, : step + 1])


def _best_unselected(residual: Tensor, selected: Tensor, scorer: _Scorer) -> tuple[Tensor, Tensor]:
    """Float64 argmax over unselected texts of |<atom, residual>| (lowest index on ties).

    float32 scores shortlist candidates, which are re-scored exactly.
    The pick is certified when the best candidate beats every other atom's
    score plus the scorer's error bound; other rows are re-scored in full.
    """
    n_texts = scorer.exact.shape[0]
    scores = (residual.to(scorer.fast.dtype) @ scorer.fast).abs_()
    scores.scatter_(1, selected, -1.0)
    top = scores.topk(min(_CANDIDATES + 1, n_texts), dim=1)
    candidates = top.indices[:, :_CANDIDATES]
    exact = (scorer.exact[candidates] * residual[:, None, :]).sum(-1).abs()
    exact = torch.where(top.values[:, :_CANDIDATES] < 0, -1.0, exact)  # selected atoms
    best_correlation = exact.amax(dim=1)
    best = torch.where(exact == best_correlation[:, None], candidates, n_texts).amin(dim=1)
    if n_texts > _CANDIDATES:
        reachable = top.values[:, -1].double() + scorer.error_bound * residual.norm(dim=1)
        uncertain = (reachable >= best_correlation).nonzero()[:, 0]
        if len(uncertain):
            best[uncertain], best_correlation[uncertain] = _best_unselected_exactly(residual[uncertain], selected[uncertain], scorer.exact)
    return best, best_correlation


def _best_unselected_exactly(residual: Tensor, selected: Tensor, exact_dictionary: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 argmax over all unselected texts (first index on ties), for uncertified rows."""
    scores = (residual @ exact_dictionary.T).abs_()
    scores.scatter_(1, selected, -1.0)
    best = scores.argmax(dim=1)
    return best, scores.gather(1, best[:, None])[:, 0]


def _sparse_matrix(code: SparseCode, n_texts: int) -> Tensor:
    """Sparse COO [batch, text] matrix of the code."""
    if code.indices.numel() and int(code.indices.max()) >= n_texts:
        raise ConfigError(f"the code selects row {int(code.indices.max())} but the dictionary has only {n_texts} rows")
    selected = code.indices >= 0
    rows = torch.arange(len(code.indices), device=code.indices.device)[:, None].expand_as(code.indices)
    positions = torch.stack([rows[selected], code.indices[selected]])
    return torch.sparse_coo_tensor(positions, code.coefficients[selected], (len(code.indices), n_texts), check_invariants=True)


def _check_matrix(name: str, matrix: Tensor, dims: str) -> None:
    """Raise ConfigError unless matrix is a finite, non-empty floating 2-D tensor [dims]."""
    if not isinstance(matrix, Tensor) or matrix.ndim != 2:
        shape = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ConfigError(f"{name} must be a 2-D tensor [{dims}], got {shape}")
    if not matrix.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point tensor, got {matrix.dtype}")
    if matrix.numel() == 0:
        raise ConfigError(f"{name} is empty (shape {tuple(matrix.shape)}) [{dims}]")
    # A float64 sum is NaN/inf iff some entry is (bar overflow, which the full check settles).
    if not torch.isfinite(matrix.sum(dtype=torch.float64)) and not torch.isfinite(matrix).all():
        raise ConfigError(f"{name} contains NaN or inf values; clean or recompute it first")


def _check_omp_inputs(targets: Tensor, dictionary: Tensor, n_terms: int, batch_size: int | None) -> int:
    """Validate `omp` arguments; return the batch size to use."""
    _check_matrix("targets", targets, "batch, d_out")
    _check_matrix("dictionary", dictionary, "text, d_out")
    if targets.shape[1] != dictionary.shape[1]:
        raise ConfigError(f"targets have d_out={targets.shape[1]} but dictionary rows have d_out={dictionary.shape[1]}; embed both with the same model")
    limit = min(dictionary.shape)
    if not isinstance(n_terms, int) or isinstance(n_terms, bool) or not 1 <= n_terms <= limit:
        raise ConfigError(f"n_terms must be an integer from 1 to {limit} (min of text count and d_out), got {n_terms!r}")
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return batch_size
