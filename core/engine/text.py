"""The text side: embedding text pools (cached on disk), zero-shot classifiers, component scores.

Text embeddings are L2-normalised float32 [text, d_out]. The cache lives under
$CLIPSCOPE_CACHE (default ~/.cache/clipscope)/text/<model key>/<sha256 of the texts>.safetensors,
keyed by the model's identity (spec and weights file hash), a fingerprint of the text-side weights
in use (a model trained or edited in memory never gets the file's embeddings) and the exact texts,
so a changed pool or model never reuses stale embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Callable, Iterable, Sequence

from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save

from core import caches, guards, settings
from core.errors import TextError
from core.engine.models import ClipBundle
from core.paths import TOY_TEXTS


def cache_dir() -> Path:
    return settings.cache_dir()


def texts_sha256(texts: Sequence[str]) -> str:
    """Hash of a text pool: its lines joined by newlines."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def model_key(bundle: ClipBundle) -> str:
    """Cache key: the model's identity and a fingerprint of the text-side weights actually in use.

    The identity alone (spec, weights file hash) describes the file a model was loaded from, not
    a model trained or edited in memory under that identity, which must never be served the
    file's cached embeddings.
    """
    identity = json.dumps(bundle.info.identity(), sort_keys=True)
    key = f"{identity}\n{weights_fingerprint(bundle.model)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]


