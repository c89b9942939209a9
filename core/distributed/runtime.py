"""The process group a build runs in: one plain process, or the ranks torchrun started.

torchrun (`torchrun --nproc_per_node N -m core ...`, multi-node with its rendezvous flags) sets RANK,
WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; `start()` reads them and joins the group: NCCL when this
rank has a CUDA device, gloo otherwise. A plain `python -m core ...` is world size 1 and never touches
torch.distributed. Every collective goes through the helpers here, so a dead or hung peer becomes one
DistributedError that says what to do, not a backend traceback.

Results must not depend on the world size, so sums are reduced one shard slot at a time
(`reduce_slots`): for each shard, its owner contributes the partial and every other rank zeros; x + 0.0
is x exactly, so the slot comes back with the owner's bits in any reduction order, and slots are added
in shard order on every rank, as one process adds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import torch

from core import settings
from core.errors import CoreError

DEFAULT_TIMEOUT_S = 1800


class DistributedError(CoreError, RuntimeError):
    """A rank of a multi-process run failed, hung or disagrees with the others."""


@dataclass(frozen=True)
class Runtime:
    """This process's place in the group. `device`: where it computes; `comm_device`: where collectives run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def describe(self) -> str:
        if not self.distributed:
            return f"1 process on {self.device}"
        return f"{self.world_size} processes ({self.backend}), this one rank {self.rank} on {self.device}"


def launched_by_torchrun() -> bool:
    return settings.torchrun() is not None


def start(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Runtime:
    """Join torchrun's process group when launched by it, else a single-process runtime.

    device: "auto" (CUDA when this machine has one), "cpu", "cuda", or None for the configured default
    (core.settings). Under torchrun each rank takes GPU LOCAL_RANK; the backend is NCCL on GPUs, gloo on CPUs.
    """
    chosen = settings.resolve_device(device)  # None: --device / CLIPSCOPE_DEVICE, default auto
    wants_cuda = chosen.type == "cuda"
    launch = settings.torchrun()
    if launch is None or launch["world_size"] == 1:
        return Runtime(0, 1, 0, chosen, None)
    import torch.distributed as dist

    rank, world, local_rank = launch["rank"], launch["world_size"], launch["local_rank"]
    if wants_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                                   "start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local_rank)  # all_gather_object and NCCL stage on the current device
    backend = "nccl" if wants_cuda else "gloo"
    to = timedelta(seconds=timeout_s)
    try:
        # torch 2.15 + gloo: workers restarted by torchrun (--max-restarts) fail to connect through the
        # agent's store while keys of the previous attempt are left in it; a prefix per attempt avoids it.
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=to))
        store = dist.PrefixStore(f"attempt{launch['restart']}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=to)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"rank {rank} could not join the other {world - 1} processes ({backend}): "
                               f"{_first_line(err)}") from err
    device_name = f"cuda:{local_rank}" if wants_cuda else "cpu"
    return Runtime(rank, world, local_rank, torch.device(device_name), backend)


def stop(runtime: Runtime) -> None:
    if runtime.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def collective(runtime: Runtime, stage: str, work_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a backend failure inside a collective into a DistributedError naming the stage."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as err:  # DistBackendError and gloo's connection/timeouts are RuntimeErrors
        kept = f"; finished shards are kept in {work_dir}: run the same command again to resume" if work_dir else ""
        raise DistributedError(f"rank {runtime.rank} lost the other processes during {stage} (a rank died, was "
                               f"killed or hung past the timeout; torchrun's report names it){kept}. "
                               f"[{_first_line(err)}]") from err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


# ---------------------------------------------------------------- collectives


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        import torch.distributed as dist

        with collective(runtime, "a barrier"):
            dist.barrier()


def gather_json(runtime: Runtime, obj: Any) -> list[Any]:
    """obj from every rank, in rank order (JSON through uint8 tensors: nothing is unpickled)."""
    if not runtime.distributed:
        return [obj]
    import torch.distributed as dist

    data = torch.tensor(list(json.dumps(obj, sort_keys=True).encode("utf-8")), dtype=torch.uint8)
    device = runtime.comm_device
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(runtime.world_size)]
    dist.all_gather(sizes, torch.tensor([len(data)], device=device))
    longest = max(int(size) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: len(data)] = data.to(device)
    parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in range(runtime.world_size)]
    dist.all_gather(parts, padded)
    return [json.loads(bytes(part[: int(size)].cpu().tolist()).decode("utf-8")) for part, size in zip(parts, sizes)]


