"""Loading CLIP models by spec, for every tab and command to share.

A spec names an open_clip architecture and where its weights come from:

    ViT-B-32/openai                 an open_clip pretrained tag (downloaded once, then cached)
    ViT-B-16/laion2b_s34b_b88k      likewise
    hf-hub:org/name                 an open_clip model on the Hugging Face Hub
    ViT-B-16/path/to/weights.pt     a local open_clip state dict (.pt/.pth/.bin/.safetensors)
    ViT-B-16/none                   random initialisation (seeded; flagged as random everywhere)
    toy                             the project's own small CLIP (offline default)
    toy-biased                      the same architecture trained with a planted shape-background bias
    toy-biased-2                    the same recipe with another planted bias (other shapes, other backgrounds)

>>> bundle = load_clip("toy")
>>> bundle.info.display_name
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from core import settings
from core.errors import ConfigError, UnknownModelError, UnsupportedModelError, WeightsError
from core.guards import check_model_allowed
from core.lazy import lazy_module
from core.progress import Progress, report
from core.paths import CONFIG_DIR, TOY_ARCH, TOY_BIASED_2_SPEC, TOY_BIASED_SPEC, TOY_DISPLAY_NAMES, TOY_MODELS, TOY_WEIGHTS  # noqa: E402  (re-exported)

open_clip = lazy_module("open_clip")  # it imports torchvision, transformers and timm: seconds, on first use

TOY_SPEC = "toy"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
RANDOM_TAG = "none"
RANDOM_SEED = 0


def register_model_configs(path: str | os.PathLike = CONFIG_DIR) -> None:
    """Make the JSON model configs in `path` (a folder or one file) known to open_clip.

    Each config is read first (a ConfigError names a file that is not valid JSON): open_clip would fail on it
    with a traceback, and keep failing on every later model load."""
    path = Path(path)
    if path.exists() and path not in open_clip.factory._MODEL_CONFIG_PATHS:
        _check_model_configs(path)
        open_clip.add_model_config(path)


def _check_model_configs(path: Path) -> None:
    import json
    import stat

    files = [path] if path.is_file() and path.suffix == ".json" else sorted(path.glob("*.json")) if path.is_dir() else []
    for file in files:
        problem = None
        try:
            info = os.stat(file)
            if not stat.S_ISREG(info.st_mode):
                problem = "is not a regular file"
            elif info.st_size > 1_000_000:
                problem = f"is {info.st_size:,} bytes, over the limit of 1,000,000 for a model config"
            else:
                json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            problem = "is not UTF-8 text"
        except (ValueError, RecursionError) as err:
            problem = f"is not valid JSON ({str(err).splitlines()[0][:120]})"
        except OSError as err:
            problem = f"cannot be read ({err.strerror or err})"
        if problem:
            raise ConfigError(f"model config {file.name} in $CLIPSCOPE_MODEL_CONFIGS {problem}; fix or remove it")


@functools.lru_cache(maxsize=1)
def _register_configs_once() -> None:
    """The project's own configs and $CLIPSCOPE_MODEL_CONFIGS (e.g. the test suite's tiny models), on first use
    rather than at import, so importing the engine changes nothing in open_clip."""
    register_model_configs()
    for extra in settings.model_config_paths():
        register_model_configs(extra)


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is; shown next to every result it produces."""

    spec: str
    arch: str
    pretrained: str  # tag, file path, hub id, or "none"
    source: str  # "tag" | "file" | "hf-hub" | "random" | "toy"
    random_init: bool
    weights_sha256: str | None
    quick_gelu: bool
    image_size: int
    patch_size: int
    grid: tuple[int, int]
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_out: int
    open_clip_version: str

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + 1

    @property
    def display_name(self) -> str:
        if self.source == "toy":
            return TOY_DISPLAY_NAMES.get(self.spec, TOY_DISPLAY_NAMES["toy"])
        if self.random_init:
            return f"{self.arch} with RANDOM weights (not trained; for testing only)"
        return self.spec

    def identity(self) -> dict[str, Any]:
        """The fields that must match for precomputed results to belong to this model."""
        return {
            "spec": self.spec,
            "arch": self.arch,
            # a local file is identified by its name and hash, not by where this checkout happens to be
            "pretrained": Path(self.pretrained).name if self.source in ("file", "toy") else self.pretrained,
            "weights_sha256": self.weights_sha256,
            "random_init": self.random_init,
            "open_clip_version": self.open_clip_version,
        }

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_tokens": self.n_tokens, "display_name": self.display_name}


