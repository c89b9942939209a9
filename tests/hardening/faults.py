"""Folders that refuse writes, for the cache-fault tests: read-only, and full.

Where the tests run as root with mount rights (this machine, most containers) both are real: a tmpfs mounted
read-only, and a tiny tmpfs filled to its last byte (every write then fails with ENOSPC, as on a full disk). Elsewhere:
a read-only folder is a chmod 0555 folder (not root) or a path under a regular file (root without mount rights:
nothing can be created there, ENOTDIR); a full folder is fault injection: `sitecustomize` in a server process (or
`inject_enospc` in this one) makes every open-for-writing and mkdir under the folder fail with ENOSPC.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import subprocess
from pathlib import Path

SITE = Path(__file__).resolve().parent / "fault_site"
FAULT_VARIABLE = "CLIPSCOPE_TEST_ENOSPC"  # read by fault_site/sitecustomize.py in a server process


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or os.environ.get("CLIPSCOPE_TEST_NO_MOUNT"):  # the latter tries the fallbacks here
        return False
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=20)


@contextlib.contextmanager
def readonly_folder(tmp_path: Path):
    """(cache folder, how): a folder where nothing can be written."""
    target = tmp_path / "readonly"
    target.mkdir()
    if _mount(target, "ro,size=1m"):
        try:
            yield target / "cache", "read-only tmpfs"
        finally:
            _umount(target)
    elif os.geteuid() != 0:
        target.chmod(0o555)
        try:
            yield target / "cache", "chmod 0555"
        finally:
            target.chmod(0o755)
    else:
        (tmp_path / "a_file").write_text("not a folder")
        yield tmp_path / "a_file" / "cache", "path under a regular file"


@contextlib.contextmanager
def full_folder(tmp_path: Path):
    """(cache folder, env for a server process, how): a folder on a full file system."""
    target = tmp_path / "full"
    target.mkdir()
    if _mount(target, "size=256k"):
        try:
            (target / "cache").mkdir()
            _fill(target / "filler")
            yield target / "cache", {}, "full tmpfs"
        finally:
            _umount(target)
    else:
        (target / "cache").mkdir()
        env = {FAULT_VARIABLE: str(target), "PYTHONPATH": os.pathsep.join(
            filter(None, [str(SITE), os.environ.get("PYTHONPATH", "")]))}
        with inject_enospc(target):
            yield target / "cache", env, "ENOSPC fault injection"


def _fill(path: Path) -> None:
    try:
        with open(path, "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    with contextlib.suppress(OSError):  # the last inode or two, too
        for index in range(64):
            (path.parent / f"filler{index}").touch()


@contextlib.contextmanager
def inject_enospc(root: Path):
    """In this process: open-for-writing, os.open with O_CREAT/O_WRONLY/O_RDWR and mkdir under `root` fail with
    ENOSPC (the fallback when no tmpfs can be mounted)."""
    patches = install_enospc(str(root))
    try:
        yield
    finally:
        for owner, name, original in patches:
            setattr(owner, name, original)


def install_enospc(root: str) -> list:
    root = os.path.realpath(root)

    def under(path) -> bool:
        try:
            return os.path.realpath(os.fspath(path)).startswith(root + os.sep)
        except (TypeError, ValueError):
            return False

    def full(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    original_open, original_os_open, original_mkdir = builtins.open, os.open, os.mkdir

    def guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and under(file):
            raise full(file)
        return original_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            raise full(path)
        return original_os_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if under(path) and not os.path.isdir(path):
            raise full(path)
        return original_mkdir(path, *args, **kwargs)

    patches = [(builtins, "open", original_open), (io, "open", io.open), (os, "open", original_os_open),
               (os, "mkdir", original_mkdir)]
    builtins.open = io.open = guarded_open
    os.open, os.mkdir = guarded_os_open, guarded_mkdir
    return patches
