"""What a visitor may ask of a server: the tabs' side of `core.guards`, in one place.

`core.guards` decides (for the command line too): in public mode no input names a server path, only allow-listed
models load, random weights are refused, and sizes are bounded; a local user keeps every feature, within the
roots given with `--allow-path` if any; refusals never depend on whether a path exists. This module adds what is
particular to the tabs: an empty model box means the default model, the bases box takes ORG/NAME@SHA, and the
bounds of what one request in a browser may ask (a few typed texts, a gallery of uploads).
"""

from __future__ import annotations

from pathlib import Path

from core import guards
from core.errors import ConfigError

# What one request of a tab may ask, on any server (the command line takes more).
MAX_TEXTS = 32  # typed texts
MAX_TEXT_CHARS = 300
MAX_UPLOADS = 64  # images uploaded as a set or a gallery
MAX_WORLD_SCENES = 5_000
# Text fields: each is checked for length before it is read (the server also caps a request's body, ui_common).
MAX_LINE_CHARS = 300  # a one-line field: a model spec, bases, a class name, a list of layers
MAX_PATH_CHARS = 4_096  # a server path (local mode)
MAX_BLOCK_WORD_CHARS = 100  # one word or phrase of a block list


def check_length(value, what: str, limit: int = MAX_LINE_CHARS) -> str:
    """A text field as a string of at most `limit` characters (empty for None), else a one-line refusal."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text.")
    if len(value) > limit:
        from core.errors import LimitError

        raise LimitError(f"{what} is too long: {len(value):,} characters, at most {limit:,}.")
    return value


def check_block_list(raw) -> tuple[str, ...]:
    """Words an adversarial run must not use, comma-separated: bounded in characters, words and word length
    (core.guards `block_chars`, `block_words`), duplicates dropped, order kept."""
    raw = check_length(raw, "The block list", guards.limit("block_chars"))
    words = tuple(dict.fromkeys(word.strip() for word in raw.split(",") if word.strip()))
    guards.check_count(len(words), "block_words", "The block list", minimum=0)
    long = next((word for word in words if len(word) > MAX_BLOCK_WORD_CHARS), None)
    if long is not None:
        raise ConfigError(f"Each word of the block list must be at most {MAX_BLOCK_WORD_CHARS} characters; one has "
                          f"{len(long)}.")
    return words


def check_model(spec: str | None) -> str:
    """The spec to load (the default when empty), if this server may load it (core.guards)."""
    from core import settings

    spec = (spec or "").strip() or settings.default_model()
    if len(spec) > 300:
        raise ConfigError("That model spec is too long.")
    return guards.check_model_allowed(spec)


def check_server_path(value: str | None, what: str) -> Path | None:
    """A server path typed by a local user (None when empty); refused in public mode and outside --allow-path."""
    value = check_length(value, what, MAX_PATH_CHARS).strip()
    if not value:
        return None
    return guards.check_user_path(value, what, hint="upload files instead").expanduser()


def check_bases_source(value: str | None) -> str | None:
    """Bases to read: empty (the configured ones), ORG/NAME@SHA, or (local mode) a folder."""
    from core import settings
    from core.links.codec import BASES

    value = check_length(value, "The bases").strip()
    if not value or BASES.fullmatch(value):
        return value or None
    if settings.public():
        raise ConfigError("On this public server, bases are the configured ones or ORG/NAME@SHA from the Hub "
                          "(a 40-hex commit).")
    return str(check_server_path(value, "bases folder"))


def check_count(value, name: str, low: int, high: int) -> int:
    """An integer in [low, high] from a UI number (which may arrive as a float or None)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number from {low} to {high}.") from None
    if not number.is_integer() or not low <= number <= high:
        from core import settings

        where = " on this public server" if settings.public() else ""  # public bounds are tighter: say why
        raise ConfigError(f"{name} must be a whole number from {low} to {high}{where}, got {value!r}.")
    return int(number)


def pool_limits() -> tuple[int, int]:
    """(texts, bytes) a text pool may hold on this server (core.guards: smaller in public mode)."""
    return guards.limit("texts"), guards.limit("text_pool_bytes")
