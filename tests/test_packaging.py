"""The repository is an installable package: pyproject.toml's pins are requirements.txt's, only `core` is installed,
the licence and citation files say what the Space cards say, and `pip install -e .` in a fresh virtualenv gives a
working `clipscope` command."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
