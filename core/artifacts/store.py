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
pull/push, loading from the Hub (`hub.load_bases`) and where each model's bases
come from live in `core.artifacts.hub`, the dataset card in
`core.artifacts.card`; this module never imports the Hub.

Nothing read is trusted: the manifest and every data file must be regular files
inside the artifact folder (no symlink out of it, no FIFO or device), within the
size bounds of `core.guards`, the manifest's values are type-checked, and tensors
holding NaN or Inf are refused. Nothing the writer did not write is replaced or
deleted, with or without `overwrite`: it replaces only files its own manifest
(or progress record) lists, and a README.md only when it is the card it wrote.

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
import stat
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from core import guards
from core.artifacts.card import dataset_card
from core.errors import BasesError, OutputError, TextError
from core.writes import atomic_write

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
SHA256 = re.compile(r"[0-9a-f]{64}")


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


def check_stored_texts(texts: Any, where: str) -> list[str]:
    """extra/texts.json's content as the text list the bases were built from, else BasesError. The loaders and
    `verify_artifact(deep=True)` (`bases verify`) both apply this check, so verify passes only what they accept."""
    if not isinstance(texts, list) or not all(isinstance(text, str) and "\n" not in text for text in texts):
        raise BasesError(f"extra/texts.json in {where} is not a list of texts: rebuild the bases")
    return texts


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
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, UnicodeEncodeError) as err:
        raise BasesError(f"table {Path(path).name}: rows cannot be stored as columns ({err}); give every row "
                         "the same keys with one type per column") from err
    pq.write_table(table, path)