def agree(runtime: Runtime, what: dict[str, Any], stage: str = "the start") -> None:
    """Raise DistributedError on every rank unless all ranks hold equal `what` (model, text pool, ...)."""
    if not runtime.distributed:
        return
    with collective(runtime, stage):
        everyone = gather_json(runtime, {k: _digest(v) for k, v in what.items()})
    for key in what:
        values = [ranks[key] for ranks in everyone]
        if len(set(values)) > 1:
            groups: dict[str, list[int]] = {}
            for rank, value in enumerate(values):
                groups.setdefault(value, []).append(rank)
            listed = "; ".join(f"ranks {', '.join(map(str, ranks))}: {value[:12]}" for value, ranks in groups.items())
            raise DistributedError(f"the processes disagree on the {key} ({listed}): every rank must run the same "
                                   "command on the same model, text pool and images")


def raise_if_any(runtime: Runtime, problem: str | None, stage: str) -> None:
    """Share one rank's failure with all: every rank raises if any rank has a problem (None: fine)."""
    if not runtime.distributed:
        if problem:
            raise DistributedError(problem)
        return
    with collective(runtime, stage):
        problems = gather_json(runtime, problem)
    found = [(rank, text) for rank, text in enumerate(problems) if text]
    if found:
        rank, text = found[0]
        raise DistributedError(text if rank == runtime.rank else f"rank {rank} failed: {text}")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def reduce_slots(runtime: Runtime, n_slots: int, partial: Callable[[int], torch.Tensor | None], numel: int,
                 dtype: torch.dtype = torch.float64, stage: str = "the merge") -> torch.Tensor:
    """sum over slots s = 0..n_slots-1 of partial(s) [numel], added in slot order, the same bits for any
    world size. partial(s) is the flat tensor on the rank that owns slot s, None on the others."""
    total = torch.zeros(numel, dtype=dtype)
    for slot in range(n_slots):
        mine = partial(slot)
        if not runtime.distributed:
            if mine is None:
                raise DistributedError(f"slot {slot} has no partial in a single-process run")
            total += mine.to(dtype)
            continue
        import torch.distributed as dist

        buffer = (mine.to(runtime.comm_device, dtype) if mine is not None
                  else torch.zeros(numel, dtype=dtype, device=runtime.comm_device))
        with collective(runtime, stage):
            dist.all_reduce(buffer)
        total += buffer.cpu()
    return total


def all_gather(runtime: Runtime, tensor: torch.Tensor, stage: str) -> list[torch.Tensor]:
    """The same-shaped tensor from every rank, in rank order, on the CPU."""
    if not runtime.distributed:
        return [tensor]
    import torch.distributed as dist

    local = tensor.to(runtime.comm_device).contiguous()
    parts = [torch.empty_like(local) for _ in range(runtime.world_size)]
    with collective(runtime, stage):
        dist.all_gather(parts, local)
    return [part.cpu() for part in parts]


def gather_rows(runtime: Runtime, rows: torch.Tensor, counts: Sequence[int], stage: str) -> list[torch.Tensor]:
    """On rank 0, every rank's rows [counts[r], ...] (rank 0's own first); [] elsewhere. Copies, no arithmetic.
    counts must be known to every rank (they are computed the same way everywhere)."""
    if not runtime.distributed:
        return [rows]
    import torch.distributed as dist

    with collective(runtime, stage):
        if runtime.rank != 0:
            if counts[runtime.rank]:
                dist.send(rows.to(runtime.comm_device).contiguous(), dst=0)
            return []
        received = [rows]
        for rank in range(1, runtime.world_size):
            buffer = torch.empty((counts[rank], *rows.shape[1:]), dtype=rows.dtype, device=runtime.comm_device)
            if counts[rank]:
                dist.recv(buffer, src=rank)
            received.append(buffer.cpu())
    return received


def owned(shards: Sequence[int], runtime: Runtime) -> list[int]:
    """The shards this rank computes: s % world_size == rank (which rank computes a shard never changes
    a result; it only spreads the work)."""
    return [s for s in shards if s % runtime.world_size == runtime.rank]
