"""ZeroGPU through core.gpu with Hugging Face's real `spaces` package (pinned in requirements-test.txt)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.browser import ROOT

spaces = pytest.importorskip("spaces")


def test_the_shim_uses_hugging_faces_package_not_our_folder():
    from core.gpu import ZERO_GPU

    assert ZERO_GPU is spaces and hasattr(spaces, "GPU")
    assert "site-packages" in spaces.__file__ and not (ROOT / "spaces" / "__init__.py").exists()


def test_handlers_run_and_return_cpu_values_outside_zero_gpu():
    from core.gpu import gpu, request_seconds

    @gpu(duration=lambda n: request_seconds(images=n))
    def handler(n):
        return {"x": torch.ones(n)}, [torch.zeros(2)], "text"

    result = handler(3)
    assert result[0]["x"].device.type == "cpu" and result[2] == "text"
    assert handler.gpu_duration(3) < handler.gpu_duration(300)


def test_duration_grows_with_the_request_and_stays_bounded():
    from core.gpu import MAX_SECONDS, request_seconds

    assert request_seconds(images=1) < request_seconds(images=48) < request_seconds(images=2000) <= MAX_SECONDS
    assert request_seconds(texts=10) < request_seconds(texts=5000)
    assert request_seconds(scenes=10**9) == MAX_SECONDS and request_seconds(images=-5) >= 1


def test_links_restore_without_the_queue_off_zero_gpu():
    import app

    from core.gpu import ON_ZERO_GPU

    assert ON_ZERO_GPU is False and app.load_ui().LOAD_QUEUE is False


def test_to_cpu_moves_nested_tensors():
    from core.gpu import to_cpu
    from core.explorer.decomposition import decompose

    view = decompose("toy", None, "example:0", "a", "paper")
    moved = to_cpu(view)
    assert type(moved) is type(view) and moved.result.heads.device.type == "cpu"
    assert torch.equal(moved.result.heads, view.result.heads)


@pytest.mark.slow
def test_on_a_zero_gpu_space_every_tab_handler_is_wrapped_by_spaces(tmp_path):
    """With the Space's ZeroGPU variables, `spaces.GPU` wraps our handlers (it then runs them on a GPU worker)."""
    code = """
import sys
sys.path.insert(0, '.')
import app
for folder in ('decomposition', 'heads', 'neurons', 'circuits', 'segmentation', 'adversarial'):
    tab = app.load_tab(folder)
    handlers = [getattr(tab, name) for name in dir(tab) if hasattr(getattr(tab, name), 'gpu_duration')]
    assert handlers, folder
    assert all(hasattr(h, 'zerogpu') for h in handlers), folder
    assert folder == 'adversarial' or hasattr(tab.open_link_on_gpu, 'zerogpu'), folder  # a link's first answer
    durations = {h.__name__: h.gpu_duration for h in handlers}
    print(folder, sorted(durations))
ui = app.load_ui()
from core.gpu import ON_ZERO_GPU
assert ON_ZERO_GPU and ui.LOAD_QUEUE is True  # ZeroGPU handlers run through Gradio's queue
route = lambda query, tab: ui.open_link(lambda q, **k: 'cpu', lambda q, **k: 'gpu', query, tab, False)
assert route('tab=heads&layer=1&head=0', 'heads') == 'gpu'  # the link names this tab's view
assert route('tab=heads&layer=1&head=0', 'neurons') == 'cpu' and route('', 'heads') == 'cpu'  # no GPU asked for
print('routing ok')
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9",
           "CLIPSCOPE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "decomposition ['open_link', 'run_decomposition']" in out.stdout
    assert "compute_text_span" in out.stdout and "compute_bases" in out.stdout and "routing ok" in out.stdout
