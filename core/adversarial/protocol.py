"""The adversarial protocol: every setting fixed in a versioned file before measuring, run on every planted cue.

A protocol file (`core/adversarial/protocols/v1.json`, kind "clipscope-adversarial-protocol") fixes the
method (neurons, layers, words, synonym judge, classifier templates, images and descriptions per draw), the
world stand-in's rules (`core.adversarial.generators.WorldRules`), the seeds, the draws per run, the images
behind the confusion rates, and a list of sensitivity settings (each one change to the main setting). It is
written and committed before anything it measures; a changed protocol is a new version, never an edit.

`run_protocol(bundle, protocol)` takes the model's planted cues from its own checkpoint
(`core.world.bias.planted_bias_of`), never from a list kept here, and runs both directions of every pair
of planted shapes: the images show shape A, the target is shape B, and B's planted background is the cue.

One run = one direction and one seed s = `run_adversarial` with seed s, `draws` repeats and the baselines
on, which is exactly `python -m core adversarial ... --seed s --repeats DRAWS --baselines` (each run's
command is in the report). So in every run:
- second-order (ours) and similar words: DRAWS draws of descriptions and images each;
- random neurons: DRAWS fresh neuron sets, each with its own words, descriptions and images.

Statistics (95% by default, `confidence`):
- per run, a method's success is the mean over its draws, with a t-interval over the draws (every t-interval is
  clipped to the possible range: rates to [0, 1], ratios to >= 0);
- the ratio per run is ours / random neurons (their means over draws);
- across seeds: the mean of the per-run values, with a t-interval over seeds (n - 1 degrees of freedom);
- confusion: how often the binary classifier already calls the present class the target on images the same
  renderer draws from "a {present} on a {background} background" (each background) and "a {present}" (no
  background named), with Wilson intervals. Their ratios are reference ceilings for the success ratio: cue /
  ordinary is what a method reaches when every image of its lands on the cue and every image of the baseline's on
  an ordinary (unplanted) background; cue / unnamed when the baseline's words name no background (the renderer
  then draws one at random, the cue included). Not hard bounds: other words (a size) also move the verdict.

>>> protocol = load_protocol("core/adversarial/protocols/v1.json")
>>> report = run_protocol(load_clip("toy-biased"), protocol)
>>> print(format_report(report))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.adversarial.generators import BACKGROUND_SCOPES, UNNAMED_SIZES, WORD_SCOPES, WorldGenerator, WorldRules
from core.adversarial.pipeline import MAX_IMAGES, MAX_REPEATS, AdversarialConfig, AdversarialReport, run_adversarial
from core.adversarial.verdict import TEMPLATE_CHOICES, binary_classifier, judge
from core.errors import ConfigError
from core.world import scenes as world

KIND = "clipscope-adversarial-protocol"
PROTOCOL_DIR = Path(__file__).resolve().parent / "protocols"
MAX_PROTOCOL_BYTES = 1_000_000
MAX_SEEDS = 50
MAX_SENSITIVITY = 20
MAX_CONFUSION_IMAGES = 5000
OURS, RANDOM, SIMILAR = "second-order", "random neurons", "similar words"

# The keys of a setting, with a check each (value -> error text or None).
_RENDERER_KEYS = {"unnamed_size": UNNAMED_SIZES, "word_scope": WORD_SCOPES, "background_scope": BACKGROUND_SCOPES}
_TOP_KEYS = {"kind", "version", "fixed", "notes", "seeds", "draws", "cue_top_k", "confidence", "confusion", "settings",
             "sensitivity"}


def _int(value, low: int, high: int) -> str | None:
    ok = not isinstance(value, bool) and isinstance(value, int) and low <= value <= high
    return None if ok else f"an integer in {low}..{high}"


def _number(value, low: float, high: float) -> str | None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
    return None if ok else f"a number in [{low:g}, {high:g}]"


def _text_or_null(value) -> str | None:
    return None if value is None or (isinstance(value, str) and value.strip()) else "a model spec or null"


def _layers(value) -> str | None:
    if value is None:
        return None
    ok = isinstance(value, list) and value and all(_int(v, 0, 1000) is None for v in value)
    return None if ok else "null (the last three layers the bases cover) or a list of layer indices"


def _words_list(value) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
    return None if ok else "a list of words"


_SETTING_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "neurons": lambda v: _int(v, 1, 100_000),
    "layers": _layers,
    "words": lambda v: _int(v, 1, 10_000),
    "per_pair": lambda v: None if isinstance(v, bool) else "true or false",
    "similarity": lambda v: _number(v, -1.0, 1.0),
    "similarity_model": _text_or_null,
    "block": _words_list,
    "templates": lambda v: None if v in TEMPLATE_CHOICES else f"one of {', '.join(TEMPLATE_CHOICES)}",
    "images": lambda v: _int(v, 1, MAX_IMAGES),
    "descriptions": lambda v: _int(v, 1, 1000),
}


@dataclass(frozen=True)
class Setting:
    """One complete configuration of the method and the renderer."""

    name: str
    why: str
    changes: dict  # what differs from the main setting ({} for the main one)
    neurons: int
    layers: tuple[int, ...] | None
    words: int
    per_pair: bool
    similarity: float
    similarity_model: str | None
    block: tuple[str, ...]
    templates: str
    images: int
    descriptions: int
    rules: WorldRules

    def config(self, present: str, target: str, seed: int, draws: int, bases: str | None = None) -> AdversarialConfig:
        return AdversarialConfig(present, target, layers=self.layers, neurons=self.neurons, words=self.words,
                                 per_pair=self.per_pair, similarity=self.similarity,
                                 similarity_model=self.similarity_model, block=self.block, images=self.images,
                                 descriptions=self.descriptions, generator="world", repeats=draws, baselines=True,
                                 seed=seed, templates=self.templates, bases=bases,
                                 unnamed_size=self.rules.unnamed_size, word_scope=self.rules.word_scope,
                                 background_scope=self.rules.background_scope)

    def command(self, model: str, present: str, target: str, seed: int, draws: int) -> str:
        """The `python -m core adversarial` command that makes one run of this setting (less --out)."""
        parts = [f"python -m core adversarial --model {model} --present {present} --target {target} --seed {seed} "
                 f"--repeats {draws} --baselines --neurons {self.neurons} --words {self.words} --images {self.images} "
                 f"--descriptions {self.descriptions} --similarity {self.similarity:g} --templates {self.templates}"]
        if self.layers:
            parts.append("--layers " + " ".join(map(str, self.layers)))
        if self.per_pair:
            parts.append("--per-pair")
        if self.similarity_model:
            parts.append(f"--similarity-model {self.similarity_model}")
        if self.block:
            parts.append("--block " + ",".join(self.block))
        parts.append(f"--unnamed-size {self.rules.unnamed_size} --word-scope {self.rules.word_scope} "
                     f"--background-scope {self.rules.background_scope}")
        return " ".join(parts)

    def to_json(self) -> dict:
        return {"name": self.name, "why": self.why, "changes": self.changes, "neurons": self.neurons,
                "layers": list(self.layers) if self.layers else None, "words": self.words, "per_pair": self.per_pair,
                "similarity": self.similarity, "similarity_model": self.similarity_model, "block": list(self.block),
                "templates": self.templates, "images": self.images, "descriptions": self.descriptions,
                "renderer": {"unnamed_size": self.rules.unnamed_size, "word_scope": self.rules.word_scope,
                             "background_scope": self.rules.background_scope}}


@dataclass(frozen=True)
class Protocol:
    version: int
    path: str
    sha256: str
    fixed: str
    seeds: tuple[int, ...]
    draws: int
    cue_top_k: int
    confidence: float
    confusion_images: int
    confusion_seed: int
    main: Setting
    sensitivity: tuple[Setting, ...]
    raw: dict = field(repr=False, default_factory=dict)

    @property
    def settings(self) -> tuple[Setting, ...]:
        return (self.main, *self.sensitivity)

    def describe(self) -> str:
        return (f"protocol v{self.version} ({Path(self.path).name}, sha256 {self.sha256[:12]}): seeds "
                f"{', '.join(map(str, self.seeds))}; {self.draws} draws per method and run; {self.main.images} images "
                f"per draw; cue in the top {self.cue_top_k}; {100 * self.confidence:g}% intervals; "
                f"{len(self.sensitivity)} sensitivity settings")


# ---------------------------------------------------------------- loading and validation

def _fail(path, message: str):
    raise ConfigError(f"protocol {path}: {message}")


def _check_keys(path, where: str, given: dict, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        _fail(path, f"unknown key {unknown[0]!r} in {where}; allowed: {', '.join(sorted(allowed))}")


def _setting(path, name: str, why: str, values: dict, changes: dict, where: str | None = None) -> Setting:
    where = where or name
    for key, check in _SETTING_CHECKS.items():
        if key not in values:
            _fail(path, f"{where}: missing setting {key!r}")
        problem = check(values[key])
        if problem:
            _fail(path, f"{where}: {key} must be {problem}, got {values[key]!r}")
    renderer = values.get("renderer")
    if not isinstance(renderer, dict):
        _fail(path, f"{where}: missing setting 'renderer' (an object with {', '.join(_RENDERER_KEYS)})")
    _check_keys(path, f"{where}'s renderer", renderer, _RENDERER_KEYS)
    for key, valid in _RENDERER_KEYS.items():
        if renderer.get(key) not in valid:
            _fail(path, f"{where}: renderer {key} must be one of {', '.join(valid)}, got {renderer.get(key)!r}")
    if values["descriptions"] > values["images"]:
        _fail(path, f"{where}: more descriptions ({values['descriptions']}) than images ({values['images']})")
    return Setting(name, why, changes, values["neurons"], tuple(values["layers"]) if values["layers"] else None,
                   values["words"], values["per_pair"], float(values["similarity"]), values["similarity_model"],
                   tuple(w.strip() for w in values["block"]), values["templates"], values["images"],
                   values["descriptions"], WorldRules(**{k: renderer[k] for k in _RENDERER_KEYS}))


def _merged(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = {**base[key], **value} if key == "renderer" and isinstance(value, dict) else value
    return out


def resolve_protocol_path(name_or_path: str) -> Path:
    """A shipped protocol by name ("v1") or a file path (checked against the allowed folders)."""
    from core import guards

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ConfigError("give a protocol file, e.g. core/adversarial/protocols/v1.json (or its name, v1)")
    shipped = PROTOCOL_DIR / f"{name_or_path.strip()}.json"
    if re.fullmatch(r"[\w.-]+", name_or_path.strip()) and shipped.is_file():
        return shipped
    return guards.check_user_path(name_or_path, "protocol file")


def load_protocol(path) -> Protocol:
    """Read and validate a protocol file; ConfigError (one line, naming the file and the problem) otherwise."""
    path = resolve_protocol_path(str(path))
    if not path.is_file() or path.is_symlink():
        _fail(path, "not found (give a protocol JSON file, e.g. core/adversarial/protocols/v1.json)")
    data = path.read_bytes()
    if len(data) > MAX_PROTOCOL_BYTES:
        _fail(path, f"larger than {MAX_PROTOCOL_BYTES} bytes")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        _fail(path, f"not valid JSON ({str(err).splitlines()[0][:120]})")
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        _fail(path, f"not an adversarial protocol (its \"kind\" must be {KIND!r})")
    _check_keys(path, "the protocol", raw, _TOP_KEYS)
    for key in ("version", "fixed", "seeds", "draws", "cue_top_k", "confidence", "confusion", "settings"):
        if key not in raw:
            _fail(path, f"missing key {key!r}")
    checks = (("version", _int(raw["version"], 1, 10_000)), ("draws", _int(raw["draws"], 2, MAX_REPEATS)),
              ("cue_top_k", _int(raw["cue_top_k"], 1, 1000)), ("confidence", _number(raw["confidence"], 0.5, 0.999)))
    for key, problem in checks:
        if problem:
            _fail(path, f"{key} must be {problem}, got {raw[key]!r}")
    if not isinstance(raw["fixed"], str) or not raw["fixed"].strip():
        _fail(path, "fixed must say when and on what the settings were fixed")
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not 2 <= len(seeds) <= MAX_SEEDS or any(_int(s, 0, 2**20) for s in seeds)
            or len(set(seeds)) != len(seeds)):
        _fail(path, f"seeds must be 2..{MAX_SEEDS} distinct integers in 0..{2**20} (an interval needs two), got {seeds!r}")
    confusion = raw["confusion"]
    if not isinstance(confusion, dict):
        _fail(path, "confusion must be an object with images_per_background and seed")
    _check_keys(path, "confusion", confusion, {"images_per_background", "seed"})
    for key, problem in (("images_per_background", _int(confusion.get("images_per_background"), 1, MAX_CONFUSION_IMAGES)),
                         ("seed", _int(confusion.get("seed"), 0, 2**20))):
        if problem:
            _fail(path, f"confusion {key} must be {problem}, got {confusion.get(key)!r}")
    base = raw["settings"]
    if not isinstance(base, dict):
        _fail(path, "settings must be an object")
    _check_keys(path, "settings", base, [*_SETTING_CHECKS, "renderer"])
    main = _setting(path, "main", "the protocol's setting", base, {}, where="settings")
    sensitivity = raw.get("sensitivity", [])
    if not isinstance(sensitivity, list) or len(sensitivity) > MAX_SENSITIVITY:
        _fail(path, f"sensitivity must be a list of at most {MAX_SENSITIVITY} settings")
    alternatives, names = [], {"main"}
    for i, entry in enumerate(sensitivity):
        if not isinstance(entry, dict):
            _fail(path, f"sensitivity[{i}] must be an object with name, why and change")
        _check_keys(path, f"sensitivity[{i}]", entry, {"name", "why", "change"})
        name, why, change = entry.get("name"), entry.get("why", ""), entry.get("change")
        if not isinstance(name, str) or not name.strip() or name in names:
            _fail(path, f"sensitivity[{i}] needs a name of its own, got {name!r}")
        if not isinstance(change, dict) or not change:
            _fail(path, f"sensitivity {name!r}: change must name at least one setting")
        _check_keys(path, f"sensitivity {name!r}'s change", change, [*_SETTING_CHECKS, "renderer"])
        if isinstance(change.get("renderer"), dict):
            _check_keys(path, f"sensitivity {name!r}'s renderer", change["renderer"], _RENDERER_KEYS)
        names.add(name)
        setting = _setting(path, name, str(why), _merged(base, change), change, where=f"sensitivity {name!r}")
        if setting.to_json() | {"name": "", "why": "", "changes": {}} == main.to_json() | {"name": "", "why": "", "changes": {}}:
            _fail(path, f"sensitivity {name!r} changes nothing")
        alternatives.append(setting)
    return Protocol(raw["version"], str(path), hashlib.sha256(data).hexdigest(), raw["fixed"].strip(), tuple(seeds),
                    raw["draws"], raw["cue_top_k"], float(raw["confidence"]), confusion["images_per_background"],
                    confusion["seed"], main, tuple(alternatives), raw)


# ---------------------------------------------------------------- statistics

def t_interval(values, confidence: float) -> tuple[float, float] | None:
    """The t-interval of the mean (n - 1 degrees of freedom); None for fewer than two values."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return None
    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem
    return mean - half, mean + half


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float, float] | None:
    from scipy import stats

    if n <= 0:
        return None
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _summary(values, confidence: float, bounds: tuple[float, float] = (0.0, 1.0)) -> dict:
    """Mean, sample std and the t-interval of the mean, clipped to the values' possible range (`bounds`)."""
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "std": None, "ci": None, "n": 0, "values": []}
    interval = t_interval(values, confidence)
    ci = [max(bounds[0], interval[0]), min(bounds[1], interval[1])] if interval else None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "ci": ci, "n": len(values), "values": values}