def read_table(path: str | Path) -> list[dict]:
    """Rows of a parquet table as a list of dicts."""
    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise BasesError(f"{Path(path).name} is not a readable parquet table: {_first_line(err)}") from None


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _inside(path: Path, root: Path) -> bool:
    """True if `path`, with every symlink resolved, lies inside `root` (also resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _open_regular(path: Path, root: Path, max_bytes: int, what: str) -> int:
    """A read-only descriptor of `path` after checking that it resolves inside `root` and is a regular
    file of at most `max_bytes`. Opened non-blocking, so a FIFO is refused instead of waited on."""
    if not _inside(path, root):
        raise BasesError(f"{what} is a link that leads outside the artifact folder; refusing to read it")
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise BasesError(f"{what} cannot be read: {err.strerror or err}") from None
    info = os.fstat(handle)
    problem = ("is a folder, not a file" if stat.S_ISDIR(info.st_mode) else
               "is not a regular file (a pipe or a device?)" if not stat.S_ISREG(info.st_mode) else
               f"is {info.st_size:,} bytes, over the limit of {max_bytes:,}" if info.st_size > max_bytes else None)
    if problem:
        os.close(handle)
        raise BasesError(f"{what} {problem}")
    return handle


def _read_bytes(path: Path, root: Path, max_bytes: int, what: str) -> bytes:
    handle = _open_regular(path, root, max_bytes, what)
    with os.fdopen(handle, "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BasesError(f"{what} grew over the limit of {max_bytes:,} bytes while being read")
    return data


def _sha256_regular(path: Path, root: Path, what: str) -> tuple[str, int]:
    """(sha256, size) of a regular file inside `root`."""
    handle = _open_regular(path, root, guards.MAX_ARTIFACT_FILE_BYTES, what)
    with os.fdopen(handle, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").hexdigest()
        return digest, os.fstat(stream.fileno()).st_size


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (write null or a finite number)")


def parse_json(data: bytes | str, what: str) -> Any:
    """JSON from untrusted bytes: invalid UTF-8, NaN/Infinity and nesting too deep for the parser (a
    RecursionError) are refused with a BasesError."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as err:
        raise BasesError(f"{what} is not UTF-8 text (byte {err.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BasesError(f"{what} is nested too deeply to be a manifest") from None
    except ValueError as err:
        raise BasesError(f"{what} is not valid JSON ({_first_line(err)}): it was truncated or edited") from None


def _file_record(path: Path) -> dict:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def _json_text(obj: Any, what: str) -> str:
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise BasesError(f"{what} cannot be stored as JSON ({err}): use str, int, finite float, bool, "
                         "None, lists and dicts") from err
    except RecursionError:
        raise BasesError(f"{what} is nested too deeply to be stored as JSON") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BasesError(f"{what} holds text that is not valid UTF-8 (a file name in another encoding?): "
                         "rename it") from None
    return text


def _atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)`, then move the result onto `path`: readers never see half a file (core.writes: never
    through a link)."""
    atomic_write(path, write, what="bases file", suffix=TMP_SUFFIX)


def _data_path(section: str, name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BasesError(f"{section} name {name!r} is not allowed: use letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit)")
    return f"{section}/{name}{SECTIONS[section]}"


def _read_json(path: Path, root: Path | None = None, max_bytes: int = guards.MAX_MANIFEST_BYTES,
               what: str | None = None) -> Any:
    """Parsed JSON of a regular file inside `root` (default: its own folder); FileNotFoundError if absent,
    BasesError if it is anything else than a bounded, valid JSON file."""
    what = what or path.name
    return parse_json(_read_bytes(path, root or path.parent, max_bytes, what), what)


def read_manifest(folder: str | Path, *, within: str | Path | None = None) -> dict:
    """The parsed manifest.json of an artifact folder (unchecked: see verify_artifact)."""
    folder = Path(folder)
    return _read_json(folder / MANIFEST, Path(within) if within else folder)


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
    even then only files this format wrote (listed in its own manifest or
    progress record) are replaced or deleted. A manifest.json, README.md or
    data file it did not write is never replaced: the writer refuses instead.
    """

    def __init__(self, out_dir: str | Path, *, model: dict, text_pool: dict | None = None,
                 image_set: dict | None = None, convention: str = "paper", algorithms: dict | None = None,
                 overwrite: bool = False):
        self.path = Path(out_dir)
        self._build = _build_identity(model, text_pool, image_set, convention, algorithms or {})
        self._done: dict[str, dict] = {}
        self._owned: set[str] = set()  # data files an earlier run of ours listed (may be replaced)
        self._card_sha256: str | None = None  # the README.md found at open, when it is our own card
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
        card = dataset_card(self.path, manifest)
        manifest["card_sha256"] = hashlib.sha256(card.encode("utf-8")).hexdigest()
        self._check_own_top_level()  # a user may have put a file there during a long build
        self._atomic(CARD, lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))
        text = _json_text(manifest, MANIFEST)
        self._atomic(MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        (self.path / PROGRESS).unlink(missing_ok=True)
        return self.path

    def _write(self, rel: str, write) -> None:
        target = self.path / rel
        if target.is_symlink() or os.path.lexists(target) and rel not in self._owned and rel not in self._done:
            raise OutputError(f"{target} exists and was not written by this build of clipscope bases; it is never "
                              "replaced: move it out of the folder, or choose another output folder")
        self._atomic(rel, write)
        self._done[rel] = _file_record(target)
        self._save_progress()

    def _atomic(self, rel: str, write) -> None:
        try:
            _atomic_write(self.path / rel, write)
        except OSError as err:
            raise OutputError(f"cannot write {rel} in {self.path}: {err.strerror or err}") from None
        except Exception as err:  # safetensors reports a failed write as SafetensorError, not OSError
            if type(err).__name__ != "SafetensorError":
                raise
            raise OutputError(f"cannot write {rel} in {self.path}: {_first_line(err)}") from None

    def _save_progress(self) -> None:
        text = _json_text({"kind": KIND, "schema_version": SCHEMA_VERSION, **self._build, "files": self._done},
                          PROGRESS)
        self._atomic(PROGRESS, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _open(self, overwrite: bool) -> None:
        if os.path.lexists(self.path) and (self.path.is_symlink() or not self.path.is_dir()):
            raise BasesError(f"{self.path} is a file or a link; the bases output must be a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OutputError(f"cannot create the bases folder {self.path}: part of that path is a file") from None
        except OSError as err:
            raise OutputError(f"cannot create the bases folder {self.path}: {err.strerror or err}") from None
        records = {name: _previous_record(self.path, name) for name in (PROGRESS, MANIFEST)}
        previous = records[PROGRESS] or records[MANIFEST]
        self._owned = {rel for record in records.values() if record for rel in record.get("files", {})
                       if isinstance(rel, str) and DATA_PATH.fullmatch(rel)}
        self._card_sha256 = _own_card(self.path, records)
        self._check_own_top_level(records)
        own = {MANIFEST, CARD, PROGRESS, *SECTIONS} if previous else set(SECTIONS)
        stray = sorted(rel for p in _section_files(self.path) if (rel := p.relative_to(self.path).as_posix())
                       not in self._owned)
        if stray:  # they would block finalize() after all the work: say so now, whatever overwrite says
            raise BasesError(f"{self.path} holds files in tensors/, tables/ or extra/ that no clipscope build "
                             f"listed ({', '.join(stray[:5])}); they are never deleted: move them out, or choose "
                             "another output folder")
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in own)
        if foreign and not overwrite:
            raise BasesError(f"{self.path} holds files that are not clipscope bases ({', '.join(foreign[:5])}): "
                             "choose a new or empty folder, or pass overwrite=True (--overwrite) to write next "
                             "to them (they are never deleted or replaced)")
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

    def _check_own_top_level(self, records: dict | None = None) -> None:
        """Refuse when manifest.json, the progress record or README.md exist but are not ours."""
        if records is None:
            records = {name: _previous_record(self.path, name) for name in (PROGRESS, MANIFEST)}
        for name in (MANIFEST, PROGRESS):
            if os.path.lexists(self.path / name) and records[name] is None:
                raise OutputError(f"{self.path / name} was not written by clipscope; it is never replaced: "
                                  "choose another output folder, or move that file away")
        card = self.path / CARD
        if os.path.lexists(card) and (self._card_sha256 is None or _regular_sha256(card) != self._card_sha256):
            raise OutputError(f"{card} is not the card clipscope wrote (added or edited by someone); it is never "
                              "replaced: choose another output folder, or move that file away")
        for section in SECTIONS:
            folder = self.path / section
            if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
                raise OutputError(f"{folder} is not a plain folder (a file or a link); the bases writer only "
                                  "writes into folders it made: choose another output folder")

    def _keep_verified(self, files: Mapping) -> None:
        for rel, record in files.items():
            target = self.path / rel
            if DATA_PATH.fullmatch(rel) and _is_regular_inside(target, self.path) and _file_record(target) == record:
                self._done[rel] = record

    def _remove_previous(self) -> None:
        links = sorted(rel for rel in self._owned if (self.path / rel).is_symlink())
        if links:  # clipscope never wrote a link: someone put it there
            raise OutputError(f"{self.path / links[0]} is a symbolic link, not a file clipscope wrote; it is never "
                              "deleted: move it away, or choose another output folder")
        for rel in sorted(self._owned):  # DATA_PATH only: never follow a crafted path out of the folder
            target = self.path / rel
            if target.is_file():
                target.unlink()
        self._owned = set()
        (self.path / MANIFEST).unlink(missing_ok=True)
        if self._card_sha256 is not None:
            (self.path / CARD).unlink(missing_ok=True)
        self._save_progress()  # marks the folder as ours again before anything else is written

    def _remove_own_temp_files(self) -> None:
        for section in SECTIONS:
            for tmp in (self.path / section).glob(f".*{TMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)

    def _recheck(self) -> None:
        for rel, record in self._done.items():
            target = self.path / rel
            if not _is_regular_inside(target, self.path) or _file_record(target) != record:
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


def _section_files(folder: Path) -> list[Path]:
    return [p for section in SECTIONS for p in sorted((folder / section).rglob("*"))
            if not p.is_dir() and not p.name.endswith(TMP_SUFFIX)] if folder.is_dir() else []


def _is_regular_inside(path: Path, root: Path) -> bool:
    try:
        return _inside(path, root) and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _regular_sha256(path: Path) -> str | None:
    try:
        return _sha256_regular(path, path.parent, path.name)[0]
    except (OSError, BasesError):
        return None


def _own_card(folder: Path, records: dict) -> str | None:
    """The sha256 of README.md when it is the card an earlier build of ours wrote, else None.

    Manifests record their card's sha256; older ones did not, so for them a card that opens with the
    generated title counts as ours."""
    card = folder / CARD
    digest = _regular_sha256(card) if os.path.lexists(card) else None
    if digest is None:
        return None
    recorded = [record.get("card_sha256") for record in records.values() if record]
    if any(isinstance(value, str) for value in recorded):
        return digest if digest in recorded else None
    if any(recorded) or not any(records.values()):
        return None
    try:
        text = _read_bytes(card, folder, guards.MAX_MANIFEST_BYTES, CARD).decode("utf-8", "replace")
    except (OSError, BasesError):
        return None
    return digest if text.startswith("---") and "\n# clipscope bases for `" in text else None


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

