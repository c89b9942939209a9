"""Every file clipscope writes goes through here: atomically, and never through a symbolic link.

Readers (another request, another process, a crashed run's rerun) never see half a file: the bytes go to a
temporary file in the same folder, which is then renamed onto the target. A target that is a symbolic link is
refused instead of followed, so a link planted in an output or cache folder cannot make clipscope replace a file
elsewhere.

>>> atomic_write(folder / "segment.json", lambda tmp: Path(tmp).write_text(text))
>>> atomic_write_bytes(folder / "map.npy", data)

A command's output folder is an `OutputFolder`: it lists every file the command wrote, with its sha256, in a
manifest inside the folder, and replaces or deletes only those (see the rule below). A single output file that
carries its own proof of origin (safetensors metadata) goes through `replace_file`; an append-only log through
`append_line`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Callable

from core.errors import OutputError

TMP_SUFFIX = ".tmp"


def refuse_symlink(path: str | os.PathLike, what: str = "output file") -> Path:
    """`path` as a Path, unless it is a symbolic link (then OutputError: clipscope never writes through one)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{what} {path.name!r} is a symbolic link; clipscope never writes through one")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, mode: int = 0o644,
                 what: str = "output file", suffix: str = TMP_SUFFIX) -> Path:
    """Call `write(tmp_path)`, then rename the result onto `path` (its folder is created if needed).

    A symbolic link at `path` is refused, never followed. On any failure the temporary file is removed and
    `path` keeps its earlier content.
    """
    path = refuse_symlink(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        refuse_symlink(path, what)  # a link planted while we wrote is still not followed: replace() swaps the entry
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    """`atomic_write` of a bytes value."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), **kwargs)


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    """`atomic_write` of a text, in UTF-8."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), **kwargs)


# ---------------------------------------------------------------- output folders and their manifests
#
# The rule every command follows: it replaces or deletes only files that its own manifest (written by
# clipscope, each file with its sha256) lists and that are unchanged since; it never writes through a
# symbolic link (a link in place of a file or of a sub-folder is refused); and it removes a folder only
# when the same manifest records that it created it and the folder is empty. A folder the user named is
# therefore never removed unless clipscope made it, and a user's file in it is never touched.

MANIFEST_BYTES = 64_000_000  # a manifest listing a million files fits
_SAFE_REL = re.compile(r"(?!/)(?!.*//)[^\x00\\]+(?<!/)")


def file_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a regular file (never through a link); None for anything else or an unreadable file."""
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return None
        with os.fdopen(handle, "rb", closefd=False) as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()
    except OSError:
        return None
    finally:
        os.close(handle)


def _signature(path: Path) -> tuple | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _safe_rel(rel: object) -> bool:
    """A relative path inside its folder: no '..', no absolute path, no NUL or backslash."""
    return (isinstance(rel, str) and bool(_SAFE_REL.fullmatch(rel))
            and not any(part in ("", ".", "..") for part in rel.split("/")))


def _plain_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


class OutputFolder:
    """A folder one command writes into, with a manifest of what it wrote (see the rule above).

    `require` says what the folder may already hold when it is opened:
      "empty": nothing (new or empty folder), e.g. `adversarial --out`;
      "ours":  nothing, or an earlier run's manifest of the same kind (files beside it are kept), e.g.
               `segment --out`, `segeval --save-maps`;
      "any":   anything (clipscope touches only what it lists), e.g. a work folder the user named
               (`bases build --work-dir`), `toy scenes --overwrite`.
    Every refusal is an OutputError with one line. `manifest` names the manifest file inside the folder;
    `siblings` (a glob) also counts the files that other manifests of the same kind matching it list as this
    command's own: the processes of one torchrun build each keep their own manifest in one work folder.
    """

    def __init__(self, path: str | os.PathLike, kind: str, *, manifest: str | None = None,
                 require: str = "ours", what: str = "output folder", params: dict | None = None,
                 siblings: str | None = None):
        if require not in ("empty", "ours", "any"):
            raise ValueError(f"require must be empty, ours or any, not {require!r}")
        self.path = Path(path)  # a user-named path was checked where it entered (core.guards)
        self.kind, self.what, self.require = kind, what, require
        self.manifest = manifest or f".clipscope-{kind}.json"
        self.params = dict(params or {})
        self._sibling_glob = siblings
        self._siblings: dict[str, str | None] = {}  # files other processes' manifests of this kind list
        self._verified: dict[str, tuple] = {}  # rel -> (inode, size, mtime) when its sha256 was last checked
        self.files: dict[str, str | None] = {}  # what this run's manifest lists: rel -> sha256 (None: pending)
        self.folders: list[str] = []  # sub-folders this command created (removed by clear() when empty)
        self.root_created = False
        self.earlier: dict[str, str | None] | None = None  # what an earlier run's manifest listed (None: no manifest)
        self._open()

    # -------------------------------------------------- opening

    def _open(self) -> None:
        path = self.path
        if path.is_symlink():
            raise OutputError(f"{self.what} {path} is a symbolic link; clipscope writes only into real folders: "
                              "give the folder it points to, or another folder")
        if os.path.lexists(path) and not path.is_dir():
            raise OutputError(f"{self.what} {path} exists and is not a folder; choose another")
        record = self._read_manifest(path / self.manifest) if path.is_dir() else None
        if path.is_dir() and os.path.lexists(path / self.manifest) and record is None:
            raise OutputError(f"{path / self.manifest} was not written by clipscope; it is never replaced: "
                              f"choose another {self.what}")
        if record is not None:
            self.earlier = dict(record["files"])
            self.folders = [rel for rel in record.get("folders", []) if _safe_rel(rel)]
            self.root_created = record.get("root_created") is True
        self._load_siblings()
        entries = self._entries()
        if entries and self.require == "empty":
            raise OutputError(f"{self.what} {path} already holds files; choose a new or empty folder (nothing is "
                              "overwritten)")
        if entries and self.require == "ours" and record is None:
            raise OutputError(f"{self.what} {path} is not empty and was not written by this command (no "
                              f"{self.manifest}); choose a new or empty folder: files clipscope did not write are "
                              "never replaced")
        parent = path.absolute()
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise OutputError(f"cannot create {self.what} {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to {self.what} {path}: permission denied")
        # Files an earlier run of ours listed stay listed (still ours) until replaced or removed.
        self.files = dict(self.earlier or {})

    def _sibling_manifests(self) -> list[tuple[Path, dict]]:
        if not self._sibling_glob or not self.path.is_dir():
            return []
        found = ((p, self._read_manifest(p)) for p in sorted(self.path.glob(self._sibling_glob)) if p.name != self.manifest)
        return [(p, record) for p, record in found if record is not None]

    def _load_siblings(self) -> None:
        for _, other in self._sibling_manifests():
            self._siblings.update(other["files"])
            self.folders += [rel for rel in other.get("folders", []) if _safe_rel(rel) and rel not in self.folders]
            self.root_created = self.root_created or other.get("root_created") is True

    def _entries(self) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(self.path)) if self.path.is_dir() else []
        except OSError as err:
            raise OutputError(f"cannot read {self.what} {self.path}: {err.strerror or err}") from None

    def _read_manifest(self, path: Path) -> dict | None:
        """The manifest at `path` if clipscope wrote it for this kind of output (a bounded, regular JSON file)."""
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MANIFEST_BYTES:
                return None
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        if (not isinstance(record, dict) or record.get("kind") != f"clipscope-{self.kind}"
                or not isinstance(record.get("files"), dict)):
            return None
        record["files"] = {rel: sha for rel, sha in record["files"].items()
                           if _safe_rel(rel) and rel != self.manifest and (sha is None or isinstance(sha, str))}
        if not isinstance(record.get("folders", []), list):
            record["folders"] = []
        return record

    def _ensure_root(self) -> None:
        """Create the folder on the first write (opening checks only, so a refused run leaves nothing behind)."""
        if self.path.is_dir() and not self.path.is_symlink():
            return
        if os.path.lexists(self.path):
            raise OutputError(f"{self.what} {self.path} is not a plain folder (a file or a link); choose another")
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:
            if not _plain_folder(self.path):
                raise OutputError(f"{self.what} {self.path} is not a plain folder; choose another") from None
            return
        except NotADirectoryError:
            raise OutputError(f"cannot create {self.what} {self.path}: part of that path is a file, not a folder") \
                from None
        except OSError as err:
            raise OutputError(f"cannot create {self.what} {self.path}: {err.strerror or err}") from None
        self.root_created = True

    # -------------------------------------------------- ownership

    def listed(self, rel: str) -> bool:
        return rel in self.files or rel in self._siblings

    def owns(self, rel: str) -> bool:
        """True if `rel` is absent, or is a regular file this command's manifest lists, unchanged since written
        (a file listed as pending, i.e. before an interrupted write finished, counts as ours)."""
        target = self.path / rel
        if not os.path.lexists(target):
            return True
        if not self.listed(rel) or target.is_symlink() or not target.is_file():
            return False
        recorded = self.files.get(rel, self._siblings.get(rel))
        if recorded is None:
            return True
        signature = _signature(target)
        if signature is not None and self._verified.get(rel) == signature:
            return True  # hashed before and not touched since (a large partial is read several times)
        if file_sha256(target) != recorded:
            return False
        self._verified[rel] = signature
        return True

    def adopt(self, rel: str) -> None:
        """Record the sha256 of a file listed as pending (an interrupted run finished writing it, then stopped)
        once the caller has checked it is usable, so it can be removed later like any other file of ours."""
        if rel in self.files and self.files[rel] is None and self.owns(rel):
            self.files[rel] = file_sha256(self.path / rel)
            self.save()

    def check_targets(self, rels) -> None:
        """Refuse (before any work) when a file to be written exists and is not this command's own, unchanged
        file, or when a folder on its way is a link or a file."""
        foreign = []
        for rel in rels:
            self._check_parents(rel)
            if not self.owns(rel):
                foreign.append(rel)
        if foreign:
            raise OutputError(f"{self.path / foreign[0]} exists and was not written by this command (or was changed "
                              f"since); it is never replaced ({len(foreign)} such file(s)): move them away or choose "
                              f"another {self.what}")

    def _check_parents(self, rel: str) -> None:
        if not _safe_rel(rel):
            raise OutputError(f"{rel!r} is not a file name inside the {self.what}")
        current = self.path
        for part in rel.split("/")[:-1]:
            current = current / part
            if os.path.lexists(current) and not _plain_folder(current):
                raise OutputError(f"{current} is not a plain folder (a file or a link); clipscope writes only into "
                                  f"folders it can see are real: choose another {self.what}")

    def _make_parents(self, rel: str) -> None:
        self._check_parents(rel)
        self._ensure_root()
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            folder = self.path / sub
            if not os.path.lexists(folder):
                try:
                    folder.mkdir()
                except FileExistsError:
                    if not _plain_folder(folder):
                        raise OutputError(f"{folder} is not a plain folder; choose another {self.what}") from None
                    continue
                if sub not in self.folders:
                    self.folders.append(sub)

    # -------------------------------------------------- writing and removing

    def claim(self, rels) -> None:
        """List `rels` as pending (they are about to be written) and save the manifest, so that files of an
        interrupted run stay this command's own. Refuses first if any of them is not ours."""
        rels = list(rels)
        self.check_targets(rels)
        for rel in rels:
            self.files[rel] = None
        self.save()

    def write(self, rel: str, write: Callable[[str], object], *, save: bool = True, sha256: str | None = None) -> Path:
        """Write `rel` atomically through `write(tmp_path)`; refused if something not ours is there. `sha256`: the
        digest of what `write` writes, when the caller knows it (else the file is read back)."""
        self.check_targets([rel])
        self._make_parents(rel)
        if rel not in self.files:
            self.files[rel] = None
            if save:
                self.save()
        target = atomic_write(self.path / rel, write, what=f"file in the {self.what}")
        self.files[rel] = sha256 or file_sha256(target)
        self._verified[rel] = _signature(target)
        if save:
            self.save()
        return target

    def write_bytes(self, rel: str, data: bytes, **kwargs) -> Path:
        return self.write(rel, lambda tmp: Path(tmp).write_bytes(data), sha256=hashlib.sha256(data).hexdigest(),
                          **kwargs)

    def write_text(self, rel: str, text: str, **kwargs) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"), **kwargs)

    def write_image(self, rel: str, image, **kwargs) -> Path:
        """A PIL image as PNG (the format is given, not guessed from the temporary file's name)."""
        return self.write(rel, lambda tmp: image.save(tmp, format="PNG"), **kwargs)

    def write_array(self, rel: str, array, **kwargs) -> Path:
        """A numpy array as .npy (through a file object: numpy would add .npy to a temporary file's name)."""
        import numpy as np

        def save(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array)

        return self.write(rel, save, **kwargs)

    def remove(self, rel: str, *, save: bool = True) -> bool:
        """Delete `rel` if it is this command's own file, unchanged since its manifest recorded its sha256; True if
        it is gone. Anything else (a changed file, a link, a file listed only as pending) is kept and no longer
        counted as this command's own."""
        target = self.path / rel
        recorded = self.files.get(rel, self._siblings.get(rel))
        if not os.path.lexists(target):
            gone = True
        elif recorded is not None and self.owns(rel):
            target.unlink()
            gone = True
        else:
            gone = False
        self.files.pop(rel, None)
        self._siblings.pop(rel, None)
        if save:
            self.save()
        return gone

    def remove_stale(self, keep) -> list[str]:
        """Remove this command's own files that are not in `keep` (an earlier, larger run's); returns those kept
        because someone changed them."""
        keep = set(keep)
        kept = [rel for rel in sorted(self.files) if rel not in keep and not self.remove(rel, save=False)]
        self.save()
        return kept

    def save(self) -> None:
        """Write the manifest (atomically)."""
        self._ensure_root()
        record = {"kind": f"clipscope-{self.kind}", **self.params, "files": dict(sorted(self.files.items())),
                  "folders": self.folders, "root_created": self.root_created}
        atomic_write_text(self.path / self.manifest, json.dumps(record, indent=1), what=f"manifest of the {self.what}")

    def clear(self) -> list[str]:
        """Remove everything this command wrote here: its own unchanged files, its manifest, then the folders it
        created if they are empty (deepest first), the folder itself only if it created it. Returns what was kept
        (files someone changed, folders that hold other files)."""
        self._load_siblings()  # what the other processes wrote since this one opened the folder
        kept = [rel for rel in sorted(set(self.files) | set(self._siblings)) if not self.remove(rel, save=False)]
        self._siblings = {}
        manifests = [self.path / self.manifest] + [p for p, _ in self._sibling_manifests()]
        for manifest in manifests:  # a changed file is the user's now: the manifests go either way
            if not manifest.is_symlink() and manifest.is_file():
                manifest.unlink(missing_ok=True)
        for sub in sorted(self.folders, key=lambda rel: rel.count("/"), reverse=True):
            folder = self.path / sub
            try:
                if _plain_folder(folder):
                    folder.rmdir()  # only when empty: a user's file inside keeps it
            except OSError:
                kept.append(sub + "/")
        if self.root_created:
            try:
                self.path.rmdir()
            except OSError:
                kept.append(".")
        return kept


def replace_file(path: str | os.PathLike, write: Callable[[str], object], *, ours: Callable[[Path], bool],
                 overwrite: bool, what: str, command: str) -> Path:
    """Write one output file that carries its own proof of origin (e.g. safetensors metadata): a new path, or,
    with `overwrite`, a regular file `ours(path)` recognises. Never through a link; atomic."""
    path = refuse_symlink(path, what)
    if os.path.lexists(path):
        if path.is_dir():
            raise OutputError(f"{what} {path} is a folder; give a file name")
        if not path.is_file() or not ours(path):
            raise OutputError(f"{what} {path} exists and was not written by `{command}`; it is never replaced: "
                              "choose another name")
        if not overwrite:
            raise OutputError(f"{what} {path} already exists; pass --overwrite to replace it")
    return atomic_write(path, write, what=what)


def append_line(path: str | os.PathLike, line: str, what: str = "state file") -> None:
    """Append one line to a log file, never through a link, and flush it to disk."""
    refuse_symlink(path, what)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        handle = os.open(path, flags, 0o644)
    except OSError as err:  # a link planted since, or the file system said no
        raise OutputError(f"cannot write {what} {Path(path).name}: {err.strerror or err}") from None
    with os.fdopen(handle, "a", encoding="utf-8") as stream:
        stream.write(line if line.endswith("\n") else line + "\n")
        stream.flush()
        os.fsync(stream.fileno())
