"""The one progress protocol of core, and its null progress.

Long computations take `progress: Progress | None`. Gradio's `gr.Progress` has this shape, so a tab passes its own;
the command line passes `TqdmProgress` (bars on stderr); library users pass nothing (`NullProgress`). Core never
imports Gradio.

>>> for batch in track(progress, batches, "layer 3: means", total=len(batches)): ...
>>> report(progress, "loading model toy", 0.05)
"""

from __future__ import annotations

import sys
from typing import Iterable, Protocol, runtime_checkable

__all__ = ["Progress", "NullProgress", "LogProgress", "TqdmProgress", "SILENT", "track", "report"]


@runtime_checkable
class Progress(Protocol):
    """A progress display: a fraction done (None when unknown) with a description, or a wrapped iterable."""

    def __call__(self, fraction: float | None, desc: str | None = None) -> None: ...

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable: ...


class NullProgress:
    """Progress that shows nothing (library use, tests)."""

    def __call__(self, fraction: float | None, desc: str | None = None) -> None:
        return None

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        return iterable


SILENT = NullProgress()


class LogProgress(NullProgress):
    """Progress as lines to a log function (`print`, a table's log): messages only, no bars."""

    def __init__(self, log):
        self.log = log

    def __call__(self, fraction: float | None, desc: str | None = None) -> None:
        if desc:
            self.log(desc)


class TqdmProgress:
    """The command line's progress: one tqdm bar per loop on stderr, and messages as lines on stderr."""

    def __init__(self, unit: str = "batch", *, messages: bool = True):
        self.unit, self.messages = unit, messages

    def __call__(self, fraction: float | None, desc: str | None = None) -> None:
        if self.messages and desc:
            print(desc, file=sys.stderr, flush=True)

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True, unit=self.unit)


def track(progress: Progress | None, iterable: Iterable, desc: str | None = None, total: int | None = None) -> Iterable:
    """`iterable`, shown by `progress` (nothing when None)."""
    return iterable if progress is None else progress.tqdm(iterable, total=total, desc=desc)


def report(progress: Progress | None, desc: str, fraction: float | None = None) -> None:
    """Tell `progress` (when given) what is happening now."""
    if progress is not None:
        progress(fraction, desc=desc)
