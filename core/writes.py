"""Every file clipscope writes goes through here: atomically, and never through a symbolic link.

Readers (another request, another process, a crashed run's rerun) never see half a file: the bytes go to a
temporary file in the same folder, which is then renamed onto the target. A target that is a symbolic link is
refused instead of followed, so a link planted in an output or cache folder cannot make clipscope replace a file
elsewhere.

>>> atomic_write(folder / "segment.json", lambda tmp: Path(tmp).write_text(text))
>>> atomic_write_bytes(folder / "map.npy", data)
"""

from __future__ import annotations

import os
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
                 what: str = "output file") -> Path:
    """Call `write(tmp_path)`, then rename the result onto `path` (its folder is created if needed).

    A symbolic link at `path` is refused, never followed. On any failure the temporary file is removed and
    `path` keeps its earlier content.
    """
    path = refuse_symlink(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
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
