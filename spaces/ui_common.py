"""What every tab shares: errors as messages, safe image uploads, tables with headers, the link bar, launching.

Loaded by file path (spaces/ has no __init__.py, so it never shadows Hugging Face's `spaces` package):

    ui = load_ui_common(__file__)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import contextvars
import errno
import functools
import hashlib
import html
import io
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd
from gradio.exceptions import ComponentProcessingError

from core import budget, caches, settings
from core.errors import CoreError
from core.explorer import sessions
from core.messages import error_message
from core.gpu import ON_ZERO_GPU, gpu, request_seconds

log = logging.getLogger("clipscope.ui")
FIRST_TAB = "decomposition"  # the tab a link without `tab=` opens in the whole suite
UPLOAD_LIMIT = "50mb"
# Every event that runs a model waits in one queue: at most two at a time on the whole server, whatever the tab,
# so concurrent visitors share the cores instead of oversubscribing them (and memory stays flat).
MODEL_QUEUE = {"concurrency_id": "model", "concurrency_limit": 2}
# Worker threads of the server: each thread that has run torch keeps thread-local native memory, so a bounded
# pool keeps the server's resident memory flat under many visitors (the model queue above runs 2 at a time).
MAX_THREADS = 8


DISK_ERRORS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


def message(err: BaseException, where: str | None = None) -> gr.Error:
    """A gr.Error that shows `err`'s message as core.messages.error_message formats it (no server path in public
    mode). Gradio renders it as (sanitised) HTML, so `<`, `>` and `&` are escaped; quotes are not, so that API clients
(gradio_client) read "can't", not "can&#x27;t"."""
    return gr.Error(html.escape(error_message(err, where=where), quote=False), print_exception=False)


def _one_line_refusals() -> None:
    """Gradio refuses a value outside a component's choices (or an unreadable upload) before any handler runs,
    with an Error that prints its traceback on the server: 40 lines per bad request. The visitor keeps Gradio's
    message; the server log gets one line."""
    original = gr.Blocks.preprocess_data
    if getattr(original, "_one_line", False):
        return

    @functools.wraps(original)
    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await original(self, block_fn, inputs, state, explicit_call)
        except gr.Error as err:
            if not err.print_exception:
                raise
            log.warning("refused a request to %s: %s", getattr(block_fn, "name", "?"), " ".join(str(err).split())[:300])
            raise gr.Error(err.message, duration=err.duration, visible=err.visible, title=err.title,
                           print_exception=False) from None
        except ComponentProcessingError as err:  # a component could not read the value it was sent
            text = " ".join(str(err).split())[:300]
            log.warning("refused a request to %s: %s", getattr(block_fn, "name", "?"), text)
            raise gr.Error(html.escape(error_message(CoreError(f"An input could not be read: {text}")), quote=False),
                           print_exception=False) from None

    preprocess_data._one_line = True
    gr.Blocks.preprocess_data = preprocess_data


_one_line_refusals()


def _release_memory() -> Callable[[], None]:
    """glibc's malloc_trim: give freed heap back to the system. Handlers run in many threads, and each thread's
    malloc arena otherwise keeps the peak of every request it served (the server's RSS then creeps up)."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    lock, last = threading.Lock(), [0.0]

    def release() -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 and lock.acquire(blocking=False):  # at most once a second, never waiting
            try:
                last[0] = now
                trim(0)
            finally:
                lock.release()

    return release


release_memory = _release_memory()


# Model work runs on two long-lived threads. torch and the C allocator keep memory per thread that has run a model,
# so a server whose requests wander over many worker threads grows with every new one; two threads keep it flat.
# (Which requests run at once is still decided by Gradio's queue; see MODEL_QUEUE.)
MODEL_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="clipscope-model")


def _request_scope():
    """In public mode the lenses of one request share traced forwards, and no request reuses another's
    (core.engine.shared_trace); locally one process-wide cache serves every request."""
    if not settings.public():
        return contextlib.nullcontext()
    from core.engine.shared_trace import trace_scope

    return trace_scope()