def verify_artifact(path: str | Path, *, within: str | Path | None = None, deep: bool = False) -> list[str]:
    """Problems of the artifact folder at `path` (empty list: intact and readable by this version).

    The manifest and every data file must be regular files inside `within` (default: the folder itself;
    a Hugging Face cache snapshot passes its repo folder, whose blobs its links point at), within the
    size bounds of core.guards, with the recorded size and sha256, and readable as what they claim to be
    (safetensors and parquet headers). `deep=True` also reads every tensor (NaN and Inf are problems),
    table and JSON file.
    """
    path = Path(path)
    root = Path(within) if within is not None else path
    if not path.is_dir():
        return [f"no bases folder at {path}"]
    try:
        manifest = read_manifest(path, within=root)
    except FileNotFoundError:
        if os.path.lexists(path / MANIFEST):
            return [f"manifest.json in {path} is a broken link"]
        if (path / PROGRESS).is_file():
            return [f"the build in {path} is unfinished (no manifest.json yet): run the same build command "
                    "again to resume it"]
        return [f"no manifest.json in {path}: not a clipscope bases folder"]
    except BasesError as err:
        return [str(err)]
    problems = _manifest_problems(manifest)
    if problems:
        return problems
    problems = [problem for rel, record in manifest["files"].items()
                if (problem := _file_problem(path, root, rel, record, deep))]
    if deep and not problems and TEXTS_JSON in manifest["files"]:
        problems += _texts_problems(path, manifest)
    problems += [f"{rel}: not listed in manifest.json (added after the build?): remove it or rebuild"
                 for rel in _stray_files(path, manifest["files"])]
    return problems


