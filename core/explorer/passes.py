"""One overall progress bar for a request that makes several passes (load a model, encode texts, stream images...),
with an estimate of the time left over all of them.

Gradio draws a bar per `progress.tqdm` loop, and each pass would restart it at 0 %. `Passes` reports every step
to the tab's progress as one fraction of the whole request instead (passes weighted by their expected share of the
time), and names the pass and the time left: "head outputs (pass 3 of 3) · about 12 s left".

A report whose `desc` names a later pass moves to that pass (so code written for a plain progress needs no
change: `progress(0.1, desc="encoding the text pool")` starts that pass); other reports count within the current
pass.

>>> passes = Passes(progress, [("loading the model", 1), ("encoding the text pool", 2), ("head outputs", 10)])
>>> bundle = load_clip(spec, progress=passes)                  # its own reports count within pass 1
>>> passes(0.1, desc="encoding the text pool")          # pass 2 begins
>>> for batch in passes.tqdm(batches, total=n, desc="head outputs"): ...   # pass 3, step by step
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Sequence

MIN_SHARE_FOR_ESTIMATE = 0.03  # no estimate from the first 3 %: too noisy to be worth showing


class Passes:
    """A Progress (core.explorer.common.Progress) over weighted passes; fractions reported within the current
    pass become one overall fraction, never going back."""

    def __init__(self, progress, passes: Sequence[tuple[str, float]], *, clock: Callable[[], float] = time.monotonic):
        if not passes or any(weight <= 0 for _, weight in passes):
            raise ValueError("passes need positive weights")
        self.inner = progress
        self.names = [name for name, _ in passes]
        total = float(sum(weight for _, weight in passes))
        self.starts, start = [], 0.0
        for _, weight in passes:
            self.starts.append(start / total)
            start += weight
        self.shares = [weight / total for _, weight in passes]
        self.index = 0
        self.clock = clock
        self.began = clock()
        self.reached = 0.0

    def next(self, name: str | None = None) -> None:
        """Move to the following pass (the previous one counts as done)."""
        self.index = min(self.index + 1, len(self.names) - 1)
        if name:
            self.names[self.index] = name
        self._report(0.0, None)

    def overall(self, fraction: float | None) -> float:
        within = 0.0 if fraction is None else min(max(float(fraction), 0.0), 1.0)
        return self.starts[self.index] + self.shares[self.index] * within

    def remaining_seconds(self) -> float | None:
        if self.reached < MIN_SHARE_FOR_ESTIMATE:
            return None
        elapsed = self.clock() - self.began
        return elapsed * (1.0 - self.reached) / self.reached

    def describe(self, desc: str | None) -> str:
        what = desc or self.names[self.index]
        line = f"{what} (pass {self.index + 1} of {len(self.names)})"
        left = self.remaining_seconds()
        if left is not None:
            line += f" · about {_duration(left)} left"
        return line

    def _report(self, fraction, desc):
        later = [i for i, name in enumerate(self.names) if name == desc and i > self.index]
        if later:  # a later pass begins
            self.index, fraction = later[0], 0.0
        self.reached = max(self.reached, self.overall(fraction))
        return self.inner(self.reached, desc=self.describe(desc))

    def __call__(self, fraction: float | None, desc: str | None = None) -> None:
        return self._report(fraction, desc)

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        """The items of `iterable`, each step reported as a share of this pass (of `total` steps)."""
        if total is None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self._report(0.0, desc)
        for done, item in enumerate(iterable, 1):
            yield item
            self._report(done / total if total else None, desc)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
