"""Writing an adversarial run to a folder: images, a CSV of verdicts, the words, the neurons, a summary.

    OUT/images/<method>/r<repeat>/<index>.png
    OUT/results.csv       method, repeat, index, description, seed, verdict, score (margin), cos_present,
                          cos_target, valid, file, scene (the world stand-in's drawn scene as JSON)
    OUT/words.csv         method, repeat, rank, word, score
    OUT/neurons.csv       layer, neuron, projection (the second-order method's neurons)
    OUT/removed_words.csv text, score, reason
    OUT/summary.json      everything else (config, model, stage counts, success rates, timings)

    OUT/.clipscope-adversarial.json  what this run wrote (core.writes)

A protocol run (`--protocol`) writes OUT/report.json (everything) and OUT/report.md (the tables) instead.

Nothing is ever overwritten: the folder must be new or empty (core.writes.OutputFolder).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from core import guards
from core.adversarial.pipeline import AdversarialReport
from core.writes import OutputFolder

RESULT_COLUMNS = ("method", "repeat", "index", "description", "seed", "verdict", "score", "cos_present", "cos_target",
                  "valid", "file", "scene")


def check_output_folder(out) -> Path:
    """The folder, if it is new or empty; OutputError if it holds anything (nothing is ever overwritten)."""
    out = guards.check_output_path(Path(out).expanduser(), "output folder")
    OutputFolder(out, "adversarial", require="empty")  # checks only: created on the first write
    return out


def _slug(method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_results(report: AdversarialReport, out, *, server_folder: bool = False) -> Path:
    """Write the report into `out` (new or empty folder; its manifest lists every file); returns the folder.

    server_folder: `out` is a new folder the server itself made (a session's download), not a path a user named, so
    the user-path rules (none at all in public mode) do not apply to it."""
    target = Path(out) if server_folder else check_output_folder(out)
    folder = OutputFolder(target, "adversarial", require="empty", what="output folder")
    rows, word_rows = [], []
    for attempt in report.attempts:
        images_dir = f"images/{_slug(attempt.method)}/r{attempt.repeat}"
        for rank, (word, score) in enumerate(zip(attempt.words.words, attempt.words.scores), 1):
            word_rows.append((attempt.method, attempt.repeat, rank, word, f"{score:.6g}"))
        images = attempt.images
        for i, (image, text, seed, valid) in enumerate(zip(images.images, images.descriptions, images.seeds,
                                                           images.valid)):
            name = f"{images_dir}/{i:04d}.png"
            folder.write_image(name, image, save=False)
            p, t = attempt.verdicts.cos_present[i], attempt.verdicts.cos_target[i]
            verdict = report.config.target if t > p else report.config.present
            # The world stand-in's ground truth: what it drew (empty for other generators).
            scene = json.dumps(images.notes[i]["scene"], sort_keys=True) if i < len(images.notes) else ""
            rows.append((attempt.method, attempt.repeat, i, text, seed, verdict, f"{t - p:.6f}", f"{p:.6f}",
                         f"{t:.6f}", int(valid), name, scene))
    folder.write_text("results.csv", _csv(RESULT_COLUMNS, rows), save=False)
    folder.write_text("words.csv", _csv(("method", "repeat", "rank", "word", "score"), word_rows), save=False)
    folder.write_text("neurons.csv", _csv(("layer", "neuron", "projection"), (
        (r["layer"], r["neuron"], f"{r['projection']:.6g}") for r in report.selection.rows())), save=False)
    folder.write_text("removed_words.csv", _csv(("text", "score", "reason"), (
        (r["text"], f"{r['score']:.6g}", r["reason"]) for r in report.filtered.removed)), save=False)
    folder.write_text("summary.json", json.dumps(report.to_json(), indent=2) + "\n", save=False)
    folder.save()
    return folder.path


def write_protocol_report(report: dict, text: str, out) -> Path:
    """A protocol run's report into `out` (new or empty folder; its manifest lists both files): report.json
    (everything) and report.md (the tables)."""
    folder = OutputFolder(check_output_folder(out), "adversarial", require="empty", what="output folder")
    folder.write_text("report.json", json.dumps(report, indent=2) + "\n", save=False)
    folder.write_text("report.md", text, save=False)
    folder.save()
    return folder.path
