"""The one unit policy of every tab, command and download.

- A cosine shown to a person (cos(image, text), a component's share of it, cos(PC, text)) is x100: "cosine
  points", so that the shares of 12 layers x 12 heads are readable numbers, and a cosine reads the same in every
  tab and every command's table.
- A share of variance is a percentage.
- JSON (``--json``, segment.json, downloads) keeps raw floats, and says so: each object carries ``units``
  (the key -> its unit), so nobody has to guess whether 0.31 is a cosine or a percentage.
"""

from __future__ import annotations

COSINE_SCALE = 100.0
COSINE_UNIT = "cosine x100"
SHARE_UNIT = "%"
POLICY = ("Units: cosines and their parts are shown x100 (cosine x100: 31.2 is a cosine of 0.312); shares of "
          "variance in percent; JSON and downloads keep raw floats and name each unit in `units`.")

# What raw JSON values are, named once (the `units` field of JSON objects).
RAW_COSINE = "cosine (raw, -1..1; the UI and tables show it x100)"
RAW_FRACTION = "fraction of variance (raw, 0..1; the UI and tables show it in percent)"


def cosine_points(value: float) -> float:
    """A raw cosine (or a share of one) as shown to a person: x100."""
    return float(value) * COSINE_SCALE


def shown_cosine(value: float, digits: int = 4) -> float:
    """The number a table shows for a raw cosine: x100, rounded to `digits` decimals."""
    return round(cosine_points(value), digits)


def format_cosine(value: float, digits: int = 3) -> str:
    """A raw cosine as text x100 with its sign (``+31.200``)."""
    return f"{cosine_points(value):+.{digits}f}"


def percent(fraction: float) -> float:
    """A raw share (0..1) in percent."""
    return float(fraction) * 100.0


def shown_percent(fraction: float, digits: int = 2) -> float:
    """The number a table shows for a share: percent, rounded to `digits` decimals."""
    return round(percent(fraction), digits)


def units(**keys: str) -> dict[str, str]:
    """The `units` field of a JSON object: key -> unit of its raw value."""
    return dict(sorted(keys.items()))