# ---------------------------------------------------------------- one run

def cue_rank(words, cue: str) -> int | None:
    """1-based rank of the first word naming the cue background (whole word), or None."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(cue)}(?![\w-])", re.IGNORECASE)
    return next((rank for rank, word in enumerate(words, 1) if pattern.search(word)), None)


def _drawn(attempt, cue: str) -> tuple[int, int, int, int]:
    """(images on the cue background, their successes, images elsewhere, their successes) of an attempt."""
    on = off = on_ok = off_ok = 0
    for note, fooled, valid in zip(attempt.images.notes, attempt.verdicts.fooled, attempt.images.valid):
        if not valid:
            continue
        if note["scene"]["background"] == cue:
            on, on_ok = on + 1, on_ok + int(fooled)
        else:
            off, off_ok = off + 1, off_ok + int(fooled)
    return on, on_ok, off, off_ok


def summarise_run(report: AdversarialReport, cue: str, top_k: int, confidence: float) -> dict:
    """Per method: success per draw, its mean and t-interval, where the images were drawn; the cue's rank."""
    methods = {}
    for method in (OURS, RANDOM, SIMILAR):
        mine = [a for a in report.attempts if a.method == method]
        drawn = np.array([_drawn(a, cue) for a in mine]).sum(0) if mine else np.zeros(4, int)
        ranks = [cue_rank(a.words.words, cue) for a in mine]
        methods[method] = {**_summary([a.rate for a in mine], confidence),
                           "successes": [a.successes for a in mine], "valid_images": [a.valid for a in mine],
                           "on_cue": int(drawn[0]), "on_cue_success": int(drawn[1]), "off_cue": int(drawn[2]),
                           "off_cue_success": int(drawn[3]), "cue_ranks": ranks,
                           "cue_in_top_k": sum(r is not None and r <= top_k for r in ranks)}
    ours, random = methods[OURS]["mean"], methods[RANDOM]["mean"]
    rank = cue_rank(report.words.words, cue)
    return {"seed": report.config.seed, "top_words": report.words.words[:top_k], "cue_rank": rank,
            "cue_in_top_k": rank is not None and rank <= top_k, "methods": methods,
            "ratio": ours / random if random > 0 else None, "above_random": ours > random,
            "random_draws_beaten": sum(r < ours for r in methods[RANDOM]["values"]),
            "stage_counts": report.stage_counts()}


