"""Starting the app builds nothing heavy: importing app.py and building every tab imports neither torch nor
open_clip, transformers or diffusers (the default model loads after the page is served, `ui_common.launch`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "open_clip", "transformers", "diffusers", "torchvision", "timm", "sklearn")


def test_building_the_app_imports_no_heavy_library():
    code = ("import json, sys, app; app.build_app(); "
            f"print(json.dumps({{name: name in sys.modules for name in {HEAVY!r}}}))")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "CLIPSCOPE_MODEL": "toy"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert not any(imported.values()), f"imported while building the app: {[n for n, v in imported.items() if v]}"


def test_the_layer_a_tab_starts_on_comes_from_the_config_without_loading():
    from core.engine.configs import vision_layers
    from core.engine.models import load_clip

    for spec in ("toy", "toy-biased", "ViT-B-32/none"):
        assert vision_layers(spec) == load_clip(spec).info.n_layers
    assert vision_layers("ViT-L-14/openai") == 24
    assert vision_layers("hf-hub:org/name") is None and vision_layers("no-such-arch/none") is None
