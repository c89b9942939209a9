"""The tabs' logic in core.explorer, without Gradio: views, per-session results, public-mode checks."""

from __future__ import annotations

import pytest
import torch

from core import settings
from core.errors import ConfigError, CoreError, TextError
from core.explorer import access
from core.explorer.common import read_texts, text_pool
from core.explorer.decomposition import decompose, rerender


@pytest.fixture
def public_mode():
    settings.configure(public=True)
    yield
    settings.configure(public=None)


# ---------------------------------------------------------------- decomposition

def test_decomposition_views_add_up_in_one_unit():
    view = decompose("toy", None, "example:0", "a green cross\na red circle", "paper", layer="3", head=1)
    result = view.result
    assert view.image_description.startswith("example 0") and "Reconstruction error" in view.info
    for t in range(2):
        shown = rerender(view, result.texts[t], "all", "all")
        total = sum(bar["contribution"] for bar in shown.bars)
        assert total == pytest.approx(float(result.cosine[t]) * 100, abs=1e-3)  # embedding + layers = cosine
        assert f"{float(result.cosine[t]) * 100:+.3f}" in shown.info
    # the table ranks by magnitude, ties by index, in the same unit as the bars
    values = [row["contribution (cosine x100)"] for row in view.table]
    assert [abs(v) for v in values] == sorted((abs(v) for v in values), reverse=True)
    assert min(values) < 0  # negative heads are kept
    assert view.link.query.startswith("tab=decomposition&model=toy&layer=3&head=1&text=a+green+cross")


def test_bars_are_in_layer_order_on_a_twelve_layer_model(tiny):
    assert tiny.info.n_layers >= 3
    view = decompose("Tiny-ViT/none", None, "example:1", "a circle", "paper")
    assert view.bar_order == ["emb"] + [f"L{i}" for i in range(tiny.info.n_layers)]
    assert [b["layer"] for b in view.bars if b["part"] == "MLP"] == view.bar_order[1:]


def test_shared_colour_scale_is_one_scale_for_every_text():
    view = decompose("toy", None, "example:2", "a white cross\na pink background", "paper")
    maps = [view.result.token_map(t).abs().max() for t in range(2)]
    assert "shared scale" in view.info or view.scale == "shared"
    own = rerender(view, scale="own")
    assert own.scale == "own" and own.token_map.size == view.token_map.size
    assert max(maps) > 0
    with pytest.raises(ConfigError):
        rerender(view, layer="99")


def test_texts_are_checked():
    assert read_texts(" a \n\n a\nb ") == ["a", "b"]
    with pytest.raises(TextError):
        read_texts("\n \n")
    with pytest.raises(TextError):
        read_texts("\n".join(f"t{i}" for i in range(access.MAX_TEXTS + 1)))
    with pytest.raises(TextError):
        read_texts("x" * (access.MAX_TEXT_CHARS + 1))


def test_an_uploaded_text_pool_that_is_not_utf8_is_a_clear_error(tmp_path):
    bad = tmp_path / "pool.txt"
    bad.write_bytes(b"caf\xe9\n\xff\xfe")
    with pytest.raises(TextError, match="not UTF-8"):
        text_pool(str(bad))
    texts, name, _ = text_pool(None, "toy")
    assert name == "toy" and len(texts) > 100


# ---------------------------------------------------------------- heads

def test_heads_rank_by_magnitude_and_keep_the_sign():
    from core.explorer.heads import rank_by_magnitude

    rows = rank_by_magnitude(torch.tensor([[0.1, -0.5], [0.3, 0.5]]), k=3)
    assert [(r["head"], r["sign"]) for r in rows] == [("L0H1", "-"), ("L1H1", "+"), ("L1H0", "+")]


def test_texts_computed_in_a_session_are_shown_when_chosen():
    from core.explorer.heads import FROM_BASES, FROM_SESSION, WORLD, compute_text_span, head_texts

    fitted, shown = compute_text_span("toy", WORLD, None, None, 30, 40, None, 3, 1)
    assert shown.source == FROM_SESSION and "computed here on 30 generated" in shown.info
    # texts per head above the span's rank (a toy head writes 24 + 3 directions) are capped, not an error
    assert len(shown.rows) == 27
    # another session (no fit) sees the shipped bases only
    assert head_texts("toy", 3, 1).source == FROM_BASES
    assert head_texts("toy", 3, 1, fitted=fitted).source == FROM_BASES  # bases first unless asked
    assert head_texts("toy", 3, 1, fitted=fitted, prefer=FROM_SESSION).source == FROM_SESSION
    assert "also exist" in head_texts("toy", 3, 1, fitted=fitted).info
    with pytest.raises(CoreError, match="head 9 is out of range"):
        head_texts("toy", 3, 9)


