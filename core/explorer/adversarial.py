"""The Adversarial tab: semantic adversarial images from neurons' spurious words (paper 2, section 5.1).

`generate` runs every stage for two classes and returns the tab's views with their link; `open_link` restores a
link's settings without running (a run draws hundreds of images: seconds, not the under-2-s first answer of the
other tabs), and says so.

>>> view = generate("toy-biased", "square", "triangle", images=20, repeats=1, baselines=False, judge="toy")
>>> view.success, view.link.query
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from core import budget, settings
from core.adversarial.defaults import DEFAULT_SIMILARITY, DEFAULT_WORDS, SD_REPO, SD_REVISION, SD_STEPS
from core.errors import ConfigError
from core.explorer import access
from core.explorer.common import LinkPanel, Progress, link_panel, progress_or_silent
from core.links.codec import ViewState
from core.links.commands import reproduce_commands
from core.paths import TOY_BIASED_SPEC, TOY_MODELS

GENERATORS = ("world", "sd")
PUBLIC_LIMITS = {"images": 100, "repeats": 3, "neurons": 500, "words": 50}
LOCAL_LIMITS = {"images": 1000, "repeats": 10, "neurons": 100_000, "words": 1000}
# The tab's settings when a link leaves them out (the command line's defaults, but for images, repeats, baselines).
DEFAULTS = {"present": "square", "target": "triangle", "generator": "world", "images": 100, "repeats": 3,
            "baselines": True, "seed": 0, "neurons": None, "words": DEFAULT_WORDS,
            "similarity": DEFAULT_SIMILARITY}
GALLERY_SIZE = 48
PROJECT_ROOT = Path(__file__).resolve().parents[2]
_SD = {}  # one loaded pipeline per (repo, revision, device), shared: it holds no visitor state


@dataclass(frozen=True)
class AdversarialView:
    """A run's report and what the tab shows of it."""

    report: object  # core.adversarial.pipeline.AdversarialReport
    info: str
    neurons: list[dict]
    words: list[dict]
    descriptions: list[dict]
    gallery: list[tuple]  # (PIL image, caption)
    success: list[dict]
    link: LinkPanel


def default_model() -> str:
    """toy-biased when the app runs on the toy model (the toy model has no spurious cue to find)."""
    spec = settings.default_model()
    return TOY_BIASED_SPEC if spec == "toy" else spec


def default_judge() -> str:
    """toy-biased embeds its planted cue's words next to the class; the unbiased toy judges synonyms instead."""
    return "toy" if default_model() == TOY_BIASED_SPEC else ""


def allowed_models() -> tuple[str, ...]:
    """What this tab may load in public mode: the server's allow-list and the toy models."""
    return tuple(dict.fromkeys((*settings.allowed_models(), *TOY_MODELS)))


def limits() -> dict[str, int]:
    return PUBLIC_LIMITS if settings.public() else LOCAL_LIMITS


def read_layers(raw) -> tuple[int, ...] | None:
    if isinstance(raw, (tuple, list)):
        return tuple(int(p) for p in raw) or None
    parts = access.check_length(raw, "The layers").replace(",", " ").split()
    if not parts:
        return None
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"layers must be whole numbers separated by spaces, e.g. '1 2', got {raw!r}") from None


def read_block(raw) -> tuple[str, ...]:
    """The block list: bounded in size (its cost grew with it: 5.5 MB took 65 s and 1.6 GB), duplicates dropped."""
    return access.check_block_list(raw)


def load_model(spec: str | None):
    from core.engine.models import load_clip

    spec = access.check_length(spec, "The model spec").strip() or default_model()
    if settings.public() and spec not in allowed_models():
        raise ConfigError(f"model {spec!r} is not offered on this server; choose one of {', '.join(allowed_models())}")
    return load_clip(spec, device=settings.resolve_device() if spec not in TOY_MODELS else "cpu")


def _sd_generator(checkpoint: str | None, revision: str | None):
    from core.adversarial.generators import StableDiffusionGenerator, load_sd_pipeline

    checkpoint = access.check_length(checkpoint, "The Stable Diffusion checkpoint", access.MAX_PATH_CHARS)
    revision = access.check_length(revision, "The revision")
    checkpoint, revision = checkpoint.strip() or SD_REPO, revision.strip() or None
    if settings.public() and (checkpoint, revision) != (SD_REPO, SD_REVISION):
        raise ConfigError(f"this public server draws only with {SD_REPO}@{SD_REVISION[:12]}")
    device = str(settings.resolve_device())
    key = (checkpoint, revision, device)
    if key not in _SD:
        _SD.clear()  # keep one pipeline in memory
        _SD[key] = load_sd_pipeline(checkpoint, revision, device=device)
    return StableDiffusionGenerator(_SD[key], steps=SD_STEPS, checkpoint=f"{checkpoint}@{revision}" if revision
                                    else checkpoint)


