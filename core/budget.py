"""What one request may cost a public server: memory and time estimated from its arguments, checked before any work.

The per-argument bounds of `core.guards` keep each input sane; they do not bound a request. Neuron statistics with
k = 1,000 over 2,000 scenes were within every bound and took a server from 1.0 to 5.5 GB for 107 s (issue 20).
So each heavy request first states its `Cost` (peak memory above the server's baseline, and seconds) from its
arguments and the model's sizes, and in public mode:

- a request whose cost is over `PUBLIC_REQUEST_BYTES` or `PUBLIC_REQUEST_SECONDS` is refused before any work, with a
  one-line message that says what to lower and to what;
- heavy requests running at the same time reserve their memory from one pool of `PUBLIC_HEAVY_BYTES` for the whole
  server: a request waits up to `HEAVY_WAIT_SECONDS` for room, then is refused as busy;
- a request still working `PUBLIC_DEADLINE_SECONDS` after it took its model slot stops at its next progress step
  (`checkpoint`): the estimate is for an idle reference machine, the deadline holds on a loaded one.

Local mode computes the same costs and enforces none of them: a researcher's own machine is theirs to fill.

Seconds are for a 2-core CPU server: the arithmetic at CPU_FLOPS plus a per-image overhead, calibrated on the toy
model in a server's model thread (1.7 to 2.1 ms of CPU per image and pass measured, 3.1 ms estimated; 4.6 s of CPU
and 9.8 s of wall time on a machine at load 14 for the 1,059 scenes, k = 100 that the estimate puts at 7 s). On
CUDA the arithmetic is taken as GPU_FLOPS fast. Estimates are meant as upper bounds on an idle machine: caches (text
embeddings, gallery indexes) are not counted, and the deadline covers a loaded machine.

>>> with request_scope():                       # the UI's guard opens one per event
...     admit(neuron_statistics(bundle, images=1000, k=100, texts=291))
...     for batch in batches: checkpoint()     # common.progress_or_silent calls it at every step
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field

from core import settings
from core.errors import LimitError

# ---------------------------------------------------------------- public bounds (see docs/deploy.md)

PUBLIC_REQUEST_BYTES = 1_000_000_000  # estimated peak memory of one request
PUBLIC_REQUEST_SECONDS = 40.0  # estimated seconds of one request on the reference machine
PUBLIC_HEAVY_BYTES = 1_200_000_000  # memory all heavy requests running at once may reserve together
PUBLIC_DEADLINE_SECONDS = 55.0  # a request stops at its next progress step after this long (target: 60 s a slot)
HEAVY_WAIT_SECONDS = 20.0  # how long a heavy request waits for room in the pool before it is refused as busy
HEAVY_BYTES = 64_000_000  # requests estimated under this reserve nothing (they are many and small)

# ---------------------------------------------------------------- the reference machine

CPU_FLOPS = 30e9  # sustained float32 FLOP/s of a 2-core server on the models' matmuls (conservative)
GPU_FLOPS = 5e12
IMAGE_OVERHEAD_SECONDS = 0.001  # per image and pass: rendering, preprocessing, tracing hooks, small kernels
TEXT_OVERHEAD_SECONDS = 0.0005
BATCH = 32  # images per forward pass of the builds the tabs run
TEXT_BATCH = 256


@dataclass(frozen=True)
class Cost:
    """What a request will take: peak bytes above the baseline, seconds, and what a visitor can lower."""

    task: str  # what the request does, as a sentence's subject: "computing these neuron statistics"
    memory: int
    seconds: float
    lower: str  # "k or the number of scenes"
    # Bound -> the largest value of the main argument that fits both budgets (for the message); optional.
    fits: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        return f"{self.task}: about {self.memory / 1e9:.2f} GB and {self.seconds:.0f} s"


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f} GB"


def check(cost: Cost) -> Cost:
    """Refuse (LimitError) a cost over the public budget; the message says what to lower. Local mode: no bound."""
    if not settings.public():
        return cost
    over = []
    if cost.memory > PUBLIC_REQUEST_BYTES:
        over.append(f"about {_gb(cost.memory)} of memory (the limit is {_gb(PUBLIC_REQUEST_BYTES)})")
    if cost.seconds > PUBLIC_REQUEST_SECONDS:
        over.append(f"about {cost.seconds:,.0f} s (the limit is {PUBLIC_REQUEST_SECONDS:.0f} s)")
    if over:
        hint = "; ".join(f"{name} at most {value:,}" for name, value in cost.fits.items() if value is not None)
        raise LimitError(f"{cost.task[:1].upper()}{cost.task[1:]} would take {' and '.join(over)} on this public "
                         f"server: lower "
                         f"{cost.lower}{f' ({hint})' if hint else ''}.")
    return cost


# ---------------------------------------------------------------- one request: reservation and deadline

class _Pool:
    """Memory reserved by the heavy requests running now (one pool per process)."""

    def __init__(self):
        self.used = 0
        self.condition = threading.Condition()

    def reserve(self, amount: int, capacity: int, wait: float) -> bool:
        deadline = time.monotonic() + wait
        with self.condition:
            while self.used + amount > capacity:
                left = deadline - time.monotonic()
                if left <= 0 or not self.condition.wait(left):
                    if self.used + amount > capacity:
                        return False
            self.used += amount
            return True

    def release(self, amount: int) -> None:
        with self.condition:
            self.used -= amount
            self.condition.notify_all()


POOL = _Pool()


@dataclass
class _Request:
    deadline: float | None  # time.monotonic() after which checkpoint() stops the request (None: never)
    reserved: int = 0
    costs: list = field(default_factory=list)


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("clipscope_budget", default=None)


@contextlib.contextmanager
def request_scope(deadline_seconds: float | None = None):
    """One request's budget (the UI's guard opens it around a handler): its deadline starts now, its memory
    reservation is released on exit. Public mode only; elsewhere the scope enforces nothing."""
    public = settings.public()
    seconds = PUBLIC_DEADLINE_SECONDS if deadline_seconds is None else deadline_seconds
    request = _Request(time.monotonic() + seconds if public else None)
    token = _current.set(request)
    try:
        yield request
    finally:
        _current.reset(token)
        if request.reserved:
            POOL.release(request.reserved)


def admit(cost: Cost) -> Cost:
    """Check `cost` (refused over budget) and reserve its memory in the server-wide pool for this request."""
    check(cost)
    request = _current.get()
    if request is None or not settings.public():
        return cost
    request.costs.append(cost)
    if cost.memory < HEAVY_BYTES:
        return cost
    wait = HEAVY_WAIT_SECONDS
    if request.deadline is not None:
        wait = min(wait, max(0.0, request.deadline - time.monotonic() - cost.seconds))
    if not POOL.reserve(cost.memory, PUBLIC_HEAVY_BYTES, wait):
        raise LimitError(f"The server is busy with other large requests ({cost.describe()}): try again in a minute, "
                         f"or lower {cost.lower}.")
    request.reserved += cost.memory
    return cost


def checkpoint() -> None:
    """Stop the current request (LimitError) once it has run past its deadline; free when there is none."""
    request = _current.get()
    if request is not None and request.deadline is not None and time.monotonic() > request.deadline:
        request.deadline = None  # say it once: cleanup code that reports progress must not raise again
        what = " and ".join(cost.lower for cost in request.costs[:1]) or "the size of the request"
        raise LimitError(f"This request ran past the {PUBLIC_DEADLINE_SECONDS:.0f} s a request may take on this "
                         f"public server (it is slower than usual now): lower {what}, or try again later.")


# ---------------------------------------------------------------- model sizes

@dataclass(frozen=True)
class ModelSizes:
    """What the estimates need of a model: widths, token counts and forward-pass FLOPs."""

    tokens: int  # image tokens (grid + class token)
    d_model: int
    d_mlp: int
    d_out: int
    n_layers: int
    n_heads: int
    image_flops: float  # one image, one forward pass of the image tower
    text_flops: float  # one text through the text tower
    text_tokens: int
    text_width: int


def model_sizes(bundle) -> ModelSizes:
    """The sizes of a loaded bundle (core.engine.models.ClipBundle), counted once per model."""
    info = bundle.info
    tokens = info.grid[0] * info.grid[1] + 1
    key = (info.spec, str(info.weights_sha256))
    cached = _SIZES.get(key)
    if cached is None:
        import torch

        visual = bundle.model.visual
        visual_params = sum(p.numel() for p in visual.parameters())
        embeddings = sum(m.weight.numel() for m in bundle.model.modules() if isinstance(m, torch.nn.Embedding))
        text_params = max(sum(p.numel() for p in bundle.model.parameters()) - visual_params - embeddings, 0)
        text_tokens = int(getattr(bundle.model, "context_length", 77) or 77)
        text_width = int(getattr(getattr(bundle.model, "transformer", None), "width", 0) or info.d_model)
        cached = _SIZES[key] = ModelSizes(
            tokens, info.d_model, info.d_mlp, info.d_out, info.n_layers, info.n_heads,
            image_flops=2.0 * visual_params * tokens, text_flops=2.0 * text_params * text_tokens,
            text_tokens=text_tokens, text_width=text_width)
    return cached


_SIZES: dict = {}


def _flops_per_second() -> float:
    try:
        return GPU_FLOPS if settings.resolve_device().type == "cuda" else CPU_FLOPS
    except Exception:  # noqa: BLE001 - a bad device setting is reported where the model loads, not here
        return CPU_FLOPS


def image_seconds(sizes: ModelSizes, passes: int = 1) -> float:
    """Seconds of one image through the image tower (with the tracing the tabs use)."""
    return passes * (IMAGE_OVERHEAD_SECONDS + sizes.image_flops / _flops_per_second())


def text_seconds(sizes: ModelSizes, texts: int) -> float:
    return texts * (TEXT_OVERHEAD_SECONDS + sizes.text_flops / _flops_per_second())


def forward_bytes(sizes: ModelSizes, batch: int = BATCH) -> int:
    """A traced forward pass of `batch` images: residuals, one MLP layer's activations, attention maps."""
    per_layer = sizes.tokens * (4 * sizes.d_model + sizes.d_mlp + sizes.n_heads * sizes.tokens)
    return int(batch * per_layer * 4 * sizes.n_layers)


