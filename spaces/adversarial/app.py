"""Adversarial tab: semantic adversarial images from neurons' spurious words (paper 2, section 5.1).

Pick the class the images show (c1) and the class CLIP should see (c2): the neurons whose second-order
effect pushes c1 towards c2, their words (filtered of c2 and its synonyms), descriptions of c1 with those
words, the images drawn from them and CLIP's verdict on each, against the random-neuron and
similar-words baselines. Offline on the toy models it draws with the `world` generator (a stand-in for
a text-to-image model); on a GPU Space with a real CLIP it uses Stable Diffusion through diffusers.
Runs alone (`python spaces/adversarial/app.py [--port P]`) or as a tab of the root app.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from core import settings  # noqa: E402
from core.adversarial.defaults import (DEFAULT_NEURONS, DEFAULT_SIMILARITY, DEFAULT_WORDS, SD_REPO,  # noqa: E402
                                       SD_REVISION, SD_STEPS)
from core.errors import CoreError  # noqa: E402
from core.gpu import gpu  # noqa: E402
from core.paths import TOY_BIASED_SPEC, TOY_MODELS  # noqa: E402

GENERATOR_CHOICES = [("world (offline stand-in, toy models)", "world"), ("Stable Diffusion (diffusers)", "sd")]
PUBLIC_LIMITS = {"images": 100, "repeats": 3, "neurons": 500, "words": 50}
LOCAL_LIMITS = {"images": 1000, "repeats": 10, "neurons": 100_000, "words": 1000}
GALLERY_SIZE = 48
_SD = {}  # one loaded pipeline per (repo, revision, device), shared: it holds no visitor state


def default_model() -> str:
    """toy-biased when the app runs on the toy model (the toy model has no spurious cue to find)."""
    spec = settings.default_model()
    return TOY_BIASED_SPEC if spec == "toy" else spec


def default_judge() -> str:
    """toy-biased embeds its planted cue's words next to the class; the unbiased toy judges synonyms instead."""
    return "toy" if default_model() == TOY_BIASED_SPEC else ""


def _limits() -> dict[str, int]:
    return PUBLIC_LIMITS if settings.public() else LOCAL_LIMITS


def _int(value, name: str, low: int, high: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}") from None
    if not number.is_integer() or not low <= number <= high:
        where = " on this public server" if settings.public() else ""
        raise gr.Error(f"{name} must be a whole number between {low} and {high}{where}, got {value!r}")
    return int(number)


def _layers(raw: str) -> tuple[int, ...] | None:
    parts = (raw or "").replace(",", " ").split()
    if not parts:
        return None
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise gr.Error(f"layers must be whole numbers separated by spaces, e.g. '1 2', got {raw!r}") from None


def _model(spec: str):
    from core.engine.models import load_clip

    spec = (spec or "").strip() or default_model()
    if settings.public() and spec not in (*settings.allowed_models(), *TOY_MODELS):
        raise gr.Error(f"model {spec!r} is not offered on this server; choose one of "
                       f"{', '.join(dict.fromkeys((*settings.allowed_models(), *TOY_MODELS)))}")
    return load_clip(spec, device=settings.resolve_device() if spec not in TOY_MODELS else "cpu")


def _sd_generator(checkpoint: str, revision: str):
    from core.adversarial.generators import StableDiffusionGenerator, load_sd_pipeline

    checkpoint, revision = (checkpoint or "").strip() or SD_REPO, (revision or "").strip() or None
    if settings.public() and (checkpoint, revision) != (SD_REPO, SD_REVISION):
        raise gr.Error(f"this public server draws only with {SD_REPO}@{SD_REVISION[:12]}")
    device = str(settings.resolve_device())
    key = (checkpoint, revision, device)
    if key not in _SD:
        _SD.clear()  # keep one pipeline in memory
        _SD[key] = load_sd_pipeline(checkpoint, revision, device=device)
    return StableDiffusionGenerator(_SD[key], steps=SD_STEPS, checkpoint=f"{checkpoint}@{revision}" if revision
                                    else checkpoint)


def _gpu_seconds(*args, **kwargs) -> int:
    """ZeroGPU duration: Stable Diffusion's steps x images, or a minute for the world generator."""
    from core.adversarial.generators import sd_gpu_seconds

    try:
        generator, images, repeats, baselines = args[7], int(args[8]), int(args[9]), bool(args[10])
    except (IndexError, TypeError, ValueError):
        return 60
    if generator != "sd":
        return 60
    return sd_gpu_seconds(SD_STEPS, images * repeats * (3 if baselines else 1))


