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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1] if (HERE.parents[1] / "core").is_dir() else HERE  # the repository, or a deployed Space
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.gpu import gpu  # noqa: E402  (before torch: ZeroGPU)

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from core import settings  # noqa: E402
from core.adversarial.defaults import (DEFAULT_SIMILARITY, DEFAULT_WORDS, SD_REPO,  # noqa: E402
                                       SD_REVISION, SD_STEPS)
from core.errors import CoreError  # noqa: E402
from core.explorer import adversarial as explorer  # noqa: E402


def _load_ui():
    """spaces/ui_common.py (beside this file in a deployed Space), loaded by path: spaces/ is not a package."""
    import importlib.util

    if "clipscope_ui_common" not in sys.modules:
        path = next(p for p in (HERE / "ui_common.py", HERE.parent / "ui_common.py") if p.is_file())
        spec = importlib.util.spec_from_file_location("clipscope_ui_common", path)
        sys.modules["clipscope_ui_common"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["clipscope_ui_common"]


ui = _load_ui()
TAB = "adversarial"
ALONE = False  # True when this file is the whole app (then links to other tabs are refused with a notice)
GENERATOR_CHOICES = [("world (offline stand-in, toy models)", "world"), ("Stable Diffusion (diffusers)", "sd")]


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


def _views(view: explorer.AdversarialView):
    """The view as component values (the order of VIEW_OUTPUTS)."""
    return (view.report, view.info, pd.DataFrame(view.neurons), pd.DataFrame(view.words),
            pd.DataFrame(view.descriptions), ui.picture(view.gallery), pd.DataFrame(view.success),
            *ui.link_values(view.link))


@gpu(duration=_gpu_seconds)
@ui.guard
def run_generator(spec, present, target, layers, neurons, words, similarity, generator, images, repeats, baselines,
                  seed, block, checkpoint, revision, judge="", progress=gr.Progress()):
    """Every stage for the chosen classes; returns the report (session state) and its views."""
    return _views(explorer.generate(
        spec, present, target, layers=layers, neurons=neurons, words=words, similarity=similarity, judge=judge,
        generator=generator, images=images, repeats=repeats, baselines=baselines, seed=seed, block=block,
        checkpoint=checkpoint, revision=revision, progress=progress))


@ui.guard(model=False)
def restore(query: str, request: gr.Request):
    """The settings a link names, and a notice (a run takes seconds: the visitor presses Generate)."""
    linked = explorer.open_link(ui.query_of(query, request), default_tab=ui.default_tab(TAB, ALONE), only_tab=ALONE)
    if not linked.applies:
        return [gr.skip()] * (len(CONTROLS) + 2) + [linked.notice or gr.skip()]
    s = linked.state
    controls = [s.model, s.texts[0], s.texts[1], s.method, s.images, s.repeats, s.baselines,
                " ".join(map(str, s.layers or ())), s.neurons, s.words, s.similarity,
                "" if s.judge == s.model else s.judge, (s.block or "").replace(",", ", "), s.seed]
    return controls + list(ui.link_values(linked.link)) + [linked.notice]


def download(report):
    """A zip of the session's last run (images, results.csv, words, neurons, summary.json)."""
    import shutil

    from core.adversarial.results import write_results

    if report is None:
        raise gr.Error("Run the generator first.")
    try:  # in the session's folder: it goes when the session ends
        folder = Path(tempfile.mkdtemp(prefix="adversarial-", dir=ui.sessions.folder(ui.session_id())))
        write_results(report, folder / "results", server_folder=True)
        archive = shutil.make_archive(str(folder / f"adversarial-{report.config.present}-to-{report.config.target}"),
                                      "zip", folder / "results")
    except CoreError as err:
        raise ui.message(err) from None
    except OSError as err:
        ui.log.warning("download archive not written: %s", err.strerror or type(err).__name__)
        raise gr.Error("The archive could not be written: this server's disk is full. Try again later.",
                       print_exception=False) from None
    shutil.rmtree(folder / "results", ignore_errors=True)  # the zip holds it
    return archive


def build() -> gr.Blocks:
    global CONTROLS, VIEW_OUTPUTS
    public = settings.public()
    with gr.Blocks(title="Adversarial images") as demo:
        gr.Markdown(
            "### Semantic adversarial images\nNeurons whose second-order effect pushes class c1 towards c2 are "
            "decomposed into words; words naming c2 or a synonym are dropped; descriptions of c1 use the rest; the "
            "images drawn from them count when CLIP calls them c2 (paper 2, section 5.1). On `toy-biased` (trained "
            "with triangles on dotted and squares on striped backgrounds) the words should find the planted cue.")
        links = ui.LinkBar(TAB)
        state = gr.State(None, time_to_live=3600)
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Textbox(label="Model spec", value=explorer.default_model(), elem_id="adversarial-model",
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
                    layers = gr.Textbox(label="Layers (blank: the last three the bases cover)", value="",
                                        elem_id="adversarial-layers")
                    with gr.Row():
                        neurons = gr.Number(label="Neurons (blank: 100, fewer on narrow models)", value=None, precision=0,
                                            elem_id="adversarial-n-neurons")
                        words = gr.Number(label="Words", value=DEFAULT_WORDS, precision=0, elem_id="adversarial-n-words")
                    similarity = gr.Number(label="Drop words with text cosine to c2 at least", value=DEFAULT_SIMILARITY,
                                           elem_id="adversarial-similarity")
                    judge = gr.Textbox(label="Synonym judge (a model whose text tower measures that cosine; blank: "
                                       "the model itself)", value=explorer.default_judge(), elem_id="adversarial-judge")
                    block = gr.Textbox(label="Block list (comma-separated)", value="", elem_id="adversarial-block")
                    seed = gr.Number(label="Seed", value=0, precision=0, elem_id="adversarial-seed")
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
        CONTROLS = [model, present, target, generator, images, repeats, baselines, layers, neurons, words, similarity,
                    judge, block, seed]
        VIEW_OUTPUTS = [state, info, neuron_table, word_plot, description_table, gallery, success, *links.outputs]
        button.click(run_generator, [model, present, target, layers, neurons, words, similarity, generator, images,
                                     repeats, baselines, seed, block, checkpoint, revision, judge],
                     VIEW_OUTPUTS, api_name="generate", **ui.MODEL_QUEUE)
        fetch.click(download, [state], [archive], api_name="download")
        demo.load(restore, [links.query], CONTROLS + links.outputs + [links.notice], queue=ui.LOAD_QUEUE, api_visibility="private",
                  js=ui.PAGE_QUERY_JS)
    return demo


CONTROLS: list = []
VIEW_OUTPUTS: list = []

if __name__ == "__main__":
    host, port = ui.configure(ui.parse_args(__doc__))
    ALONE = True
    ui.launch(build(), host, port)
else:
    demo = build()
