"""`python -m core adversarial`: the files it writes, --json, and one-line errors for every bad input."""

import csv
import json

import pytest

from core.cli import main

FAST = ["--model", "toy", "--images", "6", "--descriptions", "3", "--repeats", "1"]


def test_writes_images_csv_and_summary_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "adv"
    assert main(["adversarial", *FAST, "--present", "square", "--target", "triangle", "--baselines", "--out",
                 str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["present"] == "square" and summary["target"] == "triangle"
    assert set(summary["summary"]) == {"second-order", "random neurons", "similar words"}
    assert "offline stand-in" in summary["generator"] and summary["stage_counts"]["images"] == 6
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18 and {r["method"] for r in rows} == {"second-order", "random neurons", "similar words"}
    for row in rows:
        assert (out / row["file"]).is_file() and row["verdict"] in ("square", "triangle")
        assert (row["verdict"] == "triangle") == (float(row["score"]) > 0)
        assert "triangle" not in row["description"].lower()
    assert (out / "words.csv").is_file() and (out / "neurons.csv").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["config"]["images"] == 6 and saved["config"]["neurons"] == len(saved["neurons"]) == 19
    before = sorted(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file())
    assert main(["adversarial", *FAST, "--present", "square", "--target", "triangle", "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()) == before


def test_progress_and_table_in_text_mode(tmp_path, capsys):
    assert main(["adversarial", *FAST, "--present", "circle", "--target", "star", "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "neurons: 19 from layers [0, 1, 2] by |<v, r_n>| (the default for a 96-dimension embedding" in captured.err
    assert "repeat 1/1 second-order" in captured.err
    assert "second-order" in captured.out and "stage counts" in captured.out
    # an explicit count is kept as given, on any model
    assert main(["adversarial", *FAST, "--present", "circle", "--target", "star", "--neurons", "100",
                 "--out", str(tmp_path / "p")]) == 0
    assert "neurons: 100 from layers [0, 1, 2] by |<v, r_n>|\n" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--present", "square", "--target", "Square"], "same"),
    (["--present", "square", "--target", "\x00\x00"], "tokenizes to nothing"),
    (["--present", "square", "--target", "triangle", "--layers", "3"], "not 3"),
    (["--present", "square", "--target", "triangle", "--similarity", "-1"], "no words left after filtering"),
    (["--present", "square", "--target", "triangle", "--generator", "sd"], "hf download stabilityai/sd-turbo"),
    (["--present", "square", "--target", "triangle", "--generator", "dalle"], "unknown generator"),
    (["--present", "square", "--target", "triangle", "--images", "0"], "images must be"),
    (["--present", "dog", "--target", "cat"], "draws only the world's shapes"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, arguments, message):
    assert main(["adversarial", *FAST, *arguments, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and err.splitlines()[-1] == errors[0], err


def test_no_bases_for_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLIPSCOPE_BASES", "")
    assert main(["adversarial", "--model", "Tiny-ViT/none", "--present", "square", "--target", "triangle",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no neuron bases are configured" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
