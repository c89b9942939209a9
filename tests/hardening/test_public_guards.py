"""core.guards: public mode refuses server paths, random weights and models off the allow-list without probing
the file system; local --allow-path roots; the size bounds; every refusal a CoreError subclass."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import guards, settings
from core.errors import ConfigError, CoreError, LimitError, ModelNotAllowedError, PathNotAllowedError


@pytest.fixture(autouse=True)
def _local(monkeypatch):
    for name in ("SPACE_ID", "CLIPSCOPE_PUBLIC", "CLIPSCOPE_MODELS", "CLIPSCOPE_MODEL", "CLIPSCOPE_ALLOW_PATHS"):
        monkeypatch.delenv(name, raising=False)
    yield
    settings.configure(public=None, allowed_paths=None)


@pytest.fixture
def public(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "org/space")
    assert settings.public()


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("spec, kind", [("toy", "toy"), ("hf-hub:org/m", "hf-hub"), ("ViT-B-16/none", "random"),
                                        ("ViT-B-16/w.safetensors", "file"), ("ViT-B-16//etc/passwd", "file"),
                                        ("ViT-B-16/./w", "file"), ("ViT-B-16/openai", "tag"), ("ViT-B-16", "arch")])
def test_spec_kind_reads_only_the_text(spec, kind):
    assert guards.spec_kind(spec) == kind


@pytest.mark.parametrize("spec, message", [
    ("Tiny-ViT/none", "random-weight"), ("ViT-B-32/none", "random-weight"), ("ViT-bigG-14/none", "random-weight"),
    ("ViT-B-32/openai", "not available"), ("hf-hub:org/model", "not available"),
    ("Tiny-ViT//etc/passwd", "local checkpoint files"), ("Tiny-ViT//no/such/file.pt", "local checkpoint files"),
    ("Tiny-ViT/../../etc/shadow", "local checkpoint files"), ("../etc", "not available"),
])
def test_public_mode_loads_only_the_allow_list(public, spec, message):
    from core.engine.models import load_clip

    with pytest.raises(ModelNotAllowedError, match=message) as caught:
        load_clip(spec)
    assert isinstance(caught.value, CoreError) and "toy" in str(caught.value)  # says what is allowed


def test_a_blank_spec_is_the_default_model_and_never_reaches_the_guard_blank(public):
    from core.engine.models import load_clip

    assert load_clip("  ").info.spec == load_clip(None).info.spec == "toy"  # the one loader: blank is the default
    with pytest.raises(ModelNotAllowedError, match="not available"):
        guards.check_model_allowed("")


def test_allow_list_from_the_environment(public, monkeypatch):
    monkeypatch.setenv("CLIPSCOPE_MODELS", "toy,ViT-B-16/laion2b_s34b_b88k,Tiny-ViT/none")
    assert guards.check_model_allowed(" ViT-B-16/laion2b_s34b_b88k ") == "ViT-B-16/laion2b_s34b_b88k"
    assert guards.check_model_allowed("toy") == "toy"
    with pytest.raises(ModelNotAllowedError, match="random-weight"):  # even when listed
        guards.check_model_allowed("Tiny-ViT/none")
    with pytest.raises(ModelNotAllowedError):
        guards.check_model_allowed("ViT-B-16/openai")


def test_local_mode_keeps_every_model():
    from core.engine.models import load_clip

    assert not settings.public()
    assert load_clip("Tiny-ViT/none").info.random_init


def test_public_messages_do_not_depend_on_whether_a_file_exists(public, tmp_path):
    real = tmp_path / "weights.safetensors"
    real.write_bytes(b"x" * 100)
    messages = set()
    for spec in (f"Tiny-ViT/{real}", f"Tiny-ViT/{tmp_path / 'missing.safetensors'}"):
        with pytest.raises(ModelNotAllowedError) as caught:
            guards.check_model_allowed(spec)
        messages.add(str(caught.value))
    assert len(messages) == 1


# ---------------------------------------------------------------- server paths

@pytest.mark.parametrize("path", ["/etc/passwd", "/etc", "/no/such/file", "relative.txt", "~/x", "../../etc/passwd",
                                  "/proc/self/environ", "/dev/zero"])
def test_public_mode_refuses_every_server_path_with_one_message(public, path):
    with pytest.raises(PathNotAllowedError) as caught:
        guards.check_user_path(path, "text pool", hint="upload a text file")
    assert str(caught.value) == "text pool: this public server does not read or write server paths; upload a text file"


def test_public_mode_never_touches_the_file_system(public, monkeypatch):
    touched = []
    for name in ("stat", "lstat", "open", "listdir", "scandir", "access"):
        original = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _o=original, _n=name, **k: touched.append(_n) or _o(*a, **k))
    for call in (lambda: guards.check_user_path("/etc/passwd", "image"),
                 lambda: guards.check_model_allowed("Tiny-ViT//etc/passwd"),
                 lambda: guards.check_output_path("/tmp/out", "output folder")):
        with pytest.raises(CoreError):
            call()
    assert touched == []


def test_allowed_roots_limit_a_local_server_with_one_message(tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    (inside / "pool.txt").write_text("a\n")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text("s\n")
    (inside / "link.txt").symlink_to(outside / "secret.txt")
    settings.configure(allowed_paths=[str(inside)])
    assert guards.check_user_path(inside / "pool.txt", "text pool") == inside / "pool.txt"
    assert guards.check_user_path(inside / "not_yet.txt", "text pool") == inside / "not_yet.txt"
    messages = []
    for path in (outside / "secret.txt", outside / "missing.txt", inside / "link.txt", inside / ".." / "private"):
        with pytest.raises(PathNotAllowedError) as caught:
            guards.check_user_path(path, "text pool")
        messages.append(str(caught.value).replace(str(path), "PATH"))
    assert len(set(messages)) == 1 and "--allow-path" in messages[0]


def test_allow_path_on_the_command_line(tmp_path, capsys):
    from core.cli import main

    (tmp_path / "a").mkdir()
    (tmp_path / "b.txt").write_text("x\n")
    status = main(["--allow-path", str(tmp_path / "a"), "textspan", "--texts", str(tmp_path / "b.txt"), "--images",
                   str(tmp_path / "a"), "--out", str(tmp_path / "a" / "o"), "--model", "Tiny-ViT/none"])
    assert status == 2 and "outside the folders this server may use" in capsys.readouterr().err
    assert settings.allowed_paths() == ()  # the command's setting does not outlive it


def test_public_flag_on_the_command_line(tmp_path, capsys):
    from core.cli import main

    assert main(["--public", "toy", "scenes", "--n", "3", "--seed", "0", "--out", str(tmp_path / "s")]) == 2
    assert "public server" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert not settings.public()


def test_nul_and_empty_paths_are_config_errors():
    for value in ("", "   ", "a\x00b"):
        with pytest.raises(ConfigError):
            guards.check_user_path(value, "image")


def test_bases_sources_in_public_mode(public):
    from core.artifacts.hub import check_user_source

    sha = "0" * 40
    assert check_user_source(f"org/name@{sha}") == f"org/name@{sha}"
    for value in ("/etc", "core/data/toy/bases", "./x", "../x/y"):
        with pytest.raises(PathNotAllowedError):
            check_user_source(value)


def test_shipped_text_pool_is_named_not_a_path(public):
    from core.engine.text import resolve_text_pool

    pool = resolve_text_pool("toy")
    assert pool.name == "toy" and len(pool.texts) > 100
    with pytest.raises(PathNotAllowedError):
        resolve_text_pool("/etc/passwd")


# ---------------------------------------------------------------- bounds

@pytest.mark.parametrize("name", ["texts", "text_chars", "gallery", "scenes", "scene_size", "image_pixels",
                                  "image_bytes", "templates"])
def test_bounds_are_tighter_in_public_mode(monkeypatch, name):
    local = guards.limit(name)
    monkeypatch.setenv("CLIPSCOPE_PUBLIC", "1")
    assert guards.limit(name) <= local
    with pytest.raises(LimitError, match="public server"):
        guards.check_count(guards.limit(name) + 1, name, name)


def test_check_count_refuses_wrong_types_and_small_values():
    assert guards.check_count(5, "scenes", "n") == 5
    assert guards.check_count(5.0, "scenes", "n") == 5
    for value in ("5", 5.5, None, True, [5]):
        with pytest.raises(ConfigError, match="whole number"):
            guards.check_count(value, "scenes", "n")
    with pytest.raises(ConfigError, match="at least 1"):
        guards.check_count(0, "scenes", "n")
    with pytest.raises(LimitError, match="over the limit"):
        guards.check_count(10**12, "scenes", "n")


def test_library_bounds_hold_without_the_command_line():
    from core.world.scenes import sample_scenes, write_scenes

    with pytest.raises(LimitError):
        sample_scenes(10**12, seed=0)
    with pytest.raises(LimitError):
        write_scenes("/nonexistent/never-created", 2, 0, image_size=100_000)
    assert not Path("/nonexistent/never-created").exists()


def test_public_image_bounds(public, tmp_path):
    from PIL import Image

    from core.engine.images import load_image
    from core.errors import ImageError

    Image.new("L", (5000, 4000)).save(tmp_path / "big.png")  # 20 megapixels: fine locally, not in public mode
    with pytest.raises(ImageError, match="megapixels"):
        load_image(tmp_path / "big.png")
    with pytest.raises(LimitError, match="MB"):
        load_image(b"\x89PNG" + b"\x00" * (guards.PUBLIC_MAX_IMAGE_BYTES + 1))


def test_every_refusal_is_a_core_error():
    import core.errors as errors

    for name in ("LimitError", "NotAllowedError", "ModelNotAllowedError", "PathNotAllowedError", "OutputError"):
        assert issubclass(getattr(errors, name), CoreError)


@pytest.mark.parametrize("spec", ["hf:org/name@0123456789abcdef0123456789abcdef01234567:train", "/etc", "images/"])
def test_public_image_sets_name_no_server_path_and_download_nothing(public, spec, monkeypatch):
    from core.engine.imagesets import parse_image_set

    touched = []
    for name in ("stat", "lstat", "listdir", "scandir"):
        original = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _o=original, _n=name, **k: touched.append(_n) or _o(*a, **k))
    with pytest.raises(PathNotAllowedError, match="public server"):
        parse_image_set(spec)
    assert touched == []
    assert parse_image_set("world:3:1").count == 3  # generated sets stay available


def test_local_image_folders_obey_allowed_roots(tmp_path):
    from core.engine.imagesets import parse_image_set

    settings.configure(allowed_paths=[tmp_path / "inside"])
    with pytest.raises(PathNotAllowedError):
        parse_image_set(str(tmp_path / "outside"))
