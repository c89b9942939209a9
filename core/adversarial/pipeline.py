"""The whole generator: classes -> neurons -> words -> descriptions -> images -> verdicts, with baselines.

Each step is its own function (`core.adversarial.directions`, `neurons`, `words`, `descriptions`,
`generators`, `verdict`); `run_adversarial` chains them and keeps every step's output, counts at
every stage and the time each stage took. Methods (paper 2, table 3):

- "second-order": the top-N neurons by |<v, r_n>|, their summed word scores, the synonym filter, top-k
  (N defaults to the paper's 100, scaled down on embeddings narrower than 512: `defaults.default_neurons`);
- "random neurons": N neurons drawn at random from the same layers (a new draw per repeat), same scoring;
- "similar words": the pool words most similar to c2 (CLIP text cosine), same filter.

Each repeat draws new descriptions and image seeds from its own seed; the summary gives the success
rate's mean and standard deviation over repeats.

>>> report = run_adversarial(bundle, AdversarialConfig("square", "triangle", baselines=True))
>>> report.summary()["second-order"]["success_mean"]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from core.progress import Progress, report
from core.adversarial.descriptions import Descriptions, drop_naming, llm_descriptions, template_descriptions
from core.adversarial.directions import ClassDirection, class_direction
from core.adversarial.defaults import (DEFAULT_NEURONS, DEFAULT_SIMILARITY, DEFAULT_WORDS, PAPER_EMBED_DIMS,
                                       SD_GUIDANCE, SD_REPO, SD_REVISION, SD_STEPS, default_neurons)
from core.adversarial.generators import GENERATORS, GeneratedImages, WorldRules
from core.adversarial.neurons import NeuronSelection, layer_bases, random_neurons, top_neurons
from core.adversarial.verdict import BinaryClassifier, Verdicts, binary_classifier, judge
from core.adversarial.words import FilteredWords, TopWords, filter_words, score_words, similar_words, top_words
from core.engine.models import ClipBundle
from core.errors import ConfigError

METHODS = ("second-order", "random neurons", "similar words")
MAX_IMAGES = 1000
MAX_REPEATS = 10


@dataclass(frozen=True)
class AdversarialConfig:
    present: str  # c1: the class the images show
    target: str  # c2: the class CLIP should be fooled into
    layers: tuple[int, ...] | None = None  # default: the last three layers the bases cover
    neurons: int | None = None  # default: default_neurons(the embedding's dimensions)
    words: int = DEFAULT_WORDS
    per_pair: bool = False  # rank (neuron, word) pairs as the official code, instead of summing (paper eq. 6)
    similarity: float = DEFAULT_SIMILARITY  # drop words with text cosine >= this to the target
    similarity_model: str | None = None  # the synonym judge's model spec (default: the model under study)
    block: tuple[str, ...] = ()
    images: int = 100  # per repeat and method
    descriptions: int = 10  # per repeat and method; images are spread evenly over them
    generator: str = "world"
    repeats: int = 3
    baselines: bool = False
    seed: int = 0
    templates: str = "auto"  # the binary classifier's (core.adversarial.verdict)
    bases: str | None = None  # bases source (default: $CLIPSCOPE_BASES / the shipped default)
    # The sd generator: a diffusers checkpoint (Hub id or local folder) at a pinned revision.
    sd_repo: str = SD_REPO
    sd_revision: str | None = SD_REVISION
    sd_steps: int = SD_STEPS
    sd_guidance: float = SD_GUIDANCE
    sd_size: int | None = None  # default: the checkpoint's own
    device: str = "cpu"
    # The world stand-in's rules that change results (core.adversarial.generators.WorldRules).
    unnamed_size: str = "large"
    word_scope: str = "own-object"
    background_scope: str = "scene"

    def __post_init__(self):
        counts = (("neurons", self.neurons, 1, 100_000),) if self.neurons is not None else ()
        for name, value, low, high in counts + (("words", self.words, 1, 10_000),
                                       ("images", self.images, 1, MAX_IMAGES), ("descriptions", self.descriptions, 1, 1000),
                                       ("repeats", self.repeats, 1, MAX_REPEATS), ("seed", self.seed, 0, 2**31 - 1)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value!r}")
        if self.generator not in GENERATORS:
            raise ConfigError(f"unknown generator {self.generator!r}; choose one of {', '.join(GENERATORS)}")
        self.world_rules  # validates the rules
        if self.descriptions > self.images:
            object.__setattr__(self, "descriptions", self.images)
        object.__setattr__(self, "block", tuple(self.block))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))

    @property
    def world_rules(self) -> WorldRules:
        return WorldRules(self.unnamed_size, self.word_scope, self.background_scope)

    @property
    def images_per_description(self) -> int:
        return math.ceil(self.images / self.descriptions)

    def methods(self) -> tuple[str, ...]:
        return METHODS if self.baselines else METHODS[:1]


@dataclass
class Attempt:
    """One repeat of one method: its words, descriptions, images and verdicts."""

    method: str
    repeat: int
    seed: int
    neurons: NeuronSelection | None
    words: TopWords
    descriptions: Descriptions
    images: GeneratedImages
    verdicts: Verdicts

    @property
    def successes(self) -> int:
        return sum(f and v for f, v in zip(self.verdicts.fooled, self.images.valid))

    @property
    def valid(self) -> int:
        return sum(self.images.valid)

    @property
    def rate(self) -> float:
        return self.successes / self.valid if self.valid else 0.0

    def counts(self) -> dict[str, int]:
        return {"words": len(self.words.words), "descriptions written": len(self.descriptions) + len(self.descriptions.dropped),
                "descriptions kept": len(self.descriptions), "images": len(self.images.images),
                "valid images": self.valid, "successes": self.successes}


@dataclass
class AdversarialReport:
    config: AdversarialConfig
    model: dict
    direction: ClassDirection
    classifier: BinaryClassifier
    generator: str
    bases: str
    selection: NeuronSelection
    filtered: FilteredWords
    words: TopWords
    attempts: list[Attempt]
    seconds: dict[str, float] = field(default_factory=dict)

    def stage_counts(self) -> dict[str, int]:
        """How many items survive each stage of the second-order method (images summed over repeats)."""
        ours = [a for a in self.attempts if a.method == "second-order"]
        return {"neurons": len(self.selection), "words scored": len(self.filtered.kept) + len(self.filtered.removed),
                "words after filter": len(self.filtered.kept), "top words": len(self.words.words),
                "descriptions written": sum(a.counts()["descriptions written"] for a in ours),
                "descriptions kept": sum(len(a.descriptions) for a in ours),
                "images": sum(len(a.images.images) for a in ours), "valid images": sum(a.valid for a in ours),
                "successes": sum(a.successes for a in ours)}

    def summary(self) -> dict[str, dict]:
        """Per method: success rate mean and std over repeats (sample std; 0 for one repeat), counts."""
        out = {}
        for method in self.config.methods():
            mine = [a for a in self.attempts if a.method == method]
            rates = np.array([a.rate for a in mine], dtype=np.float64)
            out[method] = {"success_mean": float(rates.mean()), "success_std": float(rates.std(ddof=1)) if len(rates) > 1 else 0.0,
                           "successes": [a.successes for a in mine], "valid_images": [a.valid for a in mine],
                           "repeats": len(mine)}
        return out

    def to_json(self) -> dict:
        return {
            "model": self.model, "present": self.config.present, "target": self.config.target,
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.__dict__.items()},
            "direction": self.direction.describe(), "classifier": self.classifier.how,
            "generator": self.generator, "bases": self.bases,
            "neurons": self.selection.rows(), "word_scores": self.filtered.scores.how,
            "filter": self.filtered.describe(), "removed_words": self.filtered.removed[:200],
            "top_words": self.words.rows(), "stage_counts": self.stage_counts(), "summary": self.summary(),
            "attempts": [{"method": a.method, "repeat": a.repeat, "seed": a.seed, "words": a.words.words,
                          "descriptions": a.descriptions.texts, "dropped_descriptions": a.descriptions.dropped,
                          "counts": a.counts(), "success_rate": a.rate} for a in self.attempts],
            "seconds": self.seconds,
        }


def _descriptions(config: AdversarialConfig, words: TopWords, seed: int, llm) -> Descriptions:
    if llm is not None:
        batch = llm_descriptions(llm, config.present, config.target, words.words, n=config.descriptions, seed=seed)
    else:
        batch = template_descriptions(config.present, words.words, words.scores, n=config.descriptions, seed=seed)
    return drop_naming(batch, config.target, block=config.block, present=config.present)


def _attempt(bundle, config, classifier, generator, method, repeat, neurons, words, llm, seconds) -> Attempt:
    seed = config.seed * 1000 + repeat
    start = time.perf_counter()
    descriptions = _descriptions(config, words, seed, llm)
    seconds["descriptions"] = seconds.get("descriptions", 0.0) + time.perf_counter() - start
    per = config.images_per_description
    texts = [t for t in descriptions.texts for _ in range(per)][:config.images]
    # Image seeds: distinct across repeats and methods' shared draws, explicit and recorded per image.
    seeds = [seed * 100_000 + i for i in range(len(texts))]
    start = time.perf_counter()
    images = generator.generate(texts, seeds) if texts else None
    seconds["images"] = seconds.get("images", 0.0) + time.perf_counter() - start
    if images is None:
        images = GeneratedImages([], [], [], [], generator.label)
    start = time.perf_counter()
    verdicts = judge(bundle, classifier, images.images) if images.images else Verdicts([], [])
    seconds["verdicts"] = seconds.get("verdicts", 0.0) + time.perf_counter() - start
    return Attempt(method, repeat, seed, neurons, words, descriptions, images, verdicts)


def make_generator(config: AdversarialConfig, *, sd_pipe=None):
    """The `world` stand-in, or `sd` around `sd_pipe` (default: loaded from config.sd_repo at config.sd_revision)."""
    from core.adversarial.generators import StableDiffusionGenerator, WorldGenerator, load_sd_pipeline

    if config.generator == "world":
        return WorldGenerator(config.world_rules)
    pipe = sd_pipe if sd_pipe is not None else load_sd_pipeline(config.sd_repo, config.sd_revision, device=config.device)
    return StableDiffusionGenerator(pipe, steps=config.sd_steps, guidance=config.sd_guidance, size=config.sd_size,
                                    checkpoint=f"{config.sd_repo}@{config.sd_revision}" if config.sd_revision
                                    else config.sd_repo)


def _judge(bundle: ClipBundle, spec: str | None) -> ClipBundle:
    """The synonym judge: the model under study, or another CLIP's text tower (see `filter_words`)."""
    from core.engine.models import load_clip

    if spec is None or spec.strip() == bundle.info.spec:
        return bundle
    if not spec.strip():  # load_clip would take blank for the default model: a judge is named or absent
        raise ConfigError("empty model spec for the synonym judge: name a model, or leave the judge out")
    return load_clip(spec.strip())


