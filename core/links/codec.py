"""A view of a tab <-> plain URL query parameters, e.g. `?tab=heads&model=toy&layer=3&head=1`.

The state lives in the URL, never in server memory, so a link gives the same view and numbers after a restart.
`decode(encode(state)) == state` for every valid state. Reading a link never fails: an unknown tab or parameter,
a malformed value, or (in public mode) a model outside the allow-list is dropped, and each drop is a notice the
UI shows. Parameter names are stable (issue 13):

| name | value |
|---|---|
| `tab` | `decomposition`, `heads`, `neurons`, ... (registered tabs) |
| `model` | a model spec (`toy`, `ViT-B-16/laion2b_s34b_b88k`, `hf-hub:ORG/NAME`) |
| `bases` | `ORG/NAME@SHA` (a 40-hex commit), the Hub bases the view reads |
| `layer`, `head`, `neuron` | indices (`head` is `LAYER.HEAD`, e.g. `2.1`, in the circuits tab) |
| `text` | repeatable, one per text, in order |
| `image` | `example:N`, `world:SEED:INDEX` or `upload` (an uploaded image cannot travel in a link) |
| `convention`, `method` | names; which `method`s a tab accepts is part of its registration |
| `threshold` | a positive number |
| `shown` | which of the texts a view shows (0-based), where a tab shows one at a time |
| `background` | a background text (segmentation: pixels it wins are background) |
| `compare` | a second method shown side by side (one of the tab's `method`s) |
| `neurons`, `words`, `images`, `repeats` | counts (adversarial: top neurons, top words, images per repeat, repeats) |
| `seed` | a seed, 0 to 2**31-1 |
| `baselines` | `yes` or `no` |
| `similarity` | a cosine in [-1, 1] (adversarial: drop words at least this close to the target) |
| `judge` | a model spec (adversarial: the synonym judge's text tower) |
| `layers` | comma-separated indices, e.g. `8,9,10` |
| `block` | comma-separated words never to use |
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable
from urllib.parse import parse_qsl, urlencode

from core.engine.conventions import CONVENTIONS

MAX_TEXTS = 16
MAX_TEXT_CHARS = 200
MAX_INDEX = 1_000_000
MAX_SPEC_CHARS = 200
MAX_QUERY_CHARS = 8_000
MAX_SEED = 2**31 - 1
MAX_LAYERS = 64
SPEC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]*")
BASES = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*@[0-9a-f]{40}")


@dataclass(frozen=True)
class ViewState:
    """One view of one tab; None (or no texts) means the tab's default."""

    tab: str
    model: str | None = None
    bases: str | None = None
    layer: int | None = None
    head: int | str | None = None  # an index, or "LAYER.HEAD" for tabs registered with dotted_head
    neuron: int | None = None
    texts: tuple[str, ...] = ()
    image: str | None = None
    convention: str | None = None
    method: str | None = None
    threshold: float | None = None
    shown: int | None = None
    background: str | None = None
    compare: str | None = None
    neurons: int | None = None
    words: int | None = None
    images: int | None = None
    repeats: int | None = None
    seed: int | None = None
    baselines: bool | None = None
    similarity: float | None = None
    judge: str | None = None
    layers: tuple[int, ...] | None = None
    block: str | None = None

    def with_values(self, **values) -> "ViewState":
        """A copy with some fields replaced (texts given as any sequence)."""
        if "texts" in values:
            values["texts"] = tuple(values["texts"] or ())
        return replace(self, **values)


@dataclass(frozen=True)
class LinkRead:
    """What a link said: the state it restores, and what was ignored and why."""

    state: ViewState
    notices: tuple[str, ...] = ()
    given: frozenset[str] = frozenset()  # the parameters the link set (and that were kept)

    def notice_text(self) -> str:
        return " ".join(self.notices)


@dataclass(frozen=True)
class TabLinks:
    """Which parameters a tab reads, and the values of its `method` parameter."""

    name: str
    params: tuple[str, ...]
    methods: tuple[str, ...] = ()
    dotted_head: bool = False  # `head` is LAYER.HEAD (a head anywhere in the model) instead of an index


TABS: dict[str, TabLinks] = {}


def register_tab(name: str, params: Iterable[str], methods: Iterable[str] = (), dotted_head: bool = False) -> TabLinks:
    """Make a tab's views linkable: `params` are the query parameters it reads (besides `tab`)."""
    params = tuple(params)
    unknown = [p for p in params if p not in PARAMS or p == "tab"]
    if unknown:
        raise ValueError(f"unknown link parameters {unknown}; known: {sorted(PARAMS)}")
    TABS[name] = TabLinks(name, params, tuple(methods), dotted_head)
    return TABS[name]


