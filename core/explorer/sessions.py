"""Files a visitor's session leaves on a server, and their removal when the session ends or ages out.

A server writes result pictures and download archives for each session into that session's own folder under one
folder of this process (`root()`), and keeps track of the uploads each session sent or used. When a session ends
(Gradio's unload event: the page was closed or the client disconnected) `end` removes its folder and the uploads no
live session still holds. `sweep`, run every minute by the server, removes what an ended session was never told
about: folders of sessions idle for SESSION_IDLE_SECONDS, and uploads no live session holds that are older than
UNCLAIMED_UPLOAD_SECONDS (sent straight to the upload route and never used).

Only files this server wrote or received are removed: its own folders, and upload paths it recorded.
No UI library here: the tabs' server (spaces/ui_common.py) reports sessions, uploads and their use.

>>> folder = sessions.folder("a1b2c3")        # <root>/a1b2c3, created
>>> sessions.uploaded("client-1", ["/tmp/gradio/<sha>/cat.png"], size=12_345)
>>> sessions.end("a1b2c3")                      # its folder and uploads are gone
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("clipscope.sessions")

SESSION_IDLE_SECONDS = 3_600  # a session folder untouched this long goes (Gradio keeps closed state for an hour)
UNCLAIMED_UPLOAD_SECONDS = 600  # an upload no live session holds goes after this long
SHARED = "shared"  # the folder of work done outside any session (a library call, a test)
_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass
class _Upload:
    size: int
    client: str
    received: float
    sessions: set = field(default_factory=set)  # sessions that were live for its client, or used it


class Registry:
    """Sessions, their folders and the uploads they hold, for one server process (thread-safe)."""

    def __init__(self, root: Path | None = None):
        self._root = root
        self.lock = threading.RLock()
        self.live: dict[str, str] = {}  # session -> client that opened it
        self.ended: dict[str, float] = {}
        self.uploads: dict[str, _Upload] = {}  # upload path -> record

    # -------------------------------------------------- folders

    def root(self) -> Path:
        with self.lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="clipscope-sessions-"))
                atexit.register(shutil.rmtree, self._root, True)
            return self._root

    def folder(self, session: str | None) -> Path:
        """The folder of `session` (created, and touched: it is in use); work outside a session shares one."""
        name = session if session and _SAFE.fullmatch(session) else SHARED
        path = self.root() / name
        path.mkdir(parents=True, exist_ok=True)
        try:
            os.utime(path)
        except OSError:
            pass
        return path

    # -------------------------------------------------- sessions

    def opened(self, session: str, client: str) -> None:
        with self.lock:
            self.live[session] = client
            self.ended.pop(session, None)

    def has_session(self, client: str) -> bool:
        with self.lock:
            return client in self.live.values()

    def end(self, session: str | None) -> list[str]:
        """The session ended: remove its folder and the uploads no live session holds. Returns what went."""
        if not session:
            return []
        with self.lock:
            self.live.pop(session, None)
            self.ended[session] = time.time()
            orphans = [path for path, record in self.uploads.items()
                       if session in record.sessions and not (record.sessions & self.live.keys())]
            for path in orphans:
                del self.uploads[path]
        removed = [str(p) for p in orphans if _remove_file(p)]
        if _SAFE.fullmatch(session) and session != SHARED:
            folder = self.root() / session
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(str(folder))
        return removed

    # -------------------------------------------------- uploads

    def uploaded(self, client: str, paths: list[str], size: int) -> None:
        """Uploads a client sent (Gradio's upload route), held by the sessions that client has open."""
        with self.lock:
            sessions = {s for s, c in self.live.items() if c == client}
            share = size // max(len(paths), 1)
            for path in paths:
                record = self.uploads.setdefault(str(path), _Upload(share, client, time.time()))
                record.sessions |= sessions

    def claim(self, session: str | None, paths) -> None:
        """A session used these uploads (an event's inputs): they stay while it lives."""
        if not session:
            return
        with self.lock:
            for path in paths:
                record = self.uploads.get(str(path))
                if record is not None:
                    record.sessions.add(session)

    def upload_bytes(self, client: str | None = None) -> int:
        """Bytes of the uploads this server holds (of one client)."""
        with self.lock:
            return sum(r.size for r in self.uploads.values() if client is None or r.client == client)

    # -------------------------------------------------- sweeping

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove idle session folders and uploads nobody holds past their age. Returns what went."""
        now = time.time() if now is None else now
        with self.lock:
            stale = [path for path, record in self.uploads.items()
                     if not (record.sessions & self.live.keys()) and now - record.received > UNCLAIMED_UPLOAD_SECONDS]
            for path in stale:
                del self.uploads[path]
            for session, when in list(self.ended.items()):
                if now - when > SESSION_IDLE_SECONDS:
                    del self.ended[session]
            live = set(self.live)
        removed = [p for p in stale if _remove_file(p)]
        root = self._root
        if root is not None and root.is_dir():
            for folder in root.iterdir():
                if folder.name in live or not folder.is_dir() or folder.is_symlink():
                    continue
                if folder.name == SHARED:
                    removed += _remove_old_files(folder, now - SESSION_IDLE_SECONDS)
                elif now - _mtime(folder) > SESSION_IDLE_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(str(folder))
        return removed


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def _remove_file(path: str) -> bool:
    """Remove a recorded upload and its folder when that is left empty (Gradio keeps one folder per upload)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        log.warning("could not remove an upload: %s", err.strerror or type(err).__name__)
        return False
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # not empty: another upload with the same content lives there
    return True


def _remove_old_files(folder: Path, before: float) -> list[str]:
    removed = []
    for entry in folder.iterdir():
        if entry.is_file() and _mtime(entry) < before:
            entry.unlink(missing_ok=True)
            removed.append(str(entry))
    return removed


REGISTRY = Registry()
folder, opened, has_session, end, uploaded, claim, upload_bytes, sweep = (
    REGISTRY.folder, REGISTRY.opened, REGISTRY.has_session, REGISTRY.end, REGISTRY.uploaded, REGISTRY.claim,
    REGISTRY.upload_bytes, REGISTRY.sweep)