@gpu(duration=_gpu_seconds)
def run_generator(spec, present, target, layers, neurons, words, similarity, generator, images, repeats, baselines,
                  seed, block, checkpoint, revision, judge="", progress=gr.Progress()):
    """Every stage for the chosen classes; returns the report (session state) and its views."""
    from core.adversarial.pipeline import AdversarialConfig, run_adversarial

    limits = _limits()
    config_args = dict(
        layers=_layers(layers), neurons=_int(neurons, "neurons", 1, limits["neurons"]),
        words=_int(words, "words", 1, limits["words"]), images=_int(images, "images", 1, limits["images"]),
        repeats=_int(repeats, "repeats", 1, limits["repeats"]), seed=_int(seed, "seed", 0, 2**31 - 1),
        baselines=bool(baselines), generator=generator if generator in ("world", "sd") else "world",
        block=tuple(w.strip() for w in (block or "").split(",") if w.strip()))
    try:
        similarity = float(similarity)
    except (TypeError, ValueError):
        raise gr.Error(f"the similarity threshold must be a number, got {similarity!r}") from None
    lines: list[str] = []
    try:
        bundle = _model(spec)
        judge = (judge or "").strip() or None
        if judge is not None:
            _model(judge)  # the same allow-list as the model
        config = AdversarialConfig(present or "", target or "", similarity=similarity, similarity_model=judge,
                                   **config_args)
        generator_object = _sd_generator(checkpoint, revision) if config.generator == "sd" else None
        progress(0.05, desc="neurons and words")
        report = run_adversarial(bundle, config, generator=generator_object,
                                 progress=lambda line: (lines.append(line), progress(None, desc=line[:60])))
    except CoreError as err:
        raise gr.Error(str(err)) from err
    return (report, *views(report))


def views(report):
    """info, neurons, words plot, descriptions, gallery, success table: the report's views."""
    info = _info(report)
    neurons = pd.DataFrame(report.selection.rows()).rename(columns={"projection": "<v, r_n>"}).round(5)
    words = pd.DataFrame({"word": report.words.words, "score": [round(s, 5) for s in report.words.scores]})
    descriptions = pd.DataFrame([
        {"method": a.method, "repeat": a.repeat + 1, "description": text,
         "images": sum(1 for d in a.images.descriptions if d == text),
         "fooled": sum(f for d, f, v in zip(a.images.descriptions, a.verdicts.fooled, a.images.valid) if d == text and v)}
        for a in report.attempts for text in a.descriptions.texts])
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
    rows = []
    for method, row in report.summary().items():
        rows.append({"method": method, "success %": round(100 * row["success_mean"], 1),
                     "std %": round(100 * row["success_std"], 1),
                     "successes / valid images": ", ".join(f"{s}/{v}" for s, v in zip(row["successes"],
                                                                                   row["valid_images"]))})
    return info, neurons, words, descriptions, gallery, pd.DataFrame(rows)


def _info(report) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in report.stage_counts().items())
    model = report.model
    stand_in = ("  \n**The world generator is an offline stand-in** for a text-to-image model: it draws generated-world "
                "scenes with the shape, colour, position and background the description names.") \
        if report.config.generator == "world" else ""
    return (f"**Model:** {model['display_name']} (`{model['spec']}`)  \n"
            f"**Direction:** {report.direction.describe()}  \n"
            f"**Neurons:** top {len(report.selection)} by |<v, r_n>| from layers {list(report.selection.pool_layers)}, "
            f"bases `{_short(report.bases)}`  \n"
            f"**Words:** {report.words.how}; {report.filtered.describe()}  \n"
            f"**Generator:** {report.generator}  \n"
            f"**Success:** the binary classifier ({report.classifier.how}) picks {report.config.target!r} over "
            f"{report.config.present!r}  \n**Counts (second-order, all repeats):** {counts}{stand_in}  \n"
            f"Same run from the command line: `{command(report)}`")


def _short(path: str) -> str:
    """A shipped bases folder relative to the project; others by their last two parts (no server paths)."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return "/".join(Path(path).parts[-2:])


def command(report) -> str:
    c = report.config
    parts = ["python -m core adversarial", f"--model {report.model['spec']}", f"--present '{c.present}'",
             f"--target '{c.target}'", f"--neurons {c.neurons}", f"--words {c.words}", f"--generator {c.generator}",
             f"--images {c.images}", f"--repeats {c.repeats}", f"--seed {c.seed}", f"--similarity {c.similarity:g}"]
    if c.similarity_model:
        parts.append(f"--similarity-model {c.similarity_model}")
    if c.layers:
        parts.append("--layers " + " ".join(map(str, c.layers)))
    if c.block:
        parts.append(f"--block '{','.join(c.block)}'")
    if c.baselines:
        parts.append("--baselines")
    return " ".join(parts + ["--out DIR"])


def download(report):
    """A zip of the session's last run (images, results.csv, words, neurons, summary.json)."""
    import shutil

    from core.adversarial.results import write_results

    if report is None:
        raise gr.Error("Run the generator first.")
    folder = Path(tempfile.mkdtemp(prefix="clipscope-adversarial-"))
    try:
        write_results(report, folder / "results")
    except CoreError as err:
        raise gr.Error(str(err)) from err
    archive = shutil.make_archive(str(folder / f"adversarial-{report.config.present}-to-{report.config.target}"),
                                  "zip", folder / "results")
    return archive


