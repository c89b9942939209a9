"""The layering of core/, read from the source: no import circle, no upward import, no UI import.

Every `import` and `from ... import` statement counts, also those inside functions (lazy imports
still tie the modules together) and under `if TYPE_CHECKING:`.

- `core.engine` imports only itself and core's top-level modules (errors, settings, paths, ...).
- `core.heads` and `core.neurons` never import each other.
- Only `core.cli` (and `core.__main__`) import `core.cli`.
- Nothing in core imports gradio or the deployable tabs (`spaces/`); only core.gpu imports Hugging Face's
  `spaces` package, for its ZeroGPU decorator.
- No two modules of core import each other, directly or through others.
- Across packages, a module imports only what the other package exports: the names (and modules) listed in its
  `__init__.py` (`lazy_exports` table or `__all__`), never a private (leading underscore) name.
- Only `spaces/` and `app.py` import gradio (tests may, to check the UI's errors).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"

# Circles that another change is removing; each must still exist (else delete it here). None are left.
KNOWN_CIRCLES: set[frozenset] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(CORE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The core module an imported name lives in (a module, else the longest package prefix)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts)


def _imports(module: str) -> set[str]:
    """Every name `module` imports (absolute, dotted), wherever the statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            imported = {f"{base}.{alias.name}" for alias in node.names}  # `from core import settings`
            names.update(imported)
            if not imported <= set(MODULES):  # `from core.world import scenes` names a module, not the package
                names.add(base)
    return names


def _core_edges() -> dict[str, set[str]]:
    edges = {}
    for module in MODULES:
        targets = {_resolve(name) for name in _imports(module) if name == "core" or name.startswith("core.")}
        edges[module] = {target for target in targets if target and target != module and target != "core"}
    return edges


EDGES = _core_edges()


def _package(module: str) -> str:
    """core.engine.models -> engine; core.errors -> '' (top level)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (CORE / parts[1]).is_dir()) else ""


def _violations(rule) -> list[str]:
    return sorted(f"{source} imports {target}" for source, targets in EDGES.items() for target in targets
                  if rule(_package(source), _package(target), source))


def test_the_parser_sees_the_imports_it_must():
    assert "core.engine.contributions" in EDGES["core.engine.decomposition"]
    assert "core.settings" in EDGES["core.engine.models"]  # `from core import settings`
    assert "core.heads.textspan" in EDGES["core.heads.bases"]
    assert len(MODULES) > 40


def test_the_engine_imports_nothing_above_it():
    assert _violations(lambda source, target, _: source == "engine" and target not in ("", "engine")) == []


def test_heads_and_neurons_never_import_each_other():
    assert _violations(lambda source, target, _: {source, target} == {"heads", "neurons"}) == []


def test_only_the_command_line_imports_the_command_line():
    assert _violations(lambda source, target, module: target == "cli" and source != "cli"
                       and module != "core.__main__") == []


def test_core_never_imports_gradio_or_the_tabs():
    offending = sorted(f"{module} imports {name}" for module in MODULES for name in _imports(module)
                       if name.split(".")[0] in ("gradio", "spaces"))
    # core.gpu imports Hugging Face's `spaces` package (spaces.GPU on a ZeroGPU Space), which shares
    # the name of our tabs' folder; our folder has no __init__.py and core.gpu checks for GPU.
    assert offending == ["core.gpu imports spaces"]
    assert "spaces.GPU" in MODULES["core.gpu"].read_text()


PACKAGES = sorted(path.parent.name for path in CORE.glob("*/__init__.py"))


def _exports(package: str) -> tuple[dict[str, set[str]], set[str]]:
    """({module: names} of the package's lazy_exports table, its __all__ when written as a list)."""
    tree = ast.parse((CORE / package / "__init__.py").read_text())
    modules, names = {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "lazy_exports":
            table = node.args[1]
            modules = {key.value: {item.value for item in value.elts} for key, value in zip(table.keys, table.values)}
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
                and isinstance(node.value, (ast.List, ast.Tuple))):
            names = {item.value for item in node.value.elts}
    return modules, names


def _cross_package_imports(sources=None) -> list[tuple[str, str, str | None, str]]:
    """(importing module, imported package, its module or None, name) for every `from core.P[.m] import name`
    whose package P is not the importer's own."""
    found = []
    for module, path in (sources or MODULES).items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            parts = base.split(".")
            if parts[0] != "core" or len(parts) < 2 or parts[1] not in PACKAGES or parts[1] == _package(module):
                continue
            found += [(module, parts[1], parts[2] if len(parts) > 2 else None, alias.name) for alias in node.names]
    return found


def _outside_exports(imports) -> list[str]:
    exports = {package: _exports(package) for package in PACKAGES}
    bad = []
    for source, package, module, name in imports:
        modules, listed = exports[package]
        if module is None:
            ok = name in modules or name in listed or any(name in names for names in modules.values())
        else:
            ok = name in modules.get(module, set()) or name in listed
        if not ok:
            bad.append(f"{source} imports {name} from core.{package}{'.' + module if module else ''}")
    return sorted(bad)


def test_cross_package_imports_go_through_each_package_exports():
    imports = _cross_package_imports()
    assert len(imports) > 300
    assert _outside_exports(imports) == []


def test_no_private_name_is_imported_across_packages():
    assert sorted(f"{source} imports {name}" for source, _, _, name in _cross_package_imports()
                  if name.startswith("_")) == []


def test_the_export_checks_catch_planted_violations(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from core.engine.viz import label_font\nfrom core.heads.bases import _private\n"
                       "from core.engine.text import not_exported\nfrom core.engine import models\n")
    imports = _cross_package_imports({"core.neurons.planted": planted})
    assert _outside_exports(imports) == ["core.neurons.planted imports _private from core.heads.bases",
                                         "core.neurons.planted imports not_exported from core.engine.text"]


def test_only_the_tabs_and_the_app_import_gradio():
    shipped = sorted([*CORE.rglob("*.py"), *(ROOT / "spaces").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
                      *ROOT.glob("*.py")])
    importers = set()
    for path in shipped:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "gradio" for name in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers and all(path == "app.py" or path.startswith("spaces/") for path in importers), sorted(importers)
    assert "app.py" in importers and "spaces/ui_common.py" in importers


def _circles() -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in EDGES.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for module in sorted(EDGES):
        if module not in index:
            visit(module)
    return found


def test_no_import_circles():
    circles = _circles()
    unknown = [sorted(circle) for circle in circles if frozenset(circle) not in KNOWN_CIRCLES]
    assert unknown == []
    gone = [sorted(known) for known in KNOWN_CIRCLES if not any(known <= circle for circle in circles)]
    assert gone == [], "remove these from KNOWN_CIRCLES: the circle is gone"


def test_the_checks_catch_planted_violations(monkeypatch):
    monkeypatch.setitem(globals(), "EDGES", {"core.engine.models": {"core.heads.textspan"},
                                             "core.heads.textspan": {"core.neurons.stats"},
                                             "core.neurons.stats": {"core.engine.models"}})
    assert _circles() == [{"core.engine.models", "core.heads.textspan", "core.neurons.stats"}]
    assert _violations(lambda source, target, _: source == "engine" and target not in ("", "engine")) == [
        "core.engine.models imports core.heads.textspan"]
