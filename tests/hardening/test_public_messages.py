"""Issue 20, items 9 and 10: --allow-path covers every path-like field (model folders too) without letting a
caller probe what exists outside it, and no message that leaves a public server names one of its folders."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

from core import settings
from core.cli import main
from core.errors import CoreError, PathNotAllowedError
from core.messages import error_message

ROOT = Path(__file__).resolve().parents[2]
SHA = "0" * 40


# ---------------------------------------------------------------- item 9: --allow-path and model folders

@pytest.fixture
def places(tmp_path):
    """An allowed root, and outside it an existing diffusers/transformers-looking folder and a missing one."""
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    (root / "model").mkdir(parents=True)
    (outside / "model").mkdir(parents=True)
    (outside / "model" / "model_index.json").write_text("{}")
    (outside / "model" / "config.json").write_text("{}")
    return root, outside / "model", outside / "missing"


def _loaders():
    from core.adversarial.descriptions import load_text_generator
    from core.adversarial.generators import load_sd_pipeline

    return {"sd": lambda value: load_sd_pipeline(value, SHA), "llm": lambda value: load_text_generator(value, SHA)}


@pytest.mark.parametrize("loader", ["sd", "llm"])
def test_model_folders_outside_the_roots_are_refused_alike(places, loader):
    root, existing, missing = places
    load = _loaders()[loader]
    messages = []
    with settings.overridden(allowed_paths=[str(root)]):
        for path in (existing, missing):
            with pytest.raises(PathNotAllowedError) as refused:
                load(str(path))
            messages.append(str(refused.value).replace(str(path), "PATH"))
    assert messages[0] == messages[1] and "outside the folders" in messages[0]


@pytest.mark.parametrize("flag", ["--checkpoint", "--llm"])
def test_the_command_line_refuses_model_folders_outside_the_roots_before_any_work(places, tmp_path, capsys, flag):
    root, existing, missing = places
    lines = []
    for path in (existing, missing):
        argv = ["--allow-path", str(root), "adversarial", "--model", "toy-biased", "--present", "square", "--target",
                "triangle", "--out", str(root / "adv"), flag, str(path)]
        if flag == "--checkpoint":
            argv += ["--generator", "sd"]
        assert main(argv) == 2
        lines.append(capsys.readouterr().err.strip().replace(str(path), "PATH"))
    assert lines[0] == lines[1] and "outside the folders" in lines[0]
    assert not (root / "adv").exists()


def test_a_hub_id_is_never_read_as_a_folder_outside_the_roots(places, tmp_path, monkeypatch):
    from core.guards import check_model_source, hub_only

    root, _, _ = places
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)  # a relative folder with a Hub id's shape
    assert check_model_source("org/name", "x") == ("folder", "org/name")  # no roots: the user's own folder
    with settings.overridden(allowed_paths=[str(root)]):
        assert check_model_source("org/name", "x") == ("hub", "org/name") and hub_only()
        assert check_model_source("org/other", "x") == ("hub", "org/other")
    with settings.overridden(allowed_paths=[str(tmp_path)]):
        assert check_model_source("org/name", "x") == ("folder", "org/name")
    with settings.overridden(public=True):
        assert check_model_source("org/name", "x") == ("hub", "org/name")
        with pytest.raises(PathNotAllowedError):
            check_model_source("./org/name", "x")


def test_a_same_named_folder_changes_nothing_where_paths_are_limited(places, tmp_path, monkeypatch):
    """Offline, a Hub id fails the same way whether or not a folder of that name exists outside the roots."""
    root, _, _ = places
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    for name, load in _loaders().items():
        messages = []
        with settings.overridden(allowed_paths=[str(root)]):
            for repo in ("org/name", "org/none"):
                with pytest.raises(CoreError) as failed:
                    load(repo)
                messages.append(str(failed.value).replace(repo, "REPO"))
        assert messages[0] == messages[1], (name, messages)


# ---------------------------------------------------------------- item 10: no server path in a public message

def server_folders(*extra: Path) -> list[str]:
    from core.settings import cache_dir

    folders = {str(ROOT), os.path.realpath(ROOT), str(cache_dir()), os.path.realpath(cache_dir()),
               tempfile.gettempdir(), *(str(p) for p in extra)}
    return sorted(folders, key=len, reverse=True)


def assert_no_server_path(message: str, *extra: Path) -> None:
    for folder in server_folders(*extra):
        assert folder not in message, (folder, message)
    assert not re.search(r"(?<![\w.:])/(?:tmp|root|home|work|usr|etc|var)/", message), message


def _ui():
    if "clipscope_ui_common" not in sys.modules:
        spec = importlib.util.spec_from_file_location("clipscope_ui_common", ROOT / "spaces" / "ui_common.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["clipscope_ui_common"] = module
        spec.loader.exec_module(module)
    return sys.modules["clipscope_ui_common"]


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Files as Gradio stores an upload: <GRADIO_TEMP_DIR>/<hash>/<name>."""
    folder = tmp_path / "gradio-uploads"
    (folder / "0123abcd").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    files = {"blank": b"\n \n", "latin": b"caf\xe9\n", "empty": b""}
    for name, data in files.items():
        (folder / "0123abcd" / f"{name}.txt").write_bytes(data)
    return folder