# ---------------------------------------------------------------- confusion

def confusion_rates(bundle, present: str, target: str, cue: str, own: str | None, planted: tuple[str, ...],
                    rules: WorldRules, templates: str, n: int, seed: int, confidence: float) -> dict:
    """How often the binary classifier already calls `present` the `target`, on images the renderer draws from
    "a {present} on a {background} background" per background and from "a {present}" (background unnamed)."""
    generator = WorldGenerator(rules)
    classifier = binary_classifier(bundle, present, target, templates)
    per = {}
    for k, background in enumerate((*world.BACKGROUNDS, None)):
        text = f"a {present} on a {background} background" if background else f"a {present}"
        seeds = [seed * 1_000_000 + k * 10_000 + i for i in range(n)]
        images = generator.generate([text] * n, seeds)
        fooled = sum(judge(bundle, classifier, images.images).fooled)
        per[background or "unnamed"] = {"description": text, "n": n, "fooled": fooled, "rate": fooled / n,
                                        "ci": list(wilson_interval(fooled, n, confidence))}
    ordinary = [b for b in world.BACKGROUNDS if b not in planted]
    fooled, total = sum(per[b]["fooled"] for b in ordinary), n * len(ordinary)

    def rate(key):
        return per[key]["rate"] if key in per else None

    ordinary_rate = fooled / total
    return {"per_background": per, "cue": rate(cue), "own": rate(own) if own else None,
            "ordinary": ordinary_rate, "ordinary_backgrounds": ordinary,
            "ordinary_ci": list(wilson_interval(fooled, total, confidence)), "unnamed": rate("unnamed"),
            "ceiling_ratio": rate(cue) / ordinary_rate if ordinary_rate > 0 else None,
            "how": f"{n} images per background drawn by the world stand-in ({rules.describe()}), seed {seed}; "
                   f"binary classifier {classifier.how}; Wilson {100 * confidence:g}% intervals"}