def _method_words(method, repeat, config, direction, bases, judge, selection, words, similar):
    """(neurons, top words) a method writes its descriptions from; words None when none are left."""
    if method == "second-order":
        return selection, words
    if method == "similar words":
        return None, similar
    neurons = random_neurons(direction.v, bases, len(selection), seed=config.seed * 1000 + repeat)
    try:
        scored = score_words(neurons, bases, per_pair=config.per_pair)
        filtered = filter_words(judge, scored, direction.target, threshold=config.similarity, block=config.block)
        return neurons, top_words(filtered, config.words)
    except ConfigError:  # random neurons may push nowhere near the target: no images, no successes
        return neurons, None


def _empty_attempt(method, repeat, config, neurons, generator_label) -> Attempt:
    return Attempt(method, repeat, config.seed * 1000 + repeat, neurons, TopWords([], [], "none left"),
                   Descriptions([], "no words with a positive score after the filter"),
                   GeneratedImages([], [], [], [], generator_label), Verdicts([], []))


def run_adversarial(bundle: ClipBundle, config: AdversarialConfig, *, generator=None, llm=None,
                    progress: Progress | None = None) -> AdversarialReport:
    """Run every stage (and the baselines if asked) for config.repeats repeats; see the module docstring.

    generator: an object with `.generate(descriptions, seeds)` and `.label` (default: `config.generator`
    built by `make_generator`; pass a loaded `StableDiffusionGenerator` for sd). llm: a transformers
    text-generation pipeline for the descriptions (default: templates).
    """
    def say(line: str) -> None:
        report(progress, line)

    seconds: dict[str, float] = {}

    def timed(stage, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
        return result

    direction = timed("direction", class_direction, bundle, config.present, config.target)
    say(f"direction: {direction.describe()}")
    if generator is None:  # before the neurons: a generator that cannot load or draw c1 fails fast
        generator = timed("load generator", make_generator, config)
    if hasattr(generator, "check_class"):
        generator.check_class(direction.present)
    bases = timed("bases", layer_bases, bundle, config.bases, config.layers)
    texts = next(iter(bases.values())).texts
    how_many = ""
    if config.neurons is None:
        dims = int(direction.v.shape[-1])
        config = replace(config, neurons=default_neurons(dims))
        how_many = f" (the default for a {dims}-dimension embedding: the paper's {DEFAULT_NEURONS} per {PAPER_EMBED_DIMS})"
    selection = timed("neurons", top_neurons, direction.v, bases, config.neurons)
    say(f"neurons: {len(selection)} from layers {list(selection.pool_layers)} by |<v, r_n>|{how_many}")
    scored = timed("word scores", score_words, selection, bases, per_pair=config.per_pair)
    judge = timed("filter", _judge, bundle, config.similarity_model)
    filtered = timed("filter", filter_words, judge, scored, direction.target, threshold=config.similarity,
                     block=config.block)
    words = timed("top words", top_words, filtered, config.words)
    say(f"words: {len(filtered.kept) + len(filtered.removed)} scored, {len(filtered.kept)} after the filter; top "
        f"{len(words.words)}: {', '.join(words.words[:8])}{', ...' if len(words.words) > 8 else ''}")
    classifier = timed("classifier", binary_classifier, bundle, direction.present, direction.target, config.templates)
    similar = None
    if config.baselines:
        similar = timed("similar words", similar_words, bundle, texts, direction.target, k=config.words,
                        threshold=config.similarity, block=config.block, judge=judge)
    attempts = []
    for repeat in range(config.repeats):
        for method in config.methods():
            neurons, chosen = _method_words(method, repeat, config, direction, bases, judge, selection, words, similar)
            if chosen is None:
                attempt = _empty_attempt(method, repeat, config, neurons, generator.label)
            else:
                attempt = _attempt(bundle, config, classifier, generator, method, repeat, neurons, chosen, llm, seconds)
            attempts.append(attempt)
            say(f"repeat {repeat + 1}/{config.repeats} {method}: {attempt.successes}/{attempt.valid} images fool "
                f"the classifier ({100 * attempt.rate:.1f}%)")
    model = {**bundle.info.identity(), "display_name": bundle.info.display_name, "source": bundle.info.source}
    return AdversarialReport(config, model, direction, classifier, generator.label,
                             next(iter(bases.values())).provenance["source"], selection, filtered, words, attempts,
                             seconds)