def text_bytes(sizes: ModelSizes, texts: int) -> int:
    """Encoding `texts` texts: one batch through the text tower, and the embeddings."""
    batch = min(texts, TEXT_BATCH)
    return int(batch * sizes.text_tokens * sizes.text_width * 4 * 8 + texts * sizes.d_out * 4 * 2)


# ---------------------------------------------------------------- the heavy requests of the tabs

def _neuron_statistics(sizes: ModelSizes, images: int, k: int, texts: int) -> tuple[int, float]:
    n, d = sizes.d_mlp, sizes.d_out
    kept = n * k * d * 4 + n * (k + BATCH) * 8 * 4  # top-k deviation vectors, norms and ids (and their merge)
    batch = BATCH * n * d * 4 * 4 + forward_bytes(sizes)  # effects, deviations, their norms, the traced pass
    from core.neurons.stats import pca_bytes_per_neuron, pca_chunk

    pca = min(n, pca_chunk(k, d)) * pca_bytes_per_neuron(k, d)
    omp = 256 * texts * 8 * 3 + texts * d * 4 * 2
    memory = kept + max(batch, pca, omp + text_bytes(sizes, texts))
    flops = _flops_per_second()
    pca_flops = n * (2 * k * k * d + 10 * k ** 3)  # Gram and a symmetric eigensolver, per neuron
    omp_flops = n * min(texts, d) * 2 * texts * d  # one correlation matmul per chosen term
    seconds = images * image_seconds(sizes, passes=2) + text_seconds(sizes, texts) + (pca_flops + omp_flops) / flops
    return int(memory), seconds