def _manifest_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return ["manifest.json is not a JSON object"]
    if manifest.get("kind") != KIND:
        return [f"manifest.json has kind {_short(manifest.get('kind'))}, not {KIND!r}: not a clipscope bases folder"]
    version = manifest.get("schema_version")
    if not _is_int(version) or version < 1:
        return [f"manifest.json has an invalid schema_version {_short(version)}"]
    if version > SCHEMA_VERSION:
        return [f"these bases were written by a newer version of clipscope (schema {version}; this version reads "
                f"up to {SCHEMA_VERSION}): upgrade clipscope to load them"]
    problems = [f"manifest.json: {field!r} is missing or not {kind.__name__}"
                for field, kind in REQUIRED_FIELDS.items() if not isinstance(manifest.get(field), kind)]
    if isinstance(manifest.get("model"), dict):
        problems += _model_problems(manifest["model"])
    problems += [f"manifest.json: {field!r} must be null or a dict with {', '.join(keys)}"
                 for field, keys in OPTIONAL_RECORDS.items() if not _optional_record(manifest.get(field), keys)]
    problems += _record_value_problems(manifest)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return problems + ["manifest.json lists no files"]
    for rel, record in files.items():
        if not DATA_PATH.fullmatch(rel) or not NAME.fullmatch(Path(rel).stem):
            problems.append(f"manifest.json lists {_short(rel)}, which is not a tensors/, tables/ or extra/ data file")
        elif not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                  and SHA256.fullmatch(record["sha256"]) and _is_int(record.get("bytes")) and record["bytes"] >= 0):
            problems.append(f"manifest.json: the entry for {rel} needs sha256 (64 hex digits) and bytes (an integer)")
        elif record["bytes"] > guards.MAX_ARTIFACT_FILE_BYTES:
            problems.append(f"manifest.json: {rel} is listed as {record['bytes']:,} bytes, over the limit of "
                            f"{guards.MAX_ARTIFACT_FILE_BYTES:,}")
    return problems


