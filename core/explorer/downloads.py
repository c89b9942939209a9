"""What a tab's "Download" button gives: the view's numbers in the files researchers load, with their provenance.

Every download is one zip archive named for the view, holding the data files and `provenance.json` (model,
device, bases, text pool, image, convention, unit, the link of the view and the commands that give the same
numbers). JSON data files carry the same provenance under a "provenance" key.

    decomposition  decomposition.json   `python -m core decompose --json`'s objects (one per text; raw cosines), each
                                        with "device" and "provenance"
                   decomposition.csv    text, component, layer, head, contribution in the tab's unit
    heads/neurons/circuits              one CSV per table the tab shows (its columns and rounding, its unit)
    segmentation   <method>/            what `python -m core segment` writes (maps .npy, map/mask/overlay PNGs,
                                        labels, segment.json), per method shown; truth_mask.png and iou.csv
                                        for generated-world images

No file names a server path: texts are cut by core.messages.without_paths, and bases by display_source.
Archives go in the folder the caller names (the UI: the visitor's session folder, removed with the session).

>>> path = decomposition_archive(view, session_folder)
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from core import settings
from core.errors import ConfigError
from core.messages import display_source, without_paths

PROVENANCE_FILE = "provenance.json"
_CODE_BLOCK = re.compile(r"```bash\n(.*?)\n```", re.S)
_LINK = re.compile(r"\*\*Link to this view:\*\* `\?([^`]*)`")
_MARKUP = re.compile(r"\*\*|`|\\\n|  \n")


# ---------------------------------------------------------------- provenance

def commands_of(cite_markdown: str | None) -> list[str]:
    """The command lines of a 'Cite / reproduce' panel (core.explorer.common.link_panel's markdown)."""
    found = _CODE_BLOCK.search(cite_markdown or "")
    if not found or found.group(1).startswith("(no command"):
        return []
    return [line for line in found.group(1).splitlines() if line.strip()]


def plain(markdown: str | None) -> str:
    """Markdown as plain text without server paths (for a provenance note)."""
    return without_paths(_MARKUP.sub(lambda m: "\n" if m.group(0) in ("\\\n", "  \n") else "", markdown or "")).strip()


def provenance(tab: str, query: str | None, cite_markdown: str | None = None, *, notes: Iterable[str] = (),
               pool: str | None = None, bases: str | None = None, device: str | None = None,
               unit: str | None = None, extra: Mapping | None = None) -> dict:
    """What produced a view, from its link (model, image, convention, bases) and its reproduce panel (commands).

    `query`: the view's link (what follows `?`); `notes`: the tab's info texts (Markdown), kept as plain text."""
    from core.links.codec import decode

    state = decode(query or "", tab=tab).state if query else None
    link = query if query is not None else (_LINK.search(cite_markdown or "") or [None, None])[1]
    record = {
        "tab": tab,
        "model": getattr(state, "model", None),
        "device": device or str(settings.resolve_device()),
        "bases": display_source(bases) if bases else (getattr(state, "bases", None) or None),
        "text_pool": without_paths(pool) if pool else None,
        "image": getattr(state, "image", None),
        "texts": list(getattr(state, "texts", ()) or ()),
        "convention": getattr(state, "convention", None),
        "unit": unit,
        "link": f"?{link}" if link else None,
        "commands": commands_of(cite_markdown),
        "notes": [text for text in (plain(note) for note in notes) if text],
        "clipscope": _version(),
    }
    if extra:
        record.update({key: _public(value) for key, value in extra.items()})
    return record


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("clipscope")
    except Exception:  # noqa: BLE001 - not installed as a package: the source tree's version
        import core

        return getattr(core, "__version__", "unknown")


def _public(value):
    if isinstance(value, str):
        return without_paths(value)
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_public(v) for v in value]
    return value


# ---------------------------------------------------------------- files

