"""What leaves the server: every error message a user sees (command line and web UI), and the names of bases.

`error_message(err)` is the one function that turns an exception into the line a user reads; the command line
(`core.cli.main`) and the UI's wrapper (`spaces/ui_common.py` `message()`/`guard()`) both call it. In public
mode (`core.settings.public()`) no server path survives it: the install folder (this checkout), the cache, the
upload and temporary folders, and any other absolute path, are cut to their last part (`.../name`). A local
user keeps the full paths they typed.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from core.paths import PACKAGE_DIR

PROJECT_ROOT = PACKAGE_DIR.parent
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:~])(?<!:/)/(?:[^\s/()'`\"]+/)*([^\s/()'`\"]+)")
MAX_MESSAGE_CHARS = 2_000


def server_folders() -> list[str]:
    """The server's own folders a message might name: the install folder, the cache, the upload (Gradio) and
    temporary folders; each as given and with its links resolved, longest first."""
    from core import settings

    folders = [PROJECT_ROOT, settings.cache_dir(), tempfile.gettempdir(), settings.upload_dir(), Path.home()]
    found: set[str] = set()
    for folder in folders:
        for form in (str(folder), os.path.realpath(folder)):
            if len(form) > 1:
                found.add(form.rstrip("/"))
    return sorted(found, key=len, reverse=True)


def without_paths(text: str) -> str:
    """`text` with every server folder and every other absolute path cut to its last part (`.../name`); a path
    inside the install folder becomes relative to it (`core/data/toy/bases`)."""
    text = str(text)
    project = {str(PROJECT_ROOT), os.path.realpath(PROJECT_ROOT)}
    for folder in server_folders():
        # a path below the folder keeps its tail (cut below); the folder itself becomes "..."
        text = re.sub(re.escape(folder) + r"/(?=[^\s/])", "" if folder in project else "/", text)
        text = re.sub(re.escape(folder) + r"(?![^\s'\"`),;:])", "...", text)
    return _ABSOLUTE_PATH.sub(lambda m: f".../{m[1]}", text)


def display_source(source: str | os.PathLike | None) -> str:
    """A bases source as anyone may see it: ORG/NAME@SHA, a path inside the project, or only a folder's name."""
    if not source:
        return "none"
    source = os.fspath(source)
    path = Path(source)
    if "@" in source and not path.exists():
        return source
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except (ValueError, OSError):
        return f"folder {path.name}"


def error_message(err: BaseException, *, where: str | None = None, public: bool | None = None) -> str:
    """The one line a user reads for `err`.

    A deliberate error (`CoreError`, or an OSError from the file system) keeps its text; anything else is a bug,
    named by its type (with its text only off a public server; the log has the traceback). Public mode cuts
    every server path (see `without_paths`). `where` names the handler, for unexpected errors.
    """
    from core import settings
    from core.errors import CoreError

    public = settings.public() if public is None else public
    if isinstance(err, CoreError):
        text = str(err)
    elif isinstance(err, OSError):
        name = f" {err.filename}" if getattr(err, "filename", None) else ""
        text = f"cannot use{name}: {err.strerror or err}"
    else:
        detail = "" if public else f": {str(err)[:200]}"
        text = (f"Unexpected {type(err).__name__}{f' in {where}' if where else ''}{detail}. The server log has the "
                "details.")
    if not isinstance(err, CoreError):
        text = " ".join(text.split())
    if public:
        text = without_paths(text)
    if len(text) > MAX_MESSAGE_CHARS:  # a 5,000-character path: keep both ends (what, and what went wrong)
        text = f"{text[:MAX_MESSAGE_CHARS // 2]} ... {text[-MAX_MESSAGE_CHARS // 2:]}"
    return text
