"""Step 7: text to image. `sd`: Stable Diffusion through diffusers; `world`: the offline stand-in.

`sd` loads a diffusers text-to-image pipeline (`AutoPipelineForText2Image`, a `StableDiffusionPipeline`
for SD checkpoints) from a repo id at a pinned revision; the default is SD-Turbo, which draws in 1-4
steps without guidance. Seeds are explicit (one CPU generator per image, so a seed gives the same
image on CPU and GPU). The safety checker stays on wherever the checkpoint ships one; blacked-out
images are flagged and not counted. On a ZeroGPU Space, `sd_gpu_seconds(steps, images)` sizes the
`@spaces.GPU` duration.

`world` is the OFFLINE STAND-IN for a text-to-image model: it draws a generated-world scene of the
description's subject (its first world shape) with the colour, size, position and count the words give
that subject, on the background the description names. Words describe the object they belong to, as
a reader of the prompt takes them: "a square with a small green star" draws a square, neither small nor
green, since the star's words are the star's and the world cannot draw a second shape. Like a
text-to-image model drawing a named subject, it draws one large object unless the subject's words name
a size or a count; unnamed colour, position and background are drawn at random from the image's seed.
It only draws the world's shapes, so it suits the toy models, and every result it produces says so.

Those rules change results, so each is a flag (`WorldRules`; `--unnamed-size`, `--word-scope`,
`--background-scope`) and the adversarial protocol reports their sensitivity. The defaults are the
rules README measured: unnamed size large, words describe their own object, a background word is the
scene's whichever phrase names it.

>>> images = WorldGenerator().generate(["a square on a dotted background"], seeds=[0])
>>> WorldGenerator(WorldRules(unnamed_size="random", background_scope="subject"))
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.adversarial.defaults import SD_GUIDANCE, SD_REPO, SD_REVISION, SD_STEPS
from core.errors import ConfigError, WeightsError
from core.world import scenes as world

GENERATORS = ("world", "sd")
DEFAULT_SIZE, DEFAULT_COUNT = "large", 1  # the world stand-in's subject when the words name no size or count
WORLD_LABEL = ("world (offline stand-in for a text-to-image model: draws generated-world scenes from the words; one "
               "large object unless they say otherwise)")
UNNAMED_SIZES = ("large", "small", "random")
WORD_SCOPES = ("own-object", "subject")
BACKGROUND_SCOPES = ("scene", "subject")


@dataclass(frozen=True)
class WorldRules:
    """The world stand-in's rules that change adversarial results (each a flag; defaults: README's rules).

    unnamed_size: the subject's size when its words name none: "large" (a named subject drawn prominent,
        as a text-to-image model does), "small", or "random" (drawn from the image's seed: the rule before
        commit 52820fa).
    word_scope: "own-object" (a colour, size or count describes the object it belongs to in its phrase) or
        "subject" (every word describes the drawn subject, first mention wins: the rule before ca53128).
    background_scope: "scene" (a background named in any phrase is the scene's) or "subject" (only a
        background that belongs to the subject, or to no object: "a square with a star on a dotted
        background" leaves the square's background unnamed).
    """

    unnamed_size: str = "large"
    word_scope: str = "own-object"
    background_scope: str = "scene"

    def __post_init__(self):
        for name, value, valid in (("unnamed_size", self.unnamed_size, UNNAMED_SIZES),
                                   ("word_scope", self.word_scope, WORD_SCOPES),
                                   ("background_scope", self.background_scope, BACKGROUND_SCOPES)):
            if value not in valid:
                raise ConfigError(f"unknown world-generator rule {name}={value!r}; valid values: {', '.join(valid)}")

    @property
    def is_default(self) -> bool:
        return self == WorldRules()

    def describe(self) -> str:
        return (f"unnamed size {self.unnamed_size}, words describe "
                f"{'their own object' if self.word_scope == 'own-object' else 'the subject'}, background word "
                f"{'applies to the whole scene' if self.background_scope == 'scene' else 'applies to its own object only'}")
# Seconds for a ZeroGPU call: model warm-up plus a per-step, per-image cost (measured on an H200-class GPU
# for SD-Turbo at 512 px it is ~0.05 s; we keep a wide margin because the quota only bills what runs).
SD_BASE_SECONDS = 10.0
SD_SECONDS_PER_STEP_IMAGE = 0.5


@dataclass
class GeneratedImages:
    """Images with the seed and description that made each, and whether each is valid (not blacked out)."""

    images: list[Image.Image]
    descriptions: list[str]
    seeds: list[int]
    valid: list[bool]
    generator: str
    notes: list[dict] = field(default_factory=list)  # per image: what the generator did with the words


# ---------------------------------------------------------------- world: the offline stand-in

def _vocabulary() -> list[tuple[str, str, Any]]:
    """(attribute, phrase, value): every phrase the world renderer understands.

    "noun" entries are objects (a world shape, or a generic "something"); the others are attributes.
    """
    entries = [("noun", s, (s, 1)) for s in world.SHAPES] + [("noun", p, (s, 2)) for s, p in world.SHAPE_PLURALS.items()]
    entries += [("noun", n, (None, 1)) for n in ("something", "shape", "object", "thing")]
    entries += [("noun", n, (None, 2)) for n in ("shapes", "objects", "things")]
    entries += [("colour", c, c) for c in world.COLOURS] + [("size", s, s) for s in world.SIZES]
    entries += [("position", p, p) for p in world.POSITIONS]
    entries += [("background", b, b) for b in world.BACKGROUNDS]
    entries += [("count", "two", 2), ("count", "pair", 2), ("count", "one", 1), ("count", "single", 1)]
    return entries


_VOCABULARY = _vocabulary()
_LOOKUP = {phrase: (attribute, value) for attribute, phrase, value in _VOCABULARY}
_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(sorted({re.escape(p) for _, p, _ in _VOCABULARY}, key=lambda p: (-len(p), p)))
                      + r")(?![\w-])", re.IGNORECASE)
# Where one object's phrase ends and the next begins: "a square with a small star", "a square, blue".
_PHRASE_BREAK = re.compile(r"[,;:.!?()]|(?<![\w-])(?:and|with|next to|beside|near|behind|while|but)(?![\w-])", re.IGNORECASE)
_MODIFIERS = ("colour", "size", "count")  # say which object they precede ("a small star": the star is small)


def _phrases(description: str) -> list[list[tuple[str, Any]]]:
    """The description cut into phrases, each a list of (attribute, value) in reading order."""
    return [[_LOOKUP[m.group(1).lower()] for m in _PATTERN.finditer(part)] for part in _PHRASE_BREAK.split(description)]


def _owner(i: int, attribute: str, nouns: list[int]) -> int | None:
    """The noun a phrase's i-th word describes: a modifier the next one, a position the previous one (else the other)."""
    before, after = [j for j in nouns if j < i][-1:], [j for j in nouns if j > i][:1]
    first, second = (after, before) if attribute in _MODIFIERS else (before, after)
    return (first or second or [None])[0]


def parse_world_words(description: str, rules: WorldRules | None = None) -> dict[str, Any]:
    """{attribute: value} the description names for the scene it asks for.

    Like a text-to-image model reading a prompt, words describe the object they belong to. The
    subject is the first world shape named ("circles" or "two circles" name a pair). A colour,
    size or count names the object it precedes in its phrase (else the one before it); a position
    names the object before it (else the one after). So "a square with a small red star" draws a
    square: the star's attributes are the star's, and the world cannot draw a second shape. Words
    that belong to no object ("a square, blue") describe the subject. The background is the
    scene's, whichever phrase names it. The first mention of each wins; longer phrases win at the
    same place ("top left" over "top"). `rules` (`WorldRules`) changes who words describe.
    """
    rules = rules or WorldRules()
    if rules.word_scope == "subject":
        return _parse_for_subject(description, rules)
    subject: dict[str, Any] | None = None
    loose: dict[str, Any] = {}
    background = None
    for phrase in _phrases(description):
        nouns = [i for i, (attribute, _) in enumerate(phrase) if attribute == "noun"]
        owned: dict[int, dict[str, Any]] = {i: {} for i in nouns}
        for i, (attribute, value) in enumerate(phrase):
            if attribute == "background":
                if rules.background_scope == "scene":
                    background = background or value
                else:  # the object's it belongs to, like a position; kept only for the subject or no object
                    owner = _owner(i, attribute, nouns)
                    (loose if owner is None else owned[owner]).setdefault(attribute, value)
            elif attribute != "noun":
                owner = _owner(i, attribute, nouns)
                (loose if owner is None else owned[owner]).setdefault(attribute, value)
        for i in nouns:
            shape, number = phrase[i][1]
            if subject is None and shape is not None:
                subject = {"shape": shape, **owned[i]}
                subject.setdefault("count", number)
    named: dict[str, Any] = {}
    if subject is not None:
        named.update(subject)
        for attribute, value in loose.items():
            named.setdefault(attribute, value)
    if background is not None:
        named["background"] = background
    return named


def _parse_for_subject(description: str, rules: WorldRules) -> dict[str, Any]:
    """word_scope "subject": every word describes the drawn subject, in reading order, first mention wins (a
    shape word also names a count). With background_scope "subject", a background that belongs to another
    object (the noun before it in its phrase, else the one after) is still left out."""
    phrases = _phrases(description)
    nouns = [[i for i, (attribute, _) in enumerate(phrase) if attribute == "noun"] for phrase in phrases]
    subject = next(((k, i) for k, phrase in enumerate(phrases) for i in nouns[k] if phrase[i][1][0] is not None), None)
    named: dict[str, Any] = {}
    for k, phrase in enumerate(phrases):
        for i, (attribute, value) in enumerate(phrase):
            if attribute == "noun":
                shape, number = value
                if shape is not None:
                    named.setdefault("shape", shape)
                    named.setdefault("count", number)
            elif attribute == "background" and rules.background_scope == "subject":
                owner = _owner(i, attribute, nouns[k])
                if owner is None or (k, owner) == subject:
                    named.setdefault(attribute, value)
            else:
                named.setdefault(attribute, value)
    return named


class WorldGenerator:
    """The generated-world renderer driven by a description's words (offline stand-in, see the module doc)."""

    name = "world"

    def __init__(self, rules: WorldRules | None = None, image_size: int = 64):
        self.rules = rules or WorldRules()
        if not isinstance(self.rules, WorldRules):
            raise ConfigError(f"rules must be a WorldRules, got {type(self.rules).__name__}")
        self.image_size = world._check_image_size(image_size)
        self.label = WORLD_LABEL if self.rules.is_default else f"{WORLD_LABEL[:-1]}; rules: {self.rules.describe()})"

    def check_class(self, present: str) -> None:
        """The shown class must be a world shape: the stand-in cannot draw anything else."""
        if parse_world_words(present).get("shape") is None or len(present.split()) > 1:
            raise ConfigError(f"the world generator draws only the world's shapes ({', '.join(world.SHAPES)}), not "
                              f"{present!r}. Use --generator sd (Stable Diffusion) for other classes.")

    def scene(self, description: str, seed: int) -> tuple[world.Scene, dict]:
        """The scene a description asks for, unnamed attributes drawn from `seed`; and what was named."""
        named = parse_world_words(description, self.rules)
        if "shape" not in named:
            raise ConfigError(f"the world generator draws only the world's shapes ({', '.join(world.SHAPES)}); "
                              f"the description {description[:80]!r} names none. Use --generator sd for other classes.")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE7E]))
        colour = named.get("colour") or list(world.COLOURS)[int(rng.integers(len(world.COLOURS)))]
        background = named.get("background") or world.BACKGROUNDS[int(rng.integers(len(world.BACKGROUNDS)))]
        # As a text-to-image model draws a named subject: one, and prominent, unless the words (or rules) say otherwise.
        size = named.get("size") or self._unnamed_size(seed)
        count = int(named.get("count") or DEFAULT_COUNT)
        first = world.POSITIONS.index(named["position"]) if "position" in named else int(rng.integers(9))
        cells = (first,) if count == 1 else tuple(sorted({first, (first + 1 + int(rng.integers(8))) % 9}))
        jitter = tuple(tuple(pair) for pair in rng.uniform(-1, 1, size=(len(cells), 2)).tolist())
        scene = world.Scene(named["shape"], colour, size, cells, background, jitter)
        return scene, named

    def _unnamed_size(self, seed: int) -> str:
        if self.rules.unnamed_size != "random":
            return self.rules.unnamed_size
        # Its own stream, so the default rules' draws (colour, background, cells, jitter) stay as they were.
        return world.SIZES[int(np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CE7E, 1])).integers(2))]

    def generate(self, descriptions: Sequence[str], seeds: Sequence[int]) -> GeneratedImages:
        if len(descriptions) != len(seeds):
            raise ConfigError("give one seed per description")
        images, notes = [], []
        for text, seed in zip(descriptions, seeds):
            scene, named = self.scene(text, seed)
            images.append(Image.fromarray(world.render(scene, self.image_size)[0]))
            notes.append({"named": named, "scene": scene.labels()})
        return GeneratedImages(images, list(descriptions), [int(s) for s in seeds], [True] * len(images), self.label, notes)