def _model_problems(model: dict) -> list[str]:
    if any(k not in model for k in MODEL_KEYS):
        return [f"manifest.json: 'model' must hold {', '.join(MODEL_KEYS)}"]
    wrong = [key for key, ok in (("spec", isinstance(model["spec"], str) and model["spec"]),
                                 ("arch", isinstance(model["arch"], str)),
                                 ("pretrained", isinstance(model["pretrained"], str)),
                                 ("weights_sha256", model["weights_sha256"] is None or isinstance(model["weights_sha256"], str)),
                                 ("random_init", isinstance(model["random_init"], bool))) if not ok]
    return [f"manifest.json: model {key} has the wrong type ({_short(model[key])})" for key in wrong]


def _record_value_problems(manifest: dict) -> list[str]:
    """Type checks of the values a reader uses: counts are integers, metrics finite numbers, texts strings."""
    problems = []
    pool, images = manifest.get("text_pool"), manifest.get("image_set")
    if isinstance(pool, dict) and all(k in pool for k in OPTIONAL_RECORDS["text_pool"]):
        if not isinstance(pool["name"], str) or not (isinstance(pool["sha256"], str) and SHA256.fullmatch(pool["sha256"])):
            problems.append("manifest.json: text_pool name must be a string and sha256 64 hex digits")
        if not _is_int(pool["count"]) or pool["count"] < 1:
            problems.append(f"manifest.json: text_pool count must be a positive integer, got {_short(pool['count'])}")
    if isinstance(images, dict) and all(k in images for k in OPTIONAL_RECORDS["image_set"]):
        if not isinstance(images["description"], str):
            problems.append("manifest.json: image_set description must be a string")
        if not _is_int(images["count"]) or images["count"] < 0:
            problems.append(f"manifest.json: image_set count must be an integer >= 0, got {_short(images['count'])}")
    metrics = manifest.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            problems.append("manifest.json: metrics must be a dict of name -> number")
        else:
            bad = [str(k) for k, v in metrics.items() if not _is_finite_number(v)]
            if bad:
                problems.append(f"manifest.json: metrics must be finite numbers; not so for {', '.join(bad[:5])}")
    for field in ("notes", "card_sha256"):
        if field in manifest and not isinstance(manifest[field], str):
            problems.append(f"manifest.json: {field} must be a string")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional_record(value: Any, keys: tuple[str, ...]) -> bool:
    return value is None or (isinstance(value, dict) and all(key in value for key in keys))


TEXTS_JSON = "extra/texts.json"


def _texts_problems(path: Path, manifest: dict) -> list[str]:
    """The stored texts must be a text list, and the very pool the manifest (and the embeddings) record."""
    try:
        texts = check_stored_texts(_read_json(path / TEXTS_JSON, path, guards.MAX_JSON_BYTES, TEXTS_JSON), str(path))
        check_text_pool(Artifact(path, manifest), texts)
    except BasesError as err:
        return [str(err)]
    return []


