"""What a visitor may ask of a server: the tabs' checks, in one place.

In public mode (`core.settings.public()`: a Space, a non-loopback address, or forced) no input names a server
path, only allow-listed models load, random weights are refused and sizes are bounded. A local user keeps every
feature, within the roots given with `--allow-path` if any. Refusals never say whether a path exists: they are
decided before the file system is touched.
"""

from __future__ import annotations

from pathlib import Path

from core import settings
from core.errors import ConfigError

# Bounds for every visitor (a local user may raise them through the command line instead).
MAX_TEXTS = 32
MAX_TEXT_CHARS = 300
MAX_UPLOADS = 64
MAX_POOL_TEXTS = 50_000
MAX_POOL_BYTES = 5_000_000
MAX_WORLD_SCENES = 5_000


def check_model(spec: str | None) -> str:
    """The spec to load (the default when empty); in public mode only an allow-listed, trained model."""
    spec = (spec or "").strip() or settings.default_model()
    if len(spec) > 300:
        raise ConfigError("That model spec is too long.")
    if settings.public():
        allowed = settings.allowed_models()
        if spec not in allowed:
            raise ConfigError(f"Model {spec[:80]!r} is not offered on this public server; choose one of: "
                              f"{', '.join(allowed)}.")
        if spec.endswith("/none"):
            raise ConfigError("Random-weight models are not offered on this public server.")
    return spec


def check_server_path(value: str | None, what: str) -> Path | None:
    """A server path typed by a local user (None when empty); refused in public mode and outside --allow-path."""
    value = (value or "").strip()
    if not value:
        return None
    if settings.public():
        raise ConfigError(f"This public server does not read {what} from its own disk: upload files instead.")
    path = Path(value).expanduser()
    roots = settings.allowed_paths()
    if roots:
        resolved = path.resolve()
        if not any(resolved == root.resolve() or root.resolve() in resolved.parents for root in roots):
            raise ConfigError(f"{what.capitalize()} must be under the folders this server was started with "
                              "(--allow-path).")
    return path


def check_bases_source(value: str | None) -> str | None:
    """Bases to read: empty (the configured ones), ORG/NAME@SHA, or (local mode) a folder."""
    from core.links.codec import BASES

    value = (value or "").strip()
    if not value or BASES.fullmatch(value):
        return value or None
    if settings.public():
        raise ConfigError("On this public server, bases are the configured ones or ORG/NAME@SHA from the Hub "
                          "(a 40-hex commit).")
    return str(check_server_path(value, "bases"))


def check_count(value, name: str, low: int, high: int) -> int:
    """An integer in [low, high] from a UI number (which may arrive as a float or None)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number from {low} to {high}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)
