"""Checks where inputs enter: which models may load, which server paths may be read, how large things may be.

The command line and the Gradio tabs call these before any work, so a refusal costs nothing and never
depends on whether a server path exists. Every refusal is a `CoreError` subclass with a one-line message.

Public mode (`core.settings.public()`: on a Space, on a non-loopback address, or forced with --public):
- models: only the allow-list (`CLIPSCOPE_MODELS`, default: the default model and `toy`); random weights
  (`ARCH/none`) never, a local checkpoint file only when the operator listed exactly that spec;
- server paths: none at all (text pools are uploads or shipped pools, images are uploads, examples or
  generated scenes, bases come from the Hub or are the shipped ones); the check never touches the file system;
- sizes: the PUBLIC_* bounds below.
A local user keeps every feature; paths are limited to the roots given with --allow-path
(`CLIPSCOPE_ALLOW_PATHS`) when any are given, with one message for existing and missing paths outside them.
The MAX_* bounds hold everywhere: they stop a typo such as `--n 1000000000000` before it hangs the machine.
"""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path

from core import settings
from core.errors import ConfigError, LimitError, ModelNotAllowedError, OutputError, PathNotAllowedError

# ---------------------------------------------------------------- bounds (local, public)

MAX_TEXTS, PUBLIC_MAX_TEXTS = 1_000_000, 20_000  # texts in a pool
MAX_TEXT_CHARS, PUBLIC_MAX_TEXT_CHARS = 10_000, 500  # characters in one text (CLIP reads 77 tokens)
MAX_TEXT_POOL_BYTES, PUBLIC_MAX_TEXT_POOL_BYTES = 256_000_000, 2_000_000
MAX_TEMPLATES, PUBLIC_MAX_TEMPLATES = 1_000, 100  # zero-shot templates per class
MAX_GALLERY, PUBLIC_MAX_GALLERY = 1_000_000, 500  # images in a gallery or image set
MAX_SCENES, PUBLIC_MAX_SCENES = 200_000, 2_000  # generated world scenes per request
MAX_SCENE_SIZE, PUBLIC_MAX_SCENE_SIZE = 1_024, 256  # side of a generated scene, pixels
MAX_IMAGE_PIXELS, PUBLIC_MAX_IMAGE_PIXELS = 50_000_000, 16_000_000  # an image to decode (checked before decoding)
MAX_IMAGE_BYTES, PUBLIC_MAX_IMAGE_BYTES = 200_000_000, 20_000_000  # an image file
MAX_BATCH_SIZE = 4_096  # images per forward pass
MAX_TRIALS = 1_000  # random head sets (spurious)
MAX_TOP = 10_000  # results to print or return (k, --top, --show)
MAX_BLOCK_WORDS, PUBLIC_MAX_BLOCK_WORDS = 10_000, 200  # words of an adversarial block list
MAX_BLOCK_CHARS, PUBLIC_MAX_BLOCK_CHARS = 200_000, 10_000  # characters of a block list as typed
# Artifacts (core.artifacts.store): what a manifest and its data files may be.
MAX_MANIFEST_BYTES = 16_000_000
MAX_JSON_BYTES = 512_000_000  # extra/<name>.json (a text pool of a million texts fits)
MAX_ARTIFACT_FILE_BYTES = 8_000_000_000

