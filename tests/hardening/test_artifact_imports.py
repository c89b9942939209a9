"""Issue 11: the artifact store never imports the Hub module (the one import circle is gone); dead code is gone."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_store_and_the_card_never_import_the_hub_module():
    for name in ("store.py", "card.py"):
        imported = _imports(CORE / "artifacts" / name)
        assert not any(module.startswith("core.artifacts.hub") for module in imported), (name, imported)
    assert "core.artifacts.store" in _imports(CORE / "artifacts" / "hub.py")


def test_guards_read_no_environment_and_import_nothing_heavy():
    imported = _imports(CORE / "guards.py")
    assert not {"torch", "open_clip", "gradio"} & {module.split(".")[0] for module in imported}


def test_dead_preprocess_batch_is_gone():
    from core.engine import images

    assert not hasattr(images, "preprocess_batch")