def guard(fn: Callable | None = None, *, model: bool = True) -> Callable:
    """Run a handler (on the model threads unless model=False); a CoreError becomes its message, anything
    unexpected a short message (details in the server log)."""
    if fn is None:
        return functools.partial(guard, model=model)

    def call(*args, **kwargs):
        try:
            with budget.request_scope(), _request_scope():  # public mode: deadline, memory, own traces
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CoreError as err:
            raise message(err) from None
        except Exception as err:  # noqa: BLE001 - a visitor gets a message, the server log the traceback
            if isinstance(err, OSError) and err.errno in DISK_ERRORS:
                # A full or read-only disk outside the optional caches (those are skipped): say so.
                log.warning("disk error in %s: %s", fn.__name__, err.strerror or type(err).__name__)
                raise gr.Error("This server cannot write its files now (its disk is full or read-only): try "
                               "again later.", print_exception=False) from None
            log.exception("unexpected error in %s", fn.__name__)
            raise message(err, fn.__name__) from None
        finally:
            release_memory()

    @functools.wraps(fn)
    def run(*args, **kwargs):
        sessions.claim(session_id(), _upload_paths(args, kwargs))  # they stay while this session lives
        if not model:
            return call(*args, **kwargs)
        # The context travels with the call: gr.Progress finds its event through it.
        return MODEL_THREADS.submit(contextvars.copy_context().run, call, *args, **kwargs).result()

    return run


def _upload_paths(args, kwargs) -> list[str]:
    """The file paths among a handler's inputs (a file, a list of files): uploads the session now uses."""
    paths = []
    for value in (*args, *kwargs.values()):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item.startswith(os.sep) and len(item) < 4096:
                paths.append(item)
    return paths


def uploaded(path) -> bool:
    """True for a file in Gradio's upload folder (what a visitor sent), False for any other server path."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    return bool(path) and is_in_or_equal(Path(path).resolve(), Path(get_upload_folder()).resolve())


def _safe_preprocess(preprocess: Callable, payload):
    """gr.Image's preprocess, with uploads it cannot read (not an image, too large, empty) named in a clear message
    instead of Gradio's bare 'Error', and server paths refused unopened."""
    path = getattr(payload, "path", None)
    if path and not (getattr(payload, "url", None) or "").startswith("data:") and not uploaded(path):
        # Never open, stat or name a server path a client typed: the same answer whether it exists or not.
        raise gr.Error("That image was not uploaded to this server: upload the file itself.", print_exception=False)
    try:
        return preprocess(payload)
    except gr.Error:
        raise
    except Exception:  # noqa: BLE001 - PIL raises many kinds; core.engine.images says which problem it is
        from core.engine.images import load_image

        name = Path(getattr(payload, "orig_name", None) or "the upload").name[:80]
        try:
            load_image(path or b"", name=f"The uploaded file {name}")
        except CoreError as err:
            raise message(err) from None
        raise gr.Error(html.escape(f"The uploaded file {name} is not an image this app can read.", quote=False),
                       print_exception=False) from None


def image_input(elem_id: str, label: str = "Image") -> gr.Image:
    """An image upload whose unreadable files give a clear message (a plain gr.Image: a subclass would make
    Gradio write a .pyi stub next to this file)."""
    image = gr.Image(type="filepath", label=label, height=240, elem_id=elem_id, image_mode=None,
                     sources=["upload", "clipboard"])
    image.preprocess = functools.partial(_safe_preprocess, image.preprocess)
    return image


def session_id() -> str | None:
    """The Gradio session of the event being handled (None outside one)."""
    from gradio.context import LocalContext

    return getattr(LocalContext.request.get(None), "session_hash", None)


def picture(image):
    """A PIL image as a PNG file named by its content in the session's folder, written atomically; other values
    unchanged. The folder goes when the session ends (core.explorer.sessions).

    Handlers return files, not PIL images: Gradio writes a returned PIL image into its cache in place, so two
    visitors who get the same picture at the same moment can be sent a half-written file (the client then sees
    'peer closed connection without sending complete message body'). Files are copied into the cache atomically.
    When the file cannot be written (a full disk), the image itself is returned, with a warning in the log.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        try:
            path = sessions.folder(session_id()) / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
            if path.is_file() or caches.store(path, lambda tmp: Path(tmp).write_bytes(data), "result pictures"):
                return str(path)
        except OSError as err:
            caches.warn_once("result pictures", err)
        return image
    if isinstance(image, list):
        return [(picture(item[0]), item[1]) if isinstance(item, tuple) else picture(item) for item in image]
    return image


def constant(values: list) -> Callable:
    """A handler that returns these values (one output gets the value itself, not a one-item list)."""
    result = values[0] if len(values) == 1 else tuple(values)
    return lambda: result


# Galleries (elem_classes=GALLERY): each picture whole (never cropped to a square, so colour-bar labels stay),
# its caption underneath in full (not over the picture's bottom, not cut to "CLIP: squ..."), and the gallery's
# label above the first picture, not on it. Given to launch(): Gradio 6 takes page CSS there.
GALLERY = ["clipscope-gallery"]
CSS = """
.clipscope-gallery .grid-wrap { padding-top: 2.4em !important; }
.clipscope-gallery .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column !important; overflow: visible !important; }
.clipscope-gallery .thumbnail-item img { object-fit: contain !important; width: 100% !important; height: auto !important; }
.clipscope-gallery .caption-label { position: static !important; max-width: none !important; white-space: normal !important;
  overflow: visible !important; text-overflow: clip !important; opacity: 1 !important; border: none !important;
  border-radius: 0 !important; overflow-wrap: anywhere; }