# ---------------------------------------------------------------- the protocol run

def planted_directions(bias) -> list[tuple[str, str, str]]:
    """(present, target, cue) for every ordered pair of planted shapes; the cue is the target's background."""
    return [(a, b, cue) for a, _ in bias.pairs for b, cue in bias.pairs if a != b]


def _summarise_direction(all_runs: list[dict], confidence: float, top_k: int) -> dict:
    """Across seeds. A run that failed (no words left) counts as below random and without the cue."""
    runs = [r for r in all_runs if not r.get("error")]
    ratios = [r["ratio"] for r in runs]
    return {"second-order": _summary([r["methods"][OURS]["mean"] for r in runs], confidence),
            "random neurons": _summary([r["methods"][RANDOM]["mean"] for r in runs], confidence),
            "similar words": _summary([r["methods"][SIMILAR]["mean"] for r in runs], confidence),
            "ratio": (_summary(ratios, confidence, (0.0, math.inf)) if runs and all(x is not None for x in ratios)
                      else None),
            "failed_runs": len(all_runs) - len(runs),
            "ratio_min": min((x for x in ratios if x is not None), default=None),
            "runs_above_random": sum(r["above_random"] for r in runs), "runs": len(all_runs),
            "runs_cue_in_top_k": sum(r["cue_in_top_k"] for r in runs),
            "cue_ranks": [r["cue_rank"] for r in all_runs],
            "random_cue_in_top_k": sum(r["methods"][RANDOM]["cue_in_top_k"] for r in runs),
            "random_draws": sum(len(r["methods"][RANDOM]["values"]) for r in runs),
            "on_cue_share": {m: sum(r["methods"][m]["on_cue"] for r in runs) /
                             max(1, sum(r["methods"][m]["on_cue"] + r["methods"][m]["off_cue"] for r in runs))
                             for m in (OURS, RANDOM, SIMILAR)}}


