"""Streaming statistics of MLP neurons' second-order effects over an image set (paper 2, B.8).

For every neuron n of one MLP layer, over D images:

    mu_n        mean of phi_n(I)                                          [neuron, d_out]
    Delta_n(I)  phi_n(I) - mu_n
    top-k       the k images with the largest |Delta_n(I)| (default 100)   ids, norms [neuron, k]
    tau_n       the k-th largest |Delta_n| (the "significant" threshold)   [neuron]
    r_n         first right singular vector of the k x d_out matrix of those deviations,
                uncentred; signed so that MORE than k/2 of them project positively (rows at
                zero abstain; ties: so that their projections sum positive; then: its largest
                entry positive)
    pc_variance sigma_1^2 / sum sigma_i^2 of that matrix (its share of the top-k energy)

Reproducible whatever the image order, batch size or thread count: images are ranked by the strict
total order (norm descending, then image id ascending), so equal norms never leave the choice of the
top k to the sort (torch.topk and unstable sorts do not define which tied element wins); the PCs are
computed in float64 from the top-k rows in that order; a projection within SIGN_RTOL of zero (relative
to the largest) counts as zero in the sign vote, so rounding noise on a row orthogonal to r_n cannot
flip it.

Two passes over the images (means, then deviations), never holding [image, neuron, d_out]:
memory is one batch of effects plus the kept [neuron, k, d_out] deviations (ViT-B-32, k = 100:
630 MB in float32, 315 MB with `store_dtype=torch.float16`).

>>> stats = neuron_stats(visual, 9, lambda: image_batches, k=100)
>>> stats.pcs.shape, stats.thresholds.shape     # [neuron, d_out], [neuron]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from core.errors import ConfigError, DatasetError
from core.neurons.second_order import COEFFICIENT, second_order_basis, second_order_effects
from core.engine.trace import trace_vit

DEFAULT_K = 100
_PCA_CHUNK = 256  # at most this many neurons per float64 Gram/eigh batch
PCA_CHUNK_BYTES = 256_000_000  # and at most this much temporary memory per batch (k = 1,000 made 256 neurons 4 GB)
SIGN_RTOL = 1e-6  # projections (and their sum) within this fraction of the largest count as zero

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # -> (ids [batch], pixels [batch, 3, H, W])
Progress = Callable[..., Iterable]  # tqdm-like: progress(iterable, desc=..., total=...)


@dataclass(frozen=True)
class NeuronStats:
    """Second-order statistics of one MLP layer over an image set. Top-k rows are by norm, descending."""

    layer: int
    mean: torch.Tensor  # [neuron, d_out] mu_n
    pcs: torch.Tensor  # [neuron, d_out] r_n, unit norm (zero for a neuron that never deviates)
    thresholds: torch.Tensor  # [neuron] tau_n, the k-th largest |Delta_n|
    top_images: torch.Tensor  # [neuron, k] image ids (long)
    top_norms: torch.Tensor  # [neuron, k] |Delta_n| of those images
    pc_variance: torch.Tensor  # [neuron] share of the top-k deviations' energy along r_n
    n_images: int
    mode: str = "paper"
    coefficient: float = COEFFICIENT

    @property
    def k(self) -> int:
        return self.top_images.shape[1]

    def to(self, device: torch.device | str) -> "NeuronStats":
        return replace(self, **{name: tensor.to(device) for name, tensor in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store (artifact group `neurons_L{layer}`)."""
        return {"mean": self.mean, "pcs": self.pcs, "thresholds": self.thresholds, "top_images": self.top_images,
                "top_norms": self.top_norms, "pc_variance": self.pc_variance}


def _progress(progress: Progress | None, iterable: Iterable, desc: str, total: int | None) -> Iterable:
    return progress(iterable, desc=desc, total=total) if progress else iterable


