"""ZeroGPU: `@gpu` is Hugging Face's `spaces.GPU` on a ZeroGPU Space and a no-op elsewhere.

On ZeroGPU a handler gets a GPU only while it runs, for at most `duration` seconds; asking for less gets a
visitor through the queue sooner, so `request_seconds` sizes it from the request (images, texts, scenes). The
handler runs in a worker process: what it returns must be CPU tensors, PIL images or plain values (`to_cpu`).

`spaces` must be imported before torch touches CUDA, so the app and each tab import this module first. Our own
`spaces/` folder has no `__init__.py`; without Hugging Face's package, `import spaces` can still succeed as an
empty namespace package, so the check is for `spaces.GPU`, not for a successful import.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

try:
    import spaces as _spaces  # Hugging Face's package (present on Spaces)
except ImportError:  # pragma: no cover - depends on the machine
    _spaces = None

ZERO_GPU = _spaces if _spaces is not None and hasattr(_spaces, "GPU") else None
# The package is installed in many places; this is whether we run on a ZeroGPU Space (the package's own setting).
ON_ZERO_GPU = bool(ZERO_GPU is not None and getattr(getattr(getattr(ZERO_GPU, "config", None), "Config", None),
                                                    "zero_gpu", False))
MAX_SECONDS = 300


def request_seconds(*, images: int = 0, texts: int = 0, scenes: int = 0, base: float = 15.0,
                    per_image: float = 0.25, per_text: float = 0.02, per_scene: float = 0.05) -> int:
    """GPU seconds to ask for: a base (model on the device, one forward pass) plus the request's size; <= 300."""
    seconds = base + per_image * max(images, 0) + per_text * max(texts, 0) + per_scene * max(scenes, 0)
    return int(min(MAX_SECONDS, max(1.0, seconds)))


def to_cpu(value: Any) -> Any:
    """Tensors moved to the CPU inside tuples, lists, dicts and dataclasses (other values unchanged)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: to_cpu(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


def gpu(fn: Callable | None = None, *, duration: int | Callable[..., int] | None = None, **kwargs):
    """Decorate a handler that may use the GPU; `duration` is seconds or a function of the handler's arguments."""
    def decorate(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def on_device(*args, **kw):
            return to_cpu(handler(*args, **kw))

        on_device.gpu_duration = duration  # what ZeroGPU is asked for (tests and the docs read it)
        if ZERO_GPU is None:
            return on_device
        return ZERO_GPU.GPU(on_device, duration=duration, **kwargs) if duration is not None else ZERO_GPU.GPU(on_device, **kwargs)

    return decorate(fn) if fn is not None else decorate
