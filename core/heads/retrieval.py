"""Property-based retrieval (paper, section 5.2): nearest gallery images by one head's contribution.

A head that encodes one property (colour, count, location...) maps images that share it to
nearby contributions, so ranking a gallery by the similarity of that head's (normalised)
contribution finds images sharing the property, whatever else they show. The gallery's head
contributions are computed once, streaming, and reused for every query and every head they hold;
an index can be saved to and loaded from a safetensors file.

    index = build_gallery(bundle, image_files("gallery/"), [(3, 1)], description="gallery/")
    nearest(index, query_contributions(bundle, image, [(3, 1)])[0], (3, 1), k=5)  # [(image, score)]
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from core.errors import BasesError, ConfigError, IndexRangeError
from core.heads.outputs import Head, Progress, check_heads, head_name, head_outputs_from_batches, image_head_contributions
from core.engine.images import iter_image_batches, load_image
from core.engine.models import ClipBundle
from core.engine.text import cache_dir

METRICS = ("cosine", "dot", "centered")


class GalleryIndex(NamedTuple):
    """Head contributions of a gallery: outputs [head, image, d_out] for `heads`, image i is paths[i]."""

    paths: list[str]
    heads: list[Head]
    outputs: torch.Tensor
    description: str
    convention: str
    model: dict


def build_gallery(
    bundle: ClipBundle,
    paths: Sequence,
    heads: Sequence[Head],
    *,
    description: str,
    convention: str = "paper",
    batch_size: int = 32,
    progress: Progress | None = None,
    skipped: list[str] | None = None,
) -> GalleryIndex:
    """Index the gallery images at `paths` for `heads`; unreadable files are left out (named in `skipped`)."""
    kept: list[int] = []

    def batches():
        for indices, pixels in iter_image_batches(paths, bundle.preprocess, batch_size, skipped=skipped):
            kept.extend(indices)
            yield pixels

    stream = batches()
    fitted = head_outputs_from_batches(bundle, progress(stream) if progress else stream, heads,
                                       capacity=len(paths), convention=convention)
    return GalleryIndex([str(paths[i]) for i in kept], fitted.heads, fitted.outputs, description, convention,
                        bundle.info.identity())


def query_contributions(bundle: ClipBundle, image: Image.Image | str, heads: Sequence[Head], *,
                        convention: str = "paper") -> torch.Tensor:
    """[head, d_out] the heads' normalised contributions for one query image."""
    heads = check_heads(heads, bundle.info)
    pil = image if isinstance(image, Image.Image) else load_image(image)
    contributions = image_head_contributions(bundle, bundle.preprocess(pil).unsqueeze(0), convention=convention)[0]
    return contributions[[l for l, _ in heads], [h for _, h in heads]].cpu().float()


def nearest(index: GalleryIndex, query: torch.Tensor, head: Head, *, k: int = 10,
            metric: str = "cosine") -> list[tuple[int, float]]:
    """The k gallery images whose `head` contribution is closest to `query` [d_out]: [(image, score)].

    metric "cosine" (default): cosine of the contribution vectors; "dot": the paper code's raw dot product;
    "centered": cosine after subtracting the gallery's mean contribution of the head (a head's constant
    offset, e.g. its share of the final LayerNorm's mean and bias, can dominate its raw cosines).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    head = tuple(head)
    if head not in index.heads:
        raise IndexRangeError(f"the gallery index holds heads {', '.join(map(head_name, index.heads))}, not "
                              f"{head_name(head)}; build it with that head")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    gallery = index.outputs[index.heads.index(head)]
    query = query.to(gallery)
    if query.shape != gallery.shape[1:]:
        raise ConfigError(f"query must be [d_out={gallery.shape[1]}], got {list(query.shape)}")
    if metric == "centered":
        mean = gallery.mean(0)
        gallery, query = gallery - mean, query - mean
    if metric != "dot":
        gallery, query = torch.nn.functional.normalize(gallery, dim=-1), torch.nn.functional.normalize(query, dim=0)
    values, indices = (gallery @ query).topk(min(k, len(gallery)))
    return [(int(i), float(v)) for v, i in zip(values, indices)]


# ---------------------------------------------------------------- saving and reusing an index

def save_gallery(index: GalleryIndex, path: str | os.PathLike) -> Path:
    """Write the index as one safetensors file (paths and provenance in its metadata), atomically."""
    from core.writes import atomic_write

    metadata = {"paths": json.dumps(index.paths), "heads": json.dumps(index.heads), "description": index.description,
                "convention": index.convention, "model": json.dumps(index.model, sort_keys=True)}
    outputs = {"outputs": index.outputs.contiguous()}
    return atomic_write(path, lambda tmp: save_file(outputs, tmp, metadata=metadata), what="gallery index")


def load_gallery(path: str | os.PathLike, *, expect_model: dict | None = None) -> GalleryIndex:
    """Read an index written by save_gallery; BasesError if it is for another model."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        outputs = load_file(str(path))["outputs"]
        index = GalleryIndex(json.loads(metadata["paths"]), [tuple(h) for h in json.loads(metadata["heads"])], outputs,
                             metadata["description"], metadata["convention"], json.loads(metadata["model"]))
    except (OSError, KeyError, ValueError) as err:
        raise BasesError(f"{path} is not a readable gallery index ({err}); rebuild it") from err
    if expect_model is not None and any(index.model.get(key) != value for key, value in expect_model.items()
                                        if key != "open_clip_version"):
        raise BasesError(f"the gallery index {path} was built for model {index.model.get('spec')}, not "
                         f"{expect_model.get('spec')}; rebuild it")
    return index


def gallery_cache_path(bundle: ClipBundle, paths: Sequence, heads: Sequence[Head], convention: str) -> Path:
    """Where the index of these exact files (names, sizes, mtimes), heads, model and convention is cached."""
    files = [(str(Path(p).resolve()), *_stat(p)) for p in paths]
    key = json.dumps([bundle.info.identity(), files, [list(h) for h in heads], convention], sort_keys=True)
    return cache_dir() / "retrieval" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"


def _stat(path) -> tuple[int, int]:
    try:
        stat = Path(path).stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return -1, -1