def effect_batches(
    visual: nn.Module, layer: int, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
    mode: str = "paper", coefficient: float = COEFFICIENT,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (ids [batch], phi [batch, neuron, d_out]) for each (ids, pixels) batch."""
    basis = second_order_basis(visual, layer)
    device = basis.directions.device
    for ids, pixels in batches:
        trace = trace_vit(visual, pixels.to(device), mlp_layers=[layer])
        yield torch.as_tensor(ids, dtype=torch.long), second_order_effects(trace, basis, mode=mode, coefficient=coefficient)


@torch.inference_mode()
def neuron_means(
    visual: nn.Module, layer: int, batches: Iterable, *, mode: str = "paper", coefficient: float = COEFFICIENT,
    progress: Progress | None = None, total: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Pass 1: (mu [neuron, d_out] float32, number of images), summed in float64."""
    total_sum, count = None, 0
    effects = effect_batches(visual, layer, batches, mode=mode, coefficient=coefficient)
    for _, phi in _progress(progress, effects, f"layer {layer}: means", total):
        part = phi.sum(0, dtype=torch.float64)
        total_sum = part if total_sum is None else total_sum + part
        count += phi.shape[0]
    if count == 0:
        raise DatasetError("no readable images in the image set: nothing to compute neuron statistics from.")
    return (total_sum / count).float(), count


class TopDeviations:
    """Running top-k per neuron of |Delta_n|, keeping those k deviation vectors (slots unordered)."""

    def __init__(self, n_neurons: int, k: int, d_out: int, *, dtype: torch.dtype, device: torch.device):
        self.norms = torch.full((n_neurons, k), float("-inf"), device=device)
        self.ids = torch.full((n_neurons, k), -1, dtype=torch.long, device=device)
        self.vectors = torch.zeros(n_neurons, k, d_out, dtype=dtype, device=device)

    def update(self, ids: torch.Tensor, deviations: torch.Tensor, norms: torch.Tensor) -> None:
        """Merge one batch: ids [batch], deviations [batch, neuron, d_out], norms [batch, neuron]."""
        k = self.norms.shape[1]
        incoming_norms = norms.T  # [neuron, batch]
        incoming_ids = ids.to(self.ids.device)
        combined = torch.cat([self.norms, incoming_norms], 1)
        combined_ids = torch.cat([self.ids, incoming_ids.expand(len(combined), -1)], 1)
        chosen = torch.zeros_like(combined, dtype=torch.bool)
        chosen.scatter_(1, rank_order(combined, combined_ids)[:, :k], True)
        # Per neuron, as many slots are freed as new entries are chosen; nonzero() lists both
        # neuron by neuron, so the two lists pair up row for row.
        neuron, slot = (~chosen[:, :k]).nonzero(as_tuple=True)
        _, image = chosen[:, k:].nonzero(as_tuple=True)
        self.norms[neuron, slot] = incoming_norms[neuron, image]
        self.ids[neuron, slot] = incoming_ids[image]
        self.vectors[neuron, slot] = deviations[image, neuron].to(self.vectors.dtype)

    def order(self) -> torch.Tensor:
        """[neuron, k] slots of each neuron by norm, descending, then by image id, ascending."""
        return rank_order(self.norms, self.ids)

    def ranking(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(norms, ids) [neuron, k], each neuron's by norm, descending (`vectors` stay in slot order)."""
        order = self.order()
        return self.norms.gather(1, order), self.ids.gather(1, order)


def rank_order(norms: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[neuron, n] positions sorting each row by norm descending, ties by id ascending (a strict total order).

    Two stable sorts: under a total order the top k of a union is the top k of the parts' top k, so
    streaming merges give the same images whatever their order.
    """
    by_id = ids.argsort(dim=1, stable=True)
    by_norm = norms.gather(1, by_id).argsort(dim=1, descending=True, stable=True)
    return by_id.gather(1, by_norm)


def first_principal_components(deviations: torch.Tensor, order: torch.Tensor | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """deviations [neuron, k, d_out] -> (r [neuron, d_out], variance share [neuron]).

    r_n is the first right singular vector of the uncentred k x d_out matrix (via the k x k Gram
    matrix, in float64), signed so that more rows project positively than negatively (the paper
    code's "> 50 of 100" when no projection is zero); on a tie, so that the projections sum to a
    positive number; when that sum is zero too, so that r_n's largest-magnitude entry (the first,
    among equal ones) is positive. Projections within SIGN_RTOL of the largest count as zero (they
    abstain). The rule gives the same r_n whichever sign the solver returned. order [neuron, k], optional:
    the rows of each neuron in this order (the top-k ranking), so the float sums do not depend on
    the order the images arrived in.
    """
    pcs, shares = [], []
    step = pca_chunk(deviations.shape[1], deviations.shape[2])  # each neuron's result does not depend on the step
    for start in range(0, deviations.shape[0], step):
        chunk = deviations[start:start + step]
        if order is not None:
            rows = order[start:start + step, :, None].expand(-1, -1, chunk.shape[-1])
            chunk = chunk.gather(1, rows)
        pc, share = _chunk_components(chunk.double())
        pcs.append(pc)
        shares.append(share)
    return torch.cat(pcs).float(), torch.cat(shares).float()


def pca_bytes_per_neuron(k: int, d_out: int) -> int:
    """Temporary bytes of one neuron in first_principal_components: its float64 rows (and their gathered copy),
    its Gram matrix, the eigenvectors and LAPACK's workspace."""
    return 8 * (2 * k * d_out + 3 * k * k)


def pca_chunk(k: int, d_out: int) -> int:
    """Neurons per Gram/eigh batch: at most _PCA_CHUNK, and at most PCA_CHUNK_BYTES of temporary memory."""
    return max(1, min(_PCA_CHUNK, PCA_CHUNK_BYTES // pca_bytes_per_neuron(k, d_out)))


def _chunk_components(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gram = x @ x.transpose(1, 2)  # [neuron, k, k]
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)
    pcs = torch.nn.functional.normalize(torch.einsum("nk,nkd->nd", eigenvectors[..., -1], x), dim=-1)
    energy = gram.diagonal(dim1=1, dim2=2).sum(-1)
    share = torch.where(energy > 0, eigenvalues[:, -1].clamp(min=0) / energy.clamp(min=1e-300), 0.0)
    return pcs * _signs(torch.einsum("nkd,nd->nk", x, pcs), pcs)[:, None], share


def _signs(projections: torch.Tensor, pcs: torch.Tensor) -> torch.Tensor:
    """[neuron] +1/-1: the sign rule of first_principal_components, on projections [neuron, k] of the rows."""
    zero = SIGN_RTOL * projections.abs().amax(1)
    # Positive minus negative rows: with no zero projection, positive when more than k/2 are (the paper's rule);
    # rows at zero abstain, so the result does not depend on the solver's sign (the paper's count of
    # "non-positive" rows does when some are zero).
    votes = (projections > zero[:, None]).sum(1) - (projections < -zero[:, None]).sum(1)
    # A tie (possible for even k) is left to the SVD's arbitrary sign by the paper code; we break it
    # by the sign of the summed projections, then by the largest entry, so it does not depend on the solver.
    total = projections.sum(1)
    total_sign = torch.where(total.abs() > SIGN_RTOL * projections.abs().sum(1), total.sign(), 0.0)
    magnitude = pcs.abs()
    largest = (magnitude >= magnitude.amax(1, keepdim=True) * (1 - SIGN_RTOL)).to(torch.int8).argmax(1)
    entry_sign = pcs.gather(1, largest[:, None])[:, 0].sign()
    sign = torch.where(votes != 0, votes.sign().to(pcs.dtype), torch.where(total_sign != 0, total_sign, entry_sign))
    return torch.where(sign == 0, 1.0, sign).to(pcs.dtype)


def check_k(k: int, n_images: int) -> int:
    """Raise ConfigError unless 1 <= k <= n_images."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k (top images per neuron) must be a positive integer, got {k!r}")
    if n_images < k:
        raise ConfigError(f"the image set has {n_images} readable images but k = {k} top images per neuron are "
                          f"needed: use a larger image set (the paper used ~5,000) or a smaller --k")
    return k


@torch.inference_mode()
def neuron_top_deviations(
    visual: nn.Module, layer: int, batches: Iterable, mean: torch.Tensor, n_images: int, *, k: int = DEFAULT_K,
    mode: str = "paper", coefficient: float = COEFFICIENT, store_dtype: torch.dtype = torch.float32,
    progress: Progress | None = None, total: int | None = None,
) -> NeuronStats:
    """Pass 2: top-k deviations from `mean` [neuron, d_out], their first PCs and the thresholds."""
    check_k(k, n_images)
    top = TopDeviations(mean.shape[0], k, mean.shape[1], dtype=store_dtype, device=mean.device)
    seen = 0
    effects = effect_batches(visual, layer, batches, mode=mode, coefficient=coefficient)
    for ids, phi in _progress(progress, effects, f"layer {layer}: top-{k} deviations", total):
        deviations = phi - mean
        top.update(ids, deviations, deviations.norm(dim=-1))
        seen += phi.shape[0]
    if seen != n_images:
        raise DatasetError(f"the image set changed between the two passes ({n_images} images, then {seen}); "
                           "keep the folder unchanged while statistics are computed")
    order = top.order()
    norms, ids = top.norms.gather(1, order), top.ids.gather(1, order)
    pcs, share = first_principal_components(top.vectors, order)  # rows gathered in ranking order, chunk by chunk
    return NeuronStats(layer=layer, mean=mean, pcs=pcs, thresholds=norms[:, -1].clone(), top_images=ids,
                       top_norms=norms, pc_variance=share, n_images=n_images, mode=mode, coefficient=coefficient)


def neuron_stats(
    visual: nn.Module, layer: int, batches: Batches, *, k: int = DEFAULT_K, mode: str = "paper",
    coefficient: float = COEFFICIENT, store_dtype: torch.dtype = torch.float32,
    progress: Progress | None = None, total: int | None = None, n_images: int | None = None,
) -> NeuronStats:
    """Both passes. `batches()` must yield the same (ids, pixels) batches each time it is called.

    n_images, when known up front (before skipping unreadable files), refuses an image set
    smaller than k before any work. total: number of batches, for the progress bar.
    """
    if n_images is not None:
        check_k(k, n_images)
    options = dict(mode=mode, coefficient=coefficient, progress=progress, total=total)
    mean, count = neuron_means(visual, layer, batches(), **options)
    return neuron_top_deviations(visual, layer, batches(), mean, count, k=k, store_dtype=store_dtype, **options)


def stats_from_tensors(layer: int, tensors: dict[str, torch.Tensor], *, n_images: int, mode: str,
                       coefficient: float) -> NeuronStats:
    """NeuronStats back from the tensors of `NeuronStats.tensors()` (e.g. read from an artifact)."""
    missing = [name for name in ("mean", "pcs", "thresholds", "top_images", "top_norms", "pc_variance")
               if name not in tensors]
    if missing:
        from core.errors import BasesError

        raise BasesError(f"neuron statistics of layer {layer} lack {', '.join(missing)}: rebuild the bases")
    return NeuronStats(layer=layer, n_images=n_images, mode=mode, coefficient=coefficient,
                       **{name: tensors[name] for name in ("mean", "pcs", "thresholds", "top_images", "top_norms",
                                                           "pc_variance")})
