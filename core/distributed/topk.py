"""Top-k images per neuron under a strict total order, so that streaming, shard and rank merges are exact.

The order: larger |Delta| first, then the smaller image id. Under a total order
topk(A u B) = topk(topk(A) u topk(B)), so merging running lists, shard partials and ranks gives the
single-process answer whatever the split. `torch.topk` leaves ties to the kernel; two stable sorts
(id ascending, then score descending) do not.

A shard partial keeps only its images that were still in this rank's running top-k when the shard
ended: every image left out was beaten by k images that are kept (in this shard or an earlier one),
so the top-k over all kept images is still exact, and a resumed run (with any world size) reads them
back instead of recomputing the shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.neurons.stats import rank_order

EMPTY_ID = -1  # an unfilled slot: norm -inf, sorts after every real image


def total_order(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row, positions sorting [row, n] by score descending, then id ascending (core.neurons.stats.rank_order)."""
    return rank_order(scores, ids)


@dataclass
class RunningTopK:
    """Per neuron, the k best (norm, id) with their vectors; slots are unordered until `sorted()`."""

    norms: torch.Tensor  # [neuron, k] float32, -inf where empty
    ids: torch.Tensor  # [neuron, k] int64, EMPTY_ID where empty
    vectors: torch.Tensor  # [neuron, k, d_out]

    @classmethod
    def empty(cls, n_neurons: int, k: int, d_out: int, *, dtype: torch.dtype, device) -> "RunningTopK":
        return cls(torch.full((n_neurons, k), float("-inf"), device=device),
                   torch.full((n_neurons, k), EMPTY_ID, dtype=torch.long, device=device),
                   torch.zeros(n_neurons, k, d_out, dtype=dtype, device=device))

    @property
    def k(self) -> int:
        return self.norms.shape[1]

    def update(self, norms: torch.Tensor, ids: torch.Tensor, vectors: torch.Tensor) -> None:
        """Merge candidates: norms [neuron, m], ids [neuron, m] (or [m], the same for every neuron),
        vectors [neuron, m, d_out] (a view is fine). Only replaced slots are written."""
        n, k = self.norms.shape
        ids = ids.to(self.ids.device)
        ids = ids.expand(n, -1) if ids.ndim == 1 else ids
        combined_norms = torch.cat([self.norms, norms.to(self.norms)], 1)
        combined_ids = torch.cat([self.ids, ids], 1)
        chosen = torch.zeros_like(combined_norms, dtype=torch.bool)
        chosen.scatter_(1, total_order(combined_norms, combined_ids)[:, :k], True)
        # Per neuron, as many slots are freed as candidates are chosen; nonzero() lists both neuron by
        # neuron, so the two lists pair up row for row.
        neuron, slot = (~chosen[:, :k]).nonzero(as_tuple=True)
        _, incoming = chosen[:, k:].nonzero(as_tuple=True)
        self.norms[neuron, slot] = combined_norms[neuron, k + incoming]
        self.ids[neuron, slot] = combined_ids[neuron, k + incoming]
        self.vectors[neuron, slot] = vectors[neuron, incoming].to(self.vectors.dtype)

    def sorted(self) -> "RunningTopK":
        """Slots in the total order (best first)."""
        order = total_order(self.norms, self.ids)
        return RunningTopK(self.norms.gather(1, order), self.ids.gather(1, order),
                           self.vectors.gather(1, order[:, :, None].expand(-1, -1, self.vectors.shape[2])))

    # -------------------------------------------------- shard partials

    def entries_in(self, start: int, stop: int) -> dict[str, torch.Tensor]:
        """The kept images with ids in start..stop-1, sparse: neuron [m], ids [m], norms [m], vectors [m, d]."""
        neuron, slot = ((self.ids >= start) & (self.ids < stop)).nonzero(as_tuple=True)
        return {"neuron": neuron.int().cpu(), "ids": self.ids[neuron, slot].cpu(),
                "norms": self.norms[neuron, slot].cpu(), "vectors": self.vectors[neuron, slot].cpu()}

    def update_entries(self, entries: dict[str, torch.Tensor]) -> None:
        """Merge a shard partial written by `entries_in`."""
        neuron = entries["neuron"].long().to(self.ids.device)
        if neuron.numel() == 0:
            return
        n, d = self.norms.shape[0], self.vectors.shape[2]
        per_neuron = torch.bincount(neuron, minlength=n)
        width = int(per_neuron.max())
        # position of each entry within its neuron's row (entries are listed neuron by neuron)
        starts = torch.cumsum(per_neuron, 0) - per_neuron
        order = torch.argsort(neuron, stable=True)
        neuron = neuron[order]
        column = torch.arange(len(neuron), device=neuron.device) - starts[neuron]
        norms = torch.full((n, width), float("-inf"), device=self.norms.device)
        ids = torch.full((n, width), EMPTY_ID, dtype=torch.long, device=self.ids.device)
        vectors = torch.zeros(n, width, d, dtype=self.vectors.dtype, device=self.vectors.device)
        norms[neuron, column] = entries["norms"].to(norms)[order.cpu()].to(norms.device)
        ids[neuron, column] = entries["ids"].to(ids.device)[order]
        vectors[neuron, column] = entries["vectors"].to(vectors.device, vectors.dtype)[order]
        self.update(norms, ids, vectors)


def merge_across_ranks(runtime, top: RunningTopK, stage: str) -> RunningTopK:
    """The global top-k, sorted, complete on rank 0 (the writer): (norm, id) lists are gathered and ranked
    the same way on every rank; each chosen vector is then copied to rank 0 by the one rank holding it.
    Other ranks get the right norms and ids but not the vectors."""
    from core.distributed.runtime import all_gather, gather_rows

    if not runtime.distributed:
        return top.sorted()
    norms = torch.cat(all_gather(runtime, top.norms, stage), 1)  # [neuron, world * k], rank-major
    ids = torch.cat(all_gather(runtime, top.ids, stage), 1)
    k = top.k
    choice = total_order(norms, ids)[:, :k]  # [neuron, k] positions in the gathered lists
    owner, slot = choice // k, choice % k
    counts = [int((owner == rank).sum()) for rank in range(runtime.world_size)]
    mine = (owner == runtime.rank).nonzero(as_tuple=True)  # (neuron, final position), row-major
    rows = top.vectors[mine[0], slot[mine]].cpu()
    received = gather_rows(runtime, rows, counts, stage)
    vectors = torch.zeros(top.vectors.shape, dtype=top.vectors.dtype)
    for rank, part in enumerate(received):
        neuron, position = (owner == rank).nonzero(as_tuple=True)
        vectors[neuron, position] = part
    return RunningTopK(norms.gather(1, choice), ids.gather(1, choice), vectors)