# model -> (every text-side tensor's name, storage, version counter, shape, dtype; fingerprint). In-place
# updates (optimiser steps, load_state_dict, copy_) bump a tensor's version counter, and entries die
# with their model, so a fingerprint never outlives the weights it describes.
_FINGERPRINTS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _text_side_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and buffers outside the image tower (text embeddings depend on nothing else)."""
    return [(name, tensor) for name, tensor in model.state_dict(keep_vars=True).items()
            if not name.startswith("visual.")]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's text-side parameters and buffers (names, shapes, dtypes, values)."""
    tensors = _text_side_tensors(model)
    try:
        state = tuple((name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype)) for name, t in tensors)
    except RuntimeError:  # inference tensors have no version counter: hash every time
        state = None
    known = _FINGERPRINTS.get(model)
    if state is not None and known is not None and known[0] == state:
        return known[1]
    digest = hashlib.sha256()
    for name, tensor in tensors:
        data = tensor.detach()
        digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
        digest.update(data.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    value = digest.hexdigest()
    if state is not None:
        _FINGERPRINTS[model] = (state, value)
    return value


def clean_texts(texts: Iterable[str]) -> tuple[list[str], list[str]]:
    """Strip lines; drop empty and duplicate ones. Returns (kept, problems) so callers can report."""
    kept, seen, problems = [], set(), []
    for number, text in enumerate(texts, 1):
        stripped = text.strip()
        if not stripped:
            problems.append(f"line {number}: empty, skipped")
        elif stripped in seen:
            problems.append(f"line {number}: duplicate of an earlier line ({stripped[:40]!r}), skipped")
        else:
            seen.add(stripped)
            kept.append(stripped)
    return kept, problems


def read_text_pool(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Read a text pool file (one text per line): (texts, problems with skipped lines).

    The file must be a regular UTF-8 file within the size bounds of core.guards (a FIFO or a device is
    refused without being opened for long). Callers check user-named paths with `core.guards` first,
    or use `resolve_text_pool`.
    """
    path = Path(path)
    raw = _read_regular_file(path, "text pool", "text_pool_bytes")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TextError(f"text pool {path} is not UTF-8 text (byte {err.start} cannot be decoded)") from None
    texts, problems = clean_texts(lines)
    if not texts:
        raise TextError(f"text pool {path} has no non-empty lines.")
    guards.check_count(len(texts), "texts", f"text pool {path.name}")
    check_texts(texts, what=f"text pool {path.name}: line")
    return texts, problems


def _read_regular_file(path: Path, what: str, bound: str) -> bytes:
    """The bytes of a regular file within the core.guards bound `bound`; a FIFO, device or folder is refused
    at once (opened non-blocking, checked with fstat before reading)."""
    import stat

    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise TextError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise TextError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise TextError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    try:
        info = os.fstat(handle)
        if stat.S_ISDIR(info.st_mode):
            raise TextError(f"{what} {path} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise TextError(f"{what} {path} is not a regular file")
        guards.check_bytes(info.st_size, bound, f"{what} {path.name}")
        with os.fdopen(handle, "rb", closefd=True) as stream:
            handle = None
            data = stream.read(guards.limit(bound) + 1)
        guards.check_bytes(len(data), bound, f"{what} {path.name}")
        return data
    finally:
        if handle is not None:
            os.close(handle)


@dataclass(frozen=True)
class TextPool:
    """A text pool with the name results record for it and the lines that were skipped."""

    texts: list[str]
    name: str
    problems: list[str]


def named_text_pools() -> dict[str, Path]:
    """Pools that are named rather than given as a file: `toy` is the toy world's vocabulary."""
    return {"toy": TOY_TEXTS}


def resolve_text_pool(value: str | os.PathLike, *, name: str | None = None) -> TextPool:
    """The pool a user named: a shipped pool's name (`toy`) or a text file (checked by core.guards first).

    The one resolver for every command and tab, so `toy` means the same everywhere.
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip():
        raise TextError("no text pool given: name a shipped pool (" + ", ".join(named_text_pools())
                        + ") or give a text file, one text per line")
    shipped = named_text_pools().get(text.strip())
    if shipped is not None:
        texts, problems = read_text_pool(shipped)
        return TextPool(texts, name or text.strip(), problems)
    path = guards.check_user_path(text, "text pool", hint="upload a text file or choose a shipped pool ("
                                  + ", ".join(named_text_pools()) + ")")
    texts, problems = read_text_pool(path)
    return TextPool(texts, name or path.name, problems)


def check_texts(texts: Sequence[str], *, what: str = "text") -> list[str]:
    """Refuse a single string, an empty list, empty or non-str texts, text that is not valid Unicode (a
    command-line argument in another encoding) and texts over the length bound of core.guards."""
    if isinstance(texts, str):
        raise TextError("expected a list of texts, got a single string.")
    if len(texts) == 0:
        raise TextError("no texts given.")
    longest = guards.limit("text_chars")
    for index, text in enumerate(texts):
        label = f"{what} {index + 1}" if what.endswith("line") else f"{what} {index}"
        if not isinstance(text, str) or not text.strip():
            raise TextError(f"{label} is empty; give non-empty texts.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise TextError(f"{label} is not valid UTF-8 text (an argument in another encoding?): "
                            f"{text.encode('utf-8', 'backslashreplace').decode()[:60]!r}") from None
        if len(text) > longest:
            raise TextError(f"{label} has {len(text):,} characters, over the limit of {longest:,}")
    return list(texts)


_check_texts = check_texts


def check_template(template: str) -> str:
    """A zero-shot template: a str with exactly one `{}` for the class name and no other fields
    (`{0}`, `{x}` or a lone brace would fail, or fill in something else, when formatted)."""
    import string

    if not isinstance(template, str):
        raise TextError(f"a template must be a string, got {type(template).__name__}")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as err:
        raise TextError(f"template {template[:80]!r} is malformed ({err}); write a literal brace as "
                        "{{ or }}") from None
    if fields != [("", "", None)]:
        raise TextError(f"template {template[:80]!r} must contain exactly one {{}} (for the class name) and no "
                        "other {...} fields; write a literal brace as {{ or }}")
    return template


@torch.inference_mode()
def _encode(bundle: ClipBundle, texts: Sequence[str], batch_size: int, progress: Callable | None) -> torch.Tensor:
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in progress(starts) if progress else starts:
        tokens = bundle.tokenizer(list(texts[start : start + batch_size])).to(bundle.device)
        chunks.append(torch.nn.functional.normalize(bundle.model.encode_text(tokens).float(), dim=-1))
    return torch.cat(chunks)


def encode_texts(
    bundle: ClipBundle,
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    use_cache: bool = True,
    progress: Callable | None = None,
) -> torch.Tensor:
    """[text, d_out] unit-norm float32 text embeddings, computed in batches and cached on disk."""
    _check_texts(texts)
    path = cache_dir() / "text" / model_key(bundle) / f"{texts_sha256(texts)}.safetensors"
    if use_cache:
        try:
            if path.is_file():
                cached = load_file(path)["embeddings"]
                if cached.shape[0] == len(texts):
                    return cached.to(bundle.device)
        except Exception:  # an unreadable or broken cache entry is recomputed, never trusted
            pass
    embeddings = _encode(bundle, texts, batch_size, progress)
    if use_cache:  # optional: a cache that cannot be written (read-only, full) is skipped with a warning
        data = save({"embeddings": embeddings.cpu().contiguous()},
                    metadata={"model": bundle.info.spec, "count": str(len(texts))})
        caches.store(path, lambda tmp: Path(tmp).write_bytes(data), "text embeddings")
    return embeddings


def format_templates(classnames: Sequence[str], templates: Sequence[str | Callable]) -> list[str]:
    """All prompts, class-major: for each class, every template filled in."""
    prompts = []
    for name in classnames:
        for template in templates:
            prompts.append(template(name) if callable(template) else check_template(template).format(name))
    return prompts


def zero_shot_classifier(
    bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str | Callable], **kwargs
) -> torch.Tensor:
    """[class, d_out]: per class, the mean of its normalised template embeddings, renormalised."""
    _check_texts(list(classnames))
    if not templates:
        raise TextError("no templates given.")
    prompts = format_templates(classnames, templates)
    return prompt_classifier(bundle, [prompts[i : i + len(templates)] for i in range(0, len(prompts), len(templates))], **kwargs)


def prompt_classifier(bundle: ClipBundle, prompts: Sequence[Sequence[str]], **kwargs) -> torch.Tensor:
    """[class, d_out] from prompts [class][template] (every class the same number of prompts)."""
    counts = {len(p) for p in prompts}
    if len(counts) != 1 or 0 in counts:
        raise TextError("every class needs the same, non-zero number of prompts.")
    flat = [text for group in prompts for text in group]
    embeddings = encode_texts(bundle, flat, **kwargs).reshape(len(prompts), counts.pop(), -1)
    return torch.nn.functional.normalize(embeddings.mean(1), dim=-1)


def imagenet_classifier_texts() -> tuple[list[str], list[Callable]]:
    """open_clip's ImageNet class names and the 80 OpenAI templates."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    return list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES)


def component_scores(components: torch.Tensor, text_embeddings: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """<component, t/|t|> / |y|.

    components [batch, ..., d_out], text_embeddings [text, d_out], norm [batch] -> [batch, ..., text].
    Summed over all components of an image this is the cosine similarity of image and text.
    """
    units = torch.nn.functional.normalize(text_embeddings.to(components.dtype), dim=-1)
    scores = components @ units.T
    return scores / norm.reshape(-1, *([1] * (scores.ndim - 1)))