@dataclass(frozen=True)
class ClipBundle:
    """A loaded model with its image preprocessing, tokenizer and description."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    info: ModelInfo
    device: torch.device


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _known_specs_hint() -> str:
    return (
        "Give a spec as ARCH/TAG (e.g. ViT-B-32/openai, ViT-B-16/laion2b_s34b_b88k), hf-hub:ORG/NAME, "
        "ARCH/path/to/weights.safetensors, ARCH/none (random weights), 'toy' (offline default) or 'toy-biased'."
    )


def parse_spec(spec: str) -> tuple[str, str, str]:
    """Split a spec into (arch, pretrained, source); raise UnknownModelError if malformed or unknown."""
    spec = (spec or "").strip()
    _register_configs_once()
    if not spec:
        raise UnknownModelError("empty model spec. " + _known_specs_hint())
    if spec in TOY_MODELS:
        return TOY_ARCH, str(TOY_MODELS[spec]), "toy"
    if spec.startswith("hf-hub:"):
        if len(spec) <= len("hf-hub:") or "/" not in spec:
            raise UnknownModelError(f"malformed hub spec {spec!r}: use hf-hub:ORG/NAME.")
        return spec, spec, "hf-hub"
    if "/" not in spec:
        _check_arch(spec)
        tags = open_clip.list_pretrained_tags_by_model(spec)
        raise UnknownModelError(
            f"model spec {spec!r} names an architecture but not its weights. Use {spec}/TAG with TAG one of "
            f"{', '.join(tags) or '(no known tags)'}, a local checkpoint {spec}/path/to/file.safetensors, "
            f"or {spec}/none for random weights."
        )
    arch, rest = spec.split("/", 1)
    _check_arch(arch)
    if rest == RANDOM_TAG:
        return arch, RANDOM_TAG, "random"
    if rest.endswith(CHECKPOINT_SUFFIXES) or os.sep in rest or rest.startswith("."):
        return arch, rest, "file"
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if rest not in tags:
        raise UnknownModelError(
            f"unknown pretrained tag {rest!r} for {arch}. Known tags: {', '.join(tags) or '(none)'}. "
            f"For a local checkpoint give a path ending in {'/'.join(CHECKPOINT_SUFFIXES)}."
        )
    return arch, rest, "tag"


def _check_arch(arch: str) -> None:
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown architecture {arch!r}.{hint} " + _known_specs_hint())


def _create(arch: str, pretrained: str, source: str, device: torch.device):
    """Build the model through open_clip's own factory, mapping its failures to clear errors."""
    kwargs: dict[str, Any] = {"device": device}
    if source == "tag":
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        # OpenAI weights were trained with QuickGELU; the plain config would silently use exact GELU.
        kwargs["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    if source in ("file", "toy"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            if source == "toy":
                raise WeightsError(f"the toy model's weights are missing at {path}; retrain with `python -m core toy "
                                   f"train` (see the model card next to it for the exact command).")
            raise WeightsError(f"checkpoint file not found: {path}")
        pretrained = str(path)
    try:
        with _offline_if_hub_unreachable(source):
            return _factory(arch, pretrained, source, kwargs)
    except (RuntimeError, OSError, ValueError, KeyError, EOFError, AssertionError) as err:
        # open_clip asserts on some shape mismatches of a foreign checkpoint
        raise _weights_error(arch, pretrained, source, err) from err
    except Exception as err:
        # A file is whatever the user gave: the weights-only unpickler raises IndexError or TypeError on text,
        # safetensors its own SafetensorError. Any failure to read it is a statement about the file.
        if source in ("file", "toy") or type(err).__name__ in ("SafetensorError", "UnpicklingError", "HeaderTooLarge"):
            raise _weights_error(arch, pretrained, source, err) from err
        raise


def _factory(arch: str, pretrained: str, source: str, kwargs: dict[str, Any]):
    if source == "random":
        with torch.random.fork_rng(devices=[]), _quiet_logging():
            torch.manual_seed(RANDOM_SEED)
            return open_clip.create_model_and_transforms(arch, pretrained=None, **kwargs)
    if source == "hf-hub":
        return open_clip.create_model_and_transforms(arch, **kwargs)
    return open_clip.create_model_and_transforms(arch, pretrained=pretrained, **kwargs)


def _hub_host() -> str:
    endpoint = settings.hub_endpoint()
    return endpoint.split("://", 1)[-1].split("/", 1)[0].split(":")[0]


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    try:
        socket.create_connection((_hub_host(), 443), timeout=3).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline_if_hub_unreachable(source: str):
    """Without network, huggingface_hub retries for over a minute before using its cache; when the
    Hub cannot be reached at all we switch it to offline mode so cached weights load at once and
    missing ones fail at once."""
    from huggingface_hub import constants

    if source not in ("tag", "hf-hub") or constants.HF_HUB_OFFLINE or _hub_reachable():
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


@contextlib.contextmanager
def _quiet_logging():
    """open_clip logs a warning for every random init; the ModelInfo already flags it."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _weights_error(arch: str, pretrained: str, source: str, err: Exception) -> WeightsError:
    reason = str(err).splitlines()[0][:300] if str(err).strip() else type(err).__name__
    if len(reason) < 12:  # e.g. the weights-only unpickler's bare "101": say what kind of failure it was
        reason = f"{type(err).__name__} {reason}"
    if source in ("file", "toy"):
        return WeightsError(
            f"could not load weights from {pretrained} into {arch}: {reason}. "
            "The file may be truncated or corrupted, or be a checkpoint of another architecture."
        )
    offline = settings.hub_offline()
    return WeightsError(
        f"could not obtain weights for {arch if source == 'hf-hub' else arch + '/' + pretrained}"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ' (no network on this machine?)'}: {reason}. "
        f"If you have the checkpoint, load it as {arch if source != 'hf-hub' else 'ARCH'}/path/to/weights.safetensors; "
        "or download it once where there is network (it is then cached under HF_HOME). "
        "The offline default 'toy' always works."
    )


def describe(model: nn.Module, arch: str, pretrained: str, source: str) -> ModelInfo:
    """Read the vision tower's dimensions into a ModelInfo (checks it is a ViT we can decompose)."""
    from core.engine.trace import check_supported

    visual = model.visual
    check_supported(visual)
    block = visual.transformer.resblocks[0]
    quick = isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU)
    if source == "tag" and bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu")) != quick:
        raise UnsupportedModelError(f"{arch}/{pretrained} needs QuickGELU but the built model does not use it.")
    width = visual.transformer.width
    heads = block.attn.num_heads
    sha = None
    if source in ("file", "toy"):
        sha = _file_sha256(Path(pretrained).expanduser())
    grid = tuple(int(g) for g in visual.grid_size)
    return ModelInfo(
        spec=canonical_spec(arch, pretrained, source),
        arch=arch,
        pretrained=pretrained,
        source=source,
        random_init=source == "random",
        weights_sha256=sha,
        quick_gelu=quick,
        image_size=int(visual.image_size[0]),
        patch_size=int(visual.patch_size[0]),
        grid=grid,  # type: ignore[arg-type]
        n_layers=len(visual.transformer.resblocks),
        n_heads=heads,
        d_model=width,
        d_head=width // heads,
        d_mlp=block.mlp.c_fc.out_features,
        d_out=int(visual.output_dim),
        open_clip_version=open_clip.__version__,
    )