def neuron_statistics(bundle, *, images: int, k: int, texts: int, images_name: str = "images") -> Cost:
    """Neuron statistics of one layer (core.neurons.bases.build_neuron_bases): two passes over the images, the top-k
    deviations of every neuron, their first PCs and a sparse text decomposition."""
    sizes = model_sizes(bundle)
    memory, seconds = _neuron_statistics(sizes, images, k, texts)
    fits = {images_name: _largest(lambda x: _neuron_statistics(sizes, x, k, texts), images),
            "k": _largest(lambda x: _neuron_statistics(sizes, images, x, texts), k)}
    return Cost("computing these neuron statistics", memory, seconds, f"k or the number of {images_name}", fits)


def _text_span(sizes: ModelSizes, images: int, heads: int, texts: int, per_head: int) -> tuple[int, float]:
    d = sizes.d_out
    memory = (heads * d * d * 8 * 3 + BATCH * heads * d * 4 * 2 + forward_bytes(sizes) + text_bytes(sizes, texts)
              + texts * d * 8 * 2)
    # per head and chosen text: every pool text projected onto the remaining span (float64)
    search = heads * per_head * texts * d * 4
    seconds = images * image_seconds(sizes) + text_seconds(sizes, texts) + search / _flops_per_second()
    return int(memory), seconds