def csv_text(rows, columns: list[str] | None = None) -> str:
    """Rows (dicts, or a pandas DataFrame) as CSV text with a header; numbers as they are (no re-rounding)."""
    if hasattr(rows, "to_dict"):  # a DataFrame, as a table component holds it
        columns = columns or [str(c) for c in rows.columns]
        rows = rows.to_dict("records")
    rows = list(rows or [])
    columns = columns or (list(rows[0]) if rows else [])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def _cell(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    return without_paths(value) if isinstance(value, str) else value


def slug(text: str, limit: int = 48) -> str:
    cleaned = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return cleaned[:limit].strip("-") or "view"


def write_archive(folder: str | Path, name: str, files: Mapping[str, object], record: dict) -> Path:
    """A zip of `files` (name -> str, bytes, numpy array or PIL image) and provenance.json, in a new folder below
    `folder`; returns its path. Names are relative; nothing outside the archive is written."""
    from core.writes import atomic_write_bytes

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel, content in files.items():
            if rel.startswith("/") or ".." in Path(rel).parts:
                raise ConfigError(f"not a file name inside an archive: {rel!r}")
            archive.writestr(rel, _bytes(content))
        archive.writestr(PROVENANCE_FILE, json.dumps(record, indent=2) + "\n")
    target = Path(tempfile.mkdtemp(prefix="download-", dir=Path(folder))) / f"{slug(name)}.zip"
    return atomic_write_bytes(target, buffer.getvalue())


def _bytes(content) -> bytes:
    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode("utf-8")
    if isinstance(content, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, content, allow_pickle=False)
        return buffer.getvalue()
    if hasattr(content, "save"):  # a PIL image
        buffer = io.BytesIO()
        content.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"cannot write {type(content).__name__} into an archive")


def read_archive(path: str | Path) -> dict[str, bytes]:
    """Every file of an archive this module wrote (tests, and anyone checking a download)."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# ---------------------------------------------------------------- tabs

def tables_archive(folder, tab: str, name: str, tables: Mapping[str, object], query: str | None,
                   cite_markdown: str | None, *, notes: Iterable[str] = (), pool: str | None = None,
                   bases: str | None = None, unit: str | None = None) -> Path:
    """The tables a tab shows (name -> rows or DataFrame) as CSV files, with the view's provenance."""
    files = {f"{slug(table)}.csv": csv_text(rows) for table, rows in tables.items() if _has_rows(rows)}
    if not files:
        raise ConfigError("Nothing to download yet: compute a view first.")
    record = provenance(tab, query, cite_markdown, notes=notes, pool=pool, bases=bases, unit=unit)
    record["files"] = sorted(files)
    return write_archive(folder, name, files, record)


def view_name(tab: str, query: str | None) -> str:
    """A file name for a view: the tab and what its link names (model, layer, head, neuron, image)."""
    from core.links.codec import decode

    if not query:
        return tab
    state = decode(query, tab=tab).state
    parts = [tab, state.model]
    for name in ("layer", "head", "neuron"):
        value = getattr(state, name)
        if value is not None:
            parts.append(f"{name[0].upper()}{value}")
    parts.append(state.image)
    return "-".join(str(p) for p in parts if p)


def _has_rows(rows) -> bool:
    if rows is None:
        return False
    return len(rows) > 0


def decomposition_files(view) -> tuple[dict[str, str], dict]:
    """(files, provenance) of a DecompositionView: the `decompose --json` objects and a long CSV."""
    from core.explorer.common import UNIT, UNIT_NAME

    result = view.result
    record = provenance("decomposition", view.link.query, view.link.markdown, notes=[view.info],
                        pool=f"the typed texts ({len(result.texts)})", unit=f"JSON: raw cosine; CSV: {UNIT_NAME}",
                        extra={"image_description": view.image_description,
                               "reconstruction_error": float(result.reconstruction_error)})
    objects = [{**item, "device": record["device"], "provenance": record} for item in result.to_json()]
    column = f"contribution ({UNIT_NAME})"
    rows = []
    n_layers, n_heads = result.heads.shape[:2]
    for t, text in enumerate(result.texts):
        rows.append({"text": text, "component": "total (cosine)", "layer": "", "head": "",
                     column: float(result.cosine[t]) * UNIT})
        rows.append({"text": text, "component": "embedding", "layer": "", "head": "",
                     column: float(result.embedding_term[t]) * UNIT})
        for layer in range(n_layers):
            rows.append({"text": text, "component": f"MLP L{layer}", "layer": layer, "head": "",
                         column: float(result.mlps[layer, t]) * UNIT})
            for head in range(n_heads):
                rows.append({"text": text, "component": f"L{layer}.H{head}", "layer": layer, "head": head,
                             column: float(result.heads[layer, head, t]) * UNIT})
    files = {"decomposition.json": json.dumps(objects, indent=2) + "\n",
             "decomposition.csv": csv_text(rows, ["text", "component", "layer", "head", column])}
    return files, record


