"""The real pretrained-tag path, offline: a Hugging Face cache laid out as huggingface_hub writes it.

OpenAI weights must get QuickGELU in both towers (the original code's text side did not).
"""

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"

CHECK = """
import sys, open_clip, torch
from core.engine.models import load_clip
bundle = load_clip("ViT-B-32/openai")
visual_act = type(bundle.model.visual.transformer.resblocks[0].mlp.gelu).__name__
text_act = type(bundle.model.transformer.resblocks[0].mlp.gelu).__name__
weight = bundle.model.visual.proj[0, 0].item()
print(visual_act, text_act, bundle.info.quick_gelu, bundle.info.random_init, repr(weight))
"""


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
def test_openai_tag_loads_from_the_cache_offline_with_quick_gelu(tmp_path):
    # the weights a download would have cached: any ViT-B-32 state dict will do
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in open_clip.create_model("ViT-B-32-quickgelu").state_dict().items()}
    repo = tmp_path / "hub" / "models--timm--vit_base_patch32_clip_224.openai"
    snapshot = repo / "snapshots" / SHA
    snapshot.mkdir(parents=True)
    save_file(state, snapshot / "open_clip_model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    visual_act, text_act, quick, random_init, weight = out.stdout.split()
    assert (visual_act, text_act, quick, random_init) == ("QuickGELU", "QuickGELU", "True", "False")
    assert float(weight) == state["visual.proj"][0, 0].item()  # the cached weights, not a random init


def test_openai_tag_without_cache_fails_at_once_offline(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "core", "decompose", "--model", "ViT-B-32/openai",
                          "--image", str(tmp_path / "x.png"),
                          "--text", "a"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "could not obtain weights for ViT-B-32/openai" in out.stderr and "HF_HUB_OFFLINE" in out.stderr
