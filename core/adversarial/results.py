"""Writing an adversarial run to a folder: images, a CSV of verdicts, the words, the neurons, a summary.

    OUT/images/<method>/r<repeat>/<index>.png
    OUT/results.csv       method, repeat, index, description, seed, verdict, score (margin), cos_present,
                          cos_target, valid, file, scene (the world stand-in's drawn scene as JSON)
    OUT/words.csv         method, repeat, rank, word, score
    OUT/neurons.csv       layer, neuron, projection (the second-order method's neurons)
    OUT/removed_words.csv text, score, reason
    OUT/summary.json      everything else (config, model, stage counts, success rates, timings)

Nothing is ever overwritten: the folder must be new or empty, and every file is created exclusively.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from core.adversarial.pipeline import AdversarialReport
from core import guards
from core.errors import ConfigError

RESULT_COLUMNS = ("method", "repeat", "index", "description", "seed", "verdict", "score", "cos_present", "cos_target",
                  "valid", "file", "scene")


def check_output_folder(out) -> Path:
    """The folder, if it is new or empty; ConfigError if it holds anything (nothing is ever overwritten)."""
    out = guards.check_output_path(Path(out).expanduser(), "output folder")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already holds files; choose a new or empty output folder (nothing is overwritten)")
    return out


def _slug(method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def _open_new(path: Path):
    return open(path, "x", newline="", encoding="utf-8")


def write_results(report: AdversarialReport, out) -> Path:
    """Write the report into `out` (new or empty folder); returns the folder."""
    out = guards.output_folder(check_output_folder(out))
    with _open_new(out / "results.csv") as results, _open_new(out / "words.csv") as words:
        rows, word_rows = csv.writer(results), csv.writer(words)
        rows.writerow(RESULT_COLUMNS)
        word_rows.writerow(("method", "repeat", "rank", "word", "score"))
        for attempt in report.attempts:
            folder = out / "images" / _slug(attempt.method) / f"r{attempt.repeat}"
            folder.mkdir(parents=True, exist_ok=True)
            for rank, (word, score) in enumerate(zip(attempt.words.words, attempt.words.scores), 1):
                word_rows.writerow((attempt.method, attempt.repeat, rank, word, f"{score:.6g}"))
            images = attempt.images
            for i, (image, text, seed, valid) in enumerate(zip(images.images, images.descriptions, images.seeds,
                                                               images.valid)):
                name = folder / f"{i:04d}.png"
                with open(name, "xb") as handle:
                    image.save(handle, format="PNG")
                p, t = attempt.verdicts.cos_present[i], attempt.verdicts.cos_target[i]
                verdict = report.config.target if t > p else report.config.present
                # The world stand-in's ground truth: what it drew (empty for other generators).
                scene = json.dumps(images.notes[i]["scene"], sort_keys=True) if i < len(images.notes) else ""
                rows.writerow((attempt.method, attempt.repeat, i, text, seed, verdict, f"{t - p:.6f}", f"{p:.6f}",
                               f"{t:.6f}", int(valid), name.relative_to(out).as_posix(), scene))
    with _open_new(out / "neurons.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(("layer", "neuron", "projection"))
        writer.writerows((r["layer"], r["neuron"], f"{r['projection']:.6g}") for r in report.selection.rows())
    with _open_new(out / "removed_words.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "score", "reason"))
        writer.writerows((r["text"], f"{r['score']:.6g}", r["reason"]) for r in report.filtered.removed)
    with _open_new(out / "summary.json") as handle:
        json.dump(report.to_json(), handle, indent=2)
        handle.write("\n")
    return out


def write_protocol_report(report: dict, text: str, out) -> Path:
    """A protocol run's report into `out` (new or empty folder): report.json (everything) and report.md (the tables)."""
    out = guards.output_folder(check_output_folder(out))
    with _open_new(out / "report.json") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    with _open_new(out / "report.md") as handle:
        handle.write(text)
    return out