_LIMITS = {  # name: (local, public, unit)
    "texts": (MAX_TEXTS, PUBLIC_MAX_TEXTS, "texts"),
    "text_chars": (MAX_TEXT_CHARS, PUBLIC_MAX_TEXT_CHARS, "characters"),
    "text_pool_bytes": (MAX_TEXT_POOL_BYTES, PUBLIC_MAX_TEXT_POOL_BYTES, "bytes"),
    "templates": (MAX_TEMPLATES, PUBLIC_MAX_TEMPLATES, "templates"),
    "gallery": (MAX_GALLERY, PUBLIC_MAX_GALLERY, "images"),
    "scenes": (MAX_SCENES, PUBLIC_MAX_SCENES, "scenes"),
    "scene_size": (MAX_SCENE_SIZE, PUBLIC_MAX_SCENE_SIZE, "pixels"),
    "image_pixels": (MAX_IMAGE_PIXELS, PUBLIC_MAX_IMAGE_PIXELS, "pixels"),
    "image_bytes": (MAX_IMAGE_BYTES, PUBLIC_MAX_IMAGE_BYTES, "bytes"),
    "batch_size": (MAX_BATCH_SIZE, MAX_BATCH_SIZE, "images"),
    "trials": (MAX_TRIALS, MAX_TRIALS, "trials"),
    "top": (MAX_TOP, MAX_TOP, "results"),
    "block_words": (MAX_BLOCK_WORDS, PUBLIC_MAX_BLOCK_WORDS, "words"),
    "block_chars": (MAX_BLOCK_CHARS, PUBLIC_MAX_BLOCK_CHARS, "characters"),
}


def limit(name: str) -> int:
    """The bound called `name` on this server now (the public one in public mode)."""
    local, public, _ = _LIMITS[name]
    return public if settings.public() else local


def check_count(value, name: str, what: str, *, minimum: int = 1) -> int:
    """`value` as an int in [minimum, limit(name)], else a ConfigError/LimitError saying which bound.

    `what` names the input in the message, e.g. "--n (scenes)".
    """
    if isinstance(value, float) and value.is_integer():  # a UI number field gives 5.0
        value = int(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)  # int, numpy integers; not str, float or bool
    except TypeError:
        raise ConfigError(f"{what} must be a whole number, got {value!r}"[:300]) from None
    if value < minimum:
        raise ConfigError(f"{what} must be at least {minimum}, got {value}")
    bound = limit(name)
    if value > bound:
        raise LimitError(f"{what} is {value:,}, over the limit of {bound:,} {_LIMITS[name][2]}{_where()}")
    return value


def check_bytes(size: int, name: str, what: str) -> None:
    """Refuse a file of `size` bytes over the bound `name` (e.g. "image_bytes")."""
    bound = limit(name)
    if size > bound:
        raise LimitError(f"{what} is {size / 1e6:,.1f} MB, over the limit of {bound / 1e6:,.1f} MB{_where()}")


def _where() -> str:
    return " on this public server" if settings.public() else " (core.guards)"


# ---------------------------------------------------------------- models

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def spec_kind(spec: str) -> str:
    """What a model spec names, from its text alone: toy, hf-hub, random, file, tag or arch (no weights)."""
    spec = (spec or "").strip()
    if spec == settings.TOY_SPEC:
        return "toy"
    if spec.startswith("hf-hub:"):
        return "hf-hub"
    if "/" not in spec:
        return "arch"
    rest = spec.split("/", 1)[1]
    if rest == "none":
        return "random"
    if rest.endswith(CHECKPOINT_SUFFIXES) or os.sep in rest or rest.startswith("."):
        return "file"
    return "tag"