# ---------------------------------------------------------------- sd: Stable Diffusion through diffusers

def sd_gpu_seconds(steps: int, images: int) -> int:
    """The `@spaces.GPU` duration for `images` images of `steps` denoising steps."""
    return int(SD_BASE_SECONDS + SD_SECONDS_PER_STEP_IMAGE * max(1, int(steps)) * max(1, int(images)))


def _offline() -> bool:
    from huggingface_hub import constants

    from core import settings

    return bool(constants.HF_HUB_OFFLINE) or settings.hub_offline()


def load_sd_pipeline(repo: str = SD_REPO, revision: str | None = SD_REVISION, *, device: str = "cpu",
                     dtype: str | None = None, local_files_only: bool | None = None):
    """A diffusers text-to-image pipeline for `repo` (a Hub id or a local folder) at a pinned `revision`.

    Offline (HF_HUB_OFFLINE or local_files_only) only the Hugging Face cache is read, so a missing
    checkpoint fails at once with a WeightsError that says how to supply it.
    """
    import torch
    from diffusers import AutoPipelineForText2Image

    from core import guards

    if not isinstance(repo, str) or not repo.strip():
        raise ConfigError("give a diffusers checkpoint: a Hub repo id (e.g. stabilityai/sd-turbo) or a local folder")
    kind, source = guards.check_model_source(repo, "Stable Diffusion checkpoint")  # --allow-path, public mode
    local_folder = kind == "folder"
    if not local_folder and revision is None:
        raise ConfigError(f"pin a revision (a 40-hex commit sha) for {repo}: a branch can change under you")
    torch_dtype = {None: torch.float16 if str(device).startswith("cuda") else torch.float32,
                   "float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
    if torch_dtype is None:
        raise ConfigError(f"unknown dtype {dtype!r}: use float16, bfloat16 or float32")
    offline = _offline() if local_files_only is None else bool(local_files_only)
    try:
        if local_folder:
            pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=torch_dtype, local_files_only=True)
        elif guards.hub_only():  # by id alone: a local folder of the same name is never read
            from diffusers import DiffusionPipeline

            folder = DiffusionPipeline.download(source, revision=revision, local_files_only=offline)
            pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=torch_dtype, local_files_only=True)
        else:
            pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=torch_dtype, local_files_only=offline,
                                                             revision=revision)
    except (OSError, ValueError, KeyError, TypeError) as err:  # a malformed folder: KeyError('_class_name'), ...
        where = f"{repo}@{revision}" if not local_folder else repo
        raise WeightsError(
            f"could not load the text-to-image checkpoint {where}"
            f"{' (offline: only the Hugging Face cache is read)' if offline else ''}: {str(err).splitlines()[0][:200]}. "
            f"Supply it by downloading it once where there is network (`hf download {repo} --revision {revision}`; "
            "it is then cached under HF_HOME), or pass a local diffusers folder as the checkpoint; or use "
            "--generator world, the offline stand-in for the toy models.") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class StableDiffusionGenerator:
    """Draws with a loaded diffusers pipeline: explicit seeds, safety checker kept where the checkpoint has one."""

    name = "sd"

    def __init__(self, pipe, *, steps: int = SD_STEPS, guidance: float = SD_GUIDANCE, size: int | None = None,
                 checkpoint: str = ""):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8):
            raise ConfigError(f"the image size must be a positive multiple of 8, got {size!r}")
        self.pipe, self.steps, self.guidance, self.size = pipe, steps, float(guidance), size
        checker = getattr(pipe, "safety_checker", None)
        self.safety = "on" if checker is not None else "none in this checkpoint"
        self.label = (f"sd: {checkpoint or type(pipe).__name__} ({type(pipe).__name__}), {steps} steps, guidance "
                      f"{self.guidance:g}" + (f", {size} px" if size else "") + f", safety checker {self.safety}")

    def generate(self, descriptions: Sequence[str], seeds: Sequence[int], *, batch_size: int = 4) -> GeneratedImages:
        import torch

        if len(descriptions) != len(seeds):
            raise ConfigError("give one seed per description")
        images, valid = [], []
        size = {"height": self.size, "width": self.size} if self.size else {}
        for start in range(0, len(descriptions), batch_size):
            prompts = list(descriptions[start:start + batch_size])
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + batch_size]]
            out = self.pipe(prompts, num_inference_steps=self.steps, guidance_scale=self.guidance,
                            generator=generators, output_type="pil", **size)
            flags = getattr(out, "nsfw_content_detected", None) or [False] * len(prompts)
            images += list(out.images)
            valid += [not bool(flag) for flag in flags]
        return GeneratedImages(images, list(descriptions), [int(s) for s in seeds], valid, self.label)
