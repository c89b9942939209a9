"""The fixes from a new user's session (issue 13, item 6), each checked where it lives: in core.explorer, in the
pictures, and in the tabs' Gradio configuration (no browser needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.browser import ROOT


@pytest.fixture(scope="module")
def suite():
    """The whole app's Blocks and its tab modules, built once (no server)."""
    import sys

    sys.path.insert(0, str(ROOT))
    import app

    demo = app.build_app()
    tabs = {folder: app.load_tab(folder) for _, folder in app.TABS}
    return demo, tabs


def _components(demo, kind: str) -> list[dict]:
    return [c for c in demo.config["components"] if c.get("type") == kind]


def _by_elem(demo, elem_id: str) -> dict:
    return next(c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def _dependency(demo, api_name: str) -> dict:
    return next(d for d in demo.config["dependencies"] if d.get("api_name") == api_name)


# ---------------------------------------------------------------- pictures and views

def test_per_layer_bars_are_in_layer_order_and_add_up(suite, tiny):
    from core.explorer.decomposition import decompose

    demo, tabs = suite
    view = decompose("Tiny-ViT/none", None, "example:1", "a circle\na square", "paper")
    bars = tabs["decomposition"]._views(view)[7]  # the BarPlot update the tab returns
    assert bars.sort == ["emb"] + [f"L{i}" for i in range(tiny.info.n_layers)]  # never 0, 1, 10, 11, 2, ...
    assert {b["part"] for b in view.bars} == {"embedding", "attention", "MLP"}


def test_heat_grid_values_are_readable_and_the_title_is_not_under_a_label(suite):
    from core.engine.viz import heat_grid

    demo, _ = suite
    for elem in ("decomposition-grid", "heads-grid", "decomposition-map", "neurons-map"):
        assert _by_elem(demo, elem)["props"]["show_label"] is False  # the picture's own title is visible
    grid = np.asarray(heat_grid(torch.zeros(12, 12), title="t", cell=44).convert("L"))
    cell = grid[60:60 + 44, 100:100 + 44]  # a value cell: near-white background, black digits
    rows = np.where((cell < 100).any(axis=1))[0]
    assert rows.size and rows.max() - rows.min() >= 8  # digits at least ~13 px tall (9 px before)


def test_token_maps_have_a_colour_scale_and_a_shared_scale():
    from core.explorer.decomposition import decompose, rerender

    view = decompose("toy", None, "example:2", "a white cross\na pink background", "paper")
    other = rerender(view, shown=1)
    assert view.map_limit == other.map_limit  # shared: one scale for every text
    own = [rerender(view, shown=t, scale="own").map_limit for t in range(2)]
    assert own[0] != own[1] and max(own) == pytest.approx(view.map_limit)
    assert view.token_map.height > view.token_map.width  # the colour bar under the map


def test_one_unit_everywhere_and_the_embedding_term_shown():
    from core.explorer.decomposition import decompose

    view = decompose("toy", None, "example:0", "a green cross", "paper")
    embedding = float(view.result.embedding_term[0]) * 100
    assert any(b["layer"] == "emb" and b["contribution"] == pytest.approx(embedding, abs=1e-3) for b in view.bars)
    assert f"{embedding:+.3f}" in view.info and "cosine x100" in view.info
    assert "contribution (cosine x100)" in view.table[0]


# ---------------------------------------------------------------- the tabs' layout

def test_tables_have_named_headers_before_the_first_run(suite):
    demo, _ = suite
    frames = [f for f in _components(demo, "dataframe")
              if str(f["props"].get("elem_id")).startswith(("decomposition-", "heads-", "neurons-"))]
    assert len(frames) >= 9
    for frame in frames:
        headers = frame["props"]["value"]["headers"]
        assert headers and not all(str(h).isdigit() for h in headers), frame["props"].get("elem_id")


def test_galleries_show_every_row(suite):
    demo, _ = suite
    for elem in ("neurons-gallery", "heads-maps", "heads-gallery"):
        assert _by_elem(demo, elem)["props"]["height"] == "auto"


def test_neurons_words_and_search_have_their_own_counts(suite):
    demo, _ = suite
    concepts, search = _dependency(demo, "concepts"), _dependency(demo, "search_neurons")
    words, hits = _by_elem(demo, "neurons-words-top")["id"], _by_elem(demo, "neurons-search-top")["id"]
    assert words in concepts["inputs"] and hits not in concepts["inputs"]
    assert hits in search["inputs"] and words not in search["inputs"]


def test_the_header_does_not_claim_one_model_for_every_tab(suite):
    demo, _ = suite
    header = _by_elem(demo, "app-notice")["props"]["value"]
    assert "Running on" not in header and "Default model" in header and "Each result names the model" in header


def test_default_texts_describe_the_first_example(suite):
    from core.links.images import describe_ref

    demo, _ = suite
    texts = _by_elem(demo, "decomposition-texts")["props"]["value"].splitlines()
    description = describe_ref("example:0")
    assert texts[0] == "a green cross" and "green cross" in description and "pink background" in description
    assert texts[1] == "a pink background"
    assert _by_elem(demo, "heads-texts-input")["props"]["value"].splitlines() == texts[:2]


def test_every_action_reports_progress_steps():
    from core.explorer.decomposition import decompose
    from core.explorer.heads import WORLD, compute_text_span, explain_image
    from core.explorer.neurons import discover_concepts

    class Recorder:
        def __init__(self):
            self.steps = []

        def __call__(self, fraction, desc=None):
            self.steps.append(desc)

        def tqdm(self, iterable, total=None, desc=None):
            self.steps.append(desc)
            return iterable

    for run in (lambda p: decompose("toy", None, "example:0", "a", "paper", progress=p),
                lambda p: explain_image("toy", None, "example:0", "a", 3, 1, None, "paper", progress=p),
                lambda p: compute_text_span("toy", WORLD, None, None, 20, 3, None, 3, 1, progress=p),
                lambda p: discover_concepts("toy", None, 2, None, "example:0", 5, progress=p)):
        recorder = Recorder()
        run(recorder)
        assert len(recorder.steps) >= 2 and all(recorder.steps), recorder.steps


def test_every_model_event_shows_progress_and_waits_in_one_queue(suite):
    demo, _ = suite
    for name in ("decompose", "head_texts", "compute_textspan", "explain_image", "retrieve", "load_bases",
                 "compute_bases", "show_neuron", "neuron_on_image", "concepts", "search_neurons", "show_circuit",
                 "measure_ablation", "in_edges"):
        dependency = _dependency(demo, name)
        function = demo.fns[dependency["id"]]
        assert (function.concurrency_id, function.concurrency_limit) == ("model", 2), name
        assert dependency["show_progress"] != "hidden", name