def _file_problem(folder: Path, root: Path, rel: str, record: dict, deep: bool) -> str | None:
    target = folder / rel
    if not os.path.lexists(target):
        return f"{rel}: missing (listed in manifest.json; the download or copy is incomplete)"
    try:
        digest, size = _sha256_regular(target, root, rel)
    except FileNotFoundError:
        return f"{rel}: missing (a broken link)"
    except BasesError as err:
        return str(err)
    if size != record["bytes"]:
        return f"{rel}: {size} bytes, manifest.json says {record['bytes']} (truncated or replaced)"
    if digest != record["sha256"]:
        return f"{rel}: sha256 differs from manifest.json (the file was edited or corrupted)"
    try:
        _check_readable(target, rel, deep)
    except BasesError as err:
        return str(err)
    return None


def _check_readable(path: Path, rel: str, deep: bool) -> None:
    """Refuse a data file that is not what its name says (headers always; contents with `deep`)."""
    section = rel.split("/", 1)[0]
    if section == "tensors":
        if deep:
            check_finite(_load_tensors(path, rel), rel)
            return
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key).get_shape()
        except Exception as err:  # safetensors raises SafetensorError (not an OSError) on a bad header
            raise BasesError(f"{rel} is not a readable safetensors file ({_first_line(err)})") from None
    elif section == "tables":
        try:
            pq.read_metadata(path)
        except (pa.ArrowException, OSError, ValueError) as err:
            raise BasesError(f"{rel} is not a readable parquet table ({_first_line(err)})") from None
        if deep:
            read_table(path)
    elif deep:
        _read_json(path, path.parent, guards.MAX_JSON_BYTES, rel)


