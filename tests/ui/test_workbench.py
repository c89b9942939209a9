"""Issue 23 (items 1 and 5-8, and the unit policy): one unit in every tab and command, commands that print each
view's table, no silent cap, plain wording, no server path in segment.json. (Items 2-4: test_workbench_browser.py.)
"""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest

from core import settings, units
from core.cli import main
from core.links.images import image_ref_path
from tests.browser import ROOT

TEXT = "a green cross"  # describes example 0 (a green cross on a pink background)


def _run(argv: list[str], capsys) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def _numbers(line: str) -> list[float]:
    return [float(n) for n in re.findall(r"[-+]?\d+\.\d+|[-+]?\d+", line)]


def _table(out: str, first_column: str) -> list[list[str]]:
    """The rows of the printed table whose header starts with `first_column` (columns split on 2+ spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split("  ")[0].strip() == first_column)
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


# ---------------------------------------------------------------- item 1: no server folder in segment.json

def test_segment_json_names_a_bases_folder_by_its_name_only(tmp_path, capsys):
    bases = tmp_path / "my-bases"
    shutil.copytree(ROOT / "core" / "data" / "toy" / "bases", bases)
    out = tmp_path / "seg"
    _run(["segment", "--model", "toy", "--image", str(image_ref_path("example:0")), "--text", TEXT, "--method",
          "neurons", "--bases", str(bases), "--top-k", "5", "--out", str(out)], capsys)
    record = json.loads((out / "segment.json").read_text())
    # the command and the image are what the user typed (their own paths); nothing else names a folder
    described = {key: value for key, value in record.items() if key not in ("command", "image")}
    assert str(tmp_path) not in json.dumps(described) and "/" not in record["options"]["bases"]
    assert "folder my-bases" in record["description"] and record["options"]["bases"] == "folder my-bases"


def test_a_public_segmentation_view_names_no_server_folder():
    from core.explorer.segmentation import segment

    with settings.overridden(public=True):
        view = segment("toy", None, "example:4", "a yellow square\na red circle", None, "neurons")
    assert str(ROOT) not in view.info + view.link.markdown and "core/data/toy/bases" in view.info


# ---------------------------------------------------------------- item 5 and the policy: one unit everywhere

def test_cos_image_text_reads_the_same_in_every_tab_and_command(tmp_path, capsys):
    from core.explorer.decomposition import decompose
    from core.explorer.heads import explain_image
    from core.explorer.segmentation import segment

    image = str(image_ref_path("example:0"))
    raw = json.loads(_run(["decompose", "--model", "toy", "--image", image, "--text", TEXT, "--json"], capsys))
    shown = units.format_cosine(raw["cosine"])  # "+62.477": x100
    assert abs(float(shown)) > 1 and raw["units"]["cosine"] == units.RAW_COSINE

    decomposition = decompose("toy", None, "example:0", TEXT, "paper")
    assert f"| **{TEXT}** | {shown} |" in decomposition.info
    segmentation = segment("toy", None, "example:0", TEXT, None, "heads")
    assert f"{TEXT} {shown}" in segmentation.info and units.COSINE_UNIT in segmentation.info
    printed = _run(["decompose", "--model", "toy", "--image", image, "--text", TEXT], capsys)
    assert f"cos(image, text): {shown}" in printed
    out = tmp_path / "seg"
    printed = _run(["segment", "--model", "toy", "--image", image, "--text", TEXT, "--out", str(out)], capsys)
    assert f"cos(image, text) {shown} ({units.COSINE_UNIT})" in printed
    record = json.loads((out / "segment.json").read_text())
    assert record["cosine"][TEXT] == pytest.approx(raw["cosine"], abs=1e-6) and record["units"]["cosine"]

    # a head's share of it: the Decomposition table, the Heads ranking, the command's table, the JSON
    share = raw["heads"][3][1]
    row = next(r for r in decomposition.table if r["component"] == "L3H1")
    ranked = next(r for r in explain_image("toy", None, "example:0", TEXT, 3, 1, None, "paper").ranked
                  if r["head"] == "L3H1")
    assert row[f"contribution ({units.COSINE_UNIT})"] == ranked[f"score ({units.COSINE_UNIT})"] == \
        pytest.approx(units.cosine_points(share), abs=1e-4)
    layer3 = next(line for line in printed_decompose(image, capsys).splitlines() if line.strip().startswith("3 |"))
    assert _numbers(layer3.split("|")[3])[1] == pytest.approx(units.cosine_points(share), abs=1e-3)


def printed_decompose(image: str, capsys) -> str:
    return _run(["decompose", "--model", "toy", "--image", image, "--text", TEXT], capsys)


def test_a_heads_variance_share_reads_the_same_in_the_tab_and_the_command(capsys):
    from core.explorer.heads import head_texts

    view = head_texts("toy", 3, 1)
    printed = _run(["bases", "show", "--model", "toy", "--head", "3.1"], capsys)
    table = _table(printed, "#")
    assert len(table) == len(view.rows) >= 5
    for row, line in zip(view.rows, table):
        assert line[1] == row["text"]
        assert [float(line[2]), float(line[3])] == [row["variance explained (%)"], row["cumulative (%)"]]
    raw = json.loads(_run(["bases", "show", "--model", "toy", "--head", "3.1", "--json"], capsys))
    assert [units.shown_percent(t["cumulative_variance"]) for t in raw["texts"]] == [r["cumulative (%)"]
                                                                                      for r in view.rows]
    assert raw["units"]["variance_explained"] == units.RAW_FRACTION
    total = f"{units.percent(raw['texts'][-1]['cumulative_variance']):.1f}%"
    assert total in view.info and total in printed  # the line above the table says the same, in percent
    assert "cumulative (%)" in view.rows[0] and view.rows[-1]["cumulative (%)"] > 1  # percent, not a fraction


def test_the_policy_is_stated_once_in_the_ui_and_in_the_docs():
    text = (ROOT / "app.py").read_text()
    assert "units.POLICY" in text
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert "## Units" in docs and "cosine x100" in docs.split("## Units")[1][:1500]


# ---------------------------------------------------------------- item 3: head grids have a colour scale

def test_head_grids_carry_their_colour_scale():
    import numpy as np

    from core.engine.viz import heat_grid
    from core.explorer.decomposition import decompose
    from core.explorer.heads import explain_image

    for grid in (decompose("toy", None, "example:0", TEXT, "paper").grid,
                 explain_image("toy", None, "example:0", TEXT, 3, 1, None, "paper").grid):
        bare = heat_grid(np.zeros((4, 4)), title=f"cos(image, '{TEXT}') by head, x100", cell=44)
        assert grid.width == bare.width and grid.height == bare.height + 60  # the bar and its labels underneath
        ramp = np.asarray(grid)[bare.height + 10]
        assert ramp[8, 2] > ramp[8, 0] and ramp[-8, 0] > ramp[-8, 2]  # blue (-) on the left, red (+) on the right


# ---------------------------------------------------------------- item 6: no silent cap

def test_textspan_here_says_when_it_returns_fewer_texts_than_asked_and_names_the_real_rank():
    from core.explorer.heads import WORLD, compute_text_span

    _, found = compute_text_span("toy", WORLD, None, None, 100, 40, None, 3, 1)
    rank = len(found.rows)
    assert rank < 40
    assert f"{rank} texts, not the 40 asked" in found.info and f"data span rank {rank}" in found.info
    assert "data span rank 80" not in found.info
    _, few = compute_text_span("toy", WORLD, None, None, 100, 5, None, 3, 1)
    assert len(few.rows) == 5 and "not the" not in few.info


# ---------------------------------------------------------------- item 7: wording

def test_segmentation_names_each_method_once_and_scores_the_background_against_the_background():
    from core.explorer.segmentation import segment

    view = segment("toy", None, "example:0", TEXT, "a pink background", "neurons", "heads")
    lines = view.info.splitlines()
    neurons = next(line for line in lines if line.startswith("**neurons:**"))
    heads = next(line for line in lines if line.startswith("**heads:**"))
    assert "neurons: neurons" not in view.info and "heads: heads" not in view.info
    assert "minus the mean" not in neurons and "minus the mean over texts: yes" in heads
    background = next(line for line in lines if line.startswith("| a pink background |"))
    assert "the true background" in background
    assert max(_numbers(background.split("|", 3)[3])) > 0.3  # the background is found, not scored as the cross


def test_segment_command_names_the_method_once(tmp_path, capsys):
    printed = _run(["segment", "--model", "toy", "--image", str(image_ref_path("example:0")), "--text", TEXT,
                    "--method", "neurons", "--top-k", "5", "--out", str(tmp_path / "s")], capsys)
    assert "method: neurons (the top 5 neurons" in printed and "minus the mean" not in printed


def test_error_messages_reach_api_clients_without_html_entities():
    import importlib.util
    import sys

    from core.errors import ConfigError

    spec = importlib.util.spec_from_file_location("clipscope_ui_common", ROOT / "spaces" / "ui_common.py")
    ui = sys.modules.get("clipscope_ui_common")
    if ui is None:
        ui = importlib.util.module_from_spec(spec)
        sys.modules["clipscope_ui_common"] = ui
        spec.loader.exec_module(ui)
    shown = ui.message(ConfigError("Can't read 'x' or \"y\" <b>")).message
    assert shown == "Can't read 'x' or \"y\" &lt;b&gt;"


# ---------------------------------------------------------------- item 8: every view has a command

def test_bases_show_prints_the_neurons_tab_tables(capsys):
    from core.explorer.neurons import SEARCH_SCORE, search_neurons, show_neuron

    view = show_neuron("toy", None, 2, 17)
    printed = _run(["bases", "show", "--model", "toy", "--neuron", "2.17"], capsys)
    terms = _table(printed, "text")
    assert [(line[0], float(line[1])) for line in terms] == [(r["text"], r["weight"]) for r in view.terms]
    images = _table(printed, "rank")
    assert [[int(line[0]), int(line[1]), float(line[2])] for line in images] == [
        [r["rank"], r["image"], r["|effect|"]] for r in view.top_images]
    assert [caption for _, caption in view.gallery][0] == (f"#1: image {view.top_images[0]['image']}, |effect| "
                                                          f"{view.top_images[0]['|effect|']:.2f}")

    rows, _ = search_neurons("toy", None, 2, "a red circle", 7)
    printed = _run(["bases", "show", "--model", "toy", "--search", "a red circle", "--layer", "2", "--top", "7"],
                   capsys)
    found = _table(printed, "neuron")
    assert [(int(line[0]), float(line[1])) for line in found] == [(r["neuron"], r[SEARCH_SCORE]) for r in rows]
    assert abs(rows[0][SEARCH_SCORE]) > 1  # x100


def test_the_reproduce_panels_print_commands_that_give_the_views_numbers(tmp_path, capsys, monkeypatch):
    from core.explorer.heads import explain_image, head_texts, heads_link
    from core.explorer.neurons import SEARCH_SCORE, neurons_link, search_neurons, show_neuron

    monkeypatch.chdir(tmp_path)  # the panel's lines write the example scene under the working folder
    heads_lines = _commands(heads_link("toy", "", 3, 1, f"{TEXT}\na pink background", "example:0", "paper",
                                       "cosine").markdown)
    for line in heads_lines:
        if line.startswith("python -m core toy scenes --n 1 "):
            _run(shlex.split(line)[3:], capsys)
    shows = [line for line in heads_lines if " bases show " in line]
    assert len(shows) == 2
    texts = _table(_run(shlex.split(shows[0])[3:], capsys), "#")
    assert [(line[1], float(line[2])) for line in texts] == [(r["text"], r["variance explained (%)"])
                                                             for r in head_texts("toy", 3, 1).rows]
    top = _table(_run(shlex.split(shows[1])[3:], capsys), "text")
    explained = explain_image("toy", None, "example:0", f"{TEXT}\na pink background", 3, 1, None, "paper")
    key = f"score ({units.COSINE_UNIT})"
    assert [(line[0], float(line[1])) for line in top] == [(r["text"], r[key]) for r in explained.top_texts]

    neuron_lines = [line for line in _commands(neurons_link("toy", "", 2, 17, "a red circle", None, 1.0).markdown)
                    if " bases show " in line]
    assert len(neuron_lines) == 2
    terms = _table(_run(shlex.split(neuron_lines[0])[3:], capsys), "text")
    assert [line[0] for line in terms] == [r["text"] for r in show_neuron("toy", None, 2, 17).terms]
    hits = _table(_run(shlex.split(neuron_lines[1])[3:], capsys), "neuron")
    assert [float(line[1]) for line in hits] == [r[SEARCH_SCORE] for r in search_neurons("toy", None, 2,
                                                                                         "a red circle", 10)[0]]


def _commands(markdown: str) -> list[str]:
    block = markdown.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("   #")[0].strip() for line in block.splitlines() if line.strip()]


def test_every_gallery_shows_whole_pictures_with_captions_underneath():
    """The CSS that tests/ui/test_workbench_browser.py checks on screen (Heads, Neurons) applies to every gallery,
    the Adversarial one included (its run is too slow for the browser test), and it fits its panel."""
    import sys

    sys.path.insert(0, str(ROOT))
    import app

    demo = app.build_app()
    ui = sys.modules["clipscope_ui_common"]
    galleries = {c["props"]["elem_id"]: c["props"] for c in demo.config["components"] if c.get("type") == "gallery"}
    assert {"heads-maps", "heads-gallery", "neurons-gallery", "adversarial-gallery"} <= set(galleries)
    for props in galleries.values():
        assert "clipscope-gallery" in props["elem_classes"] and props["object_fit"] == "contain"
        assert props["height"] == "auto"
    assert galleries["adversarial-gallery"]["columns"] <= 4
    assert ".caption-label" in ui.CSS and "position: static" in ui.CSS
