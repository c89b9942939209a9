"""The repository is an installable package: pyproject.toml's pins are requirements.txt's, only `core` is installed,
the licence and citation files say what the Space cards say, and `pip install -e .` in a fresh virtualenv gives a
working `clipscope` command and a `core` that README's Python example uses from any folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PAPERS = ("2310.05916", "2406.04341")


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("clipscope"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_pins_are_requirements_txt_split_into_the_engine_and_the_extras():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    requirements = _pins((ROOT / "requirements.txt").read_text().splitlines())
    test_requirements = _pins((ROOT / "requirements-test.txt").read_text().splitlines())
    engine, app, diffusers = (_pins(project["dependencies"]), _pins(extras["app"]), _pins(extras["diffusers"]))
    assert {**engine, **app, **diffusers} == {**requirements, "spaces": test_requirements["spaces"]}
    assert set(app) == {"gradio", "spaces"} and set(diffusers) == {"diffusers", "transformers"}
    assert not set(engine) & {"gradio", "diffusers", "transformers", "spaces"}  # the engine runs without them
    assert "clipscope[app,diffusers]" in extras["test"]
    assert {**_pins(extras["test"]), "spaces": app["spaces"]} == test_requirements
    assert project["scripts"] == {"clipscope": "core.cli:main"}


def test_only_core_and_its_data_are_installed():
    from setuptools import find_packages

    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=found["include"])
    assert "core" in packages and "core.engine" in packages
    assert all(package == "core" or package.startswith("core.") for package in packages)  # never spaces/ or tests/
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["core"]
    assert {"data/**/*", "model_configs/*.json"} <= set(data)
    assert (ROOT / "core/data/toy/toy_clip.safetensors").is_file() and (ROOT / "core/data/toy_texts.txt").is_file()


def test_the_licence_is_the_mit_licence_the_space_cards_name():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    cards = sorted(ROOT.glob("spaces/*/README.md"))
    assert cards
    for card in cards:
        front = yaml.safe_load(card.read_text().split("---\n")[1])
        assert front["license"] == "mit", card


def test_the_citation_file_cites_the_software_and_both_papers():
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["license"] == "MIT"
    import core

    assert citation["version"] == core.__version__
    urls = [reference["url"] for reference in citation["references"]]
    assert urls == [f"https://arxiv.org/abs/{paper}" for paper in PAPERS]
    for reference in citation["references"]:
        assert [a["family-names"] for a in reference["authors"]] == ["Gandelsman", "Efros", "Steinhardt"]


def readme_example() -> str:
    """README's Python example (its one ```python block)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1, "README has one Python example"
    return blocks[0]


@pytest.mark.slow
def test_pip_install_e_in_a_fresh_virtualenv(tmp_path):
    """`pip install -e .` into a new virtualenv (torch and the rest come from the system site-packages: no
    download), then the console script and README's example from an unrelated folder."""
    # A copy of the tracked files, so the build's egg-info lands there, not in the checkout.
    source = tmp_path / "clipscope"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for name in ("pyproject.toml", "LICENSE", "CITATION.cff", "README.md"):  # also before they are committed
        shutil.copy2(ROOT / name, source / name)
    venv = tmp_path / "venv"
    # Without its own pip the venv uses the system's pip and setuptools (ensurepip's setuptools is too old for
    # pyproject's SPDX licence); --no-build-isolation then needs no download either.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CLIPSCOPE_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PIP_NO_INDEX="1")

    def run(*command, cwd=elsewhere):
        done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}{done.stdout[-2000:]}"
        return done.stdout

    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", ".", cwd=source)
    assert "COMMAND" in run(venv / "bin" / "clipscope", "--help")
    assert "decompose" in run(venv / "bin" / "clipscope", "decompose", "--help")
    where = run(python, "-c", "import core, importlib.metadata as m; print(core.__file__); print(m.version('clipscope'))")
    assert where.split() == [str(source / "core" / "__init__.py"), "0.1.0"]
    (elsewhere / "example.py").write_text(readme_example())
    printed = run(python, "example.py").splitlines()
    assert printed[-1] == "(2, 64, 64) torch.Size([384, 96])"  # README's example ran to its end
