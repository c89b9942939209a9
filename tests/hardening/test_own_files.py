"""Issue 20, items 1-3 and the rule behind them: a command replaces or deletes only files its own manifest lists
(unchanged since it wrote them), never writes through a link, and never removes a folder it did not create."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from core.cli import main
from core.errors import OutputError
from core.writes import OutputFolder

MODEL = "Tiny-ViT/none"


def digest(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: files by sha256, links by target, folders by name."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        found[rel] = (f"link:{os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                      else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


BUILD = ["bases", "build", "--model", MODEL, "--images", "world:12", "--texts", "toy", "--layers", "2",
         "--neuron-layers", "1", "--per-head", "2", "--rank", "4", "--k", "3", "--terms", "2"]


# ---------------------------------------------------------------- item 1: bases build --work-dir

def test_bases_build_keeps_the_work_folder_the_user_named(tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "old").mkdir(parents=True)
    (scratch / "notes.txt").write_text("keep")
    (scratch / "old" / "shard000000.safetensors").write_bytes(b"mine")
    before = digest(scratch)
    assert main(BUILD + ["--out", str(tmp_path / "out"), "--work-dir", str(scratch)]) == 0
    assert digest(scratch) == before  # the build's own sub-folder is gone, everything else is as it was


def test_bases_build_removes_a_work_folder_it_created(tmp_path):
    assert main(BUILD + ["--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "new" / "work")]) == 0
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "work").exists()


def test_bases_builds_with_other_settings_never_share_partials(tmp_path):
    """A named work folder used by two builds: each keeps its partials apart (a key per build), so the second
    never reads the first's sums; its artifact equals one built without a work folder."""
    from core.artifacts.store import load_artifact

    work = tmp_path / "work"
    work.mkdir()
    assert main(BUILD + ["--out", str(tmp_path / "a"), "--work-dir", str(work)]) == 0
    other = [*BUILD[:5], "world:12:3", *BUILD[6:]]
    assert main(other + ["--out", str(tmp_path / "b"), "--work-dir", str(work)]) == 0
    assert main(other + ["--out", str(tmp_path / "c")]) == 0
    b, c = load_artifact(tmp_path / "b"), load_artifact(tmp_path / "c")
    assert b.table("textspan") == c.table("textspan")
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------- item 2: segment --out

def _segment(out: Path, image: Path, *texts: str) -> list[str]:
    argv = ["segment", "--model", MODEL, "--image", str(image), "--out", str(out)]
    for text in texts or ("a red circle",):
        argv += ["--text", text]
    return argv


@pytest.mark.parametrize("record", ['{"note": "my own segment.json"}',
                                    json.dumps({"files": ["00_a_red_circle_map.png", "notes.txt"]})])
def test_segment_never_replaces_files_beside_a_segment_json_it_did_not_write(tmp_path, scene_png, capsys, record):
    out = tmp_path / "seg"
    out.mkdir()
    (out / "segment.json").write_text(record)
    (out / "00_a_red_circle_map.png").write_bytes(b"my picture")
    (out / "notes.txt").write_text("mine")
    before = digest(out)
    assert main(_segment(out, scene_png)) == 2
    assert "never replaced" in capsys.readouterr().err
    assert digest(out) == before


def test_segment_replaces_only_its_own_unchanged_files(tmp_path, scene_png, capsys):
    out = tmp_path / "seg"
    assert main(_segment(out, scene_png, "a red circle", "a blue square")) == 0
    (out / "notes.txt").write_text("mine")
    assert main(_segment(out, scene_png, "a red circle")) == 0  # a rerun: the other text's files are stale, removed
    names = sorted(p.name for p in out.iterdir())
    assert "notes.txt" in names and not any(name.startswith("01_") for name in names) and "labels.png" not in names
    (out / "00_a_red_circle_map.png").write_bytes(b"edited by the user")
    before = digest(out)
    capsys.readouterr()
    assert main(_segment(out, scene_png, "a red circle")) == 2
    assert "never replaced" in capsys.readouterr().err
    assert digest(out) == before


def test_segment_never_writes_through_a_link(tmp_path, scene_png):
    out, victim = tmp_path / "seg", tmp_path / "victim.png"
    assert main(_segment(out, scene_png)) == 0
    victim.write_bytes(b"elsewhere")
    (out / "00_a_red_circle_mask.png").unlink()
    (out / "00_a_red_circle_mask.png").symlink_to(victim)
    assert main(_segment(out, scene_png)) == 2
    assert victim.read_bytes() == b"elsewhere"


