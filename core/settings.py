"""The one place that reads the environment, and the run-wide choices made from it.

Every `CLIPSCOPE_*` variable, `SPACE_ID`, `HF_HUB_OFFLINE` and `HF_ENDPOINT` is read here and nowhere else, on each
call (cheap), so a test's `monkeypatch.setenv` or a Space variable takes effect without re-imports. Entry points
(the app, a tab run alone, the command line) may fix a value for the whole process with `configure(...)`; that
wins over the environment. Importing this module has no side effects and pulls in nothing heavy.

| variable | meaning | default |
|---|---|---|
| `CLIPSCOPE_MODEL` | default model spec | `toy` |
| `CLIPSCOPE_MODELS` | models a public server may load, separated by `,` | the default model and `toy` |
| `CLIPSCOPE_BASES` | where bases come from, `SPEC=SOURCE;...` | shipped defaults |
| `CLIPSCOPE_CACHE` | cache folder | `~/.cache/clipscope` |
| `CLIPSCOPE_MODEL_CONFIGS` | extra open_clip config files/folders, separated by `os.pathsep` | none |
| `CLIPSCOPE_DEVICE` | `auto` (CUDA when available), `cpu`, `cuda`, `cuda:N` | `auto` |
| `CLIPSCOPE_PUBLIC` | `1` forces public mode | off, unless on a Space or a non-loopback address |
| `CLIPSCOPE_ALLOW_PATHS` | folders a local server may read from, separated by `os.pathsep` | any path |
| `SPACE_ID` | set by Hugging Face Spaces: public mode | unset |
| `HF_HUB_OFFLINE`, `HF_ENDPOINT` | Hugging Face's own | online, huggingface.co |
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path
from typing import Any

TOY_SPEC = "toy"
_TRUE = ("1", "true", "yes", "on")
_overrides: dict[str, Any] = {}


def configure(**values: Any) -> None:
    """Fix settings for this process (entry points only): `public`, `device`, `default_model`, `allowed_paths`.

    A value of None removes an earlier override.
    """
    known = {"public", "device", "default_model", "allowed_paths"}
    unknown = set(values) - known
    if unknown:
        raise TypeError(f"unknown settings: {sorted(unknown)}; known: {sorted(known)}")
    for key, value in values.items():
        if value is None:
            _overrides.pop(key, None)
        else:
            _overrides[key] = value


@contextlib.contextmanager
def overridden(**values: Any):
    """`configure(**values)` for the duration of a `with` block (None leaves a setting as it was)."""
    previous = {key: _overrides.get(key) for key in values}
    configure(**{key: value for key, value in values.items() if value is not None})
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                _overrides.pop(key, None)
            else:
                _overrides[key] = value


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _flag(name: str) -> bool:
    return _env(name).lower() in _TRUE


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(part).expanduser() for part in value.split(os.pathsep) if part.strip())


def default_model() -> str:
    """The model the app and the commands start on."""
    return _overrides.get("default_model") or _env("CLIPSCOPE_MODEL") or TOY_SPEC


def cache_dir() -> Path:
    return Path(_env("CLIPSCOPE_CACHE") or "~/.cache/clipscope").expanduser()


def model_config_paths() -> tuple[Path, ...]:
    return _paths(_env("CLIPSCOPE_MODEL_CONFIGS"))


def bases_sources() -> str:
    """The raw `CLIPSCOPE_BASES` value (parsed by core.artifacts.hub)."""
    return _env("CLIPSCOPE_BASES")


def hub_offline() -> bool:
    return _flag("HF_HUB_OFFLINE")


def hub_endpoint() -> str:
    return _env("HF_ENDPOINT") or "https://huggingface.co"


def space_id() -> str | None:
    return _env("SPACE_ID") or None


def device() -> str:
    """The requested device name: `auto`, `cpu`, `cuda` or `cuda:N` (see `resolve_device`)."""
    return str(_overrides.get("device") or _env("CLIPSCOPE_DEVICE") or "auto")


def resolve_device(name: str | None = None):
    """A torch.device for `name` (default: `device()`): `auto` is CUDA when available, else the CPU."""
    import torch

    from core.errors import ConfigError

    name = (name or device()).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this machine has no CUDA GPU; use --device cpu or auto")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return chosen


def is_loopback(host: str | None) -> bool:
    """True for localhost and the loopback ranges; False for 0.0.0.0, a LAN or public address, or a name."""
    if not host:
        return True  # Gradio's default is 127.0.0.1
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public() -> bool:
    """Public mode: on a Space, on a non-loopback address (entry points call `configure(public=...)`), or forced."""
    return bool(_overrides.get("public")) or _flag("CLIPSCOPE_PUBLIC") or space_id() is not None


def allowed_models() -> tuple[str, ...]:
    """The models a public server may load."""
    listed = [part.strip() for part in _env("CLIPSCOPE_MODELS").split(",") if part.strip()]
    return tuple(dict.fromkeys(listed or [default_model(), TOY_SPEC]))


def allowed_paths() -> tuple[Path, ...]:
    """Folders a local user limited the server to (`--allow-path`); empty means any path (never in public mode)."""
    override = _overrides.get("allowed_paths")
    if override is not None:
        return tuple(Path(p).expanduser() for p in override)
    return _paths(_env("CLIPSCOPE_ALLOW_PATHS"))


def server_host() -> str:
    """Where a server listens unless told otherwise (Gradio's own variable)."""
    return _env("GRADIO_SERVER_NAME") or "127.0.0.1"


def server_port() -> int:
    from core.errors import ConfigError

    value = _env("GRADIO_SERVER_PORT") or "7860"
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"GRADIO_SERVER_PORT={value!r} is not a port number")
    return int(value)


def upload_dir() -> Path:
    """Where Gradio keeps uploads and the files it serves (its own GRADIO_TEMP_DIR; default <temp>/gradio)."""
    import tempfile

    return Path(_env("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def torchrun() -> dict[str, int] | None:
    """rank, world_size, local_rank, restart (TORCHELASTIC_RESTART_COUNT) when torchrun started this process."""
    if not (_env("RANK") and _env("WORLD_SIZE")):
        return None
    return {"rank": int(_env("RANK")), "world_size": int(_env("WORLD_SIZE")),
            "local_rank": int(_env("LOCAL_RANK") or 0), "restart": int(_env("TORCHELASTIC_RESTART_COUNT") or 0)}