def _machine() -> dict:
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": list(load or [])}


def run_protocol(bundle, protocol: Protocol, *, bases: str | None = None, settings: list[str] | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """Run `protocol` on `bundle`'s planted cues: every setting, direction and seed. Returns the JSON-ready report.

    settings: names of the settings to run ("main" and sensitivity names); default all of them.
    """
    from core.world.bias import planted_bias_of

    say = log or (lambda _: None)  # one line per run (a log, not a progress bar)
    bias = planted_bias_of(bundle)
    if bias is None:
        raise ConfigError(f"{bundle.info.spec} records no planted bias in its checkpoint: the protocol measures known "
                          "cues, so it runs on models trained by `python -m core toy train --bias ...` (toy-biased, "
                          "toy-biased-2)")
    known = [s.name for s in protocol.settings]
    unknown = [name for name in settings or [] if name not in known]
    if unknown:
        raise ConfigError(f"unknown protocol setting {unknown[0]!r}; this protocol has: {', '.join(known)}")
    chosen = [s for s in protocol.settings if settings is None or s.name in settings]
    directions = planted_directions(bias)
    own = dict(bias.pairs)
    started, wall, cpu = datetime.now(timezone.utc), time.perf_counter(), time.process_time()
    machine = _machine()
    out_settings = []
    for setting in chosen:
        out_directions = []
        for present, target, cue in directions:
            confusion = confusion_rates(bundle, present, target, cue, own.get(present), bias.backgrounds,
                                        setting.rules, setting.templates, protocol.confusion_images,
                                        protocol.confusion_seed, protocol.confidence)
            runs = []
            for seed in protocol.seeds:
                command = setting.command(bundle.info.spec, present, target, seed, protocol.draws)
                try:
                    report = run_adversarial(bundle, setting.config(present, target, seed, protocol.draws, bases))
                except ConfigError as err:  # e.g. no word left after the filter: a failed run, reported as such
                    runs.append({"seed": seed, "error": str(err), "cue_rank": None, "cue_in_top_k": False,
                                 "above_random": False, "ratio": None, "command": command})
                    say(f"[{setting.name}] {present} -> {target} seed {seed}: failed: {err}")
                    continue
                run = summarise_run(report, cue, protocol.cue_top_k, protocol.confidence)
                run["command"] = command
                runs.append(run)
                m = run["methods"]
                say(f"[{setting.name}] {present} -> {target} (cue {cue}) seed {seed}: ours {100 * m[OURS]['mean']:.1f}%, "
                    f"random {100 * m[RANDOM]['mean']:.1f}%, similar {100 * m[SIMILAR]['mean']:.1f}%, cue rank "
                    f"{run['cue_rank']}")
            out_directions.append({"present": present, "target": target, "cue": cue, "confusion": confusion,
                                   "runs": runs, "summary": _summarise_direction(runs, protocol.confidence,
                                                                                 protocol.cue_top_k)})
        out_settings.append({**setting.to_json(), "directions": out_directions})
    main = next((s for s in out_settings if s["name"] == "main"), None)
    targets = None
    if main is not None:
        every = [r for d in main["directions"] for r in d["runs"]]
        targets = {"cue_in_top_k_every_run": all(r["cue_in_top_k"] for r in every),
                   "above_random_every_run": all(r["above_random"] for r in every),
                   "runs": len(every), "runs_cue_in_top_k": sum(r["cue_in_top_k"] for r in every),
                   "runs_above_random": sum(r["above_random"] for r in every)}
    model = {**bundle.info.identity(), "display_name": bundle.info.display_name, "device": str(bundle.device)}
    return {"kind": "clipscope-adversarial-protocol-report", "protocol": {
                "version": protocol.version, "path": protocol.path, "sha256": protocol.sha256, "fixed": protocol.fixed,
                "seeds": list(protocol.seeds), "draws": protocol.draws, "cue_top_k": protocol.cue_top_k,
                "confidence": protocol.confidence, "confusion_images": protocol.confusion_images,
                "confusion_seed": protocol.confusion_seed},
            "model": model, "planted": {**bias.as_dict(), "from": "the model's checkpoint metadata (toy train --bias)"},
            "directions": [{"present": p, "target": t, "cue": c} for p, t, c in directions],
            "statistics": (f"per run: mean over {protocol.draws} draws, {100 * protocol.confidence:g}% t-interval over "
                           f"draws; across seeds: mean of the per-run values, t-interval over {len(protocol.seeds)} "
                           "seeds (t-intervals clipped to the possible range); ratio = second-order / random neurons "
                           "(means over draws) per run; confusion: Wilson intervals"),
            "settings": out_settings, "targets": targets,
            "run": {"started": started.isoformat(timespec="seconds"), "machine": machine,
                    "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
                    "wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}}


# ---------------------------------------------------------------- text

def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci(summary: dict | None, scale: float = 100.0, unit: str = "", digits: int = 1) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    lo_hi = summary.get("ci")
    ci = f" [{scale * lo_hi[0]:.{digits}f}, {scale * lo_hi[1]:.{digits}f}]" if lo_hi else ""
    return f"{scale * summary['mean']:.{digits}f}{unit}{ci}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_report(report: dict) -> str:
    """The report as markdown: the main table (every direction and seed), the confusion bounds, the sensitivity."""
    p, model = report["protocol"], report["model"]
    lines = [f"# Adversarial protocol v{p['version']} on {model['spec']}",
             f"protocol: {p['path']} (sha256 {p['sha256'][:12]}); fixed: {p['fixed']}",
             f"model: {model['display_name']} (weights sha256 {str(model['weights_sha256'])[:12]}), device "
             f"{model['device']}; planted: {report['planted']['description']} (from {report['planted']['from']})",
             f"statistics: {report['statistics']}", ""]
    for setting in report["settings"]:
        if setting["name"] != "main":
            continue
        lines += [f"## Main setting: every direction and seed",
                  f"neurons {setting['neurons']}, words {setting['words']}, judge {setting['similarity_model'] or 'the model'}"
                  f", {setting['images']} images x {p['draws']} draws per method and run; renderer: "
                  f"{WorldRules(**setting['renderer']).describe()}", "",
                  f"| direction (cue) | seed | cue rank | second-order % [95% CI] | random neurons % [95% CI] | "
                  f"similar words % [95% CI] | ratio | random draws beaten | random draws with the cue in the top "
                  f"{p['cue_top_k']} | ours on cue bg |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for d in setting["directions"]:
            for r in d["runs"]:
                if r.get("error"):
                    lines.append(f"| {d['present']} -> {d['target']} ({d['cue']}) | {r['seed']} | - | failed: "
                                 f"{r['error'][:100]} | | | | | | |")
                    continue
                m = r["methods"]
                lines.append(f"| {d['present']} -> {d['target']} ({d['cue']}) | {r['seed']} | {r['cue_rank'] or '-'} | "
                             f"{_ci(m[OURS])} | {_ci(m[RANDOM])} | {_ci(m[SIMILAR])} | {_ratio(r['ratio'])} | "
                             f"{r['random_draws_beaten']}/{len(m[RANDOM]['values'])} | "
                             f"{m[RANDOM]['cue_in_top_k']}/{len(m[RANDOM]['values'])} | "
                             f"{m[OURS]['on_cue']}/{m[OURS]['on_cue'] + m[OURS]['off_cue']} |")
            s = d["summary"]
            lines.append(f"| **{d['present']} -> {d['target']}, over seeds** | all | "
                         f"{'/'.join(str(x or '-') for x in s['cue_ranks'])} | **{_ci(s[OURS])}** | {_ci(s[RANDOM])} | "
                         f"{_ci(s[SIMILAR])} | **{_ci(s['ratio'], 1.0, 'x', 2) if s['ratio'] else '-'}** | "
                         f"{s['runs_above_random']}/{s['runs']} runs above | "
                         f"{s['random_cue_in_top_k']}/{s['random_draws']} | {100 * s['on_cue_share'][OURS]:.0f}% |")
        lines += ["", "Confusion: how often the model already calls the present class the target (images the same "
                  "renderer draws; Wilson 95% CI):", "",
                  "| direction | on the cue background | on its own planted background | on ordinary backgrounds | "
                  "background unnamed | ceiling ratio cue / ordinary | ceiling ratio cue / unnamed | measured ratio "
                  "(mean over seeds) |",
                  "|---|---|---|---|---|---|---|---|"]
        for d in setting["directions"]:
            c = d["confusion"]
            cue_ci, ord_ci = c["per_background"][d["cue"]]["ci"], c["ordinary_ci"]
            lines.append(f"| {d['present']} -> {d['target']} | {_pct(c['cue'])} [{100 * cue_ci[0]:.1f}, "
                         f"{100 * cue_ci[1]:.1f}] | {_pct(c['own'])} | {_pct(c['ordinary'])} [{100 * ord_ci[0]:.1f}, "
                         f"{100 * ord_ci[1]:.1f}] ({', '.join(c['ordinary_backgrounds'])}) | {_pct(c['unnamed'])} | "
                         f"{_ratio(c['ceiling_ratio'])} | "
                         f"{_ratio(c['cue'] / c['unnamed'] if c['unnamed'] else None)} | "
                         f"{_ratio(d['summary']['ratio']['mean'] if d['summary']['ratio'] else None)} |")
    sensitivity = [s for s in report["settings"]]
    if len(sensitivity) > 1 or report["settings"][0]["name"] != "main":
        lines += ["", "## Sensitivity: each setting changes one choice of the main setting (same seeds and draws)", "",
                  "| setting | change | direction | cue ranks | second-order % [95% CI] | random % [95% CI] | "
                  f"ratio [95% CI] | runs above random | random draws with the cue in the top {p['cue_top_k']} | "
                  "ours / random images on the cue bg | confusion cue / ordinary |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for setting in sensitivity:
            change = json.dumps(setting["changes"], sort_keys=True) if setting["changes"] else "-"
            for d in setting["directions"]:
                s, c = d["summary"], d["confusion"]
                lines.append(f"| {setting['name']} | {change} | {d['present']} -> {d['target']} | "
                             f"{'/'.join(str(x or '-') for x in s['cue_ranks'])} | {_ci(s[OURS])} | {_ci(s[RANDOM])} | "
                             f"{_ci(s['ratio'], 1.0, 'x', 2) if s['ratio'] else '-'} | {s['runs_above_random']}/{s['runs']} | "
                             f"{s['random_cue_in_top_k']}/{s['random_draws']} | "
                             f"{100 * s['on_cue_share'][OURS]:.0f}% / {100 * s['on_cue_share'][RANDOM]:.0f}% | "
                             f"{_pct(c['cue'])} / {_pct(c['ordinary'])} |")
    if report.get("targets"):
        t = report["targets"]
        lines += ["", f"Targets (main setting): cue in the top {p['cue_top_k']} in {t['runs_cue_in_top_k']}/{t['runs']} "
                  f"runs ({'met' if t['cue_in_top_k_every_run'] else 'NOT met'}); second-order above the random-neuron "
                  f"mean in {t['runs_above_random']}/{t['runs']} runs "
                  f"({'met' if t['above_random_every_run'] else 'NOT met'})."]
    run = report["run"]
    lines += ["", f"run: started {run['started']} UTC on {run['machine']['cpu_count']} CPU cores "
              f"({run['machine']['processor']}), torch threads {run['machine']['torch_threads']}, load average "
              f"{' '.join(f'{x:.2f}' for x in run['machine']['load_average'])} at the start and "
              f"{' '.join(f'{x:.2f}' for x in run['load_average_end'])} at the end; wall {run['wall_seconds'] / 60:.1f} "
              f"min, CPU {run['cpu_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"
