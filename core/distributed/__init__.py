"""Builds that scale out with torchrun: fixed shards by image id, exact merges whatever the process count.

`python -m core bases build ...` runs here in one process; `torchrun --nproc_per_node N -m core bases build ...`
(multi-node with torchrun's rendezvous flags) runs the same build across processes, gloo on CPUs, NCCL on GPUs.
"""

from core.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "runtime": ["Runtime", "DistributedError", "start", "stop", "launched_by_torchrun", "reduce_slots", "agree"],
    "topk": ["RunningTopK", "total_order", "merge_across_ranks"],
    "headstats": ["HeadStatistics", "accumulate", "text_span_from_stats"],
    "bases": ["BasesPlan", "BuildReport", "build_bases", "DEFAULT_SHARD_SIZE"],
})