def test_bases_provenance_names_no_server_path():
    from core.explorer.heads import head_texts

    info = head_texts("toy", 3, 0).info
    assert "core/data/toy/bases" in info and "/work" not in info and str(settings.cache_dir()) not in info


# ---------------------------------------------------------------- neurons

def test_every_neuron_call_works_on_its_own():
    from core.explorer.neurons import discover_concepts, neuron_on_image, search_neurons, show_neuron

    view = show_neuron("toy", "", 2, 5)  # no earlier "load bases" call
    assert "neuron 5" in view.info and view.terms and len(view.gallery) == 8
    picture, info = neuron_on_image("toy", None, 2, 5, None, "example:0")
    assert "vs threshold" in info and picture.width > 300
    rows, _ = search_neurons("toy", None, 2, "a red circle", 3)
    assert len(rows) == 3
    neurons, words, info = discover_concepts("toy", None, 2, None, "example:0", 5)
    assert len(words) <= 5 and "activated neurons in layer 2" in info
    strict, _, _ = discover_concepts("toy", None, 2, None, "example:0", 5, threshold=2.0)
    assert len(strict) < len(neurons)  # a higher threshold keeps fewer neurons
    assert all(row["ratio"] > 2.0 for row in strict)


def test_a_layer_outside_the_bases_is_an_error_not_layer_zero():
    from core.explorer.neurons import show_neuron

    with pytest.raises(CoreError, match="layer 99 is out of range: this model has 4"):
        show_neuron("toy", None, 99, 0)
    with pytest.raises(CoreError, match="not layer 3"):
        show_neuron("toy", None, 3, 0)  # the toy bases hold layers 0-2


def test_a_failed_load_leaves_nothing_of_the_previous_model():
    from core.explorer.neurons import show_neuron

    show_neuron("toy", None, 2, 1)
    with pytest.raises(CoreError):
        show_neuron("Nonexistent-ViT/none", None, 2, 1)


def test_concepts_from_few_images_carry_a_warning():
    from core.explorer.neurons import WORLD, compute_statistics, discover_concepts

    basis, status = compute_statistics("toy", 2, WORLD, 60, None, None, "toy", 10, "normalise_texts")
    assert "Warning" in status and "60 images" in status
    _, _, info = discover_concepts("toy", None, 2, None, "example:0", 5, session=basis)
    assert "computed in this session" in info and "Warning" in info
    # the shipped bases (2000 images, k = 100) carry none
    _, _, info = discover_concepts("toy", None, 2, None, "example:0", 5)
    assert "Warning" not in info


# ---------------------------------------------------------------- public mode

def test_public_mode_refuses_models_paths_and_random_weights(public_mode, tmp_path, monkeypatch):
    from core.explorer.heads import FOLDER, compute_text_span
    from core.explorer.neurons import show_neuron

    monkeypatch.setenv("CLIPSCOPE_MODELS", "toy,Tiny-ViT/none")
    assert access.check_model("toy") == "toy"
    with pytest.raises(CoreError, match="not available on this public server"):
        access.check_model("ViT-B-32/openai")
    with pytest.raises(CoreError, match="random-weight models"):
        access.check_model("Tiny-ViT/none")
    for probe in (str(tmp_path), "/etc", "/nonexistent/folder"):  # same answer whether the path exists or not
        with pytest.raises(CoreError) as err:
            compute_text_span("toy", FOLDER, probe, None, 20, 5, None, 3, 1)
        assert str(err.value) == "image folder: this public server does not read or write server paths; upload files instead"
        with pytest.raises(ConfigError, match="ORG/NAME@SHA"):
            show_neuron("toy", probe, 2, 0)
    with pytest.raises(CoreError):
        access.check_server_path("toy_texts.txt", "text pool")


def test_local_paths_can_be_limited_to_allowed_roots(tmp_path):
    settings.configure(allowed_paths=[str(tmp_path)])
    try:
        assert access.check_server_path(str(tmp_path / "a"), "image folder") == tmp_path / "a"
        with pytest.raises(CoreError, match="allow-path"):
            access.check_server_path("/etc", "image folder")
        with pytest.raises(CoreError, match="allow-path"):
            access.check_server_path(str(tmp_path / ".." / "escape"), "image folder")
    finally:
        settings.configure(allowed_paths=None)