# ---------------------------------------------------------------- item 3: toy scenes --overwrite

def _scenes(out: Path, n: int, *extra: str) -> list[str]:
    return ["toy", "scenes", "--n", str(n), "--seed", "0", "--out", str(out), *extra]


@pytest.mark.parametrize("pending", [False, True])
def test_toy_scenes_never_writes_through_a_link_listed_in_its_manifest(tmp_path, capsys, pending):
    out, victim = tmp_path / "scenes", tmp_path / "victim.txt"
    victim.write_text("a file outside --out")
    assert main(_scenes(out, 3)) == 0
    manifest = out / ".clipscope-scenes.json"
    if pending:  # as an interrupted run leaves it: listed before written
        record = json.loads(manifest.read_text())
        record["files"]["images/000001.png"] = None
        manifest.write_text(json.dumps(record))
    (out / "images" / "000001.png").unlink()
    (out / "images" / "000001.png").symlink_to(victim)
    assert main(_scenes(out, 3, "--overwrite")) == 2
    assert "never replaced" in capsys.readouterr().err
    assert victim.read_text() == "a file outside --out" and (out / "images" / "000001.png").is_symlink()


def test_toy_scenes_never_writes_into_a_linked_folder(tmp_path, capsys):
    out, elsewhere = tmp_path / "scenes", tmp_path / "elsewhere"
    assert main(_scenes(out, 2)) == 0
    elsewhere.mkdir()
    for name in ("000000.png", "000001.png"):
        (out / "masks" / name).rename(elsewhere / name)
    (out / "masks").rmdir()
    (out / "masks").symlink_to(elsewhere)
    before = digest(elsewhere)
    assert main(_scenes(out, 2, "--overwrite")) == 2
    assert "not a plain folder" in capsys.readouterr().err
    assert digest(elsewhere) == before


# ---------------------------------------------------------------- the helper itself

def test_clear_removes_only_what_was_written_and_folders_it_made(tmp_path):
    root = tmp_path / "work"
    root.mkdir()
    (root / "mine.txt").write_text("the user's")
    folder = OutputFolder(root, "test", require="any")
    folder.write_text("a/b/one.txt", "1")
    folder.write_text("a/two.txt", "2")
    folder.write_text("c/three.txt", "3")
    (root / "a" / "user.txt").write_text("dropped in by the user")
    (root / "c" / "three.txt").write_text("edited by the user")
    kept = OutputFolder(root, "test", require="any").clear()  # a later run, from the manifest alone
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "a", "a/user.txt", "c", "c/three.txt", "mine.txt"]
    assert "a/" in kept and "c/" in kept and root.is_dir()  # not created by it: kept in any case


def test_a_folder_it_created_goes_when_empty(tmp_path):
    folder = OutputFolder(tmp_path / "new", "test", require="any")
    assert not (tmp_path / "new").exists()  # opening checks only
    folder.write_text("x/y.txt", "1")
    assert folder.clear() == [] and not (tmp_path / "new").exists()


def test_a_foreign_manifest_and_a_foreign_folder_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".clipscope-test.json").write_text('{"kind": "clipscope-other", "files": {}}')
    with pytest.raises(OutputError, match="was not written by clipscope"):
        OutputFolder(tmp_path / "a", "test")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "photo.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="not empty and was not written by this command"):
        OutputFolder(tmp_path / "b", "test", require="ours")
    with pytest.raises(OutputError, match="already holds files"):
        OutputFolder(tmp_path / "b", "test", require="empty")
    (tmp_path / "c").symlink_to(tmp_path / "b")
    with pytest.raises(OutputError, match="symbolic link"):
        OutputFolder(tmp_path / "c", "test", require="any")


def test_a_manifest_cannot_name_a_path_outside_its_folder(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    sha = hashlib.sha256(b"x").hexdigest()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".clipscope-test.json").write_text(json.dumps(
        {"kind": "clipscope-test", "files": {"../victim.txt": sha, str(victim): sha}}))
    OutputFolder(tmp_path / "out", "test").clear()
    assert victim.read_text() == "x"
