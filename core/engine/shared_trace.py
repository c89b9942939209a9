"""One traced forward, many lenses: a small bounded cache of traces keyed by model, image bytes and options.

The decomposition, spatial maps, second-order effects, segmentation and circuits all read a `VitTrace`
of the same forward pass. A tab or command that asks several of them about the same images calls
`shared_trace` with what each lens needs: the first call traces, later calls reuse a cached trace that
covers their needs (its MLP layers include theirs, it kept the values or mapped them through the same
maps); a call that needs more traces once with the union of the options, which then serves both.

Keys: the model's identity (object, parameter storage and version: an edited weight is a new model),
the images' bytes, shape, dtype and device, and the options. Bounded by entries and by bytes (LRU).
Returned traces are shared: treat their tensors as read-only (every lens in core does).

Where the cache lives:
- inside `trace_scope()` (the UI opens one per request in public mode): a cache private to that scope,
  so nothing computed for one visitor is reused (or timed) by another;
- otherwise, locally, one process-wide cache (a single user: CLI, library, local app);
- in public mode outside any scope: no cache (every call traces).

>>> trace = shared_trace(visual, pixels, mlp_layers=[9])              # second-order effects of layer 9
>>> same = shared_trace(visual, pixels)                                 # the decomposition: no new forward
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import threading
from collections import OrderedDict
from typing import Iterator, Sequence

import torch
from torch import nn

from core import settings
from core.engine.trace import VitTrace, trace_vit

MAX_ENTRIES = 8
MAX_BYTES = 512 * 2**20


class TraceCache:
    """An LRU of traces, one per (model, images): bounded by `max_entries` and by the traces' bytes."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[tuple, VitTrace] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, covers) -> VitTrace | None:
        with self._lock:
            trace = self._entries.get(key)
            if trace is not None and covers(trace):
                self._entries.move_to_end(key)
                self.hits += 1
                return trace
            self.misses += 1
            return trace  # the caller reads its options to trace the union, then puts the result

    def put(self, key: tuple, trace: VitTrace) -> None:
        size = trace_bytes(trace)
        with self._lock:
            self._entries.pop(key, None)
            if size > self.max_bytes:
                return
            self._entries[key] = trace
            while len(self._entries) > self.max_entries or sum(map(trace_bytes, self._entries.values())) > self.max_bytes:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_PROCESS_CACHE = TraceCache()
_SCOPE: contextvars.ContextVar[TraceCache | None] = contextvars.ContextVar("clipscope_trace_scope", default=None)


@contextlib.contextmanager
def trace_scope(cache: TraceCache | None = None) -> Iterator[TraceCache]:
    """Share traces only among the calls inside this block (e.g. the lenses of one request)."""
    cache = cache if cache is not None else TraceCache()
    token = _SCOPE.set(cache)
    try:
        yield cache
    finally:
        _SCOPE.reset(token)


def active_cache() -> TraceCache | None:
    """The cache `shared_trace` uses here and now (None: public mode outside a scope, no caching)."""
    scoped = _SCOPE.get()
    if scoped is not None:
        return scoped
    return None if settings.public() else _PROCESS_CACHE


def clear_shared_traces() -> None:
    """Empty the process-wide cache (and the current scope's)."""
    _PROCESS_CACHE.clear()
    if _SCOPE.get() is not None:
        _SCOPE.get().clear()


def trace_bytes(trace: VitTrace) -> int:
    tensors = [getattr(trace, name) for name in ("embedding", "cls_embed", "ln1_mean", "ln1_std", "attn_cls", "head_cls",
                                                 "value_cls", "mlp_cls", "resid_final", "values", "mapped_values")]
    tensors += list(trace.mlp_post.values())
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def model_key(visual: nn.Module) -> tuple:
    """The model's identity: the object and every parameter's storage and version (an in-place edit is a new key)."""
    return (id(visual),) + tuple((p.data_ptr(), p._version) for p in visual.parameters())


def images_key(images: torch.Tensor) -> tuple:
    """The images' shape, dtype, device and a digest of their bytes."""
    data = images.detach().contiguous().cpu()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy() if data.numel() else b"", digest_size=16).hexdigest()
    return (tuple(images.shape), str(images.dtype), str(images.device), digest)


def _covers(trace: VitTrace, mlp_layers: frozenset, keep_values: bool, value_maps: torch.Tensor | None) -> bool:
    if not mlp_layers <= set(trace.mlp_post):
        return False
    if keep_values and trace.values is None:
        return False
    if value_maps is not None and trace.values is None:
        maps = trace.value_maps
        if maps is None or maps.shape != value_maps.shape or not torch.equal(maps, value_maps.to(maps)):
            return False
    return True


def shared_trace(
    visual: nn.Module,
    images: torch.Tensor,
    *,
    mlp_layers: Sequence[int] = (),
    keep_values: bool = False,
    value_maps: torch.Tensor | None = None,
) -> VitTrace:
    """`trace_vit(visual, images, ...)`, or a cached trace of the same model and images that covers these options.

    The returned trace may hold more than asked (other MLP layers, all values instead of mapped ones); every
    lens reads what it needs (`direct_effects` takes kept values or matching mapped values alike).
    """
    cache = active_cache()
    if cache is None:
        return trace_vit(visual, images, mlp_layers=mlp_layers, keep_values=keep_values, value_maps=value_maps)
    layers = frozenset(int(layer) for layer in mlp_layers)
    key = (model_key(visual), images_key(images))
    found = cache.get(key, lambda trace: _covers(trace, layers, keep_values, value_maps))
    if found is not None and _covers(found, layers, keep_values, value_maps):
        return found
    if found is not None:  # one trace that serves the earlier request and this one
        layers |= set(found.mlp_post)
        keep_values = keep_values or found.values is not None
        if value_maps is None and found.values is None:
            value_maps = found.value_maps
    trace = trace_vit(visual, images, mlp_layers=sorted(layers), keep_values=keep_values, value_maps=value_maps)
    cache.put(key, trace)
    return trace
