"""The Hub dataset card (README.md) of a bases artifact: YAML front matter, contents, provenance, metrics.

Generated from the manifest by `ArtifactWriter.finalize` (core.artifacts.store) and by a push that lacks one.
It needs nothing from the store or the Hub module, so neither imports the other through it.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD_LICENSE = "mit"
CARD_TAGS = ["clipscope", "clip", "open_clip", "interpretability"]
SHOWN_TENSORS = 8  # per group in the card; the rest are counted


def dataset_card(folder: Path, manifest: dict) -> str:
    """README.md for the artifact in `folder`: YAML front matter (parquet tables as viewer configs), then
    what it holds, how it was built and the numbers measured while building."""
    from huggingface_hub import DatasetCardData

    tables = sorted(rel for rel in manifest["files"] if rel.startswith("tables/"))
    configs = [{"config_name": Path(rel).stem, "data_files": rel} for rel in tables]
    data = DatasetCardData(license=CARD_LICENSE, tags=CARD_TAGS, pretty_name=f"clipscope bases for "
                           f"{manifest['model']['spec']}", configs=configs or None)
    sections = [f"---\n{data.to_yaml()}\n---", _card_intro(manifest), _card_contents(folder, manifest),
                _card_provenance(manifest), _card_metrics(manifest), _card_usage()]
    return "\n\n".join(part for part in sections if part) + "\n"


def _card_intro(manifest: dict) -> str:
    return (f"# clipscope bases for `{manifest['model']['spec']}`\n\nPrecomputed interpretability results for "
            "this CLIP image encoder, so the clipscope head and neuron explorers answer at once without a GPU "
            "or an image set. Every data file's sha256 is in `manifest.json` and is checked on load."
            + (f"\n\n{manifest['notes']}" if manifest.get("notes") else ""))


def _card_contents(folder: Path, manifest: dict) -> str:
    rows = ["## What\n", "| file | bytes | contents |", "|---|---:|---|"]
    for rel, record in sorted(manifest["files"].items()):
        rows.append(f"| `{rel}` | {record['bytes']:,} | {_describe_file(folder / rel)} |")
    return "\n".join(rows)


def _describe_file(path: Path) -> str:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            names = sorted(handle.keys())
            shapes = [f"{name} {handle.get_slice(name).get_dtype()}{handle.get_slice(name).get_shape()}"
                      for name in names[:SHOWN_TENSORS]]
        more = f", and {len(names) - SHOWN_TENSORS} more" if len(names) > SHOWN_TENSORS else ""
        return "; ".join(shapes) + more
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_metadata(path).num_rows
        return f"table, {rows} row(s): {', '.join(pq.read_schema(path).names)}"
    return "JSON"


def _card_provenance(manifest: dict) -> str:
    model, pool, images = manifest["model"], manifest.get("text_pool"), manifest.get("image_set")
    lines = ["## How\n",
             f"- model: `{model['spec']}` (arch `{model['arch']}`, pretrained `{model['pretrained']}`, "
             f"random init {model['random_init']}), weights sha256 `{model['weights_sha256']}`, "
             f"open_clip {model.get('open_clip_version')}",
             f"- text pool: {pool['name']!r}, {pool['count']} texts, sha256 `{pool['sha256']}`" if pool
             else "- text pool: none",
             f"- image set: {images['description']} ({images['count']} images)" if images else "- image set: none",
             f"- convention: `{manifest['convention']}`"]
    lines += [f"- {name}: `{json.dumps(params, sort_keys=True)}`" for name, params in manifest["algorithms"].items()]
    lines.append(f"- built {manifest['created']} by clipscope {manifest['project_version']} "
                 f"(bases schema {manifest['schema_version']})")
    return "\n".join(lines)


def _card_metrics(manifest: dict) -> str:
    metrics = manifest.get("metrics")
    if not metrics:
        return ""
    return "\n".join(["## Numbers measured while building\n", "| metric | value |", "|---|---:|",
                      *(f"| {name} | {value:.6g} |" for name, value in metrics.items())])


def _card_usage() -> str:
    return ("## Use\n\n```python\nfrom core.artifacts.hub import load_bases\n\n"
            "bases = load_bases(\"ORG/NAME@<commit sha>\", expect_model=...)  # verifies every file\n"
            "```\n\nCheck a local copy with `python -m core bases verify DIR`.")