def canonical_spec(arch: str, pretrained: str, source: str) -> str:
    if source == "toy":
        return next((spec for spec, path in TOY_MODELS.items() if str(path) == str(pretrained)), TOY_SPEC)
    if source == "hf-hub":
        return arch
    return f"{arch}/{pretrained}"


_LOAD_LOCK = threading.RLock()


@functools.lru_cache(maxsize=4)
def _load_cached(spec: str, device: str) -> ClipBundle:
    arch, pretrained, source = parse_spec(spec)
    torch_device = torch.device(device)
    model, _, preprocess = _create(arch, pretrained, source, torch_device)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    check_finite_weights(model, spec)
    info = describe(model, arch, pretrained, source)
    tokenizer = open_clip.get_tokenizer(arch)
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, info=info, device=torch_device)


def check_finite_weights(model: nn.Module, spec: str) -> None:
    """Refuse weights holding NaN or Inf: every result computed from them would be NaN, printed as a number."""
    for name, tensor in model.named_parameters():  # not buffers: the text tower's causal mask holds -inf
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"the weights of {spec} hold NaN or infinite values (first in {name}): "
                               "the checkpoint is corrupt or diverged in training; use another checkpoint")


def load_clip(spec: str | None = None, device: str | torch.device | None = None, *,
              progress: Progress | None = None) -> ClipBundle:
    """Load (once per process and device) the model named by `spec`; see the module docstring for spec forms.

    The one model loader: every tab, command and library call goes through it, with the same rules.
    spec: None or blank means the default model (`$CLIPSCOPE_MODEL`, else toy).
    device: a torch device or its name, or auto; default: the settings' (`$CLIPSCOPE_DEVICE`,
    else auto: CUDA when available, else the CPU). `bundle.device` says where it lives.
    progress: told "loading model ..." (core.progress).
    Raises UnknownModelError for names we do not know, WeightsError when weights cannot be
    obtained or read (or hold NaN/Inf), UnsupportedModelError for towers the decomposition cannot
    model, ModelNotAllowedError for what this server does not load (core.guards: public mode, whose
    allow-list holds every tab's default model), and ConfigError for a device this machine does not have.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        spec = settings.default_model()
    spec = check_model_allowed(spec)
    chosen = device if isinstance(device, torch.device) else settings.resolve_device(device)
    report(progress, f"loading model {spec}", 0.05)
    # One load at a time: the app loads its default model in the background while the first requests arrive, and
    # open_clip's config registry is not thread-safe (a model half registered by one thread is "unknown" to another).
    with _LOAD_LOCK:
        return _load_cached(spec, str(chosen))


def default_spec() -> str:
    """The model the app starts on: $CLIPSCOPE_MODEL, else the offline toy model."""
    return settings.default_model()
