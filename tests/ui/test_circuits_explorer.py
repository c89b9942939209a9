"""The Circuits tab's logic without a browser: first answers from the shipped bases, the link and its command
give the same numbers, public-mode rules, and the Neurons and Heads tabs link into it."""

import json
import shlex
import subprocess
import sys

import pytest

from core.errors import CoreError
from core.explorer import circuits
from core.links.codec import decode

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_a_neurons_circuit_from_the_shipped_bases():
    view = circuits.show_circuit("toy", None, 1, 5, "weight", "", 8)
    assert "L1.n5" in view.info and "model toy" in view.info and "first PC" in view.info
    assert len(view.paths) == 8 and all(row["head's texts"] for row in view.paths)  # TextSpan texts of every head
    edges = [abs(row["edge"]) for row in view.paths]
    assert edges == sorted(edges, reverse=True)
    assert view.terms and view.picture.width > 200  # the neuron's terms, a map with its colour scale
    text = circuits.show_circuit("toy", None, 0, 3, "weight", "a red circle", 12)
    assert "text 'a red circle'" in text.info and len(text.paths) == 12


@pytest.mark.slow
def test_the_command_of_a_link_gives_the_views_numbers():
    panel = circuits.circuits_link("toy", "", 1, 5, "", "a red circle", "weight")
    assert panel.query == "tab=circuits&model=toy&layer=1&neuron=5&text=a+red+circle"
    line = next(line for line in panel.markdown.splitlines() if line.startswith("python -m core circuit"))
    assert "--weights-only" in line and "--target 'a red circle'" in line
    out = subprocess.run([sys.executable, *shlex.split(line)[1:], "--json"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cli = {p["head"]: p["weight_edge"] for p in json.loads(out.stdout)["paths"]}
    view = circuits.show_circuit("toy", None, 1, 5, "weight", "a red circle", 8)
    assert {row["path"]: row["edge"] for row in view.paths} == {k: round(v, 5) for k, v in cli.items()}


def test_links_open_the_view_and_bad_heads_get_a_notice():
    linked = circuits.open_link("tab=circuits&model=toy&layer=2&neuron=7&head=3.1", only_tab=True, default_tab="circuits")
    assert linked.applies and linked.view.circuit and "L2.n7" in linked.view.circuit.info
    assert "L3H1" in linked.view.in_edges[0] and linked.view.in_edges[1]
    read = decode("tab=circuits&head=4", tab="circuits", public=False)
    assert read.state.head is None and "LAYER.HEAD" in read.notice_text()
    failed = circuits.open_link("tab=circuits&model=toy&layer=3&neuron=1", only_tab=True, default_tab="circuits")
    assert failed.view is None and "could not be computed" in failed.notice


def test_in_edges_and_errors():
    info, rows = circuits.show_in_edges("toy", None, "2.1", "", 6)
    assert "L2H1" in info and len(rows) == 6 and all(r["neuron"].startswith(("L0.", "L1.")) for r in rows)
    for head in ("0.1", "x", "9.0", ""):
        with pytest.raises(CoreError):
            circuits.show_in_edges("toy", None, head)
    with pytest.raises(CoreError, match="weight or data"):
        circuits.show_circuit("toy", None, 1, 5, "bogus")
    with pytest.raises(CoreError, match="neuron"):
        circuits.show_circuit("toy", None, 1, 384)


def test_public_mode_refuses_folders_and_other_models(monkeypatch):
    from core import settings

    with settings.overridden(public=True):
        with pytest.raises(CoreError, match="ORG/NAME@SHA"):
            circuits.show_circuit("toy", "/etc", 1, 5)
        with pytest.raises(CoreError):
            circuits.show_circuit("ViT-B-32/none", None, 1, 5)


def test_the_neurons_and_heads_tabs_link_here():
    from core.explorer.heads import head_texts
    from core.explorer.neurons import show_neuron

    assert "(?tab=circuits&model=toy&layer=2&neuron=5)" in show_neuron("toy", None, 2, 5).info
    assert "(?tab=circuits&model=toy&head=2.1)" in head_texts("toy", 2, 1).info
    assert "tab=circuits" not in head_texts("toy", 0, 1).info  # heads of layer 0 read no neuron
