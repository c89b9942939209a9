"""Shared fixtures: small models the project makes itself, never downloaded weights."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub or gradio: no network, no telemetry, a private cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("CLIPSCOPE_CACHE", tempfile.mkdtemp(prefix="clipscope-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("CLIPSCOPE_TEST_THREADS", "2")))

from core.engine.models import load_clip, register_model_configs  # noqa: E402

TEST_CONFIGS = Path(__file__).parent / "model_configs"
register_model_configs(TEST_CONFIGS)

TINY_SPECS = ("Tiny-ViT/none", "Tiny-ViT-QuickGELU/none", "Tiny-ViT-LayerScale/none")


@pytest.fixture(scope="session")
def tiny():
    return load_clip("Tiny-ViT/none")


def random_pixels(bundle, batch: int = 2, seed: int = 0) -> torch.Tensor:
    size = bundle.info.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


@pytest.fixture(scope="session")
def scene_png(tmp_path_factory):
    """A held-out world scene saved as a PNG file (what a user would upload)."""
    from PIL import Image

    from core.world.scenes import render, sample_scenes

    image, _ = render(sample_scenes(1, seed=11, split="heldout")[0])
    path = tmp_path_factory.mktemp("upload") / "scene.png"
    Image.fromarray(image).save(path)
    return path