def build() -> gr.Blocks:
    public = settings.public()
    with gr.Blocks(title="Adversarial images") as demo:
        gr.Markdown(
            "### Semantic adversarial images\nNeurons whose second-order effect pushes class c1 towards c2 are "
            "decomposed into words; words naming c2 or a synonym are dropped; descriptions of c1 use the rest; the "
            "images drawn from them count when CLIP calls them c2 (paper 2, section 5.1). On `toy-biased` (trained "
            "with triangles on dotted and squares on striped backgrounds) the words should find the planted cue.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Textbox(label="Model spec", value=default_model(), elem_id="adversarial-model",
                                   info="toy-biased (planted bias, offline), toy, or a real CLIP with neuron bases")
                with gr.Row():
                    present = gr.Textbox(label="Shown class c1", value="square", elem_id="adversarial-present")
                    target = gr.Textbox(label="Target class c2", value="triangle", elem_id="adversarial-target")
                generator = gr.Radio(GENERATOR_CHOICES, value="world", label="Generator", elem_id="adversarial-generator")
                with gr.Row():
                    images = gr.Number(label="Images per repeat", value=100, precision=0, elem_id="adversarial-images")
                    repeats = gr.Number(label="Repeats", value=3, precision=0, elem_id="adversarial-repeats")
                baselines = gr.Checkbox(label="Baselines (random neurons, similar words)", value=True,
                                        elem_id="adversarial-baselines")
                with gr.Accordion("Settings", open=False):
                    layers = gr.Textbox(label="Layers (blank: the last three the bases cover)", value="")
                    with gr.Row():
                        neurons = gr.Number(label="Neurons", value=DEFAULT_NEURONS, precision=0)
                        words = gr.Number(label="Words", value=DEFAULT_WORDS, precision=0)
                    similarity = gr.Number(label="Drop words with text cosine to c2 at least", value=DEFAULT_SIMILARITY)
                    judge = gr.Textbox(label="Synonym judge (a model whose text tower measures that cosine; blank: "
                                       "the model itself)", value=default_judge(), elem_id="adversarial-judge")
                    block = gr.Textbox(label="Block list (comma-separated)", value="")
                    seed = gr.Number(label="Seed", value=0, precision=0)
                    checkpoint = gr.Textbox(label="Stable Diffusion checkpoint", value=SD_REPO, interactive=not public)
                    revision = gr.Textbox(label="Pinned revision", value=SD_REVISION, interactive=not public)
                button = gr.Button("Generate", variant="primary", elem_id="adversarial-run")
            with gr.Column(scale=2):
                info = gr.Markdown(elem_id="adversarial-info")
                success = gr.Dataframe(label="Success rate against the baselines", elem_id="adversarial-success")
                word_plot = gr.BarPlot(x="word", y="score", label="Top words (score towards c2)", sort="-y",
                                       x_label_angle=-40, height=380, elem_id="adversarial-words")
                gallery = gr.Gallery(label="Generated images (second-order words) with CLIP's verdict and margin",
                                     columns=8, height=420, elem_id="adversarial-gallery")
                with gr.Row():
                    neuron_table = gr.Dataframe(label="Chosen neurons", max_height=260, elem_id="adversarial-neurons")
                    description_table = gr.Dataframe(label="Descriptions", max_height=260,
                                                     elem_id="adversarial-descriptions")
                fetch = gr.Button("Download results (zip)", elem_id="adversarial-download-run")
                archive = gr.File(label="Results", elem_id="adversarial-download")
        button.click(run_generator, [model, present, target, layers, neurons, words, similarity, generator, images,
                                     repeats, baselines, seed, block, checkpoint, revision, judge],
                     [state, info, neuron_table, word_plot, description_table, gallery, success], api_name="generate")
        fetch.click(download, [state], [archive], api_name="download")
    return demo


demo = build()

if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The Adversarial tab on its own.")
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args()
    host, port = args.host or settings.server_host(), args.port or settings.server_port()
    settings.configure(public=True if not settings.is_loopback(host) else None)
    demo.queue(default_concurrency_limit=2).launch(server_name=host, server_port=port, max_file_size="50mb")
