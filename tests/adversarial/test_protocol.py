"""The adversarial protocol: a versioned file fixes every setting; a run covers every planted cue in both directions,
every seed and draw, with intervals and the model's own confusion rates; bad files are one-line errors."""

import copy
import json
import shlex

import pytest

from core.adversarial.protocol import (KIND, PROTOCOL_DIR, load_protocol, planted_directions, t_interval,
                                       wilson_interval)
from core.cli import main
from core.errors import ConfigError
from core.world.bias import PlantedBias

V1 = PROTOCOL_DIR / "v1.json"
RAW = json.loads(V1.read_text())


def _write(tmp_path, data, name="p.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def _tiny(**top) -> dict:
    """v1 with a tiny budget: what the tests can afford; every other setting as shipped."""
    data = copy.deepcopy(RAW)
    data.update(seeds=[0, 1], draws=2, confusion={"images_per_background": 20, "seed": 7})
    data["settings"].update(images=6, descriptions=3)
    data["sensitivity"] = [s for s in data["sensitivity"] if s["name"] == "background scoped to its object"]
    data.update(top)
    return data


def test_the_shipped_protocol_meets_the_issue_s_minimums():
    protocol = load_protocol("v1")
    assert protocol.version == 1 and protocol.path == str(V1) and len(protocol.sha256) == 64
    assert len(protocol.seeds) >= 5 and protocol.draws >= 10 and protocol.cue_top_k == 5
    assert protocol.confidence == 0.95 and protocol.main.images == 100
    # the renderer's result-changing rules each have a sensitivity setting, and each changes what it names only
    changed = {key for s in protocol.sensitivity for key in s.changes.get("renderer", {})}
    assert {"unnamed_size", "background_scope", "word_scope"} <= changed
    assert any(s.neurons != protocol.main.neurons for s in protocol.sensitivity)
    main_json = protocol.main.to_json()
    for setting in protocol.sensitivity:
        differs = {k for k, v in setting.to_json().items() if main_json[k] != v} - {"name", "why", "changes"}
        assert differs == set(setting.changes), setting.name
    assert load_protocol(str(V1)).sha256 == protocol.sha256  # by name or by path


def test_directions_are_every_ordered_pair_of_planted_shapes():
    bias = PlantedBias.parse("triangle:dotted,square:striped")
    assert planted_directions(bias) == [("triangle", "square", "striped"), ("square", "triangle", "dotted")]
    assert len(planted_directions(PlantedBias.parse("circle:pink,star:brown,cross:gray"))) == 6


def test_intervals_against_literal_formulas():
    from scipy import stats

    values = [0.2, 0.4, 0.5, 0.9]
    lo, hi = t_interval(values, 0.95)
    mean, sd = sum(values) / 4, (sum((v - 0.5) ** 2 for v in values) / 3) ** 0.5
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert lo == pytest.approx(mean - half) and hi == pytest.approx(mean + half)
    assert t_interval([0.3], 0.95) is None
    lo, hi = wilson_interval(0, 20, 0.95)
    assert lo == 0 and hi == pytest.approx(0.1611, abs=1e-4)  # the textbook Wilson upper bound for 0/20
    lo, hi = wilson_interval(10, 20, 0.95)
    assert lo == pytest.approx(1 - hi) and hi == pytest.approx(0.7007, abs=1e-4)  # 10/20: [0.2993, 0.7007]


@pytest.mark.parametrize("edit, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: {**d, "kind": "something else"}, "not an adversarial protocol"),
    (lambda d: {**d, "colour": 1}, "unknown key 'colour'"),
    (lambda d: {k: v for k, v in d.items() if k != "seeds"}, "missing key 'seeds'"),
    (lambda d: {**d, "seeds": [3]}, "seeds must be"),
    (lambda d: {**d, "seeds": [1, 1, 2]}, "seeds must be"),
    (lambda d: {**d, "draws": 1}, "draws must be"),
    (lambda d: {**d, "draws": 11}, "draws must be"),
    (lambda d: {**d, "confidence": 1.5}, "confidence must be"),
    (lambda d: {**d, "settings": {**d["settings"], "neurons": 0}}, "neurons must be"),
    (lambda d: {**d, "settings": {**d["settings"], "templates": "fancy"}}, "templates must be"),
    (lambda d: {**d, "settings": {**d["settings"], "renderer": {"unnamed_size": "huge", "word_scope": "own-object",
                                                                "background_scope": "scene"}}}, "unnamed_size must be"),
    (lambda d: {**d, "settings": {k: v for k, v in d["settings"].items() if k != "words"}}, "missing setting 'words'"),
    (lambda d: {**d, "sensitivity": [{"name": "same", "change": {"neurons": d["settings"]["neurons"]}}]},
     "changes nothing"),
    (lambda d: {**d, "sensitivity": [{"name": "main", "change": {"neurons": 3}}]}, "a name of its own"),
    (lambda d: {**d, "sensitivity": [{"name": "x", "change": {"renderer": {"size": "small"}}}]}, "unknown key 'size'"),
])
def test_a_bad_protocol_file_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    path = _write(tmp_path, edit(copy.deepcopy(RAW)))
    with pytest.raises(ConfigError, match=message):
        load_protocol(path)
    assert main(["adversarial", "--protocol", path, "--model", "toy-biased"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: protocol ") and err.count("\n") == 1 and "Traceback" not in err


def test_protocol_command_refuses_what_the_file_fixes_and_models_without_cues(tmp_path, capsys):
    assert main(["adversarial", "--protocol", "v1", "--model", "toy-biased", "--neurons", "5"]) == 2
    assert "drop --neurons" in capsys.readouterr().err
    assert main(["adversarial", "--protocol", "v1", "--model", "toy-biased", "--unnamed-size", "random"]) == 2
    assert "drop --unnamed-size" in capsys.readouterr().err
    assert main(["adversarial", "--protocol", str(tmp_path / "missing.json"), "--model", "toy-biased"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--public", "adversarial", "--protocol", str(V1), "--model", "toy-biased"]) == 2  # a server path
    assert "does not read or write server paths" in capsys.readouterr().err
    assert main(["adversarial", "--protocol", _write(tmp_path, _tiny()), "--model", "toy"]) == 2
    assert "records no planted bias" in capsys.readouterr().err
    assert main(["adversarial", "--model", "toy-biased", "--present", "square"]) == 2
    assert "--target and --out required" in capsys.readouterr().err
    assert main(["adversarial", "--protocol", _write(tmp_path, _tiny(), "q.json"), "--model", "toy-biased",
                 "--protocol-settings", "nonsense"]) == 2
    assert "unknown protocol setting 'nonsense'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_protocol_run_covers_every_direction_seed_and_draw_with_intervals(tmp_path, capsys):
    path = _write(tmp_path, _tiny())
    out = tmp_path / "report"
    assert main(["adversarial", "--protocol", path, "--model", "toy-biased", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "report.json").read_text())["settings"] == report["settings"]
    text = (out / "report.md").read_text()
    assert "square -> triangle (dotted)" in text and "triangle -> square (striped)" in text and "Sensitivity" in text
    # the cues come from the checkpoint, both directions of the pair
    assert report["planted"]["pairs"] == [["triangle", "dotted"], ["square", "striped"]]
    assert [s["name"] for s in report["settings"]] == ["main", "background scoped to its object"]
    for setting in report["settings"]:
        assert [(d["present"], d["target"], d["cue"]) for d in setting["directions"]] == [
            ("triangle", "square", "striped"), ("square", "triangle", "dotted")]
        for direction in setting["directions"]:
            assert [r["seed"] for r in direction["runs"]] == [0, 1]
            for run in direction["runs"]:
                for method in ("second-order", "random neurons", "similar words"):
                    row = run["methods"][method]
                    assert row["n"] == 2 and len(row["values"]) == 2 and len(row["ci"]) == 2
                    assert 0 <= row["ci"][0] <= row["mean"] <= row["ci"][1] <= 1
                    assert row["on_cue"] + row["off_cue"] == sum(row["valid_images"])
                assert run["above_random"] == (run["methods"]["second-order"]["mean"] >
                                               run["methods"]["random neurons"]["mean"])
            summary = direction["summary"]
            assert summary["runs"] == 2 and summary["second-order"]["n"] == 2 and summary["random_draws"] == 4
            # the model's own confusion, ground truth of the planted bias: the present shape on the target's planted
            # background is called the target far more often than on its own planted background
            confusion = direction["confusion"]
            assert set(confusion["per_background"]) == {"gray", "brown", "pink", "striped", "dotted", "checkered",
                                                         "unnamed"}
            assert confusion["cue"] >= 0.8 and confusion["own"] <= 0.2, confusion
            assert confusion["ordinary_backgrounds"] == ["gray", "brown", "pink", "checkered"]
    assert report["targets"]["runs"] == 4 and report["protocol"]["sha256"] and report["run"]["cpu_seconds"] > 0
    # the background-scope rule changes what is drawn: the main setting's words put squares on dotted backgrounds
    # through other objects' phrases ("a star on a dotted background"), which the scoped rule ignores
    main_, scoped = (next(d for d in s["directions"] if d["present"] == "square") for s in report["settings"])
    assert main_["summary"]["on_cue_share"]["second-order"] > scoped["summary"]["on_cue_share"]["second-order"]

    # each run is exactly the command it records
    run = report["settings"][0]["directions"][1]["runs"][1]
    argv = shlex.split(run["command"])[3:] + ["--out", str(tmp_path / "single"), "--json"]
    assert main(argv) == 0
    single = json.loads(capsys.readouterr().out)["summary"]
    for method in ("second-order", "random neurons", "similar words"):
        assert single[method]["successes"] == run["methods"][method]["successes"], method


@pytest.mark.parametrize("model", ["toy-biased", "toy-biased-2"])
def test_the_protocol_s_words_name_every_planted_cue_in_the_top_k(model):
    """Ground truth: each target's planted background (read from the checkpoint) is among the top words of the
    protocol's main setting, in both directions, on both planted-bias models. Words depend on no seed."""
    from core.adversarial.directions import class_direction
    from core.adversarial.neurons import layer_bases, top_neurons
    from core.adversarial.protocol import cue_rank
    from core.adversarial.words import filter_words, score_words, top_words
    from core.engine.models import load_clip
    from core.world.bias import planted_bias_of

    protocol, bundle = load_protocol("v1"), load_clip(model)
    setting = protocol.main
    bases = layer_bases(bundle, None, setting.layers)
    for present, target, cue in planted_directions(planted_bias_of(bundle)):
        v = class_direction(bundle, present, target).v
        scored = score_words(top_neurons(v, bases, setting.neurons), bases, per_pair=setting.per_pair)
        kept = filter_words(load_clip(setting.similarity_model), scored, target, threshold=setting.similarity)
        words = top_words(kept, setting.words).words
        rank = cue_rank(words, cue)
        assert rank is not None and rank <= protocol.cue_top_k, (present, target, words[:8])
        assert not any(target in w.split() for w in words)
