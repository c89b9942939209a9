"""The `python -m core ...` lines that give a linked view's numbers, for the "Cite / reproduce" panel.

Each line spells out the model, convention, text pool and image set. Generated-world images are written first
with `python -m core toy scenes` (same seed, same pixels as the link's `world:SEED:INDEX` or `example:N`).
"""

from __future__ import annotations

import shlex
from typing import Callable

from core.links.codec import ViewState
from core.links.images import UPLOAD, parse_image_ref

CITATIONS = (
    "Gandelsman, Efros, Steinhardt. Interpreting CLIP's Image Representation via Text-Based Decomposition. "
    "ICLR 2024. https://arxiv.org/abs/2310.05916",
    "Gandelsman, Efros, Steinhardt. Interpreting the Second-Order Effects of Neurons in CLIP. ICLR 2025. "
    "https://arxiv.org/abs/2406.04341",
)


def _q(value) -> str:
    return shlex.quote(str(value))


def image_argument(ref: str | None) -> tuple[list[str], str]:
    """(lines that write the image, its path) for an image reference."""
    if not ref or ref == UPLOAD:
        return [], "YOUR_IMAGE.png"
    parsed = parse_image_ref(ref)
    folder = f"scenes-seed{parsed.seed}"
    setup = f"python -m core toy scenes --n {parsed.index + 1} --seed {parsed.seed} --split heldout --out {folder}"
    return [setup], f"{folder}/images/{parsed.index:06d}.png"


def _decomposition(state: ViewState, **_) -> list[str]:
    setup, image = image_argument(state.image)
    texts = " ".join(f"--text {_q(t)}" for t in state.texts)
    return setup + [f"python -m core decompose --model {_q(state.model)} --image {_q(image)} {texts} "
                    f"--convention {state.convention or 'paper'}"]


def _bases_lines(bases_source: str | None, recipe: str | None) -> list[str]:
    lines = []
    if recipe:
        lines.append(f"{recipe}   # how the bases were built")
    if bases_source:
        lines.append(f"python -m core bases info {_q(bases_source)}")
    return lines


def _heads(state: ViewState, *, bases_source: str | None = None, recipe: str | None = None, **_) -> list[str]:
    lines = _bases_lines(bases_source, recipe)
    if state.image and state.texts:
        setup, image = image_argument(state.image)
        texts = " ".join(f"--text {_q(t)}" for t in state.texts)
        lines += setup + [f"python -m core decompose --model {_q(state.model)} --image {_q(image)} {texts} "
                          f"--convention {state.convention or 'paper'}   # per-head scores of the image"]
        lines += ["python -m core toy scenes --n 48 --seed 7 --split heldout --out gallery-seed7",
                  f"python -m core retrieve --model {_q(state.model)} --image {_q(image)} --gallery gallery-seed7/images "
                  f"--layer {state.layer} --head {state.head} --metric {state.method or 'cosine'}   # retrieval"]
    return lines


def _neurons(state: ViewState, *, bases_source: str | None = None, recipe: str | None = None, **_) -> list[str]:
    lines = _bases_lines(bases_source, recipe)
    if state.image:
        setup, image = image_argument(state.image)
        bases = f" --bases {_q(bases_source)}" if bases_source else ""
        note = "" if state.threshold in (None, 1.0) else f"   # the CLI uses threshold x1, this view x{state.threshold:g}"
        lines += setup + [f"python -m core concepts --model {_q(state.model)} --image {_q(image)} --layer {state.layer}"
                          f"{bases}{note}"]
    return lines


def _segmentation(state: ViewState, **_) -> list[str]:
    """One `segment` line per method shown (the side-by-side method writes its own folder)."""
    setup, image = image_argument(state.image)
    texts = " ".join(f"--text {_q(t)}" for t in state.texts)
    background = f" --background {_q(state.background)}" if state.background else ""
    threshold = f" --threshold {state.threshold!r}" if state.threshold is not None else ""
    return setup + [f"python -m core segment --model {_q(state.model)} --image {_q(image)} {texts}{background} "
                    f"--method {method}{threshold} --out seg-{method}"
                    for method in (state.method or "heads",) + ((state.compare,) if state.compare else ())]


def _adversarial(state: ViewState, *, checkpoint: str | None = None, revision: str | None = None, **_) -> list[str]:
    """The `adversarial` line of a run's settings (a state whose settings are filled in; see the tab's defaults)."""
    present, target = (list(state.texts) + ["PRESENT", "TARGET"][len(state.texts):])[:2]
    parts = [f"python -m core adversarial --model {_q(state.model)} --present {_q(present)} --target {_q(target)}",
             *([f"--neurons {state.neurons}"] if state.neurons else []), f"--words {state.words}",
             f"--generator {state.method or 'world'}",
             f"--images {state.images}", f"--repeats {state.repeats}", f"--seed {state.seed}",
             f"--similarity {state.similarity!r}"]
    if state.judge and state.judge != state.model:
        parts.append(f"--similarity-model {_q(state.judge)}")
    if state.layers:
        parts.append("--layers " + " ".join(map(str, state.layers)))
    if state.block:
        parts.append(f"--block {_q(state.block)}")
    if state.baselines:
        parts.append("--baselines")
    if state.method == "sd" and checkpoint:
        parts.append(f"--checkpoint {_q(checkpoint)}" + (f" --revision {_q(revision)}" if revision else ""))
    return [" ".join(parts + ["--out adversarial-run"])]


def _circuits(state: ViewState, *, bases_source: str | None = None, recipe: str | None = None,
              images: str | None = None, **_) -> list[str]:
    """A neuron's out-edges (weight or data) and its path ablation, and a head's in-edges."""
    lines = _bases_lines(bases_source, recipe)
    bases = f" --bases {_q(bases_source)}" if bases_source else ""
    target = f" --target {_q(state.texts[0])}" if state.texts else ""
    if state.layer is not None and state.neuron is not None:
        base = f"python -m core circuit --model {_q(state.model)} --layer {state.layer} --neuron {state.neuron}"
        if state.method == "data":
            images = images or "YOUR_IMAGE_FOLDER"
            lines.append(f"{base} --images {_q(images)}{target}{bases}")
            lines.append(f"{base} --images {_q(images)}{target}{bases} --ablation   # the real effect explained")
        else:
            lines.append(f"{base} --weights-only{target}{bases}")
    if isinstance(state.head, str):
        lines.append(f"python -m core circuit --model {_q(state.model)} --head {state.head}{target}{bases}")
    return lines


WRITERS: dict[str, Callable[..., list[str]]] = {"decomposition": _decomposition, "heads": _heads, "neurons": _neurons,
                                                "segmentation": _segmentation, "adversarial": _adversarial,
                                                "circuits": _circuits}


def reproduce_commands(state: ViewState, **context) -> list[str]:
    """Shell lines for a state whose model (and other defaults) are filled in; [] for a tab without a writer."""
    writer = WRITERS.get(state.tab)
    return writer(state, **context) if writer else []