# ---------------------------------------------------------------- one parser per parameter


def _index(value: str, name: str) -> int:
    if not re.fullmatch(r"[0-9]{1,7}", value) or int(value) > MAX_INDEX:
        raise ValueError(f"{name} must be a whole number from 0 to {MAX_INDEX}")
    return int(value)


def _head(value: str, name: str) -> int | str:
    """An index (`3`), or LAYER.HEAD (`2.1`) kept as that string."""
    match = re.fullmatch(r"([0-9]{1,4})\.([0-9]{1,4})", value)
    if match:
        return f"{int(match[1])}.{int(match[2])}"
    return _index(value, name)


def _model(value: str, name: str) -> str:
    if len(value) > MAX_SPEC_CHARS or not SPEC.fullmatch(value) or "//" in value or ".." in value:
        raise ValueError("model must be a model spec such as toy or ViT-B-16/laion2b_s34b_b88k")
    return value


def _bases(value: str, name: str) -> str:
    if not BASES.fullmatch(value):
        raise ValueError("bases must be ORG/NAME@SHA with the 40-hex commit of a Hub dataset repo")
    return value


def _text(value: str, name: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_TEXT_CHARS or any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"each text must be one line of 1 to {MAX_TEXT_CHARS} characters")
    return value


def _image(value: str, name: str) -> str:
    from core.links.images import parse_image_ref

    return parse_image_ref(value).ref


def _convention(value: str, name: str) -> str:
    if value not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}")
    return value


def _name(value: str, name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,39}", value):
        raise ValueError(f"{name} must be a short lower-case name")
    return value


def _threshold(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 1000):
        raise ValueError("threshold must be a number above 0 and at most 1000")
    return number


def _count(high: int) -> Callable[[str, str], int]:
    def parse(value: str, name: str) -> int:
        if not re.fullmatch(r"[0-9]{1,7}", value) or not 1 <= int(value) <= high:
            raise ValueError(f"{name} must be a whole number from 1 to {high}")
        return int(value)

    return parse


def _seed(value: str, name: str) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to {MAX_SEED}")
    return int(value)


def _yes_no(value: str, name: str) -> bool:
    if value not in ("yes", "no"):
        raise ValueError(f"{name} must be yes or no")
    return value == "yes"


def _cosine(value: str, name: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and -1 <= number <= 1):
        raise ValueError(f"{name} must be a number from -1 to 1")
    return number


def _layers(value: str, name: str) -> tuple[int, ...]:
    parts = value.split(",")
    if not 1 <= len(parts) <= MAX_LAYERS or not all(re.fullmatch(r"[0-9]{1,4}", p) for p in parts):
        raise ValueError(f"layers must be up to {MAX_LAYERS} comma-separated layer indices, e.g. 8,9,10")
    return tuple(int(p) for p in parts)


def _words(value: str, name: str) -> str:
    words = [w.strip() for w in value.split(",")]
    if len(value) > MAX_TEXT_CHARS or not all(words) or any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"{name} must be comma-separated words, at most {MAX_TEXT_CHARS} characters")
    return ",".join(words)


Parser = Callable[[str, str], object]
# Query-string order; `text` is the field `texts`, repeated.
PARAMS: dict[str, Parser] = {
    "tab": _name, "model": _model, "bases": _bases, "layer": _index, "head": _head, "neuron": _index,
    "text": _text, "image": _image, "convention": _convention, "method": _name, "threshold": _threshold,
    "shown": _index, "background": _text, "compare": _name, "neurons": _count(100_000), "words": _count(10_000),
    "images": _count(1_000), "repeats": _count(10), "seed": _seed, "baselines": _yes_no, "similarity": _cosine,
    "judge": _model, "layers": _layers, "block": _words,
}
_FIELD = {"text": "texts"}