def _explorer_calls(uploads: Path) -> dict:
    from core.explorer import heads, neurons, segmentation

    world = "generated world (held-out scenes)"
    pool = lambda name: str(uploads / "0123abcd" / f"{name}.txt")  # noqa: E731
    return {
        "textspan, blank pool": lambda: heads.compute_text_span("toy", world, None, None, 20, 3, pool("blank"), 3, 1),
        "textspan, latin-1 pool": lambda: heads.compute_text_span("toy", world, None, None, 20, 3, pool("latin"), 3, 1),
        "textspan, empty pool": lambda: heads.compute_text_span("toy", world, None, None, 20, 3, pool("empty"), 3, 1),
        "statistics, blank pool": lambda: neurons.compute_statistics("toy", 2, "generated world", 30, None,
                                                                     pool("blank"), "", 5, "normalise_texts"),
        "shipped bases, a layer they lack": lambda: neurons.show_neuron("toy", "", 3, 5),
        "shipped bases, search a layer they lack": lambda: neurons.search_neurons("toy", "", 3, "a red circle", 5),
        "a server path as bases": lambda: neurons.show_neuron("toy", str(ROOT / "core"), 2, 5),
        "a server folder of images": lambda: heads.compute_text_span("toy", "image folder on this machine",
                                                                     str(ROOT), None, 20, 3, None, 3, 1),
        "segmentation, neurons of a layer the bases lack": lambda: segmentation.segment(
            "toy", None, "example:0", "a red circle", None, "neurons", None, None),
    }


def test_every_public_explorer_error_is_free_of_server_folders(uploads):
    ui = _ui()
    failed = 0
    with settings.overridden(public=True):
        for name, call in _explorer_calls(uploads).items():
            try:
                call()
            except CoreError as err:
                failed += 1
                shown = ui.message(err).message
                assert shown == html.escape(error_message(err))
                assert_no_server_path(html.unescape(shown), uploads)
    assert failed >= 6  # most of them are refusals; each was checked


def test_the_ui_wrapper_names_no_server_path_even_for_a_bug():
    ui = _ui()

    def handler():
        raise FileNotFoundError(2, "No such file or directory", str(ROOT / "core" / "secret.bin"))

    with settings.overridden(public=True):
        with pytest.raises(Exception) as shown:
            ui.guard(handler, model=False)()
    assert_no_server_path(shown.value.message)