def check_model_allowed(spec: str) -> str:
    """The stripped spec if this server may load it (see the module docstring), else ModelNotAllowedError.

    Never touches the file system in public mode; locally a checkpoint path must lie under --allow-path roots.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a model spec must be a string, got {type(spec).__name__}")
    spec = spec.strip()
    kind = spec_kind(spec)
    if not settings.public():
        if kind == "file":
            check_user_path(spec.split("/", 1)[1], "checkpoint file")
        return spec
    allowed = settings.allowed_models()
    choose = f"choose one of: {', '.join(allowed)}"
    if kind == "random":
        raise ModelNotAllowedError(f"random-weight models (ARCH/none) are not served on this public server; {choose}")
    if spec not in allowed:
        what = "local checkpoint files are" if kind == "file" else f"model {spec[:120]!r} is"
        raise ModelNotAllowedError(f"{what} not available on this public server; {choose}")
    return spec


# ---------------------------------------------------------------- server paths

def check_user_path(path, kind: str, *, hint: str = "") -> Path:
    """A path a user typed, as a Path, if this server may read or write it; else PathNotAllowedError.

    Public mode refuses every path without looking at it. Locally, with --allow-path roots, the path
    (symlinks resolved) must lie under one of them; the message is the same whether it exists or not.
    `kind` names the input ("image file", "text pool", ...); `hint` says what to do instead in public mode.
    """
    text = os.fspath(path) if isinstance(path, os.PathLike) else path
    if isinstance(text, bytes) or not isinstance(text, str):
        raise ConfigError(f"{kind}: expected a path, got {type(path).__name__}")
    if not text.strip():
        raise ConfigError(f"{kind}: empty path")
    if "\0" in text:
        raise ConfigError(f"{kind}: the path contains a NUL character")
    if settings.public():
        raise PathNotAllowedError(f"{kind}: this public server does not read or write server paths"
                                  + (f"; {hint}" if hint else ""))
    roots = settings.allowed_paths()
    if roots and not _inside_any(text, roots):
        raise PathNotAllowedError(f"{kind} {text[:200]!r} is outside the folders this server may use "
                                  f"(--allow-path {' '.join(str(root) for root in roots)})")
    return Path(text)


def _inside_any(text: str, roots) -> bool:
    try:
        resolved = Path(os.path.realpath(os.path.expanduser(text)))
    except (OSError, ValueError):
        return False
    for root in roots:
        try:
            if resolved.is_relative_to(os.path.realpath(root)):
                return True
        except (OSError, ValueError):
            continue
    return False


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(?:/[A-Za-z0-9][\w.-]{0,95})?")


def check_model_source(value, kind: str) -> tuple[str, str]:
    """("folder", path) or ("hub", repo id) for a diffusers or transformers model a user named (a Stable
    Diffusion checkpoint, --llm). A path (absolute, ~, ./, ../, more than one '/', or not a valid repo id) goes
    through `check_user_path`: refused in public mode, and outside the --allow-path roots with one message
    whether it exists or not. A repo id ("org/name", "gpt2") is a Hub id, except that locally, where it names
    an existing folder inside the roots (or anywhere when no roots are given), that folder is used. In public
    mode or with roots, a repo id outside them is never looked up on disk: `hub_only()` says to download it
    by id alone, so a same-named folder cannot be probed or read.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{kind}: expected a Hub repo id or a folder, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ConfigError(f"{kind}: empty; give a Hub repo id (org/name) or a local folder")
    if text.startswith(("/", ".", "~")) or "\\" in text or not _HUB_ID.fullmatch(text):
        return "folder", str(check_user_path(os.path.expanduser(text) if not settings.public() else text, kind))
    if settings.public():
        return "hub", text
    roots = settings.allowed_paths()
    if roots and not _inside_any(text, roots):
        return "hub", text
    return ("folder" if os.path.isdir(text) else "hub"), text


def hub_only() -> bool:
    """True where a Hub id must be resolved by id alone, never as a local folder of the same name."""
    return settings.public() or bool(settings.allowed_paths())


def check_output_path(path, kind: str = "output folder", *, folder: bool = True) -> Path:
    """A path a user named for output, checked without creating anything: allowed (check_user_path), not
    an existing entry of the wrong type, and under a writable folder (the first part of it that exists)."""
    path = check_user_path(path, kind)
    if os.path.lexists(path):
        if folder and not path.is_dir():
            raise OutputError(f"{kind} {path} exists and is not a folder; choose another")
        if not folder and path.is_dir():
            raise OutputError(f"{kind} {path} is a folder; give a file name")
    parent = path.absolute()
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    target = path if os.path.lexists(path) else parent
    if not target.is_dir() and target != path:
        raise OutputError(f"cannot create {kind} {path}: {target} is a file, not a folder")
    if not os.access(target if target.is_dir() else target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {kind} {path}: permission denied")
    return path


def output_folder(path, kind: str = "output folder") -> Path:
    """Create (if needed) a folder that a user named for output, or say in one line why it cannot be."""
    path = check_user_path(path, kind)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{kind} {path} exists and is not a folder; choose another")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot create {kind} {path}: part of that path is a file, not a folder") from None
    except OSError as err:
        raise OutputError(f"cannot create {kind} {path}: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to {kind} {path}: permission denied")
    return path
