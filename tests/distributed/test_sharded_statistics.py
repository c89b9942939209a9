"""The pieces that make a sharded build exact: TextSpan from merged statistics, the total-order top-k."""

import numpy as np
import pytest
import torch

from core.distributed.headstats import HeadStatistics, accumulate, text_span_from_stats
from core.distributed.runtime import Runtime
from core.distributed.topk import RunningTopK, merge_across_ranks, total_order
from core.heads.textspan import text_span


def _outputs(seed=0, heads=3, images=240, d=16):
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(heads, d, d, generator=g)
    return (torch.randn(heads, images, d, generator=g) @ directions) * 0.1 + torch.randn(heads, 1, d, generator=g)


@pytest.mark.parametrize("criterion", ["std", "explained_variance"])
def test_text_span_from_stats_equals_text_span_on_the_outputs(criterion):
    outputs = _outputs()
    texts = torch.nn.functional.normalize(torch.randn(60, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    sums = torch.zeros(3, 16, dtype=torch.float64)
    grams = torch.zeros(3, 16, 16, dtype=torch.float64)
    for batch in outputs.split(37, dim=1):  # uneven batches: the statistics only add up
        accumulate(sums, grams, batch)
    from_stats = text_span_from_stats(HeadStatistics(240, sums, grams), texts, n_texts=6, rank=10,
                                           criterion=criterion)
    direct = text_span(outputs, texts, n_texts=6, rank=10, criterion=criterion)
    assert torch.equal(from_stats.text_indices, direct.text_indices)
    for name in ("variance_explained", "mean", "directions", "total_variance"):
        assert torch.allclose(getattr(from_stats, name), getattr(direct, name), rtol=1e-5, atol=1e-6), name


def _reference_topk(norms: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Per neuron the ids of the k best by (norm descending, id ascending)."""
    return np.stack([ids[np.lexsort((ids, -row))[:k]] for row in norms])


def _tied_candidates(n_neurons=5, n_images=300, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    norms = (torch.rand(n_neurons, n_images, generator=g) * 20).round() / 2  # ~40 distinct values: ties everywhere
    ids = torch.randperm(n_images, generator=g) + 1000
    vectors = torch.randn(n_neurons, n_images, d, generator=g)
    return norms, ids, vectors


def test_total_order_breaks_ties_by_id():
    scores = torch.tensor([[1.0, 2.0, 2.0, 1.0]])
    ids = torch.tensor([[7, 9, 3, 1]])
    assert total_order(scores, ids).tolist() == [[2, 1, 3, 0]]


@pytest.mark.parametrize("batch", [1, 7, 64, 300])
def test_running_top_k_is_the_exact_top_k_for_any_batching(batch):
    norms, ids, vectors = _tied_candidates()
    top = RunningTopK.empty(5, 16, 3, dtype=torch.float32, device="cpu")
    for start in range(0, 300, batch):
        part = slice(start, start + batch)
        top.update(norms[:, part], ids[part], vectors[:, part])
    result = top.sorted()
    expected = _reference_topk(norms.numpy(), ids.numpy(), 16)
    assert np.array_equal(result.ids.numpy(), expected)
    position = {int(i): p for p, i in enumerate(ids)}
    for neuron in range(5):  # each kept vector belongs to its image
        columns = [position[int(i)] for i in result.ids[neuron]]
        assert torch.equal(result.vectors[neuron], vectors[neuron, columns])


def test_shard_partials_keep_enough_to_merge_exactly_in_any_order():
    norms, ids, vectors = _tied_candidates(seed=3)
    order = torch.argsort(ids)
    norms, ids, vectors = norms[:, order], ids[order], vectors[:, order]  # ids ascending, as shards are
    shards = [(s * 50 + 1000, (s + 1) * 50 + 1000) for s in range(6)]
    partials = []
    for owner in (0, 1):  # two "ranks" compute alternate shards, each with its own running top-k
        top = RunningTopK.empty(5, 16, 3, dtype=torch.float32, device="cpu")
        for start, stop in shards[owner::2]:
            inside = (ids >= start) & (ids < stop)
            top.update(norms[:, inside], ids[inside], vectors[:, inside])
            partials.append(top.entries_in(start, stop))
    assert sum(len(p["ids"]) for p in partials) < 5 * 300  # partials are pruned
    resumed = RunningTopK.empty(5, 16, 3, dtype=torch.float32, device="cpu")
    for partial in reversed(partials):  # a rerun with one process reads them back in another order
        resumed.update_entries(partial)
    result = merge_across_ranks(Runtime(0, 1, 0, torch.device("cpu"), None), resumed, "test")
    assert np.array_equal(result.ids.numpy(), _reference_topk(norms.numpy(), ids.numpy(), 16))
    assert torch.equal(result.norms, torch.sort(norms, dim=1, descending=True).values[:, :16])


def test_more_processes_than_shards_leave_ranks_idle_and_a_bad_shard_size_is_refused():
    import core.world  # noqa: F401
    from core.distributed.bases import BasesPlan, _check_plan
    from core.engine.models import load_clip
    from core.errors import ConfigError
    from core.neurons.bases import BuildOptions

    bundle = load_clip("toy")
    plan = BasesPlan(heads=[(3, 0)], neuron_layers=[2], per_head=4, rank=8, shard_size=64,
                     options=BuildOptions(k=8, batch_size=16))
    _check_plan(bundle, plan, 200, 50, Runtime(0, 4, 0, torch.device("cpu"), "gloo"))  # 4 shards, 4 ranks: fine
    _check_plan(bundle, plan, 200, 50, Runtime(0, 8, 0, torch.device("cpu"), "gloo"))  # 4 shards, 8 ranks: 4 idle
    with pytest.raises(ConfigError, match="multiple of --batch-size"):
        _check_plan(bundle, BasesPlan(heads=[(3, 0)], neuron_layers=[], rank=8, per_head=4, shard_size=60,
                                      options=plan.options), 200, 50, Runtime(0, 1, 0, torch.device("cpu"), None))