def test_every_public_command_line_error_is_free_of_server_folders(hostile, tmp_path, capsys):
    """One case per command and flag of the fuzz table, run with --public: every error line is path-free."""
    from tests.hardening.test_cli_fuzz import CASES, _fill

    seen, checked = set(), 0
    for case in CASES:
        key = "|".join(case.id.split("|")[:2])
        if key in seen or case.argv[0] == "--public":
            continue
        seen.add(key)
        folder = tmp_path / str(len(seen))
        folder.mkdir()
        status = main(["--public", *_fill(case.argv, hostile, folder)])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if status:
            checked += 1
            assert_no_server_path(err, hostile.root, tmp_path)
    assert checked >= 100


def test_a_local_user_keeps_full_paths(tmp_path, capsys):
    missing = tmp_path / "nope.png"
    assert main(["decompose", "--model", "toy", "--image", str(missing), "--text", "a"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_segmentation_names_bases_as_the_other_tabs_do(tmp_path, scene_png):
    import json

    out = tmp_path / "seg"
    assert main(["segment", "--model", "toy", "--image", str(scene_png), "--text", "a red circle", "--method",
                 "neurons", "--top-k", "5", "--out", str(out)]) == 0
    record = (out / "segment.json").read_text()
    assert str(ROOT) not in record and "core/data/toy/bases" in json.loads(record)["description"]
    from core.explorer.segmentation import segment

    with settings.overridden(public=True):
        view = segment("toy", None, "example:0", "a red circle\na blue square", None, "neurons", None, None)
    assert str(ROOT) not in view.info and "core/data/toy/bases" in view.info


# ---------------------------------------------------------------- the real server (Gradio API)

@pytest.mark.slow
def test_a_public_server_names_no_folder_and_logs_one_line_per_refusal(tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    from tests.browser import ARTIFACTS, app_server

    uploads, cache = tmp_path / "uploads", tmp_path / "cache"
    env = {"CLIPSCOPE_PUBLIC": "1", "CLIPSCOPE_MODELS": "toy", "CLIPSCOPE_MODEL": "toy", "CLIPSCOPE_CACHE": str(cache),
           "GRADIO_TEMP_DIR": str(uploads)}
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    with app_server(ROOT / "app.py", env) as url:
        client = Client(url, verbose=False)
        calls = [
            ("/compute_textspan", dict(spec="toy", source="generated world (held-out scenes)", folder="", uploads=None,
                                       n_images=20, per_head=3, pool_file=handle_file(str(blank)), layer=3, head=1)),
            ("/compute_bases", dict(spec="toy", layer=2, source="generated world", n_scenes=30, folder="",
                                    pool_file=handle_file(str(blank)), pool_path="", k=5, dictionary="normalise_texts")),
            ("/show_neuron", dict(spec="toy", bases="", layer=3, neuron=5)),
            ("/search_neurons", dict(spec="toy", bases="", layer=3, text="a red circle", top=5)),
            ("/show_neuron", dict(spec="toy", bases=str(ROOT / "core"), layer=2, neuron=5)),
        ]
        for endpoint, kwargs in calls:
            with pytest.raises(Exception) as refused:
                client.predict(api_name=endpoint, **kwargs)
            assert_no_server_path(str(refused.value), uploads, cache)
        port = url.rstrip("/").rsplit(":", 1)[1]
        log = ARTIFACTS / f"server-{ROOT.name}-{port}.log"
        before = log.read_text()
        base = url.rstrip("/") + "/gradio_api/call/decompose"
        event = httpx.post(base, json={"data": ["toy", None, "example:0", "a", "bogus"]}, timeout=60).json()["event_id"]
        body = httpx.get(f"{base}/{event}", timeout=120).text
        assert "event: error" in body and "not in the list of choices" in body
        import time

        time.sleep(1)
        added = log.read_text()[len(before):]
    assert "Traceback" not in added, added[-3000:]
    assert len([line for line in added.splitlines() if line.strip()]) <= 2, added[-3000:]
