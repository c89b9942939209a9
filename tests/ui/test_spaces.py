"""Each tab is deployable alone; spaces/ never shadows Hugging Face's `spaces` package."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TABS = sorted(p.parent.name for p in (ROOT / "spaces").glob("*/app.py"))


def test_spaces_is_not_a_package():
    assert not (ROOT / "spaces" / "__init__.py").exists()
    assert TABS, "no tabs found"


def test_gpu_shim_is_a_no_op_without_zero_gpu():
    from core.gpu import gpu

    @gpu
    def add(a, b):
        return a + b

    assert add(2, 3) == 5
    assert gpu(duration=10)(add)(1, 1) == 2


def test_every_tab_has_a_space_card_and_loads_by_path():
    for tab in TABS:
        card = (ROOT / "spaces" / tab / "README.md").read_text()
        assert card.startswith("---") and "sdk: gradio" in card and "app_file: app.py" in card
        assert "sdk_version: 6.31.0" in card


def _load_deploy():
    spec = importlib.util.spec_from_file_location("clipscope_deploy", ROOT / "spaces" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_staged_decomposition_space_runs_from_its_own_folder(tmp_path):
    folder = _load_deploy().stage("decomposition", tmp_path / "space")
    assert (folder / "app.py").is_file() and (folder / "core" / "engine" / "models.py").is_file()
    assert not list(folder.rglob("__pycache__"))
    # import the staged app from its own folder, with the repository out of the path
    code = ("import sys; sys.path = [p for p in sys.path if 'work/main' not in p and p not in ('', '.')]; "
            "sys.path.insert(0, '.'); import runpy; ns = runpy.run_path('app.py', run_name='space'); "
            "import core; assert core.__file__.startswith(sys.path[0]) or 'space' in core.__file__, core.__file__; "
            "print(type(ns['demo']).__name__, core.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                              "GRADIO_ANALYTICS_ENABLED": "False", "CLIPSCOPE_MODEL": "ViT-B-32/none"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("Blocks") and str(folder) in out.stdout


def test_a_tab_alone_honours_port_and_the_upload_limit():
    """`python spaces/decomposition/app.py --port N` used to ignore --port and the 50 MB upload limit."""
    import json
    import urllib.request

    from tests.browser import app_server

    with app_server(ROOT / "spaces" / "decomposition" / "app.py", {"CLIPSCOPE_MODEL": "toy"}) as url:
        config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
        assert config["max_file_size"] == 50 * 1024 * 1024
        assert {d.get("api_name") for d in config["dependencies"]} >= {"decompose"}
