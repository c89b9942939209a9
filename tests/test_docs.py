"""README.md and docs/ say only true things about the repository: every relative link and every file, folder,
module and benchmark they name exists, README stays short, and README's Python example runs from any folder."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 10_240  # bytes
# a repository path starts with one of these folders, or is one of these top-level files
ROOT_FOLDERS = ("core", "spaces", "tests", "bench", "docs", ".ci")
ROOT_FILES = ("app.py", "requirements.txt", "requirements-test.txt", "pyproject.toml", "LICENSE", "CITATION.cff",
              "pytest.ini")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
PLACEHOLDER = re.compile(r"<[^>]+>|\b(?:TAB|NAME|DIR|METHOD)\b")  # spaces/TAB/, core/cli/NAME.py, tests/<package>/


def _relative_links(path: Path) -> list[str]:
    return [target for target in LINK.findall(path.read_text(encoding="utf-8"))
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def _code_tokens(path: Path) -> list[str]:
    tokens = []
    for span in CODE.findall(path.read_text(encoding="utf-8")):
        for token in re.split(r"[\s=\"'(),\[\]|]+", span.strip("`")):
            tokens.append(token.rstrip(".,;:"))
    return [token for token in tokens if token]


def repository_paths(path: Path) -> list[str]:
    """The repository paths named in code spans and blocks: `core/x/y.py`, `spaces/TAB/`, `LICENSE`, ..."""
    return sorted({token for token in _code_tokens(path)
                   if token.split("/")[0] in ROOT_FOLDERS and "/" in token or token in ROOT_FILES})


def module_names(path: Path) -> list[str]:
    """Dotted names under core and bench: `core.engine.labels`, `core.heads.textspan.HeadStatistics`, `bench.omp`."""
    names = set()
    for token in _code_tokens(path):
        match = re.match(r"((?:core|bench)(?:\.[A-Za-z_]\w*)+)", token)
        if match and not PLACEHOLDER.search(match[1]):  # `bench.NAME` names none in particular
            names.add(match[1])
    return sorted(names)


def _exists(name: str) -> bool:
    pattern = PLACEHOLDER.sub("*", name.rstrip("/"))
    if "*" in pattern or "{" in pattern:
        return any(ROOT.glob(pattern.replace("{", "*").replace("}", "*")))
    return (ROOT / pattern).exists()


def _resolves(dotted: str) -> bool:
    """A module (found, not run: `core.__main__` stays unexecuted), or a module's attribute chain."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.util.find_spec(".".join(parts[:cut]))
        except ModuleNotFoundError:
            found = None
        if found is None:
            continue
        if cut == len(parts):
            return True
        value = importlib.import_module(".".join(parts[:cut]))
        for attribute in parts[cut:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_exists(path):
    missing = [target for target in _relative_links(path) if not (path.parent / target.split("#")[0]).exists()]
    assert missing == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_repository_path_exists(path):
    names = repository_paths(path)
    missing = [name for name in names if not _exists(name)]
    assert missing == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_module_and_function_named_exists(path):
    missing = [name for name in module_names(path) if not _resolves(name)]
    assert missing == []


def test_the_checks_see_what_they_must():
    readme = repository_paths(ROOT / "README.md")
    assert {"docs/img/suite.png", "requirements.txt"} <= set(readme) | set(_relative_links(ROOT / "README.md"))
    architecture = repository_paths(ROOT / "docs" / "architecture.md")
    assert "core/engine/" in architecture and "spaces/NAME/app.py" in architecture
    assert "core.heads.textspan.HeadStatistics" in module_names(ROOT / "docs" / "reproduce.md")
    # planted mistakes are caught
    assert not _exists("core/world.py") and not _exists("core/nowhere/") and _exists("spaces/TAB/app.py")
    assert not _resolves("core.heads.textspan.NoSuchThing") and not _resolves("bench.nothing")
    assert _resolves("core.load_clip") and _resolves("bench.omp")


def test_no_document_points_outside_the_repository():
    for path in [*DOCS, *ROOT.glob("core/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("core/data/*/*.md")]:
        if path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        for stale in ("shared/docs", "papers.md", "core/world.py", "segmentation-baselines.md"):
            assert stale not in text, f"{path.relative_to(ROOT)} names {stale}, which is not in the repository"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "README has one Python example"
    return blocks[0]


def test_readme_example_is_ten_to_fifteen_lines():
    assert 10 <= len(readme_example().strip().splitlines()) <= 15


def test_readme_example_runs_from_another_folder(tmp_path):
    import core

    (tmp_path / "example.py").write_text(readme_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIPSCOPE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    bases = core.model_bases(core.load_clip("toy", device="cpu"))
    assert repr(core.head_texts_from_bases(bases, "L3H1")[:3]) in lines
    assert repr(core.neuron_terms_from_bases(bases, "L2.n5")[:3]) in lines
    assert lines[-1] == "(2, 64, 64) torch.Size([384, 96])"  # maps [text, H, W]; phi [neuron, d_out] of the toy