"""


def frame(rows: list[dict] | None, columns: list[str]) -> pd.DataFrame:
    """A table with named columns even when empty (never Gradio's '1 2 3' placeholder headers)."""
    return pd.DataFrame(rows or [], columns=columns)


def table(label: str, columns: list[str], elem_id: str, **kwargs) -> gr.Dataframe:
    return gr.Dataframe(value=frame([], columns), headers=columns, label=label, elem_id=elem_id, interactive=False,
                        **kwargs)


def model_box(elem_id: str) -> gr.Dropdown:
    """The model spec: any spec locally; in public mode only the allow-listed models."""
    public = settings.public()
    choices = list(settings.allowed_models())
    return gr.Dropdown(choices=choices, value=settings.default_model(), label="Model", elem_id=elem_id,
                       allow_custom_value=not public, scale=2,
                       info=None if public else "toy (offline default), ARCH/TAG, hf-hub:ORG/NAME, "
                       "ARCH/path.safetensors, ARCH/none (random weights)")


def image_id_box(elem_id: str) -> gr.Textbox:
    return gr.Textbox(label="Image id", elem_id=elem_id, max_lines=1,
                      info="example:N or world:SEED:INDEX (a generated scene); empty for an upload. Enter to show it.")


def examples(image, image_id, label="Generated-world examples", texts=None, n_texts: int = 3) -> gr.Examples:
    """The examples; with a `texts` box, choosing one also writes its own texts there (the first `n_texts` of
    core.links.images.default_texts, as a link to that example computes with), so the view and the box agree."""
    from core.links.images import EXAMPLE_COUNT, image_ref_path

    rows = [[image_ref_path(f"example:{i}"), f"example:{i}"] + ([example_texts(f"example:{i}", n_texts)] if texts else [])
            for i in range(EXAMPLE_COUNT)]
    return gr.Examples(examples=rows, inputs=[image, image_id] + ([texts] if texts else []), label=label,
                       examples_per_page=EXAMPLE_COUNT)


def example_texts(ref: str, n_texts: int = 3) -> str:
    """The texts box's value for a generated-world image reference: its own texts, one per line."""
    from core.links.images import default_texts

    return "\n".join(default_texts(ref)[:n_texts])


# ---------------------------------------------------------------- downloads

def download_bar(tab: str, label: str = "Download (zip: data files and provenance.json)"):
    """A tab's download button and the archive it gives (written in the visitor's session folder, which goes when
    the session ends)."""
    with gr.Row():
        button = gr.Button(label, size="sm", elem_id=f"{tab}-download-run", scale=0)
        archive = gr.File(label="Download", elem_id=f"{tab}-download", interactive=False, scale=1)
    return button, archive


def session_folder() -> Path:
    return sessions.folder(session_id())


def tables_download(tab: str, tables: list[str], notes: int) -> Callable:
    """A download handler for a tab whose views are tables: inputs are the tables' values (in the order of
    `tables`, their names in the archive), `notes` info Markdowns, then the link's query and the cite panel."""
    @guard(model=False)
    def download(*values):
        from core.explorer.downloads import tables_archive, view_name

        query, cite = values[-2:]
        return str(tables_archive(session_folder(), tab, view_name(tab, query), dict(zip(tables, values)), query,
                                  cite, notes=[v for v in values[len(tables):len(tables) + notes] if isinstance(v, str)]))

    download.__name__ = f"download_{tab}"
    return download


# ---------------------------------------------------------------- views that lead to each other

def row_links(table, *, model=None, bases=None, layer=None, image_id=None, texts=None) -> gr.Markdown:
    """Below a ranking table: clicking a row that names a head or neuron shows links that open it in its tab
    (core.explorer.navigation). The other arguments are the tab's controls the links carry (model, bases, ...)."""
    box = gr.Markdown(elem_id=f"{table.elem_id}-open")
    empty = gr.State(None)
    inputs = [table] + [c if c is not None else empty for c in (model, bases, layer, image_id, texts)]
    table.select(_open_row, inputs, box, queue=False, api_visibility="private")
    return box


@guard(model=False)
def _open_row(frame, model, bases, layer, image_id, texts, evt: gr.SelectData):
    from core.explorer.navigation import row_links as links

    columns = [str(c) for c in getattr(frame, "columns", [])]
    lines = [t.strip() for t in (texts or "").splitlines() if t.strip()] if isinstance(texts, str) else []
    return links(columns, list(evt.row_value or []), evt.value, model=model, bases=bases, layer=layer,
                 image=image_id, texts=lines) or "This row names no head or neuron."


# ---------------------------------------------------------------- links

# Write the view into the address bar; a page embedded as <gradio-app> leaves its host's address alone.
REPLACE_JS = """(query) => {
  if (query && !document.querySelector('gradio-app[src], gradio-app[space]')) {
    history.replaceState(history.state, '', location.pathname + '?' + query + location.hash);
  }
}"""
COPY_JS = """async (query) => {
  const embedded = document.querySelector('gradio-app[src]');
  const base = embedded ? embedded.getAttribute('src').split('?')[0] : location.origin + location.pathname;
  // No link of a computed view (e.g. the linked view failed): the page's own address, never a bare '/?'.
  const url = query ? base + '?' + query : (embedded ? embedded.getAttribute('src') : location.href);
  try { await navigator.clipboard.writeText(url); } catch (err) {
    const area = document.createElement('textarea'); area.value = url; document.body.appendChild(area);
    area.select(); document.execCommand('copy'); area.remove();
  }
  return 'Copied: ' + url;
}"""


class LinkBar:
    """The notice a link leaves, 'Copy link', and the 'Cite / reproduce' panel of one tab."""

    instances: dict[str, "LinkBar"] = {}  # tab -> its bar (the whole app writes a tab's link when it is selected)

    def __init__(self, tab: str):
        self.tab = tab
        LinkBar.instances[tab] = self
        self.notice = gr.Markdown(elem_id=f"{tab}-notice")
        with gr.Row():
            self.copy = gr.Button("Copy link", size="sm", elem_id=f"{tab}-copy", scale=0)
            self.copied = gr.Markdown(elem_id=f"{tab}-copied")
        self.query = gr.Textbox("", visible="hidden", elem_id=f"{tab}-query", label="link")  # "": API calls need not send it
        with gr.Accordion("Cite / reproduce", open=False, elem_id=f"{tab}-cite-panel"):
            self.cite = gr.Markdown("Run something first: the panel then shows its link and command line.",
                                    elem_id=f"{tab}-cite")
        self.query.change(None, [self.query], None, js=REPLACE_JS)
        self.copy.click(None, [self.query], [self.copied], js=COPY_JS)

    @property
    def outputs(self) -> list:
        return [self.query, self.cite]


def link_values(panel) -> tuple[str, str]:
    return panel.query, panel.markdown


# The link's query string, read in the browser: the page's own address, or, for an app embedded as
# <gradio-app src="https://...?tab=heads&layer=3">, the query of its `src` (the server only sees the host page's).
PAGE_QUERY_JS = """() => {
  const embedded = document.querySelector('gradio-app[src*="?"]');
  const query = embedded ? embedded.getAttribute('src').split('?').slice(1).join('?') : location.search.slice(1);
  return [query];
}"""


def query_of(query: str | None, request: gr.Request | None = None):
    """The link's query: what the browser read (PAGE_QUERY_JS), else the request's (e.g. a direct load)."""
    if query:
        return query
    return getattr(request, "query_params", None) if request is not None else None


def default_tab(tab: str, alone: bool) -> str:
    return tab if alone else FIRST_TAB


@guard(model=False)
def show_image_id(image_id: str):
    """The picture an image id names (empty: keep the upload)."""
    from core.links.images import image_from_ref

    return picture(image_from_ref(image_id)) if (image_id or "").strip() else gr.skip()


def image_id_with_texts(n_texts: int = 3) -> Callable:
    """A handler for an image id typed in a tab with a texts box: the picture, and that image's own texts (as an
    example or a link to it gives them); an upload or an empty id keeps both."""

    @guard(model=False)
    def show(image_id: str):
        from core.links.images import image_from_ref

        ref = (image_id or "").strip()
        if not ref or ref == "upload":
            return gr.skip(), gr.skip()
        return picture(image_from_ref(ref)), example_texts(ref, n_texts)

    return show


# A link's first answer is restored without Gradio's queue: its numbers are on screen 1.6-1.8 s after navigation
# instead of 2.3 s (bench.links). On ZeroGPU the answer is computed by a GPU handler, which works through the queue.
LOAD_QUEUE = ON_ZERO_GPU


def gpu_link_opener(opener: Callable) -> Callable:
    """A tab's `explorer.open_link` as a GPU handler (decorated when the tab loads, as ZeroGPU needs), sized for a
    link's first answer (an image or two, a few texts)."""
    return gpu(duration=lambda *args, **kwargs: request_seconds(images=2, texts=16))(opener)


def open_link(opener: Callable, opener_on_gpu: Callable, query, tab: str, alone: bool):
    """A tab's `explorer.open_link(query)`; on ZeroGPU through its GPU handler, and only when the link names this
    tab's view, so that a page load asks for no GPU for the tabs the link does not name."""
    options = {"default_tab": default_tab(tab, alone), "only_tab": alone}
    if ON_ZERO_GPU:
        from core.explorer.common import read_link

        if read_link(query, tab, **options)[0].applies:
            return opener_on_gpu(query, **options)
    return opener(query, **options)


# ---------------------------------------------------------------- running a tab

def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default model spec (default: $CLIPSCOPE_MODEL or toy)")
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--public", action="store_true",
                        help="public mode even on 127.0.0.1 (always on for a Space or a non-loopback --host)")
    parser.add_argument("--allow-path", action="append", default=None, metavar="DIR",
                        help="(local mode) folders the server may read images, text pools and bases from")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[str, int]:
    """Apply the command line to the settings (before the tabs are built); returns (host, port)."""
    if args.model:
        settings.configure(default_model=args.model)
    if args.allow_path:
        settings.configure(allowed_paths=args.allow_path)
    host, port = args.host or settings.server_host(), args.port or settings.server_port()
    settings.configure(public=True if args.public or not settings.is_loopback(host) else None)
    return host, port


