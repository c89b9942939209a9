"""Precomputed bases: one versioned folder per model, written once, verified on every load.

An artifact folder holds
    manifest.json                 identity, parameters and the sha256 and size of every data file
    README.md                     generated Hub dataset card (not hashed: the Hub lets people edit cards)
    tensors/<group>.safetensors   tensors, one file per group
    tables/<name>.parquet         tables, so the Hub dataset viewer shows them
    extra/<name>.json             small JSON side files

Only files under tensors/, tables/ and extra/ are data; other top-level files
(the Hub's `.gitattributes`, a LICENSE) are ignored. Builds are resumable: a
group written and verified by an earlier, interrupted run is kept. Hub
pull/push and where each model's bases come from live in `core.artifacts.hub`.

    model = load_clip("toy").info.identity()  # spec, arch, pretrained, weights_sha256, random_init, ...
    writer = ArtifactWriter("out", model=model, text_pool=text_pool_identity(texts, "toy-pool"))
    if not writer.has("textspan"):
        writer.add_tensors("textspan", {"basis": basis})
    writer.finalize(metrics={"reconstruction_cosine": 0.93})
    load_artifact("out", expect_model=model).tensors("textspan")["basis"]
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from core.errors import BasesError, TextError

SCHEMA_VERSION = 1
KIND = "clipscope-bases"
MANIFEST = "manifest.json"
CARD = "README.md"
PROGRESS = ".clipscope-progress.json"  # present only while a build is unfinished
TMP_SUFFIX = ".clipscope-tmp"
SECTIONS = {"tensors": ".safetensors", "tables": ".parquet", "extra": ".json"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DATA_PATH = re.compile(r"(tensors/[^/]+\.safetensors|tables/[^/]+\.parquet|extra/[^/]+\.json)")
MODEL_KEYS = ("spec", "arch", "pretrained", "weights_sha256", "random_init")
BUILD_FIELDS = ("model", "text_pool", "image_set", "convention", "algorithms")  # equal => resumable
REQUIRED_FIELDS = {"model": dict, "algorithms": dict, "convention": str, "created": str, "project_version": str}
OPTIONAL_RECORDS = {"text_pool": ("name", "sha256", "count"), "image_set": ("description", "count")}


# ---------------------------------------------------------------- identities

def text_pool_identity(texts: list[str], name: str) -> dict:
    """`{name, sha256, count}` of a text pool; sha256 is over the lines joined by "\\n" (UTF-8)."""
    if not texts:
        raise TextError(f"text pool {name!r} is empty: give at least one text")
    bad = next((t for t in texts if not isinstance(t, str) or "\n" in t), None)
    if bad is not None:
        raise TextError(f"text pool {name!r} holds {bad!r}: each text must be one line of str")
    digest = hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()
    return {"name": name, "sha256": digest, "count": len(texts)}


def check_text_pool(artifact: Artifact, texts: list[str]) -> None:
    """Raise BasesError unless `texts` is exactly the pool the artifact's embeddings were built from."""
    stored = artifact.manifest.get("text_pool")
    if stored is None:
        raise BasesError(f"the bases at {artifact.path} record no text pool, so {len(texts)} texts cannot be "
                         "matched to stored embeddings")
    given = text_pool_identity(texts, stored["name"])
    if given["sha256"] != stored["sha256"]:
        raise BasesError(f"the text pool does not match the stored embeddings: the bases were built from pool "
                         f"{stored['name']!r} ({stored['count']} texts, sha256 {stored['sha256'][:12]}), the texts "
                         f"given are {given['count']} texts with sha256 {given['sha256'][:12]}. Use that pool, or "
                         "embed your texts with the model instead of using the stored embeddings")


def check_model(manifest: dict, expect_model: dict) -> None:
    """Raise BasesError if the artifact's model differs from `expect_model` in any identity key it gives."""
    stored = manifest["model"]
    keys = [k for k in MODEL_KEYS if k in expect_model]
    if not keys:
        raise BasesError(f"expect_model names none of {MODEL_KEYS}: cannot tell which model the bases must fit")
    differing = [k for k in keys if stored.get(k) != expect_model[k]]
    if differing:
        raise BasesError(f"these bases are for another model (differs in {', '.join(differing)}): they were built "
                         f"for {_describe_model(stored)}, but the loaded model is {_describe_model(expect_model)}. "
                         "Load bases built for this model, or build them with `python -m core bases build --model "
                         f"{expect_model.get('spec', 'SPEC')} ...`")
    wanted = expect_model.get("open_clip_version")
    if wanted and stored.get("open_clip_version") != wanted:
        warnings.warn(f"bases built with open_clip {stored.get('open_clip_version')}, running {wanted}; "
                      "the weights hash matches, so results should agree", stacklevel=3)


