"""clipscope: the whole suite as Gradio tabs.

    python app.py                      # offline default model ('toy'), http://127.0.0.1:7860
    python app.py --model ViT-B-16/laion2b_s34b_b88k --port 7861

Each tab lives in spaces/<tab>/app.py and also runs alone as its own Space. spaces/ has no
__init__.py (it must never shadow Hugging Face's `spaces` package), so tabs are loaded by path.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from core import settings

ROOT = Path(__file__).resolve().parent
TABS = (("Decomposition", "decomposition"), ("Heads", "heads"), ("Neurons", "neurons"), ("Adversarial", "adversarial"))


def load_tab(folder: str):
    """Import spaces/<folder>/app.py under a unique module name; None if the tab does not exist yet."""
    path = ROOT / "spaces" / folder / "app.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"clipscope_tab_{folder}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_app():
    import gradio as gr

    from core.engine.models import default_spec, load_clip

    from core.errors import CoreError

    spec = default_spec()
    try:
        info = load_clip(spec).info  # load once up front: every tab shares this cached copy
        notice = (
            f"Running on **{info.display_name}**. No weights were downloaded: start with "
            "`python app.py --model ViT-B-16/laion2b_s34b_b88k` (or set CLIPSCOPE_MODEL) for a real CLIP."
            if info.source == "toy" else f"Default model: **{info.display_name}** (`{info.spec}`)."
        )
    except CoreError as err:  # keep serving: the tabs say the same when used, and another spec can be typed
        notice = f"**Could not load the default model `{spec}`:** {err}"
    # Import the tabs before opening our Blocks: each builds its own Blocks at import time.
    tabs = [(title, folder, load_tab(folder)) for title, folder in TABS]
    with gr.Blocks(title="clipscope") as demo:
        gr.Markdown(f"# clipscope: what CLIP's heads and neurons do, in words\n{notice}", elem_id="app-notice")
        with gr.Tabs():
            for title, folder, module in tabs:
                if module is not None:
                    with gr.Tab(title, id=folder):
                        module.demo.render()
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default model spec for every tab (default: $CLIPSCOPE_MODEL or toy)")
    parser.add_argument("--host", default=None, help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--public", action="store_true",
                        help="public mode even on 127.0.0.1 (always on for a Space or a non-loopback --host)")
    args = parser.parse_args(argv)
    if args.model:
        settings.configure(default_model=args.model)
    host, port = args.host or settings.server_host(), args.port or settings.server_port()
    settings.configure(public=True if args.public or not settings.is_loopback(host) else None)
    demo = build_app()
    demo.queue(default_concurrency_limit=2).launch(server_name=host, server_port=port, max_file_size="50mb")


if __name__ == "__main__":
    main()