def decomposition_archive(view, folder) -> Path:
    if view is None:
        raise ConfigError("Decompose an image first.")
    files, record = decomposition_files(view)
    record = {**record, "files": sorted(files)}
    return write_archive(folder, f"decomposition-{view.image_ref}", files, record)


def segmentation_files(view) -> tuple[dict[str, object], dict]:
    """(files, provenance) of a SegmentationView: per shown method, what `python -m core segment` writes."""
    from core.segmentation.files import segmentation_outputs
    from core.segmentation.segment import iou

    record = provenance("segmentation", view.link.query, view.link.markdown, notes=[view.info],
                        unit="maps: min-max scaled scores in [0, 1]; cos(image, text): raw cosine",
                        extra={"image_description": view.image_description})
    files: dict[str, object] = {}
    background_text = view.texts[view.background] if view.background is not None else None
    for method in view.methods:
        result = view.results[method]
        outputs, names = segmentation_outputs(result, background=view.background, threshold=view.threshold)
        segment_json = {**result.settings(), "image": view.image_ref, "background_text": background_text,
                        "threshold_shown": view.threshold, "files": names, "provenance": record}
        files.update({f"{slug(method)}/{rel}": content for rel, content in outputs.items()})
        files[f"{slug(method)}/segment.json"] = json.dumps(_public(segment_json), indent=2, default=_json_default)
    if view.truth is not None:
        truth, name = view.truth
        files["truth_mask.png"] = _mask_png(truth)
        rows = []
        for i, text in enumerate(view.texts):
            # as the tab shows it: the background text's mask against the true background, the others the object
            is_background = view.background is not None and i == view.background
            target = ~truth if is_background else truth
            rows.append({"text": text, "scored against": "the true background" if is_background else "the true object",
                         **{f"IoU {m}": iou(view.results[m].masks(view.threshold)[i], target) for m in view.methods}})
        files["iou.csv"] = csv_text(rows)
        record = {**record, "truth": name}
    return files, record


def _mask_png(mask: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def segmentation_archive(view, folder) -> Path:
    if view is None:
        raise ConfigError("Segment an image first.")
    files, record = segmentation_files(view)
    record = {**record, "files": sorted(files)}
    return write_archive(folder, f"segmentation-{view.image_ref}", files, record)


def adversarial_archive(report, folder, *, query: str | None = None, cite_markdown: str | None = None) -> Path:
    """An adversarial run as `python -m core adversarial --out` writes it (core.adversarial.results), its
    summary's bases as anyone may see them, and provenance.json (the run's link and command)."""
    import shutil

    from core.adversarial.results import write_results
    from core.explorer.adversarial import _panel, short_path, state_of

    if report is None:
        raise ConfigError("Run the generator first.")
    if query is None:
        panel = _panel(state_of(report.config, report.model["spec"]), None)
        query, cite_markdown = panel.query, panel.markdown
    work = Path(tempfile.mkdtemp(prefix="adversarial-", dir=Path(folder)))
    try:
        write_results(report, work / "results", server_folder=True)
        files = {}
        for path in sorted((work / "results").rglob("*")):
            rel = path.relative_to(work / "results").as_posix()
            if path.is_file() and not rel.startswith(".clipscope"):  # the folder's manifest: not part of a download
                files[rel] = path.read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = json.loads(files["summary.json"])
    summary["bases"] = short_path(summary["bases"]) if summary.get("bases") else None
    record = provenance("adversarial", query, cite_markdown, bases=summary["bases"], unit="raw cosine (margins)",
                        extra={"generator": report.generator})
    summary["provenance"] = record
    files["summary.json"] = json.dumps(_public(summary), indent=2) + "\n"
    record = {**record, "files": sorted(files)}
    return write_archive(folder, f"adversarial-{report.config.present}-to-{report.config.target}", files, record)
