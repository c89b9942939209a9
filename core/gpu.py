"""ZeroGPU shim: `@gpu` is Hugging Face's `spaces.GPU` on a ZeroGPU Space and a no-op elsewhere.

Our own `spaces/` folder has no `__init__.py`, so without the Hugging Face package installed
`import spaces` may still succeed as an empty namespace package; checking for `GPU` tells the two apart.
"""

from __future__ import annotations

from typing import Callable


def gpu(fn: Callable | None = None, **kwargs):
    try:
        import spaces  # Hugging Face's package, present on Spaces
    except ImportError:
        spaces = None
    decorator = spaces.GPU(**kwargs) if spaces is not None and hasattr(spaces, "GPU") else (lambda f: f)
    return decorator(fn) if fn is not None else decorator