def _load_tensors(path: Path, rel: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except Exception as err:  # SafetensorError, or torch refusing the header's dtype or shape
        raise BasesError(f"{rel} is not a readable safetensors file ({_first_line(err)}): rebuild the bases") from None


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse floating tensors holding NaN or Inf (results computed from them would be NaN or empty)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BasesError(f"{what}: tensor {name!r} holds NaN or infinite values; the bases are corrupt: "
                             "rebuild them")


def check_tensors(tensors: Mapping[str, torch.Tensor], what: str, shapes: Mapping[str, tuple],
                  sizes: dict[str, int] | None = None, *, integer: tuple[str, ...] = (),
                  below: Mapping[str, int] | None = None) -> dict[str, int]:
    """Check stored tensors against named shapes, e.g. {"pcs": ("neuron", "d_out")}; returns the dim sizes.

    A dim named in `sizes` must have that size, the same name must have one size across tensors (sizes
    seen are added to `sizes`, so one dict passed to several calls keeps them consistent across groups),
    an int dim is literal. Tensors in `integer` must hold integers, and those in `below` values in [0, bound).
    """
    sizes = sizes if sizes is not None else {}
    for name, dims in shapes.items():
        if name not in tensors:
            raise BasesError(f"{what} lacks tensor {name!r}: the bases are incomplete or from another version")
        shape = tuple(tensors[name].shape)
        if len(shape) != len(dims):
            raise BasesError(f"{what}: {name} has shape {list(shape)}, expected [{', '.join(map(str, dims))}]")
        for dim, size in zip(dims, shape):
            expected = dim if isinstance(dim, int) else sizes.setdefault(dim, size)
            if size != expected:
                raise BasesError(f"{what}: {name} has shape {list(shape)}, expected [{', '.join(map(str, dims))}] "
                                 f"with {dim} = {expected}")
    for name in integer:
        if name in tensors and tensors[name].is_floating_point():
            raise BasesError(f"{what}: {name} must hold integers, got {tensors[name].dtype}")
    for name, bound in (below or {}).items():
        values = tensors.get(name)
        if values is not None and values.numel() and (int(values.min()) < 0 or int(values.max()) >= bound):
            raise BasesError(f"{what}: {name} holds values outside 0..{bound - 1}: the bases do not match their "
                             "own records; rebuild them")
    return sizes


# ---------------------------------------------------------------- loading

class Artifact:
    """A verified artifact folder; tensors, tables and JSON are read on first use.

    `.path` is the folder, `.manifest` the parsed manifest.json, `.root` the folder its files must resolve
    into (the folder itself, or a Hugging Face cache repo folder for a pulled snapshot).
    """

    def __init__(self, path: Path, manifest: dict, root: Path | None = None):
        self.path = path
        self.manifest = manifest
        self.root = root if root is not None else path
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}

    def names(self, section: str = "tensors") -> list[str]:
        """Names stored in `section` ("tensors", "tables" or "extra")."""
        if section not in SECTIONS:
            raise BasesError(f"unknown section {section!r}: choose one of {', '.join(SECTIONS)}")
        return sorted(Path(rel).stem for rel in self.manifest["files"] if rel.startswith(f"{section}/"))

    def has(self, name: str) -> bool:
        """True if a tensor group, table or JSON file called `name` is stored."""
        return any(_data_path(section, name) in self.manifest["files"] for section in SECTIONS)

    def tensors(self, group: str, shapes: Mapping[str, tuple] | None = None, sizes: dict[str, int] | None = None,
                **checks) -> dict[str, torch.Tensor]:
        """Tensors of `tensors/<group>.safetensors` on CPU, read once and cached; NaN/Inf refused.

        With `shapes` (and `sizes`, `integer`, `below`) they are checked as in `check_tensors`.
        """
        if group not in self._tensors:
            rel = _data_path("tensors", group)
            loaded = _load_tensors(self._file("tensors", group), rel)
            check_finite(loaded, rel)
            self._tensors[group] = loaded
        tensors = dict(self._tensors[group])
        if shapes is not None:
            check_tensors(tensors, f"tensors/{group}.safetensors", shapes, sizes, **checks)
        return tensors

    def table(self, name: str) -> list[dict]:
        """Rows of `tables/<name>.parquet`."""
        return read_table(self._file("tables", name))

    def json(self, name: str) -> Any:
        """Parsed `extra/<name>.json`."""
        rel = _data_path("extra", name)
        return _read_json(self._file("extra", name), self.root, guards.MAX_JSON_BYTES, rel)

    def _file(self, section: str, name: str) -> Path:
        rel = _data_path(section, name)
        if rel not in self.manifest["files"]:
            raise BasesError(f"the bases at {self.path} have no {section} entry {name!r}; they hold: "
                             f"{', '.join(self.names(section)) or 'none'}")
        path = self.path / rel
        if not _is_regular_inside(path, self.root):
            raise BasesError(f"{rel} in {self.path} is no longer a regular file inside the folder: verify the bases")
        return path


def load_artifact(source: str | Path, *, expect_model: dict | None = None, within: str | Path | None = None,
                  revision: str | None = None) -> Artifact:
    """Open and verify the artifact in a local folder (for Hub repos: `core.artifacts.hub.load_bases`).

    Checks the schema, every file's type, size and sha256, files missing or
    added, and (with `expect_model`) the model identity; any problem is a
    BasesError naming the file or the two models.
    """
    path = Path(source)
    if revision is not None:
        raise BasesError(f"{source}: a revision applies only to Hub repos; load those with "
                         "core.artifacts.hub.load_bases")
    if not path.is_dir():
        if os.path.lexists(path):
            raise BasesError(f"{source} is not a folder; bases are a folder holding manifest.json")
        raise BasesError(f"no bases folder at {source}" + ("; Hub repos (ORG/NAME@REVISION) are loaded with "
                                                           "core.artifacts.hub.load_bases" if "@" in str(source) else ""))
    problems = verify_artifact(path, within=within)
    if problems:
        raise BasesError(f"cannot use the bases at {path}: " + "; ".join(problems))
    artifact = Artifact(path, read_manifest(path, within=within), Path(within) if within else None)
    if expect_model is not None:
        check_model(artifact.manifest, expect_model)
    return artifact
