"""Optional caches under $CLIPSCOPE_CACHE: they may speed a request up, never break it.

A cache entry is written atomically (core.writes: a temporary file renamed into place, never through a symbolic
link), so no reader sees half a file. When the cache cannot be written (read-only, full disk, no permission, a file
where a folder should be), the entry is skipped with one warning per cache in the server log and the request goes
on with what it computed. Caches that grow with what visitors ask for (neuron statistics) are trimmed to a size,
least recently used first.

Files a request needs (the example pictures a tab shows) go to `fallback_root()`, a folder of this process under the
system's temporary folder, when the cache cannot hold them.

>>> if not store(path, lambda tmp: save(tmp), "text embeddings"):
...     pass  # computed values are used as they are; the log says the cache was skipped
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from core.errors import CoreError
from core.writes import atomic_write

log = logging.getLogger("clipscope.cache")
_warned: set[str] = set()
_lock = threading.Lock()


def warn_once(what: str, err: BaseException) -> None:
    """One warning per cache and kind of error in the log (a full disk would otherwise log every request)."""
    key = f"{what}:{type(err).__name__}:{getattr(err, 'errno', '')}"
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning("clipscope cache %s skipped: %s (requests still answer; the cache is not written)", what,
                getattr(err, "strerror", None) or type(err).__name__)


def store(path: str | os.PathLike, write: Callable[[str], object], what: str) -> bool:
    """Write a cache entry atomically (write(tmp) then rename); False, with a warning, when it cannot be written."""
    try:
        atomic_write(path, write, what=f"{what} cache entry")
        return True
    except (OSError, CoreError) as err:  # read-only, full, quota, permission, a planted link: skip the cache
        warn_once(what, err)
        return False


_fallback: list[Path] = []


def fallback_root() -> Path:
    """A folder of this process under the system's temporary folder (removed at exit), for files a request needs
    when the cache cannot hold them (the example pictures a tab shows)."""
    with _lock:
        if not _fallback:
            _fallback.append(Path(tempfile.mkdtemp(prefix="clipscope-cache-")))
            atexit.register(shutil.rmtree, _fallback[0], True)
        return _fallback[0]


def touch(path: str | os.PathLike) -> None:
    """Mark an entry as used now (its modification time orders the trimming); a read-only cache is left alone."""
    try:
        os.utime(path)
    except OSError:
        pass


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """An exclusive lock between processes (fcntl.flock on `path`, created if needed); OSError when the folder
    cannot hold the lock file (a read-only cache)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def trim(folder: str | os.PathLike, max_bytes: int, *, keep: tuple[str, ...] = (),
         select: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Remove the least recently used entries (files or folders) of `folder` that `select` accepts until they hold
    at most `max_bytes` together; `keep` names count but are never removed. Returns the removed names.

    Only entries this cache wrote are touched: the caller owns `folder` (a subfolder of the clipscope cache)."""
    folder = Path(folder)
    try:
        entries = [entry for entry in folder.iterdir() if select(entry.name)]
    except OSError:
        return []
    sized = []
    for entry in entries:
        try:
            sized.append((entry.lstat().st_mtime, entry.name, entry, _size(entry)))
        except OSError:
            continue
    total = sum(size for *_, size in sized)  # what is kept counts too
    removed = []
    for _, name, entry, size in sorted(item for item in sized if item[1] not in keep):  # oldest use first
        if total <= max_bytes:
            break
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as err:
            warn_once(f"{folder.name} trimming", err)
            continue
        total -= size
        removed.append(name)
    return removed


def age(path: str | os.PathLike) -> float:
    """Seconds since `path` was last used (modified); infinite when it is gone."""
    try:
        return time.time() - Path(path).lstat().st_mtime
    except OSError:
        return float("inf")