def _format(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- both directions


def encode(state: ViewState) -> str:
    """The query string (without `?`) of a state; parameters in a fixed order, defaults left out."""
    pairs = [("tab", state.tab)]
    for name in PARAMS:
        if name == "tab":
            continue
        value = getattr(state, _FIELD.get(name, name))
        if name == "text":
            pairs += [("text", text) for text in value]
        elif value is not None:
            pairs.append((name, _format(value)))
    return urlencode(pairs, safe=":/@,")  # readable: image=example:0, model=ViT-B-16/openai, layers=8,9


def _pairs(query) -> list[tuple[str, str]]:
    if query is None:
        return []
    if isinstance(query, str):
        query = query[1:] if query.startswith("?") else query
        if len(query) > MAX_QUERY_CHARS:
            return [("__too_long__", "")]
        return parse_qsl(query, keep_blank_values=True)
    if hasattr(query, "multi_items"):  # starlette's QueryParams, as gr.Request gives them
        return list(query.multi_items())
    return list(query.items()) if hasattr(query, "items") else list(query)


def decode(query, *, tab: str, public: bool | None = None, allowed_models: Iterable[str] | None = None,
           only_tab: bool = False) -> LinkRead:
    """The state a query restores for the tab it names (default `tab`), with a notice for each thing ignored.

    `only_tab`: the page shows only `tab` (a tab's own Space), so a link to another tab restores nothing.
    Public mode (default: `core.settings.public()`) keeps only allow-listed models.
    """
    from core import settings

    public = settings.public() if public is None else public
    allowed = tuple(settings.allowed_models() if allowed_models is None else allowed_models)
    notices: list[str] = []
    values: dict[str, object] = {}
    texts: list[str] = []
    for name, raw in _pairs(query):
        if name.startswith("__") and name != "__too_long__":
            continue  # Gradio's and Spaces' own parameters (__theme, ...)
        if name == "__too_long__":
            notices.append(f"The link is longer than {MAX_QUERY_CHARS} characters and was ignored.")
            continue
        parser = PARAMS.get(name)
        if parser is None:
            notices.append(f"Ignored the unknown link parameter '{_short(name)}'.")
            continue
        if name in values or (name == "text" and len(texts) >= MAX_TEXTS):
            notices.append(f"Ignored a repeated '{name}' (only the first {MAX_TEXTS if name == 'text' else 1} kept).")
            continue
        try:
            value = parser(raw, name)
        except ValueError as err:
            notices.append(f"Ignored {name}={_short(raw)!r}: {err}.")
            continue
        if name == "text":
            texts.append(value)
        else:
            values[name] = value
    target = values.pop("tab", None) or tab
    if target not in TABS:
        notices.append(f"There is no tab '{target}' here; showing the {tab} tab.")
        target = tab
    if only_tab and target != tab:
        notices.append(f"This page shows only the {tab} tab; the link is for the {target} tab.")
        return LinkRead(ViewState(tab), tuple(notices))
    spec = TABS[target]
    if texts:
        values["text"] = texts
    for name in list(values):
        if name not in spec.params:
            notices.append(f"The {target} tab has no '{name}'; ignored.")
            values.pop(name)
    if "head" in values and isinstance(values["head"], str) != spec.dotted_head:
        form = "LAYER.HEAD (e.g. 2.1)" if spec.dotted_head else "a head index"
        notices.append(f"Ignored head={values.pop('head')!r}: the {target} tab's head is {form}.")
    for name in ("method", "compare"):
        if name in values and values[name] not in spec.methods:
            notices.append(f"Ignored {name}={values.pop(name)!r}: the {target} tab's methods are "
                           f"{', '.join(spec.methods) or 'none'}.")
    for name, fallback in (("model", "the default model"), ("judge", "the default judge")):
        if public and name in values and values[name] not in allowed:
            notices.append(f"Model {values.pop(name)!r} is not offered on this public server "
                           f"(allowed: {', '.join(allowed)}); showing {fallback}.")
    if values.get("image") == "upload":
        notices.append("This link was made with an uploaded image, which cannot travel in a link: upload it again.")
    given = frozenset(values)
    state = ViewState(target, **{_FIELD.get(k, k): (tuple(v) if k == "text" else v) for k, v in values.items()})
    return LinkRead(state, tuple(notices), given)


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


register_tab("decomposition", ("model", "text", "image", "convention", "shown", "layer", "head"))
register_tab("heads", ("model", "bases", "layer", "head", "text", "image", "convention", "method"),
             methods=("cosine", "centered", "dot"))
register_tab("neurons", ("model", "bases", "layer", "neuron", "text", "image", "threshold"))
register_tab("segmentation", ("model", "image", "text", "background", "method", "compare", "threshold"),
             methods=("heads", "neurons", "random-neurons", "raw-attention", "rollout", "gradcam", "chefer"))
# Adversarial: `text` is the two classes (shown c1, target c2), `method` the image generator.
register_tab("circuits", ("model", "bases", "layer", "neuron", "head", "text", "method"), methods=("weight", "data"),
             dotted_head=True)
register_tab("adversarial", ("model", "text", "method", "layers", "neurons", "words", "similarity", "judge", "block",
                             "images", "repeats", "baselines", "seed"), methods=("world", "sd"))