def generate(spec: str | None, present: str, target: str, *, layers=None, neurons=None,
             words=DEFAULT_WORDS, similarity=DEFAULT_SIMILARITY, judge: str | None = None, generator: str = "world",
             images=100, repeats=3, baselines: bool = True, seed=0, block="", checkpoint: str | None = None,
             revision: str | None = None, progress: Progress | None = None) -> AdversarialView:
    """Every stage for the two classes (`core.adversarial.pipeline.run_adversarial`), as the tab's views."""
    from core.adversarial.pipeline import AdversarialConfig, run_adversarial

    progress = progress_or_silent(progress)
    bound = limits()
    config_args = dict(
        layers=read_layers(layers),  # neurons blank: the model's default (core.adversarial.defaults.default_neurons)
        neurons=None if neurons is None or neurons == "" else access.check_count(neurons, "neurons", 1, bound["neurons"]),
        words=access.check_count(words, "words", 1, bound["words"]),
        images=access.check_count(images, "images", 1, bound["images"]),
        repeats=access.check_count(repeats, "repeats", 1, bound["repeats"]),
        seed=access.check_count(seed, "seed", 0, 2**31 - 1),
        baselines=bool(baselines), generator=generator if generator in GENERATORS else "world",
        block=read_block(block))
    try:
        similarity = float(similarity)
    except (TypeError, ValueError):
        raise ConfigError(f"the similarity threshold must be a number, got {similarity!r}") from None
    bundle = load_model(spec)
    budget.admit(budget.adversarial(
        bundle, images=config_args["images"] * config_args["repeats"] * (3 if config_args["baselines"] else 1),
        generator=config_args["generator"], steps=SD_STEPS))
    judge = (judge or "").strip() or None
    if judge is not None:
        load_model(judge)  # the same allow-list as the model
    present, target = access.check_length(present, "The shown class"), access.check_length(target, "The target class")
    config = AdversarialConfig(present or "", target or "", similarity=similarity, similarity_model=judge,
                               **config_args)
    generator_object = _sd_generator(checkpoint, revision) if config.generator == "sd" else None
    progress(0.05, desc="neurons and words")
    report = run_adversarial(bundle, config, generator=generator_object,
                             progress=lambda line: progress(None, desc=line[:60]))
    sd = (checkpoint or SD_REPO, revision or SD_REVISION) if config.generator == "sd" else None
    return views(report, sd)


def state_of(config, spec: str) -> ViewState:
    """The link of a run's settings; an empty judge is the model itself (the same synonym judge)."""
    return ViewState("adversarial", model=spec, texts=(config.present, config.target), method=config.generator,
                     layers=tuple(config.layers) if config.layers else None, neurons=config.neurons,
                     words=config.words, similarity=float(config.similarity), judge=config.similarity_model or spec,
                     block=",".join(config.block) or None, images=config.images, repeats=config.repeats,
                     baselines=bool(config.baselines), seed=config.seed)


def _panel(state: ViewState, sd: tuple[str, str] | None) -> LinkPanel:
    notes = []
    if sd is not None and tuple(sd) != (SD_REPO, SD_REVISION):
        notes.append(f"The Stable Diffusion checkpoint {sd[0]}@{sd[1]} is not part of the link (links use "
                     f"{SD_REPO}@{SD_REVISION[:12]}); the command below names it.")
    return link_panel(state, reproduce_commands(state, checkpoint=sd[0] if sd else None,
                                                revision=sd[1] if sd else None), notes)


