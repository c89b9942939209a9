"""Inputs every tab shares, and the pieces of a view every tab shows (link, provenance, colour scale).

Scores in the UI are cosine contributions x100 ("cosine points") in every view: grids, bars and tables alike.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
from PIL import Image, ImageDraw

from core import settings
from core.errors import ConfigError, CoreError, ImageError, TextError
from core.explorer import access
from core.links.codec import ViewState, encode
from core.links.commands import CITATIONS
from core.links.images import describe_ref, image_from_ref
from core.messages import display_source, error_message, without_paths  # noqa: F401  (the tabs' shortening)

UNIT = 100.0  # scores are shown as cosine x100
UNIT_NAME = "cosine x100"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Progress(Protocol):
    """What the tabs pass in (Gradio's gr.Progress has this shape); core never imports Gradio."""

    def __call__(self, fraction: float, desc: str | None = None) -> None: ...

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable: ...


class Silent:
    """Progress that shows nothing (library use, tests)."""

    def __call__(self, fraction: float, desc: str | None = None) -> None:
        return None

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        return iterable


def progress_or_silent(progress: Progress | None) -> Progress:
    """The tab's progress (or none), stopping the request at any step once it ran past its public deadline
    (core.budget.checkpoint)."""
    return progress if isinstance(progress, Bounded) else Bounded(progress if progress is not None else Silent())


class Bounded:
    """A Progress that checks the request's deadline (core.budget) at every report and every step."""

    def __init__(self, inner: Progress):
        self.inner = inner

    def __call__(self, fraction: float, desc: str | None = None) -> None:
        from core.budget import checkpoint

        checkpoint()
        return self.inner(fraction, desc=desc)

    def tqdm(self, iterable: Iterable, total: int | None = None, desc: str | None = None) -> Iterable:
        from core.budget import checkpoint

        for item in self.inner.tqdm(iterable, total=total, desc=desc):
            checkpoint()
            yield item


def load_model(spec: str | None, progress: Progress | None = None):
    """The model a visitor asked for, checked against the server's rules, on the configured device."""
    from core.engine.models import load_clip

    spec = access.check_model(spec)
    progress_or_silent(progress)(0.05, desc=f"loading model {spec}")
    return load_clip(spec, device=settings.resolve_device())


def read_texts(raw: str | Iterable[str] | None, *, limit: int = access.MAX_TEXTS) -> list[str]:
    """Texts, one per line (or a list), stripped and de-duplicated in order; TextError when none or too many."""
    if isinstance(raw, str):  # refused before it is split: its length bounds the work
        access.check_length(raw, "The text box", limit * (access.MAX_TEXT_CHARS + 2) + 1_000)
    lines = raw.splitlines() if isinstance(raw, str) else list(raw or [])
    texts = list(dict.fromkeys(str(line).strip() for line in lines if str(line).strip()))
    if not texts:
        raise TextError("Type at least one text (one per line).")
    if len(texts) > limit:
        raise TextError(f"At most {limit} texts, got {len(texts)}.")
    long = [t for t in texts if len(t) > access.MAX_TEXT_CHARS]
    if long:
        raise TextError(f"Each text must be at most {access.MAX_TEXT_CHARS} characters; one has {len(long[0])}.")
    return texts


@dataclass(frozen=True)
class QueryImage:
    image: Image.Image
    ref: str  # "example:N", "world:SEED:INDEX" or "upload"
    description: str


def query_image(path: str | None, ref: str | None, *, what: str = "the uploaded image") -> QueryImage:
    """The image to explain: a link reference (when given) wins over an upload."""
    ref = (ref or "").strip()
    if ref and ref != "upload":
        return QueryImage(image_from_ref(ref), ref, describe_ref(ref))
    if path:
        # Uploads keep the visitor's file name (Gradio stores them as <cache>/<hash>/<name>): say which file.
        from core.engine.images import load_image  # torch: not before the first request

        return QueryImage(load_image(path, name=f"{what} {Path(path).name}"), "upload", "an uploaded image")
    raise ImageError("Upload an image or pick an example first.")


def text_pool(upload: str | None, typed: str | None = None) -> tuple[list[str], str, str]:
    """(texts, pool name, description): an uploaded .txt, else 'toy' (the shipped pool), else a local file."""
    from core.engine.text import read_text_pool
    from core.world.scenes import load_toy_texts

    typed = (typed or "").strip()
    max_texts, max_bytes = access.pool_limits()
    if upload:
        path = Path(upload)
        if path.stat().st_size > max_bytes:
            raise TextError(f"The text pool file is over {max_bytes / 1e6:g} MB.")
        source, name = path, path.name
    elif typed in ("", "toy"):
        texts = load_toy_texts()
        return texts, "toy", f"the toy text pool ({len(texts)} texts)"
    else:
        source = access.check_server_path(typed, "text pool")
        name = source.name
    try:
        texts, _ = read_text_pool(source)
    except UnicodeDecodeError:
        raise TextError(f"The text pool {name} is not UTF-8 text.") from None
    if len(texts) > max_texts:
        raise TextError(f"The text pool {name} has {len(texts)} texts; the limit is {max_texts}.")
    return texts, name, f"{name} ({len(texts)} texts{', uploaded' if upload else ''})"


def check_index(value, name: str, size: int) -> int:
    """An index typed in a number box (float or None) within 0..size-1."""
    if value is None or value == "":
        raise ConfigError(f"Choose a {name}.")
    return access.check_count(value, name, 0, max(size - 1, 0)) if size > 0 else 0


# ---------------------------------------------------------------- link and reproduce panel

@dataclass(frozen=True)
class LinkPanel:
    query: str  # what follows `?` in the page's address
    markdown: str  # the "Cite / reproduce" panel


def link_panel(state: ViewState, commands: list[str], notes: Iterable[str] = ()) -> LinkPanel:
    query = encode(state)
    notes = list(notes)
    if state.image == "upload":
        notes.append("The image was uploaded: it cannot travel in the link (the rest of the view does); "
                     "replace YOUR_IMAGE.png below with it.")
    lines = "\n".join(commands) or "(no command line equivalent)"
    return LinkPanel(query, (
        f"**Link to this view:** `?{query}`\n\n" + "".join(f"- {note}\n" for note in notes)
        + f"\n**Same numbers from the command line:**\n```bash\n{lines}\n```\n\n"
        + "**Cite:**\n" + "".join(f"- {c}\n" for c in CITATIONS)))


# ---------------------------------------------------------------- colour scale

def colour_bar(picture: Image.Image, limit: float, label: str) -> Image.Image:
    """`picture` with a diverging colour scale from -limit to +limit (in display units) underneath."""
    from core.engine.viz import _font, diverging_colours

    width, bar_height, pad = picture.width, 14, 6
    canvas = Image.new("RGB", (width, picture.height + bar_height + 46), "white")
    canvas.paste(picture, (0, 0))
    ramp = diverging_colours(np.linspace(-1.0, 1.0, width - 2 * pad)[None, :].repeat(bar_height, 0), 1.0)
    canvas.paste(Image.fromarray(ramp), (pad, picture.height + 4))
    draw, font = ImageDraw.Draw(canvas), _font(13)
    y = picture.height + bar_height + 8
    draw.text((pad, y), f"-{limit:.3g}", fill="black", font=font)
    draw.text((width // 2 - 4, y), "0", fill="black", font=font)
    right = f"+{limit:.3g}"
    draw.text((width - pad - draw.textlength(right, font=font), y), right, fill="black", font=font)
    draw.text(((width - draw.textlength(label, font=font)) // 2, y + 16), label, fill="dimgray", font=font)
    return canvas


def maybe_int(value) -> int | None:
    """A whole number from a UI value, or None (for links: an unfinished box is left out, not an error)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and 0 <= number <= 1_000_000 else None


# ---------------------------------------------------------------- bases (read-only, verified, shared by everyone)

@functools.lru_cache(maxsize=8)
def _artifact(source: str, identity: str, stamp: float):
    from core.artifacts.store import load_artifact

    return load_artifact(source, expect_model=json.loads(identity) if identity else None)


def cached_artifact(source: str, identity: dict | None = None):
    """The verified artifact at `source` (a folder or ORG/NAME@SHA), read once per change of its manifest."""
    manifest = Path(source) / "manifest.json"
    stamp = manifest.stat().st_mtime if manifest.is_file() else 0.0
    return _artifact(source, json.dumps(identity, sort_keys=True) if identity else "", stamp)


def bases_recipe(artifact) -> str | None:
    """The `bases build` command that makes an artifact like this one (world image sets only)."""
    manifest = artifact.manifest
    try:
        record = artifact.json("image_set")
    except CoreError:
        record = {}
    params = record.get("params", {}) if isinstance(record, dict) else {}
    if record.get("kind") != "world" or params.get("split") != "heldout":
        images = "YOUR_IMAGE_FOLDER"
    else:
        images = f"world:{params['n']}:{params['seed']}"
    pool = manifest.get("text_pool", {}).get("name", "POOL")
    pool = "toy" if pool == "toy" else "YOUR_TEXT_POOL.txt"
    algorithms = manifest.get("algorithms", {})
    parts = [f"python -m core bases build --model {manifest['model']['spec']} --images {images} --texts {pool} --out bases"]
    if "textspan" in algorithms:
        parts.append(f"--per-head {algorithms['textspan'].get('n_texts')} --rank {algorithms['textspan'].get('rank')}")
    if "neurons" in algorithms:
        neurons = algorithms["neurons"]
        parts.append(f"--neuron-layers {' '.join(map(str, neurons.get('layers', [])))} --k {neurons.get('k')} "
                     f"--dictionary {neurons.get('dictionary')}")
    return " ".join(parts)


# ---------------------------------------------------------------- opening a link

@dataclass(frozen=True)
class Linked:
    """What a link asks of one tab: whether it applies, the state, the picture it names, its notice, its view."""

    applies: bool  # the link is for this tab and sets something in it
    state: ViewState
    picture: Image.Image | None  # the image an `image=` reference names
    notice: str
    view: object | None = None  # the tab's first answer (None: nothing to compute, or it failed; see notice)
    link: LinkPanel | None = None  # the canonical link of the restored view, and its commands


def read_link(query, tab: str, *, default_tab: str, only_tab: bool, allowed_models: Iterable[str] | None = None
              ) -> tuple[Linked, Callable[[str], "Linked"]]:
    """Decode a link for `tab`: (Linked without a view, a function that adds a failure to its notice).

    `allowed_models`: what the tab may load in public mode, when it differs from the server's allow-list."""
    from core.links.codec import decode

    read = decode(query, tab=default_tab, only_tab=only_tab, allowed_models=allowed_models)
    applies = read.state.tab == tab and bool(read.given)
    picture = None
    if applies and read.state.image and read.state.image != "upload":
        picture = image_from_ref(read.state.image)
    linked = Linked(applies, read.state, picture, read.notice_text() if read.state.tab == tab else "")

    def failed(reason: str) -> Linked:
        return Linked(applies, read.state, picture, " ".join(filter(None, [linked.notice, reason])))

    return linked, failed


def link_model(spec: str | None) -> str | None:
    """The model a link names for these controls: the checked spec, or None (left out) when it is refused."""
    try:
        return access.check_model(spec)
    except CoreError:
        return None


def link_failure(err: CoreError) -> str:
    return f"The linked view could not be computed: {error_message(err)}"
