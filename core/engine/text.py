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

import torch
from safetensors.torch import load_file, save_file

from core import settings
from core.errors import TextError
from core.engine.models import ClipBundle


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
    """Read a text pool file (one text per line): (texts, problems with skipped lines)."""
    path = Path(path)
    if not path.is_file():
        raise TextError(f"text pool file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise TextError(f"text pool {path} is not UTF-8 text: {err}") from err
    texts, problems = clean_texts(lines)
    if not texts:
        raise TextError(f"text pool {path} has no non-empty lines.")
    return texts, problems


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TextError("expected a list of texts, got a single string.")
    if len(texts) == 0:
        raise TextError("no texts given.")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise TextError(f"text {index} is empty; give non-empty texts.")


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
    if use_cache and path.is_file():
        try:
            cached = load_file(path)["embeddings"]
            if cached.shape[0] == len(texts):
                return cached.to(bundle.device)
        except Exception:  # a broken cache entry is recomputed, never trusted
            pass
    embeddings = _encode(bundle, texts, batch_size, progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"embeddings": embeddings.cpu().contiguous()}, tmp, metadata={"model": bundle.info.spec, "count": str(len(texts))})
        os.replace(tmp, path)
    return embeddings


def format_templates(classnames: Sequence[str], templates: Sequence[str | Callable]) -> list[str]:
    """All prompts, class-major: for each class, every template filled in."""
    prompts = []
    for name in classnames:
        for template in templates:
            prompts.append(template(name) if callable(template) else template.format(name))
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
