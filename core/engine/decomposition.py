"""One image against a few texts: every layer's, head's and token's share of the cosine similarity.

This is what the Decomposition tab and `python -m core decompose` show. Scores are cosine
contributions: summed over the embedding term, all MLPs and all heads they give cos(image, text).

>>> result = decompose_image(load_clip("toy"), image, ["a red circle", "a blue square"])
>>> result.heads.shape    # [layer, head, text]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image

from core.engine.contributions import direct_effects, fold_weights, spatial_value_maps
from core.engine.images import load_image
from core.engine.models import ClipBundle
from core.engine.text import encode_texts
from core.engine.shared_trace import shared_trace


@dataclass(frozen=True)
class ImageDecomposition:
    """Cosine contributions of every component for one image and several texts."""

    texts: list[str]
    cosine: torch.Tensor  # [text] cos(image, text) from the model's own encode_image
    embedding_term: torch.Tensor  # [text]
    mlps: torch.Tensor  # [layer, text]
    heads: torch.Tensor  # [layer, head, text] (summed over tokens)
    tokens: torch.Tensor  # [layer, head, token, text]; token 0 is the class token
    grid: tuple[int, int]
    reconstruction_error: float  # |sum of components - encode_image| / |encode_image|
    convention: str
    model: dict[str, Any]

    def token_map(self, text: int, layer: int | None = None, head: int | None = None) -> torch.Tensor:
        """[grid_h, grid_w] patch-token scores for one text, of one head, one layer or all of them."""
        tokens = self.tokens[..., text]
        if layer is not None:
            tokens = tokens[layer : layer + 1]
        if head is not None:
            tokens = tokens[:, head : head + 1]
        return tokens.sum((0, 1))[1:].reshape(self.grid)

    def top_tokens(self, text: int, k: int = 5) -> list[dict[str, Any]]:
        """The k patch tokens with the largest total score for `text` (row, column in the patch grid)."""
        scores = self.token_map(text).flatten()
        values, indices = scores.topk(min(k, scores.numel()))
        width = self.grid[1]
        return [
            {"token": int(i) + 1, "row": int(i) // width, "col": int(i) % width, "score": float(v)}
            for v, i in zip(values, indices)
        ]

    def to_json(self) -> list[dict[str, Any]]:
        """One JSON object per text; key names are stable (docs/cli.md, "JSON output")."""
        out = []
        for index, text in enumerate(self.texts):
            out.append(
                {
                    "model": self.model["spec"],
                    "text": text,
                    "cosine": float(self.cosine[index]),
                    "reconstruction_error": self.reconstruction_error,
                    "convention": self.convention,
                    "embedding_term": float(self.embedding_term[index]),
                    "mlps": [float(v) for v in self.mlps[:, index]],
                    "heads": [[float(v) for v in row] for row in self.heads[:, :, index]],
                    "top_tokens": self.top_tokens(index),
                    "random_weights": bool(self.model["random_init"]),
                }
            )
        return out


@torch.inference_mode()
def decompose_image(
    bundle: ClipBundle,
    image: Image.Image | str,
    texts: Sequence[str],
    *,
    convention: str = "paper",
) -> ImageDecomposition:
    """Decompose cos(image, text) for each text into embedding, MLP, head and token terms."""
    pil = image if isinstance(image, Image.Image) else load_image(image)
    text_embeddings = encode_texts(bundle, list(texts))
    pixels = bundle.preprocess(pil).unsqueeze(0).to(bundle.device)
    visual = bundle.model.visual
    folded = fold_weights(visual)
    # The values are mapped onto the texts layer by layer: about one forward's memory, never all values.
    trace = shared_trace(visual, pixels, value_maps=spatial_value_maps(folded, text_embeddings))
    effects = direct_effects(trace, folded, convention=convention, spatial=True, directions=text_embeddings).scores()
    # The error is measured in the full output space against the model's own forward pass.
    reference = bundle.model.encode_image(pixels)
    total = direct_effects(trace, folded, convention=convention).total()
    error = float((total - reference).norm() / reference.norm())
    cosine = (torch.nn.functional.normalize(reference, dim=-1) @ text_embeddings.T)[0]
    return ImageDecomposition(
        texts=list(texts),
        cosine=cosine.cpu(),
        embedding_term=effects.embedding_term[0].cpu(),
        mlps=effects.mlps[0].cpu(),
        heads=effects.heads[0].cpu(),
        tokens=effects.tokens[0].cpu(),
        grid=bundle.info.grid,
        reconstruction_error=error,
        convention=convention,
        model=bundle.info.as_dict(),
    )
