"""The Segmentation tab: one image's zero-shot segmentation for typed class texts, by one method or two side by side.

Each text's score map, the thresholded mask of one text, the argmax over the texts, and for generated-world images
(a link's `example:N` or `world:SEED:INDEX`, or an upload of an example) the true mask and each text's IoU.
Changing the text shown or the threshold re-renders from the stored maps; nothing is recomputed.

>>> view = segment("toy", None, "example:0", "a green cross\\na pink background", "", "heads")
>>> view.info, view.link.query
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from core.errors import ConfigError, CoreError, TextError
from core.explorer.common import LinkPanel, Progress, link_panel, load_model, progress_or_silent, query_image
from core.links.codec import ViewState
from core.links.commands import reproduce_commands

NONE = "none"  # no second method
DEFAULT_TEXTS = ("a green cross", "a pink background")  # describe example:0, the first example
MAX_TEXT_CHARS = 200


@dataclass(frozen=True)
class SegmentationView:
    """Every computed map for one image, model and texts, and what the tab shows of them."""

    key: tuple  # (model spec, image, texts): maps are reused while it stays the same
    results: dict  # method -> core.segmentation.segment.ImageSegmentation, every method computed for `key`
    methods: tuple[str, ...]  # shown: the method, then the one side by side
    background: int | None  # index of the background text (the last text) or None
    truth: tuple[np.ndarray, str] | None  # (true mask over the model's view, "colour shape") for world scenes
    image_ref: str
    image_description: str
    threshold: float | None  # None: each method's own rule
    shown: int  # the text of the mask view
    heat: Image.Image
    mask: Image.Image
    labels: Image.Image | None
    truth_picture: Image.Image | None
    info: str
    link: LinkPanel

    @property
    def texts(self) -> list[str]:
        return self.results[self.methods[0]].texts

    @property
    def spec(self) -> str:
        return self.results[self.methods[0]].model["spec"]

    def class_texts(self) -> list[str]:
        return self.texts[:-1] if self.background is not None else self.texts


def read_class_texts(raw, background: str | None) -> tuple[list[str], int | None]:
    """(texts, index of the background text or None): one class text per line, then the background text."""
    lines = raw.splitlines() if isinstance(raw, str) else list(raw or [])
    texts = [str(line).strip() for line in lines if str(line).strip()]
    if not texts:
        raise TextError("Type at least one class text (one per line).")
    background = (background or "").strip()
    if background:
        texts.append(background)
    if any(len(t) > MAX_TEXT_CHARS for t in texts):
        raise TextError(f"Texts are limited to {MAX_TEXT_CHARS} characters.")
    from core.segmentation.segment import check_texts

    return check_texts(texts), (len(texts) - 1 if background else None)


def chosen_methods(method: str | None, compare: str | None) -> tuple[str, ...]:
    from core.segmentation.methods import METHODS

    method = method or "heads"
    chosen = (method,) + ((compare,) if compare and compare not in (NONE, method) else ())
    for name in chosen:
        if name not in METHODS:
            raise ConfigError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return chosen


def check_threshold(value) -> float | None:
    """None (each method's rule) or a number in [0, 1]."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"The threshold must be a number from 0 to 1, got {value!r}.")
    return number


def _truth(bundle, image: Image.Image, image_ref: str):
    """The true mask of a generated-world image (over the model's view), else None."""
    from core.links.images import parse_image_ref
    from core.segmentation.protocols import mask_view
    from core.segmentation.segment import world_truth
    from core.world import scenes as world

    truth = None
    if image_ref and image_ref != "upload":
        ref = parse_image_ref(image_ref)
        scene = world.scene_at(ref.index, ref.seed, split="heldout")  # INDEX up to 9999, public or not
        labels = scene.labels()
        truth = (world.render(scene, image.width)[1] > 0, f"{labels['colour']} {labels['shape']}")
    else:
        truth = world_truth(image)  # an upload of one of the examples, compared pixel for pixel
    if truth is None:
        return None
    return mask_view(truth[0], bundle.preprocess, bundle.info.image_size, "crop"), truth[1]


def segment(spec: str | None, image_path: str | None, image_ref: str | None, raw_texts, background: str | None,
            method: str | None, compare: str | None = None, threshold=None, *, shown=0,
            previous: SegmentationView | None = None, progress: Progress | None = None) -> SegmentationView:
    """Segment the image for each text with the chosen method(s); maps already in `previous` for the same image,
    model and texts are reused."""
    from core.segmentation.methods import MethodOptions, Segmenter
    from core.segmentation.segment import segment_image

    progress = progress_or_silent(progress)
    texts, background_index = read_class_texts(raw_texts, background)
    methods = chosen_methods(method, compare)
    threshold = check_threshold(threshold)
    bundle = load_model(spec, progress)
    query = query_image(image_path, image_ref)
    key = (bundle.info.spec, query.ref if query.ref != "upload" else f"upload:{image_path}", tuple(texts))
    same = previous is not None and previous.key == key
    results = dict(previous.results) if same else {}
    for step, name in enumerate(methods):
        if name not in results:
            progress(0.2 + 0.6 * step / len(methods), desc=f"segmenting with {name}")
            results[name] = segment_image(bundle, query.image, texts, method=name,
                                          segmenter=Segmenter(bundle, name, MethodOptions()))
    truth = previous.truth if same else _truth(bundle, query.image, query.ref)
    progress(0.9, desc="drawing the maps")
    return render(key, results, methods, background_index, truth, query.ref, query.description, threshold, shown)


def render(key, results: dict, methods: tuple[str, ...], background: int | None, truth, image_ref: str,
           image_description: str, threshold: float | None, shown) -> SegmentationView:
    """The pictures, provenance and link of computed maps, for one text and threshold (no recomputation)."""
    from core.segmentation.pictures import heat_picture, label_picture, mask_picture, side_by_side, stacked

    shown_results = [results[m] for m in methods]
    texts = shown_results[0].texts
    index = texts.index(shown) if isinstance(shown, str) and shown in texts else (
        shown if isinstance(shown, int) and 0 <= shown < len(texts) else 0)
    heat = stacked([side_by_side([heat_picture(r.view, r.maps[i], title=f"{r.method}: {text}", display=192)
                                  for r in shown_results]) for i, text in enumerate(texts)])
    masks = side_by_side([mask_picture(r.view, r.masks(threshold)[index], title=f"{r.method}: {texts[index]}")
                          for r in shown_results])
    labels = side_by_side([label_picture(r.view, r.labels(threshold, background), texts, title=f"{r.method}: argmax")
                           for r in shown_results]) if len(texts) > 1 else None
    truth_picture = None if truth is None else mask_picture(shown_results[0].view, truth[0],
                                                            title=f"ground truth: {truth[1]}", colour=(40, 200, 40))
    classes = texts[:-1] if background is not None else texts
    state = ViewState("segmentation", model=shown_results[0].model["spec"], image=image_ref, texts=tuple(classes),
                      background=texts[-1] if background is not None else None, method=methods[0],
                      compare=methods[1] if len(methods) > 1 else None, threshold=threshold or None)
    notes = ["The threshold 0 cannot travel in a link (links carry thresholds above 0): the link uses each "
             "method's rule."] if threshold == 0 else []
    commands = reproduce_commands(state)
    info = _info(shown_results, image_description, truth, threshold, commands)
    return SegmentationView(key, results, methods, background, truth, image_ref, image_description, threshold, index,
                            heat, masks, labels, truth_picture, info, link_panel(state, commands, notes))


def rerender(view: SegmentationView | None, shown=None, threshold="keep") -> SegmentationView:
    """The same maps with another text in the mask view or another threshold (None: each method's rule)."""
    if view is None:
        raise ConfigError("Segment an image first.")
    threshold = view.threshold if threshold == "keep" else check_threshold(threshold)
    return render(view.key, view.results, view.methods, view.background, view.truth, view.image_ref,
                  view.image_description, threshold, view.shown if shown is None else shown)


def _info(results: list, image_description: str, truth, threshold: float | None, commands: list[str]) -> str:
    from core.segmentation.segment import iou

    model = results[0].model
    lines = [f"**Model:** {model['display_name']} (`{model['spec']}`)", f"**Image:** {image_description}"]
    if model["random_init"]:
        lines.append("**Random weights**: this model is not trained; maps are for testing only.")
    for result in results:
        rule = result.threshold if threshold is None else threshold
        rule_text = "S > mean(S)" if rule == "mean" else f"S > {rule:g}"
        note = " It does not depend on the text: every text gets the same map." if result.text_free else ""
        lines.append(f"**{result.method}:** {result.description}; foreground {rule_text}; clamp "
                     f"{'yes' if result.clamp else 'no'}; heads minus the mean over texts: "
                     f"{'yes' if result.subtract_mean else 'no'}.{note}")
    texts = results[0].texts
    lines.append("**cos(image, text):** " + ", ".join(f"{t} {c:+.3f}" for t, c in zip(texts, results[0].cosine)))
    if truth is not None:
        truth_mask, name = truth
        header = "| text | " + " | ".join(f"IoU {r.method}" for r in results) + " |"
        rows = [f"| {text} | " + " | ".join(f"{iou(r.masks(threshold)[i], truth_mask):.3f}" for r in results) + " |"
                for i, text in enumerate(texts)]
        lines.append(f"Generated-world example: **{name}**; IoU of each text's mask with the true mask:\n\n"
                     + "\n".join([header, "|---|" + "---|" * len(results)] + rows) + "\n")
    segment_lines = [line for line in commands if " core segment " in line]
    lines.append("Reproduce: " + "; ".join(f"`{line}`" for line in segment_lines))
    return "  \n".join(lines)


def open_link(query, *, default_tab: str = "decomposition", only_tab: bool = False):
    """The view a link names (`core.explorer.common.Linked`): its controls, and its maps when it names an image."""
    from core.explorer.common import link_failure, read_link
    from core.links.images import default_texts

    linked, _ = read_link(query, "segmentation", default_tab=default_tab, only_tab=only_tab)
    if not linked.applies:
        return linked
    s = linked.state
    if s.threshold is not None and s.threshold > 1:
        s = s.with_values(threshold=None)
        linked = replace(linked, state=s, notice=_joined(linked.notice, f"Ignored threshold={linked.state.threshold!r}: "
                                                         "the segmentation threshold is a number from 0 to 1."))
    image_ref = s.image if s.image != "upload" else None
    if not image_ref:
        return linked
    try:
        view = segment(s.model, None, image_ref, list(s.texts) or default_texts(image_ref), s.background,
                       s.method or "heads", s.compare, s.threshold)
    except CoreError as err:
        return replace(linked, notice=_joined(linked.notice, link_failure(err)))
    return replace(linked, view=view, link=view.link)


def _joined(*notices: str) -> str:
    return " ".join(filter(None, notices))
