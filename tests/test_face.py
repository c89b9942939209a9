"""`core`'s face for Python users: cheap to import, every name resolves to its package's public function, and the
thin functions it adds compose the existing ones exactly."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core
from core.errors import BasesError, ConfigError, IndexRangeError

ROOT = Path(__file__).resolve().parents[1]


def test_import_core_loads_neither_torch_nor_open_clip(tmp_path):
    probe = ("import sys, core; names = dir(core); heavy = sorted(m for m in ('torch', 'open_clip', 'numpy', "
             "'gradio', 'PIL') if m in sys.modules); print(heavy); assert heavy == [], heavy; "
             "assert 'load_clip' in names and 'engine' in names")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": ""},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + done.stdout


def test_every_exported_name_is_its_packages_public_name():
    assert "__version__" in core.__all__
    for name in core.__all__:
        if name == "__version__":
            continue
        value = getattr(core, name)
        owner = importlib.import_module(value.__module__)
        package = importlib.import_module(".".join(value.__module__.split(".")[:2]))  # core.<package>
        assert getattr(owner, name) is value
        assert name in package.__all__, f"{name} is not in {package.__name__}.__all__"
        assert getattr(package, name) is value


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        core.nonexistent  # noqa: B018
    assert core.heads is importlib.import_module("core.heads")


@pytest.fixture(scope="module")
def toy():
    return core.load_clip("toy", device="cpu")


@pytest.fixture(scope="module")
def toy_bases(toy):
    return core.model_bases(toy)


def test_model_bases_are_the_shipped_bases_of_that_model(toy, toy_bases):
    assert toy_bases.path.resolve() == (ROOT / "core/data/toy/bases").resolve()
    assert toy_bases.manifest["model"]["spec"] == "toy"
    biased = core.load_clip("toy-biased", device="cpu")
    with pytest.raises(BasesError):  # bases of another model are refused
        core.model_bases(biased, toy_bases.path)
    tiny = core.load_clip("Tiny-ViT/none", device="cpu")
    with pytest.raises(BasesError, match="no bases are configured for model Tiny-ViT/none"):
        core.model_bases(tiny)


def test_head_texts_from_bases_are_the_stored_rows(toy_bases):
    from core.heads.bases import head_text_rows

    rows = head_text_rows(toy_bases, (3, 1))
    expected = [(row["text"], row["variance_explained"]) for row in rows]
    assert len(expected) > 3
    assert core.head_texts_from_bases(toy_bases, "L3H1") == expected
    assert core.head_texts_from_bases(toy_bases, (3, 1)) == expected
    for bad, message in (("L2.n5", "not an attention head"), ("L9H0", "stored heads: L0H0"),
                         ("3.1", "not a component label"), ((3,), "a head is a label")):
        with pytest.raises(ConfigError, match=message):
            core.head_texts_from_bases(toy_bases, bad)


def test_neuron_terms_from_bases_are_the_layers_sparse_code(toy_bases):
    from core.neurons.bases import load_neuron_basis

    basis = load_neuron_basis(toy_bases, 2)
    expected = basis.words.terms(5, basis.texts)
    assert expected and all(abs(a[1]) >= abs(b[1]) for a, b in zip(expected, expected[1:]))
    assert core.neuron_terms_from_bases(toy_bases, "L2.n5") == expected
    assert core.neuron_terms_from_bases(toy_bases, (2, 5)) == expected
    for bad, error, message in (("L3H1", ConfigError, "not an MLP neuron"), ("L7.n0", ConfigError, "not layer 7"),
                                ((2,), ConfigError, "a neuron is a label"),
                                ((2, 100_000), IndexRangeError, "neuron 100000 is out of range")):
        with pytest.raises(error, match=message):
            core.neuron_terms_from_bases(toy_bases, bad)


def test_image_second_order_equals_the_literal_equation(toy, scene_png):
    from core.engine.images import load_image
    from core.engine.reference import literal_second_order

    phi = core.image_second_order(toy, scene_png, layer=1)
    pixels = toy.preprocess(load_image(scene_png))
    with torch.inference_mode():
        literal = literal_second_order(toy.model.visual, pixels, 1)
    assert phi.shape == (toy.info.d_mlp, toy.info.d_out)
    torch.testing.assert_close(phi, literal.float(), rtol=1e-4, atol=1e-5 * float(literal.abs().max()))
    with pytest.raises(ConfigError):
        core.image_second_order(toy, scene_png, layer=toy.info.n_layers - 1)  # no later attention layer