def text_span(bundle, *, images: int, heads: int, texts: int, per_head: int) -> Cost:
    """TextSpan of `heads` heads fitted on `images` images, choosing `per_head` of a pool of `texts` texts."""
    sizes = model_sizes(bundle)
    memory, seconds = _text_span(sizes, images, heads, texts, per_head)
    fits = {"images": _largest(lambda x: _text_span(sizes, x, heads, texts, per_head), images),
            "texts": _largest(lambda x: _text_span(sizes, images, heads, x, per_head), texts)}
    return Cost("fitting TextSpan here", memory, seconds, "the number of images or the text pool", fits)


def text_pool(bundle, *, texts: int, images: int = 1) -> Cost:
    """Scoring a text pool of `texts` texts against `images` images (encoding the pool dominates)."""
    sizes = model_sizes(bundle)

    def cost(n):
        return text_bytes(sizes, n) + forward_bytes(sizes, min(images, BATCH)), \
            text_seconds(sizes, n) + images * image_seconds(sizes)

    memory, seconds = cost(texts)
    return Cost("scoring this text pool", int(memory), seconds, "the number of texts in the pool",
                {"texts": _largest(cost, texts)})


def _largest(cost_of, current: int) -> int | None:
    """The largest value <= current whose cost fits both public budgets (None if even 1 does not)."""
    def fits(value: int) -> bool:
        memory, seconds = cost_of(value)
        return memory <= PUBLIC_REQUEST_BYTES and seconds <= PUBLIC_REQUEST_SECONDS

    if current < 1 or not fits(1):
        return None
    if fits(current):
        return current
    low, high = 1, current  # fits(low), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


SD_CPU_SLOWDOWN = 50.0  # a denoising step on the CPU against ZeroGPU's (core.adversarial.generators timings)


def adversarial(bundle, *, images: int, generator: str, steps: int = 1) -> Cost:
    """An adversarial run drawing and classifying `images` images in all (images x repeats x methods)."""
    from core.adversarial.generators import SD_SECONDS_PER_STEP_IMAGE

    sizes = model_sizes(bundle)
    sd = generator == "sd"
    draw = SD_SECONDS_PER_STEP_IMAGE * max(1, steps) * (1.0 if _flops_per_second() == GPU_FLOPS else SD_CPU_SLOWDOWN) \
        if sd else 0.002
    picture = (512 * 512 if sd else 64 * 64) * 3 * 2  # each image kept (PIL) and its preprocessed copy in flight

    def cost(n):
        return forward_bytes(sizes) + n * picture + BATCH * 3 * 224 * 224 * 4, n * (draw + image_seconds(sizes))

    memory, seconds = cost(images)
    return Cost("this adversarial run", int(memory), seconds,
                "the images per repeat, the repeats, or turn the baselines off",
                {"images in all": _largest(cost, images)})