def views(report, sd: tuple[str, str] | None = None) -> AdversarialView:
    """info, neurons, words, descriptions, gallery, success rows and the link of a report."""
    neurons = [{("<v, r_n>" if k == "projection" else k): (round(v, 5) if isinstance(v, float) else v)
                for k, v in row.items()} for row in report.selection.rows()]
    words = [{"word": w, "score": round(s, 5)} for w, s in zip(report.words.words, report.words.scores)]
    descriptions = [
        {"method": a.method, "repeat": a.repeat + 1, "description": text,
         "images": sum(1 for d in a.images.descriptions if d == text),
         "fooled": sum(f for d, f, v in zip(a.images.descriptions, a.verdicts.fooled, a.images.valid) if d == text and v)}
        for a in report.attempts for text in a.descriptions.texts]
    gallery = []
    for attempt in report.attempts:
        if attempt.method != "second-order":
            continue
        for image, text, seed, valid, margin, fooled in zip(attempt.images.images, attempt.images.descriptions,
                                                            attempt.images.seeds, attempt.images.valid,
                                                            attempt.verdicts.margins, attempt.verdicts.fooled):
            verdict = report.config.target if fooled else report.config.present
            note = "" if valid else " [blacked out by the safety checker]"
            gallery.append((image, f"CLIP: {verdict} (margin {margin:+.3f}){note} | seed {seed} | {text}"))
            if len(gallery) >= GALLERY_SIZE:
                break
    success = [{"method": method, "success %": round(100 * row["success_mean"], 1),
                "std %": round(100 * row["success_std"], 1),
                "successes / valid images": ", ".join(f"{s}/{v}" for s, v in zip(row["successes"], row["valid_images"]))}
               for method, row in report.summary().items()]
    state = state_of(report.config, report.model["spec"])
    link = _panel(state, sd)
    return AdversarialView(report, _info(report, state, sd), neurons, words, descriptions, gallery, success, link)


def _info(report, state: ViewState, sd) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in report.stage_counts().items())
    model = report.model
    stand_in = ("  \n**The world generator is an offline stand-in** for a text-to-image model: it draws generated-world "
                "scenes with the shape, colour, position and background the description names.") \
        if report.config.generator == "world" else ""
    command = reproduce_commands(state, checkpoint=sd[0] if sd else None, revision=sd[1] if sd else None)[-1]
    return (f"**Model:** {model['display_name']} (`{model['spec']}`)  \n"
            f"**Direction:** {report.direction.describe()}  \n"
            f"**Neurons:** top {len(report.selection)} by |<v, r_n>| from layers {list(report.selection.pool_layers)}, "
            f"bases `{short_path(report.bases)}`  \n"
            f"**Words:** {report.words.how}; {report.filtered.describe()}  \n"
            f"**Generator:** {report.generator}  \n"
            f"**Success:** the binary classifier ({report.classifier.how}) picks {report.config.target!r} over "
            f"{report.config.present!r}  \n**Counts (second-order, all repeats):** {counts}{stand_in}  \n"
            f"Same run from the command line: `{command}`")


def short_path(path: str) -> str:
    """A shipped bases folder relative to the project; others by their last two parts (no server paths)."""
    try:
        return Path(path).resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return "/".join(Path(path).parts[-2:])


def filled(state: ViewState, spec: str) -> ViewState:
    """A link's state with the tab's defaults for what it leaves out (the view the controls then show)."""
    present, target = (list(state.texts) + [DEFAULTS["present"], DEFAULTS["target"]][len(state.texts):])[:2]
    judge = state.judge or (default_judge() if spec == default_model() else "") or spec
    return state.with_values(
        model=spec, texts=(present, target), method=state.method or DEFAULTS["generator"],
        neurons=state.neurons or DEFAULTS["neurons"], words=state.words or DEFAULTS["words"],
        similarity=DEFAULTS["similarity"] if state.similarity is None else state.similarity, judge=judge,
        images=state.images or DEFAULTS["images"], repeats=state.repeats or DEFAULTS["repeats"],
        baselines=DEFAULTS["baselines"] if state.baselines is None else state.baselines,
        seed=DEFAULTS["seed"] if state.seed is None else state.seed)


def open_link(query, *, default_tab: str = "decomposition", only_tab: bool = False):
    """The settings a link names (`core.explorer.common.Linked`, with no view): a run draws hundreds of images, so
    the link restores the controls and its notice says to press Generate."""
    from core.explorer.common import read_link

    linked, _ = read_link(query, "adversarial", default_tab=default_tab, only_tab=only_tab,
                          allowed_models=allowed_models())
    if not linked.applies:
        return linked
    s, notices = linked.state, [linked.notice]
    if len(s.texts) > 2:
        notices.append(f"Kept the first two texts (shown class, target class); ignored {len(s.texts) - 2} more.")
        s = s.with_values(texts=s.texts[:2])
    bound = limits()
    for name in ("neurons", "words", "images", "repeats"):
        value = getattr(s, name)
        if value is not None and value > bound[name]:
            notices.append(f"Ignored {name}={value}: this server allows at most {bound[name]}.")
            s = s.with_values(**{name: None})
    s = filled(s, s.model or default_model())  # a model outside this tab's allow-list was dropped by the decoder
    notices.append("This link restores the settings of an adversarial run; press **Generate** to draw its images "
                   "and compute its success rates.")
    return replace(linked, state=s, notice=" ".join(filter(None, notices)), link=_panel(s, None))
