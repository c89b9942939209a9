"""Rendered scenes as the toy model sees them (shared by training, evaluation and the planted-bias groups)."""

from __future__ import annotations

import numpy as np
import open_clip
import torch

# The toy model uses open_clip's default (OpenAI) normalisation; training feeds tensors directly.
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 [batch, H, W, 3] -> normalised float [batch, 3, H, W], as the model's preprocess does."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (pixels - MEAN) / STD
