"""The workbench features of the tabs' logic (core.explorer), without Gradio: retrieval without the query, views
that lead to each other, segmentation scored on a user's own masks, mean ablation on the toy world's groups."""

from __future__ import annotations

import pytest

from core.explorer.heads import WORLD, retrieve_similar


def test_retrieval_leaves_out_the_query_example_from_the_world_gallery():
    kept = retrieve_similar("toy", None, "example:2", 3, 1, WORLD, None, None, 4, "cosine", "paper",
                            exclude_query=False)
    left = retrieve_similar("toy", None, "example:2", 3, 1, WORLD, None, None, 4, "cosine", "paper",
                            galleries=kept.galleries)
    assert kept.items[0][1].endswith("+1.0000")  # example 2 is in the gallery: it finds itself first
    assert [caption.split(" ", 1)[1] for _, caption in left.items[:3]] == \
        [caption.split(" ", 1)[1] for _, caption in kept.items[1:]]
    assert "left out" in left.info and "kept" in kept.info


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, desc=None):
        self.calls.append((fraction, desc))

    def tqdm(self, iterable, total=None, desc=None):  # never used: Passes draws one bar
        raise AssertionError("a pass must not start a bar of its own")


def test_one_overall_bar_with_a_time_estimate_across_passes():
    from core.explorer.passes import Passes

    now = [0.0]
    recorder = Recorder()
    passes = Passes(recorder, [("loading the model", 1), ("encoding the text pool", 1), ("head outputs", 8)],
                    clock=lambda: now[0])
    passes(0.5, desc="loading model toy")  # a report within pass 1
    now[0] = 1.0
    passes(0.1, desc="encoding the text pool")  # names pass 2: it begins
    for _ in passes.tqdm(range(4), total=4, desc="head outputs"):
        now[0] += 2.0
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)  # one bar, never going back
    assert fractions[:3] == pytest.approx([0.05, 0.1, 0.2])
    assert "pass 3 of 3" in recorder.calls[-1][1] and "pass 1 of 3" in recorder.calls[0][1]
    # halfway through the last pass: 60 % done after 5 s, so about 3 s left
    assert recorder.calls[-3][0] == pytest.approx(0.6) and "about 3 s left" in recorder.calls[-3][1]


def test_segmentation_and_retrieval_report_one_bar():
    from core.explorer.segmentation import segment

    recorder = Recorder()
    segment("toy", None, "example:0", "a green cross", "", "heads", "rollout", progress=recorder)
    fractions = [f for f, _ in recorder.calls]
    assert fractions == sorted(fractions) and len(fractions) >= 4
    assert any("segmenting with rollout (pass 3 of 4)" in d for _, d in recorder.calls)
    recorder = Recorder()
    retrieve_similar("toy", None, "example:1", 3, 0, WORLD, None, None, 3, "cosine", "paper", progress=recorder)
    assert [f for f, _ in recorder.calls] == sorted(f for f, _ in recorder.calls)
    assert any("indexing the gallery (pass 2 of 3)" in d for _, d in recorder.calls)


@pytest.mark.slow  # the exhaustive baseline (8,008 head sets) and 700 scenes: ~20 s on 2 cores
def test_mean_ablation_panel_gives_the_toy_removal_numbers(capsys):
    """The panel's numbers are `python -m core toy removal`'s, for heads named by a label and for typed heads; the
    background heads' ablation lifts the worst group above almost every random head set (the planted cue)."""
    import json

    from core.cli import main
    from core.explorer.ablation import measure_ablation
    from core.links.codec import decode

    view = measure_ablation("toy-biased", "", "background", per_group=30)
    assert main(["toy", "removal", "--model", "toy-biased", "--n", "30", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert view.summary[0]["worst group %"] == round(100 * cli["base"]["worst_group"], 2)
    assert view.summary[1]["worst group %"] == round(100 * cli["ablated"]["worst_group"], 2)
    assert view.summary[1]["overall %"] == round(100 * cli["ablated"]["overall"], 2)
    assert [list(h) for h in view.report.heads] == cli["heads"]
    assert view.summary[1]["worst group %"] > view.summary[0]["worst group %"]  # the planted cue's carriers
    assert view.summary[4]["worst group %"] >= 90  # against every set of as many heads
    assert "python -m core toy removal --model toy-biased --n 30" in view.info
    state = decode(view.link.query, tab="heads").state
    assert state.ablate == "label:background" and state.images == 30

    typed = measure_ablation("toy-biased", "3.1, 3.3", "", per_group=30)
    command = next(line for line in typed.link.markdown.splitlines() if "toy removal" in line)
    assert command.endswith("--heads 3.1,3.3")
    assert main(command.split()[3:] + ["--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["heads"] == [[3, 1], [3, 3]]
    assert typed.summary[1]["worst group %"] == round(100 * cli["ablated"]["worst_group"], 2)
    assert typed.report.baseline.summary()["sets"] == 6  # every pair of heads from layer 3 on (C(4, 2))
    assert {row["group"] for row in typed.groups} == set(typed.report.group_names) and len(typed.groups) == 4
