"""core.settings: the one reader of the environment."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core import settings
from core.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_overrides():
    yield
    settings.configure(public=None, device=None, default_model=None, allowed_paths=None)


def test_public_mode_sources(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("CLIPSCOPE_PUBLIC", raising=False)
    assert not settings.public()
    monkeypatch.setenv("SPACE_ID", "org/space")
    assert settings.public()
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("CLIPSCOPE_PUBLIC", "1")
    assert settings.public()
    monkeypatch.delenv("CLIPSCOPE_PUBLIC")
    settings.configure(public=True)
    assert settings.public()


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.8.9.1", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                            ("example.org", False), (None, True)])
def test_loopback(host, loopback):
    assert settings.is_loopback(host) is loopback


def test_allowed_models_default_and_list(monkeypatch):
    monkeypatch.delenv("CLIPSCOPE_MODEL", raising=False)
    monkeypatch.delenv("CLIPSCOPE_MODELS", raising=False)
    assert settings.allowed_models() == ("toy", "toy-biased")  # toy-biased: the Adversarial tab's default
    monkeypatch.setenv("CLIPSCOPE_MODEL", "ViT-B-16/laion2b_s34b_b88k")
    # toy-biased: the Heads tab's mean-ablation panel (settings.PANEL_MODELS) needs a planted bias whatever the default
    assert settings.allowed_models() == ("ViT-B-16/laion2b_s34b_b88k", "toy", "toy-biased")
    monkeypatch.setenv("CLIPSCOPE_MODELS", " toy , ViT-B-32/openai,toy")
    assert settings.allowed_models() == ("toy", "ViT-B-32/openai", "ViT-B-16/laion2b_s34b_b88k", "toy-biased")
    monkeypatch.delenv("CLIPSCOPE_MODEL")
    assert settings.allowed_models() == ("toy", "ViT-B-32/openai", "toy-biased")


def test_every_tab_default_model_is_allowed(monkeypatch):
    for default in ("toy", "ViT-B-32/openai"):
        monkeypatch.setenv("CLIPSCOPE_MODEL", default)
        monkeypatch.setenv("CLIPSCOPE_MODELS", "ViT-L-14/openai")
        defaults = {tab: settings.tab_default_model(tab) for tab in settings.TABS}
        assert defaults["adversarial"] == ("toy-biased" if default == "toy" else default)
        assert {defaults[tab] for tab in settings.TABS if tab != "adversarial"} == {default}
        assert set(defaults.values()) | set(settings.PANEL_MODELS.values()) <= set(settings.allowed_models())
    with pytest.raises(ValueError, match="unknown tab"):
        settings.tab_default_model("nope")


def test_device_resolution(monkeypatch):
    monkeypatch.delenv("CLIPSCOPE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert settings.resolve_device().type == expected
    assert settings.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        settings.resolve_device("gpu-please")
    with pytest.raises(ConfigError, match="unsupported device"):
        settings.resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            settings.resolve_device("cuda")
    monkeypatch.setenv("CLIPSCOPE_DEVICE", "cpu")
    assert settings.device() == "cpu"
    settings.configure(device="auto")
    assert settings.device() == "auto"


def test_configure_rejects_unknown_names():
    with pytest.raises(TypeError, match="unknown settings"):
        settings.configure(colour="red")


def test_importing_the_engine_has_no_side_effects():
    code = ("import open_clip, core.engine.models, core.engine.text, core.artifacts.hub, core.settings; "
            "import open_clip.factory as f; "
            "print(any('core' in str(p) for p in f._MODEL_CONFIG_PATHS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_only_settings_reads_the_environment():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = [str(path.relative_to(root)) for folder in ("core", "spaces") for path in (root / folder).rglob("*.py")
                 if path.name != "settings.py" and ("os.environ" in path.read_text() or "getenv(" in path.read_text())]
    offenders += ["app.py"] if "os.environ" in (root / "app.py").read_text() else []
    assert not offenders, f"read the environment through core.settings: {offenders}"
