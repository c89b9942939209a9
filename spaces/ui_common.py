"""What every tab shares: errors as messages, safe image uploads, tables with headers, the link bar, launching.

Loaded by file path (spaces/ has no __init__.py, so it never shadows Hugging Face's `spaces` package):

    ui = load_ui_common(__file__)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import contextvars
import functools
import hashlib
import html
import io
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import gradio as gr
import pandas as pd

from core import settings
from core.errors import CoreError
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


def message(err: BaseException) -> gr.Error:
    """A gr.Error that shows `err`'s one-line message (escaped: Gradio renders it as HTML)."""
    return gr.Error(html.escape(str(err)), print_exception=False)


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
            with _request_scope():
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CoreError as err:
            raise message(err) from None
        except Exception as err:  # noqa: BLE001 - a visitor gets a message, the server log the traceback
            log.exception("unexpected error in %s", fn.__name__)
            detail = "" if settings.public() else f": {str(err)[:200]}"
            raise gr.Error(html.escape(f"Unexpected {type(err).__name__} in {fn.__name__}{detail}. The server log "
                                       "has the details."), print_exception=False) from None
        finally:
            release_memory()

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not model:
            return call(*args, **kwargs)
        # The context travels with the call: gr.Progress finds its event through it.
        return MODEL_THREADS.submit(contextvars.copy_context().run, call, *args, **kwargs).result()

    return run


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
        raise gr.Error(html.escape(f"The uploaded file {name} is not an image this app can read."),
                       print_exception=False) from None


def image_input(elem_id: str, label: str = "Image") -> gr.Image:
    """An image upload whose unreadable files give a clear message (a plain gr.Image: a subclass would make
    Gradio write a .pyi stub next to this file)."""
    image = gr.Image(type="filepath", label=label, height=240, elem_id=elem_id, image_mode=None,
                     sources=["upload", "clipboard"])
    image.preprocess = functools.partial(_safe_preprocess, image.preprocess)
    return image


PICTURES = Path(tempfile.gettempdir()) / "clipscope-ui"


def picture(image):
    """A PIL image as a PNG file named by its content, written atomically; other values unchanged.

    Handlers return files, not PIL images: Gradio writes a returned PIL image into its cache in place, so two
    visitors who get the same picture at the same moment can be sent a half-written file (the client then sees
    'peer closed connection without sending complete message body'). Files are copied into the cache atomically.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        path = PICTURES / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not path.is_file():
            PICTURES.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(dir=PICTURES, suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, path)
        return str(path)
    if isinstance(image, list):
        return [(picture(item[0]), item[1]) if isinstance(item, tuple) else picture(item) for item in image]
    return image


def constant(values: list) -> Callable:
    """A handler that returns these values (one output gets the value itself, not a one-item list)."""
    result = values[0] if len(values) == 1 else tuple(values)
    return lambda: result


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


def examples(image, image_id, label="Generated-world examples") -> gr.Examples:
    from core.links.images import EXAMPLE_COUNT, image_ref_path

    rows = [[image_ref_path(f"example:{i}"), f"example:{i}"] for i in range(EXAMPLE_COUNT)]
    return gr.Examples(examples=rows, inputs=[image, image_id], label=label, examples_per_page=EXAMPLE_COUNT)


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
  const url = base + '?' + (query || '');
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
        self.query = gr.Textbox(visible="hidden", elem_id=f"{tab}-query", label="link")
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

        bundle = load_clip(settings.default_model(), device=settings.resolve_device())
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
    if ON_ZERO_GPU:
        warm_up()
    demo.queue(default_concurrency_limit=2, max_size=64).launch(
        server_name=host, server_port=port, max_file_size=UPLOAD_LIMIT, show_error=True, max_threads=MAX_THREADS,
        footer_links=["api", "gradio"], prevent_thread_lock=True)
    if not ON_ZERO_GPU:
        threading.Thread(target=warm_up, name="clipscope-warm-up", daemon=True).start()
    demo.block_thread()


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
