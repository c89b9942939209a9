"""One of each, read from the source: one model loader, one progress protocol, one `check_index`, one list of
conventions; and the world's image sets work in a fresh interpreter without importing core.world first.

A "model loader" is a function that turns a user's spec into a loaded model with rules of its own: one named
like a loader (load_model, load_clip, load_on_device, ...), or one that calls `load_clip` beside an allow-list of
its own (allowed_models, or the guard's check wrapped around the spec it loads). Front doors only parse (a spec,
a --device) and call `core.engine.models.load_clip`, which owns the spec, the device and the public allow-list
(core.guards); no caller pins a device (a constant, or one chosen by the model).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "spaces").rglob("*.py"), ROOT / "app.py"])
LOADER_NAME = re.compile(r"_?load_(user_)?(clip|model|bundle|on_device)\w*")
RULES = {"allowed_models", "check_model_allowed"}  # an allow-list applied beside load_clip


def _name(node) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


def _functions():
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(ROOT).with_suffix('')}:{node.name}".replace("/", "."), node


def _is_loader(function) -> bool:
    if LOADER_NAME.fullmatch(function.name):
        return True
    loads = [node for node in ast.walk(function) if isinstance(node, ast.Call) and _name(node.func) == "load_clip"]
    names = {_name(node) for node in ast.walk(function) if isinstance(node, (ast.Name, ast.Attribute))}
    checked = any(isinstance(arg, ast.Call) and _name(arg.func) in RULES for call in loads for arg in call.args)
    return bool(loads) and ("allowed_models" in names or checked)


def model_loaders() -> list[str]:
    return sorted(name for name, function in _functions() if _is_loader(function))


def test_exactly_one_model_loader():
    assert model_loaders() == ["core.engine.models:load_clip"]


def test_the_loader_count_catches_a_wrapper(tmp_path, monkeypatch):
    planted = tmp_path / "planted.py"
    planted.write_text("def load_model(spec):\n    return load_clip(spec)\n\n"
                       "def listed(spec):\n    if spec not in allowed_models():\n        raise ValueError(spec)\n"
                       "    return load_clip(spec)\n"
                       "def checked(spec):\n    return load_clip(guards.check_model_allowed(spec))\n"
                       "def caller(spec):\n    bundle = load_clip(spec)\n    return bundle.info\n")
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", [planted])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path.parent)
    found = [name.rsplit(":", 1)[1] for name in model_loaders() if "planted" in name]
    assert found == ["checked", "listed", "load_model"]


def test_no_load_clip_call_pins_a_device(tmp_path, monkeypatch):
    """A device is the user's (--device, $CLIPSCOPE_DEVICE) or load_clip's default; never pinned by a caller."""
    pinned = []
    for name, function in _functions():
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and _name(node.func) == "load_clip":
                device = next((kw.value for kw in node.keywords if kw.arg == "device"), None)
                if isinstance(device, (ast.Constant, ast.IfExp)):
                    pinned.append(name)
    assert pinned == []
    planted = tmp_path / "planted.py"
    planted.write_text("def f(spec):\n    return load_clip(spec, device=resolve_device() if spec not in TOY_MODELS else 'cpu')\n")
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", [planted])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path.parent)
    assert [name for name, function in _functions() for node in ast.walk(function) if isinstance(node, ast.Call)
            and _name(node.func) == "load_clip" and isinstance(node.keywords[0].value, ast.IfExp)] != []


def _definitions(pattern: str) -> list[str]:
    """Module-level names matching `pattern` that core/ and spaces/ define (classes, functions, assignments)."""
    found = []
    for path in SOURCES:
        module = str(path.relative_to(ROOT).with_suffix("")).replace("/", ".")
        for node in ast.parse(path.read_text(), str(path)).body:
            names = ([node.name] if isinstance(node, (ast.ClassDef, ast.FunctionDef)) else
                     [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else
                     [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else [])
            found += [f"{module}:{name}" for name in names if re.fullmatch(pattern, name)]
    return sorted(found)


def test_one_progress_protocol_and_one_null_progress():
    assert _definitions(r"\w*Progress\w*|Silent") == [
        "core.progress:LogProgress", "core.progress:NullProgress", "core.progress:Progress", "core.progress:TqdmProgress"]
    assert _definitions(r"_?progress") == []  # no home-made tqdm wrappers beside core.progress


def test_one_check_index_and_one_list_of_conventions():
    assert _definitions(r"_?check_index") == ["core.errors:check_index"]
    assert _definitions(r"CONVENTIONS") == ["core.engine.conventions:CONVENTIONS"]
    literal = [f"{path.relative_to(ROOT)}" for path in SOURCES
               if re.search(r"""\(\s*["']paper["'],\s*["']centered["']\s*\)""", path.read_text())]
    assert literal == ["core/engine/conventions.py"]


def test_check_index_takes_name_value_size():
    from core.errors import IndexRangeError, check_index

    assert check_index("layer", 3.0, 4) == 3  # a UI number box
    for value, message in ((None, "Choose a layer"), (True, "whole number"), (2.5, "whole number"),
                           (4, r"layer 4 is out of range: this model has 4 \(layer 0..3\)"), (-1, "out of range")):
        with pytest.raises(IndexRangeError, match=message):
            check_index("layer", value, 4)


def test_world_image_sets_work_in_a_fresh_interpreter_without_importing_the_world():
    code = ("import sys\n"
            "from core.engine.imagesets import ImageSet, parse_image_set\n"
            "assert 'core.world' not in sys.modules\n"
            "assert parse_image_set('world:8').count == 8\n"
            "assert ImageSet.world(5, seed=2).count == 5\n"
            "import core.world.imagesets as w\n"
            "assert 'register' not in vars(w)  # nothing registers by importing\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    source = (ROOT / "core" / "world" / "__init__.py").read_text()
    assert "register" not in source  # the world package has no import-time registration


def test_analyses_take_an_image_set_and_agree_with_its_files(tmp_path, monkeypatch):
    import torch

    from core.engine.ablation import component_means
    from core.engine.imagesets import ImageSet
    from core.engine.models import load_clip
    from core.heads.outputs import head_outputs, head_statistics

    monkeypatch.setenv("CLIPSCOPE_CACHE", str(tmp_path))  # local_paths() exports the scenes there
    bundle = load_clip("toy")
    images = ImageSet.world(6, seed=5)
    files = images.local_paths()
    heads = [(3, 0), (2, 1)]
    by_set = component_means(bundle, images, description="six", batch_size=4)
    by_files = component_means(bundle, files, description="six", batch_size=4)
    assert by_set.count == by_files.count == 6
    for name in ("embedding_term", "mlps", "heads", "cls_to_cls"):
        assert torch.allclose(getattr(by_set.means, name), getattr(by_files.means, name), atol=1e-6), name
    assert torch.allclose(head_outputs(bundle, images, heads).outputs, head_outputs(bundle, files, heads).outputs,
                          atol=1e-6)
    streamed = head_statistics(bundle, images, heads, batch_size=4)
    assert streamed.count == 6