def warm_up() -> None:
    """Load the default model (and run its first forward) so that the first answer does not pay for it. A model
    that cannot load is left to the tabs, which say why when used."""
    start = time.perf_counter()
    try:
        import torch

        from core.engine.models import load_clip
        from core.engine.trace import trace_vit

        bundle = load_clip()  # the default model on the configured device
        size = bundle.info.image_size
        trace_vit(bundle.model.visual, torch.zeros(1, 3, size, size, device=bundle.device))
    except CoreError as err:
        log.warning("the default model did not load: %s", err)
        return
    print(f"clipscope: default model {bundle.info.spec} ready on {bundle.device} "
          f"({time.perf_counter() - start:.1f} s after serving)", file=sys.stderr, flush=True)


def launch(demo: gr.Blocks, host: str, port: int) -> None:
    """Serve `demo`. The page is served first and the default model loads right after, in the background (on
    ZeroGPU, where models must be placed at start-up, before serving)."""
    # Gradio's cached copies of results and uploads go after an hour; a session's own files when it ends.
    demo.delete_cache = demo.delete_cache or DELETE_CACHE
    demo.unload(session_ended)
    start_sweeper()
    if ON_ZERO_GPU:
        warm_up()
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=host, server_port=port, max_file_size=UPLOAD_LIMIT, show_error=True, max_threads=MAX_THREADS,
        footer_links=["api", "gradio"], app_kwargs={"middleware": [_middleware()]}, prevent_thread_lock=True, css=CSS)
    if not ON_ZERO_GPU:
        threading.Thread(target=warm_up, name="clipscope-warm-up", daemon=True).start()
    demo.block_thread()


