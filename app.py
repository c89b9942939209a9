"""clipscope: the whole suite as Gradio tabs.

    python app.py                      # offline default model ('toy'), http://127.0.0.1:7860
    python app.py --model ViT-B-16/laion2b_s34b_b88k --port 7861
    python app.py --public             # as on a Space: uploads only, allow-listed models

Each tab lives in spaces/<tab>/app.py and also runs alone as its own Space. spaces/ has no __init__.py (it must
never shadow Hugging Face's `spaces` package), so tabs are loaded by path. A link such as
`?tab=heads&model=toy&layer=3&head=1` opens that tab on that view (see core/links/codec.py).
"""

from __future__ import annotations

from pathlib import Path

import core.gpu  # noqa: F401  (imports Hugging Face's `spaces` before torch, as ZeroGPU needs)

import gradio as gr  # noqa: E402

from core import settings  # noqa: E402

ROOT = Path(__file__).resolve().parent
TABS = (("Decomposition", "decomposition"), ("Heads", "heads"), ("Neurons", "neurons"), ("Circuits", "circuits"),
        ("Segmentation", "segmentation"), ("Adversarial", "adversarial"))


def load_ui():
    from importlib.util import module_from_spec, spec_from_file_location
    import sys

    if "clipscope_ui_common" not in sys.modules:
        spec = spec_from_file_location("clipscope_ui_common", ROOT / "spaces" / "ui_common.py")
        sys.modules["clipscope_ui_common"] = module = module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["clipscope_ui_common"]


def load_tab(folder: str):
    """Import spaces/<folder>/app.py under a unique module name; None if the tab does not exist yet."""
    path = ROOT / "spaces" / folder / "app.py"
    if not path.is_file():
        return None
    return load_ui().load_module(f"clipscope_tab_{folder}", path)


def build_app():
    from core.paths import TOY_DISPLAY_NAMES

    # Nothing heavy before the first request: no model is loaded here (ui.launch loads the default one right after
    # the page is served), and the notice comes from the spec alone.
    spec = settings.default_model()
    notice = (f"Default model: **{TOY_DISPLAY_NAMES[spec]}**. No weights were downloaded: start with "
              "`python app.py --model ViT-B-16/laion2b_s34b_b88k` (or set CLIPSCOPE_MODEL) for a real CLIP. "
              "Each result names the model that produced it."
              if spec in TOY_DISPLAY_NAMES else
              f"Default model: `{spec}`. Each result names the model that produced it.")
    # Import the tabs before opening our Blocks: each builds its own Blocks at import time.
    tabs = [(title, folder, load_tab(folder)) for title, folder in TABS]
    tabs = [(title, folder, module) for title, folder, module in tabs if module is not None]
    with gr.Blocks(title="clipscope") as demo:
        gr.Markdown(f"# clipscope: what CLIP's heads and neurons do, in words\n{notice}", elem_id="app-notice")
        with gr.Tabs(elem_id="app-tabs") as tab_set:
            for title, folder, module in tabs:
                with gr.Tab(title, id=folder, elem_id=f"tab-{folder}") as tab:
                    module.demo.render()
                # Switching tabs shows that tab's view in the address bar; nothing before it shows one (writing `tab=` there
                # on an empty query replaced a link in the address bar before the page had read it).
                tab.select(None, [module.ui.LinkBar.instances[folder].query], None, js=load_ui().REPLACE_JS)
        page_query = gr.Textbox(visible="hidden", elem_id="app-query")
        demo.load(select_tab, [page_query], [tab_set], queue=load_ui().LOAD_QUEUE, api_visibility="private", js=load_ui().PAGE_QUERY_JS)
    return demo


def select_tab(query: str, request: gr.Request):
    """The tab a link names (`tab=`); without one, the page stays where the visitor is."""
    from urllib.parse import parse_qs

    name = (parse_qs(str(load_ui().query_of(query, request) or "")).get("tab") or [None])[0]
    return gr.Tabs(selected=name) if name in {folder for _, folder in TABS} else gr.skip()


def main(argv: list[str] | None = None) -> None:
    ui = load_ui()
    host, port = ui.configure(ui.parse_args(__doc__, argv))
    ui.launch(build_app(), host, port)


if __name__ == "__main__":
    main()