def _describe_model(model: Mapping) -> str:
    weights = model.get("weights_sha256")
    return (f"{model.get('spec')} (arch {model.get('arch')}, pretrained {model.get('pretrained')}, "
            f"weights sha256 {weights[:12] if isinstance(weights, str) else weights}, "
            f"random init {model.get('random_init')})")


def _open_clip_version() -> str:
    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- file helpers

def write_table(path: str | Path, rows: list[dict]) -> None:
    """Write `rows` (dicts sharing their keys, one type per column) as a parquet table."""
    if not isinstance(rows, list) or not all(isinstance(row, Mapping) for row in rows):
        raise BasesError(f"table {Path(path).name}: rows must be a list of dicts")
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
        raise BasesError(f"table {Path(path).name}: rows cannot be stored as columns ({err}); give every row "
                         "the same keys with one type per column") from err
    pq.write_table(table, path)


def read_table(path: str | Path) -> list[dict]:
    """Rows of a parquet table as a list of dicts."""
    return pq.read_table(path).to_pylist()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _file_record(path: Path) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _json_text(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise BasesError(f"{what} cannot be stored as JSON ({err}): use str, int, finite float, bool, "
                         "None, lists and dicts") from err


def _atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, then move the result onto `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are shared read-only data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _data_path(section: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BasesError(f"{section} name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit)")
    return f"{section}/{name}{SECTIONS[section]}"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_manifest(folder: str | Path) -> dict:
    """The parsed manifest.json of an artifact folder (unchecked: see verify_artifact)."""
    return _read_json(Path(folder) / MANIFEST)


def _stray_files(folder: Path, listed: Mapping) -> list[str]:
    found = (p for section in SECTIONS for p in sorted((folder / section).rglob("*")) if not p.is_dir())
    return [rel for p in found if (rel := p.relative_to(folder).as_posix()) not in listed]


# ---------------------------------------------------------------- writing

class ArtifactWriter:
    """Writes one artifact folder group by group; `finalize()` makes it loadable.

    Every file lands atomically and is hashed as it is written. Re-opening a
    folder whose unfinished (or finished) artifact has the same model, text
    pool, image set, convention and algorithms keeps each group that still
    matches its recorded hash, so `has(name)` lets a build skip it. A folder
    holding other bases or unrelated files is refused unless `overwrite=True`;
    even then only files this format wrote are deleted.
    """

    def __init__(self, out_dir: str | Path, *, model: dict, text_pool: dict | None = None,
                 image_set: dict | None = None, convention: str = "paper", algorithms: dict | None = None,
                 overwrite: bool = False):
        self.path = Path(out_dir)
        self._build = _build_identity(model, text_pool, image_set, convention, algorithms or {})
        self._done: dict[str, dict] = {}
        self._open(overwrite)

    def has(self, name: str) -> bool:
        """True if a tensor group, table or JSON file called `name` is written and verified."""
        return any(_data_path(section, name) in self._done for section in SECTIONS)

    def add_tensors(self, group: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Write `tensors/<group>.safetensors` (tensors are copied to contiguous CPU memory)."""
        prepared = _prepare_tensors(group, tensors)
        self._write(_data_path("tensors", group), lambda tmp: save_file(prepared, tmp))

    def add_table(self, name: str, rows: list[dict]) -> None:
        """Write `tables/<name>.parquet` from a list of row dicts."""
        self._write(_data_path("tables", name), lambda tmp: write_table(tmp, rows))

    def add_json(self, name: str, obj: Any) -> None:
        """Write `extra/<name>.json`."""
        text = _json_text(obj, f"extra/{name}")
        self._write(_data_path("extra", name), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def finalize(self, metrics: Mapping[str, float] | None = None, notes: str | None = None) -> Path:
        """Re-hash every file, then write README.md and manifest.json (last: it marks the folder done)."""
        if not self._done:
            raise BasesError(f"nothing was written to {self.path}: add tensors, tables or JSON before finalize()")
        self._recheck()
        manifest = self._manifest(_check_metrics(metrics), notes)
        from core.artifacts.hub import dataset_card  # core.artifacts.hub imports this module

        card = dataset_card(self.path, manifest)
        _atomic_write(self.path / CARD, lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
        text = _json_text(manifest, MANIFEST)
        _atomic_write(self.path / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        (self.path / PROGRESS).unlink(missing_ok=True)
        return self.path

    def _write(self, rel: str, write) -> None:
        target = self.path / rel
        _atomic_write(target, write)
        self._done[rel] = _file_record(target)
        self._save_progress()

    def _save_progress(self) -> None:
        text = _json_text({"kind": KIND, "schema_version": SCHEMA_VERSION, **self._build, "files": self._done},
                          PROGRESS)
        _atomic_write(self.path / PROGRESS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _open(self, overwrite: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise BasesError(f"{self.path} is a file; the bases output must be a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        previous = _previous_record(self.path)
        own = {MANIFEST, CARD, PROGRESS, *SECTIONS} if previous else set()
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in own)
        if foreign and not overwrite:
            raise BasesError(f"{self.path} holds files that are not clipscope bases ({', '.join(foreign[:5])}): "
                             "choose a new or empty folder, or pass overwrite=True (--overwrite) to write next "
                             "to them (they are never deleted)")
        if not previous:
            return
        changed = [field for field in BUILD_FIELDS if previous.get(field) != self._build[field]]
        self._remove_own_temp_files()
        if not changed:
            self._keep_verified(previous.get("files", {}))
            return
        if not overwrite:
            raise BasesError(f"{self.path} already holds bases of another build (differs in {', '.join(changed)}; "
                             f"they are for {_describe_model(previous.get('model') or {})}): choose another "
                             "output folder, or pass overwrite=True (--overwrite) to replace them")
        self._remove_previous()

    def _keep_verified(self, files: Mapping) -> None:
        for rel, record in files.items():
            target = self.path / rel
            if DATA_PATH.fullmatch(rel) and target.is_file() and _file_record(target) == record:
                self._done[rel] = record

    def _remove_previous(self) -> None:
        records = [_previous_record(self.path, name) for name in (PROGRESS, MANIFEST)]
        for rel in {rel for record in records if record for rel in record.get("files", {})}:
            if DATA_PATH.fullmatch(rel):  # never follow a crafted path out of the folder
                (self.path / rel).unlink(missing_ok=True)
        for name in (MANIFEST, CARD):
            (self.path / name).unlink(missing_ok=True)
        self._save_progress()  # marks the folder as ours again before anything else is written

    def _remove_own_temp_files(self) -> None:
        for section in SECTIONS:
            for tmp in (self.path / section).glob(f".*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)

    def _recheck(self) -> None:
        for rel, record in self._done.items():
            target = self.path / rel
            if not target.is_file() or _file_record(target) != record:
                raise BasesError(f"{rel} changed on disk after it was written: write that group again")
        stray = _stray_files(self.path, self._done)
        if stray:
            raise BasesError(f"{self.path} holds files this build did not write ({', '.join(stray[:5])}): "
                             "move them out of tensors/, tables/ and extra/ before finalize()")

    def _manifest(self, metrics: dict | None, notes: str | None) -> dict:
        import core

        manifest = {"schema_version": SCHEMA_VERSION, "kind": KIND, **self._build,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "project_version": str(getattr(core, "__version__", "0")),
                    "files": dict(sorted(self._done.items()))}
        if metrics:
            manifest["metrics"] = metrics
        if notes:
            manifest["notes"] = str(notes)
        return manifest


def _build_identity(model, text_pool, image_set, convention, algorithms) -> dict:
    if not isinstance(model, Mapping) or not isinstance(model.get("spec"), str) or not model["spec"]:
        raise BasesError(f"model must be a dict with a non-empty 'spec' (ModelInfo.identity()), got {model!r}")
    missing = [key for key in MODEL_KEYS if key not in model]
    if missing:
        raise BasesError(f"model identity lacks {', '.join(missing)}: pass ModelInfo.identity()")
    model = dict(model)
    model.setdefault("open_clip_version", _open_clip_version())
    if not _optional_record(text_pool, OPTIONAL_RECORDS["text_pool"]):
        raise BasesError("text_pool must come from text_pool_identity(texts, name)")
    if not _optional_record(image_set, OPTIONAL_RECORDS["image_set"]):
        raise BasesError("image_set must be a dict with 'description' and 'count'")
    if not isinstance(algorithms, Mapping) or not isinstance(convention, str):
        raise BasesError("algorithms must be a dict (name -> parameters) and convention a string")
    build = {"model": model, "text_pool": text_pool, "image_set": image_set, "convention": convention,
             "algorithms": algorithms}
    return json.loads(_json_text(build, "the build description"))  # normalised: tuples -> lists


def _prepare_tensors(group: str, tensors: Mapping) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping) or not tensors:
        raise BasesError(f"tensor group {group!r} must be a non-empty dict of name -> tensor")
    prepared = {}
    for key, tensor in tensors.items():
        if not isinstance(key, str) or not key:
            raise BasesError(f"tensor group {group!r}: names must be non-empty strings, got {key!r}")
        if not isinstance(tensor, torch.Tensor):
            raise BasesError(f"tensor {group}/{key} is a {type(tensor).__name__}, not a torch.Tensor")
        prepared[key] = tensor.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
    return prepared


def _check_metrics(metrics: Mapping | None) -> dict | None:
    if metrics is None:
        return None
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)]
    if bad:
        raise BasesError(f"metrics must be finite numbers; not so for {', '.join(map(str, bad))}")
    return {str(k): v for k, v in metrics.items()}


def _previous_record(folder: Path, name: str | None = None) -> dict | None:
    """What an earlier run left in `name`; by default the unfinished build's progress, else the manifest."""
    if name is None:
        name = PROGRESS if (folder / PROGRESS).is_file() else MANIFEST
    try:
        record = _read_json(folder / name)
    except (OSError, ValueError):
        return None  # absent or unreadable: treated as unrelated content
    return record if isinstance(record, dict) and record.get("kind") == KIND else None


# ---------------------------------------------------------------- verifying

def verify_artifact(path: str | Path) -> list[str]:
    """Problems of the artifact folder at `path` (empty list: intact and readable by this version)."""
    path = Path(path)
    if not path.is_dir():
        return [f"no bases folder at {path}"]
    try:
        manifest = _read_json(path / MANIFEST)
    except FileNotFoundError:
        if (path / PROGRESS).is_file():
            return [f"the build in {path} is unfinished (no manifest.json yet): run the same build command "
                    "again to resume it"]
        return [f"no manifest.json in {path}: not a clipscope bases folder"]
    except ValueError as err:
        return [f"manifest.json is not valid JSON ({err}): it was truncated or edited"]
    problems = _manifest_problems(manifest)
    if problems:
        return problems
    problems = [problem for rel, record in manifest["files"].items() if (problem := _file_problem(path, rel, record))]
    problems += [f"{rel}: not listed in manifest.json (added after the build?): remove it or rebuild"
                 for rel in _stray_files(path, manifest["files"])]
    return problems


def _manifest_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return ["manifest.json is not a JSON object"]
    if manifest.get("kind") != KIND:
        return [f"manifest.json has kind {manifest.get('kind')!r}, not {KIND!r}: not a clipscope bases folder"]
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return [f"manifest.json has an invalid schema_version {version!r}"]
    if version > SCHEMA_VERSION:
        return [f"these bases were written by a newer version of clipscope (schema {version}; this version reads "
                f"up to {SCHEMA_VERSION}): upgrade clipscope to load them"]
    problems = [f"manifest.json: {field!r} is missing or not {kind.__name__}"
                for field, kind in REQUIRED_FIELDS.items() if not isinstance(manifest.get(field), kind)]
    if isinstance(manifest.get("model"), dict) and any(k not in manifest["model"] for k in MODEL_KEYS):
        problems.append(f"manifest.json: 'model' must hold {', '.join(MODEL_KEYS)}")
    problems += [f"manifest.json: {field!r} must be null or a dict with {', '.join(keys)}"
                 for field, keys in OPTIONAL_RECORDS.items() if not _optional_record(manifest.get(field), keys)]
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return problems + ["manifest.json lists no files"]
    for rel, record in files.items():
        if not DATA_PATH.fullmatch(rel) or not NAME.fullmatch(Path(rel).stem):
            problems.append(f"manifest.json lists {rel!r}, which is not a tensors/, tables/ or extra/ data file")
        elif not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                  and isinstance(record.get("bytes"), int)):
            problems.append(f"manifest.json: the entry for {rel} lacks sha256 or bytes")
    return problems


def _optional_record(value: Any, keys: tuple[str, ...]) -> bool:
    return value is None or (isinstance(value, dict) and all(key in value for key in keys))


def _file_problem(folder: Path, rel: str, record: dict) -> str | None:
    target = folder / rel
    if not target.is_file():
        return f"{rel}: missing (listed in manifest.json; the download or copy is incomplete)"
    size = target.stat().st_size
    if size != record["bytes"]:
        return f"{rel}: {size} bytes, manifest.json says {record['bytes']} (truncated or replaced)"
    if file_sha256(target) != record["sha256"]:
        return f"{rel}: sha256 differs from manifest.json (the file was edited or corrupted)"
    return None


# ---------------------------------------------------------------- loading

class Artifact:
    """A verified artifact folder; tensors, tables and JSON are read on first use.

    `.path` is the folder, `.manifest` the parsed manifest.json.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}

    def names(self, section: str = "tensors") -> list[str]:
        """Names stored in `section` ("tensors", "tables" or "extra")."""
        if section not in SECTIONS:
            raise BasesError(f"unknown section {section!r}: choose one of {', '.join(SECTIONS)}")
        return sorted(Path(rel).stem for rel in self.manifest["files"] if rel.startswith(f"{section}/"))

    def has(self, name: str) -> bool:
        """True if a tensor group, table or JSON file called `name` is stored."""
        return any(_data_path(section, name) in self.manifest["files"] for section in SECTIONS)

    def tensors(self, group: str) -> dict[str, torch.Tensor]:
        """Tensors of `tensors/<group>.safetensors` on CPU, read once and cached."""
        if group not in self._tensors:
            self._tensors[group] = load_file(self._file("tensors", group), device="cpu")
        return dict(self._tensors[group])

    def table(self, name: str) -> list[dict]:
        """Rows of `tables/<name>.parquet`."""
        return read_table(self._file("tables", name))

    def json(self, name: str) -> Any:
        """Parsed `extra/<name>.json`."""
        return _read_json(self._file("extra", name))

    def _file(self, section: str, name: str) -> Path:
        rel = _data_path(section, name)
        if rel not in self.manifest["files"]:
            raise BasesError(f"the bases at {self.path} have no {section} entry {name!r}; they hold: "
                             f"{', '.join(self.names(section)) or 'none'}")
        return self.path / rel


def load_artifact(source: str | Path, *, expect_model: dict | None = None, revision: str | None = None,
                  allow_unpinned: bool = False, cache_dir: str | Path | None = None) -> Artifact:
    """Open and verify the artifact at a local folder or a Hub dataset repo (`org/name@sha` or `revision=`).

    Checks the schema version, every file's size and sha256, files missing or
    added, and (with `expect_model`) the model identity; any problem is a
    BasesError naming the file or the two models.
    """
    path = _locate(source, revision, allow_unpinned, cache_dir)
    problems = verify_artifact(path)
    if problems:
        raise BasesError(f"cannot use the bases at {path}: " + "; ".join(problems))
    artifact = Artifact(path, read_manifest(path))
    if expect_model is not None:
        check_model(artifact.manifest, expect_model)
    return artifact


def _locate(source, revision, allow_unpinned, cache_dir) -> Path:
    local = Path(source)
    if local.exists():
        if revision:
            raise BasesError(f"{source} is a local folder; a revision applies only to Hub repos")
        return local
    from core.artifacts import hub  # imports huggingface_hub, so only when a repo id is given

    repo_id, pinned = hub.split_repo_source(str(source))
    if revision and pinned and revision != pinned:
        raise BasesError(f"{source} names revision {pinned} but revision={revision} was also given")
    if not re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", repo_id):
        raise BasesError(f"no bases folder at {source}, and it is not a Hub repo id ORG/NAME@REVISION")
    return hub.pull_artifact(repo_id, revision or pinned, cache_dir=cache_dir, allow_unpinned=allow_unpinned)