# ---------------------------------------------------------------- server resources

DELETE_CACHE = (600, 3600)  # Gradio's delete_cache: every 10 minutes, files over an hour old
SWEEP_SECONDS = 60
# Request bodies (core.budget bounds the work; these bound what arrives). Text fields travel in JSON bodies.
BODY_BYTES, PUBLIC_BODY_BYTES = 64_000_000, 1_000_000
UPLOAD_REQUEST_BYTES = 256_000_000  # one upload request (public mode; each file is also <= UPLOAD_LIMIT)
UPLOAD_SPACE_BYTES = 2_000_000_000  # uploads the server holds at once (public mode)
CLIENT_UPLOAD_BYTES = 512_000_000  # uploads one client address holds at once (public mode)
SESSION_WAIT_SECONDS = 3.0  # an upload waits this long for its client's session to open


def session_ended(request: gr.Request):
    """Gradio's unload event: the visitor's page closed or its client disconnected."""
    sessions.end(getattr(request, "session_hash", None))


_sweeper: list[threading.Thread] = []


def start_sweeper() -> None:
    """Once per process: every minute, remove idle sessions' folders and uploads nobody holds (sessions.sweep)."""
    def loop():
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                sessions.sweep()
            except Exception:  # noqa: BLE001 - a sweep that fails is retried; it must never stop the server
                log.exception("sweeping session files failed")

    if not _sweeper:
        _sweeper.append(threading.Thread(target=loop, name="clipscope-sweeper", daemon=True))
        _sweeper[0].start()


def _middleware():
    from starlette.middleware import Middleware

    return Middleware(ServerGuard)


def _client(scope) -> str:
    for name, value in scope.get("headers") or []:
        if name == b"x-forwarded-for":  # behind a proxy (a Space): the visitor's address
            return value.decode("latin-1").split(",")[0].strip()[:64]
    return str((scope.get("client") or ("unknown",))[0])


class ServerGuard:
    """ASGI middleware in front of Gradio: request bodies are bounded; an upload is accepted only from a client with
    an open session (its page or API client holds Gradio's heartbeat) and within the server's upload space; each
    upload is recorded for the sessions that hold it (core.explorer.sessions), so that it goes when they end."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method, client = scope.get("path", ""), scope.get("method", "GET"), _client(scope)
        if "/heartbeat/" in path and method == "GET":
            sessions.opened(path.rstrip("/").rsplit("/", 1)[-1][:64], client)
            return await self.app(scope, receive, send)
        if method not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        public = settings.public()
        if path.rstrip("/").endswith("/upload"):
            return await self._upload(scope, receive, send, client, length, public)
        limit = PUBLIC_BODY_BYTES if public else BODY_BYTES
        if length is not None and length > limit:
            return await _refuse(send, 413, f"The request is over {limit / 1e6:g} MB; send less text.")
        return await self.app(scope, _bounded(receive, limit), send)

    async def _upload(self, scope, receive, send, client, length, public):
        import asyncio
        import json as json_module

        if public:
            if length is None:
                return await _refuse(send, 411, "Uploads must say their length.")
            if length > UPLOAD_REQUEST_BYTES:
                return await _refuse(send, 413, f"An upload may be at most {UPLOAD_REQUEST_BYTES / 1e6:g} MB.")
            for _ in range(int(SESSION_WAIT_SECONDS / 0.1)):
                if sessions.has_session(client):
                    break
                await asyncio.sleep(0.1)
            else:
                return await _refuse(send, 403, "Uploads belong to a session: open the app's page (or connect a "
                                                "client) first.")
            if sessions.upload_bytes(client) + length > CLIENT_UPLOAD_BYTES:
                return await _refuse(send, 413, "You have uploaded too much at once: close pages you no longer use "
                                                "(their uploads are then removed) and try again.")
            if sessions.upload_bytes() + length > UPLOAD_SPACE_BYTES:
                return await _refuse(send, 507, "This server's upload space is full: try again in a few minutes.")
        body, status = [], [0]

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200:
                body.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, capture)
        if status[0] == 200:
            try:
                paths = json_module.loads(b"".join(body))
            except ValueError:
                return
            if isinstance(paths, list):
                sessions.uploaded(client, [p for p in paths if isinstance(p, str)], length or 0)


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bounded(receive, limit: int):
    """receive() that ends the request (as a disconnect) once its body passes `limit` bytes (no Content-Length)."""
    seen = [0]

    async def bounded():
        message = await receive()
        if message["type"] == "http.request":
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                return {"type": "http.disconnect"}
        return message

    return bounded


async def _refuse(send, status: int, text: str) -> None:
    data = text.encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def load_module(name: str, path: Path):
    """Import a file by path once (tabs and this module live in spaces/, which is not a package)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
