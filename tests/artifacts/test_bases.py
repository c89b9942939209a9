"""The bases artifact: round trip, integrity checks, resumable writing, configuration and the offline Hub cache."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.artifacts import hub
from core.artifacts.store import (ArtifactWriter, check_text_pool, load_artifact, read_manifest, text_pool_identity,
                        verify_artifact)
from core.errors import BasesError, ConfigError, TextError

REPO_ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["a photo of a dog", "a red square", "an image with stripes"]


def make_model(**changes) -> dict:
    model = {"spec": "toy", "arch": "ViT-toy", "pretrained": "toy.safetensors", "weights_sha256": "ab" * 32,
             "random_init": False, "open_clip_version": "3.3.0"}
    return {**model, **changes}


def make_contents() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "tensors": {
            "textspan": {"basis": torch.randn(4, 3, 8, generator=generator),
                         "indices": torch.randint(0, 100, (4, 3), generator=generator)},
            "neurons": {"mean": torch.randn(16, generator=generator).half(),
                        "active": torch.rand(16, generator=generator) > 0.5},
        },
        "tables": {"head_texts": [{"layer": 1, "head": h, "texts": ["dog", "cat"], "score": 0.25 * h}
                                  for h in range(3)]},
        "extra": {"settings": {"rank": 80, "layers": [1, 2]}},
    }


def write_artifact(folder: Path, contents: dict | None = None, *, model: dict | None = None, finalize=True,
                   **writer_options) -> ArtifactWriter:
    contents = contents or make_contents()
    writer = ArtifactWriter(folder, model=model or make_model(), text_pool=text_pool_identity(TEXTS, "tiny"),
                            image_set={"description": "generated shapes", "count": 12},
                            algorithms={"textspan": {"rank": 80, "n_texts": 3}}, **writer_options)
    for group, tensors in contents["tensors"].items():
        writer.add_tensors(group, tensors)
    for name, rows in contents["tables"].items():
        writer.add_table(name, rows)
    for name, obj in contents["extra"].items():
        writer.add_json(name, obj)
    if finalize:
        writer.finalize(metrics={"reconstruction_cosine": 0.93}, notes="test artifact")
    return writer


@pytest.fixture
def artifact_dir(tmp_path) -> Path:
    write_artifact(tmp_path / "bases")
    return tmp_path / "bases"


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


# ---------------------------------------------------------------- round trip

def test_round_trip_returns_what_was_written(artifact_dir):
    written = make_contents()
    artifact = load_artifact(artifact_dir, expect_model=make_model())
    for group, tensors in written["tensors"].items():
        loaded = artifact.tensors(group)
        assert loaded.keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert artifact.table("head_texts") == written["tables"]["head_texts"]
    assert artifact.json("settings") == written["extra"]["settings"]
    assert artifact.names("tensors") == ["neurons", "textspan"] and artifact.has("head_texts")


def test_manifest_records_identity_and_every_file(artifact_dir):
    manifest = read_manifest(artifact_dir)
    assert manifest["schema_version"] == 1 and manifest["kind"] == "clipscope-bases"
    assert manifest["model"] == make_model()
    assert manifest["text_pool"] == {"name": "tiny", "count": 3,
                                     "sha256": hashlib.sha256("\n".join(TEXTS).encode()).hexdigest()}
    assert manifest["metrics"] == {"reconstruction_cosine": 0.93}
    on_disk = sorted(p.relative_to(artifact_dir).as_posix() for p in artifact_dir.rglob("*") if p.is_file())
    assert on_disk == sorted([*manifest["files"], "manifest.json", "README.md"])  # no temp or progress files
    for rel, record in manifest["files"].items():
        data = (artifact_dir / rel).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_dataset_card_points_the_viewer_at_the_tables(artifact_dir):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(artifact_dir / "README.md")
    assert card.data.configs == [{"config_name": "head_texts", "data_files": "tables/head_texts.parquet"}]
    assert "reconstruction_cosine | 0.93" in card.text and "basis F32[4, 3, 8]" in card.text


# ---------------------------------------------------------------- integrity

def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_refused_naming_the_file(artifact_dir):
    flip_byte(artifact_dir / "tensors/textspan.safetensors")
    with pytest.raises(BasesError, match=r"tensors/textspan\.safetensors: sha256 differs"):
        load_artifact(artifact_dir)


def test_truncated_file_is_refused(artifact_dir):
    target = artifact_dir / "tables/head_texts.parquet"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(BasesError, match=r"tables/head_texts\.parquet: 100 bytes.*truncated"):
        load_artifact(artifact_dir)


def test_missing_and_extra_files_are_refused(artifact_dir):
    (artifact_dir / "extra/settings.json").unlink()
    (artifact_dir / "tensors/smuggled.safetensors").write_bytes(b"x")
    problems = verify_artifact(artifact_dir)
    assert len(problems) == 2
    assert "extra/settings.json: missing" in problems[0]
    assert "tensors/smuggled.safetensors: not listed" in problems[1]


def test_top_level_files_added_by_the_hub_are_ignored(artifact_dir):
    (artifact_dir / ".gitattributes").write_text("*.parquet filter=lfs\n")
    (artifact_dir / "README.md").write_text("edited card\n")
    assert verify_artifact(artifact_dir) == []


def edit_manifest(folder: Path, **changes) -> None:
    manifest = read_manifest(folder)
    manifest.update(changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_newer_schema_asks_for_an_upgrade(artifact_dir):
    edit_manifest(artifact_dir, schema_version=2)
    with pytest.raises(BasesError, match="written by a newer version of clipscope.*upgrade"):
        load_artifact(artifact_dir)


def test_manifest_cannot_point_outside_the_folder(artifact_dir):
    manifest = read_manifest(artifact_dir)
    edit_manifest(artifact_dir, files={"../secret.json": {"sha256": "0" * 64, "bytes": 1}, **manifest["files"]})
    assert "not a tensors/, tables/ or extra/ data file" in verify_artifact(artifact_dir)[0]


def test_manifest_missing_fields_are_named(artifact_dir):
    manifest = read_manifest(artifact_dir)
    del manifest["convention"], manifest["model"]["weights_sha256"]
    (artifact_dir / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_artifact(artifact_dir)
    assert any("'convention' is missing" in p for p in problems)
    assert any("'model' must hold" in p for p in problems)


def test_truncated_manifest_is_refused(artifact_dir):
    text = (artifact_dir / "manifest.json").read_text()
    (artifact_dir / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(BasesError, match="manifest.json is not valid JSON"):
        load_artifact(artifact_dir)


@pytest.mark.parametrize("change", [{"spec": "ViT-B-16/openai"}, {"weights_sha256": "cd" * 32},
                                    {"random_init": True}, {"pretrained": "other.safetensors"}])
def test_wrong_model_is_refused_naming_both_models(artifact_dir, change):
    loaded = make_model(**change)
    with pytest.raises(BasesError, match="another model") as caught:
        load_artifact(artifact_dir, expect_model=loaded)
    key = next(iter(change))
    message = str(caught.value)
    assert f"differs in {key}" in message
    built_for, _, loaded_part = message.partition("the loaded model is")
    assert "toy" in built_for and str(change[key])[:12] in loaded_part


def test_other_open_clip_version_only_warns(artifact_dir):
    with pytest.warns(UserWarning, match="open_clip 3.3.0, running 9.9"):
        load_artifact(artifact_dir, expect_model=make_model(open_clip_version="9.9"))


def test_verify_cli_exit_codes(artifact_dir, capsys):
    from core.cli import main

    assert main(["bases", "verify", str(artifact_dir)]) == 0
    assert "ok:" in capsys.readouterr().out
    assert main(["bases", "info", str(artifact_dir)]) == 0
    info = capsys.readouterr().out
    assert "model: toy" in info and "tensors: neurons, textspan" in info and "reconstruction_cosine: 0.93" in info
    flip_byte(artifact_dir / "tensors/neurons.safetensors")
    bad = run_cli("bases", "verify", str(artifact_dir))  # the real process exit status
    assert bad.returncode == 2
    assert "tensors/neurons.safetensors: sha256 differs" in bad.stderr


# ---------------------------------------------------------------- writing and resuming

def test_resumed_writer_keeps_verified_groups_and_redoes_damaged_ones(tmp_path):
    contents = make_contents()
    write_artifact(tmp_path / "b", contents, finalize=False)
    assert "unfinished" in verify_artifact(tmp_path / "b")[0]
    kept = (tmp_path / "b/tensors/textspan.safetensors").stat()
    flip_byte(tmp_path / "b/tensors/neurons.safetensors")

    resumed = ArtifactWriter(tmp_path / "b", model=make_model(), text_pool=text_pool_identity(TEXTS, "tiny"),
                             image_set={"description": "generated shapes", "count": 12},
                             algorithms={"textspan": {"rank": 80, "n_texts": 3}})
    assert resumed.has("textspan") and resumed.has("head_texts") and resumed.has("settings")
    assert not resumed.has("neurons")
    resumed.add_tensors("neurons", contents["tensors"]["neurons"])
    resumed.finalize()
    assert (tmp_path / "b/tensors/textspan.safetensors").stat().st_mtime_ns == kept.st_mtime_ns
    loaded = load_artifact(tmp_path / "b").tensors("neurons")
    assert torch.equal(loaded["mean"], contents["tensors"]["neurons"]["mean"])


def test_writer_refuses_another_build_unless_overwrite(tmp_path):
    write_artifact(tmp_path / "b")
    with pytest.raises(BasesError, match="another build.*differs in model"):
        ArtifactWriter(tmp_path / "b", model=make_model(spec="other"))
    assert verify_artifact(tmp_path / "b") == []  # untouched

    writer = ArtifactWriter(tmp_path / "b", model=make_model(spec="other"), overwrite=True)
    writer.add_json("only", {"x": 1})
    writer.finalize()
    artifact = load_artifact(tmp_path / "b", expect_model=make_model(spec="other"))
    assert artifact.names("tensors") == [] and artifact.json("only") == {"x": 1}


def test_writer_refuses_an_unrelated_folder_and_never_deletes_user_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BasesError, match="not clipscope bases.*notes.txt"):
        ArtifactWriter(tmp_path, model=make_model())
    write_artifact(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert verify_artifact(tmp_path) == []


def test_writer_rejects_bad_names_and_rows(tmp_path):
    writer = ArtifactWriter(tmp_path / "b", model=make_model())
    with pytest.raises(BasesError, match="not allowed"):
        writer.add_tensors("../escape", {"x": torch.zeros(1)})
    with pytest.raises(BasesError, match="one type per column"):
        writer.add_table("mixed", [{"a": 1}, {"a": "text"}])
    writer.add_json("ok", {"a": 1})
    with pytest.raises(BasesError, match="finite numbers"):
        writer.finalize(metrics={"cosine": float("nan")})
    assert not (tmp_path / "b/manifest.json").exists()


def test_shared_and_strided_tensors_are_stored(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    writer = ArtifactWriter(tmp_path / "b", model=make_model())
    writer.add_tensors("views", {"full": base, "transposed": base.T, "row": base[1]})
    writer.finalize()
    loaded = load_artifact(tmp_path / "b").tensors("views")
    assert torch.equal(loaded["transposed"], base.T) and torch.equal(loaded["row"], base[1])


# ---------------------------------------------------------------- text pools

def test_text_pool_check(artifact_dir):
    artifact = load_artifact(artifact_dir)
    check_text_pool(artifact, list(TEXTS))
    with pytest.raises(BasesError, match="the text pool does not match the stored embeddings"):
        check_text_pool(artifact, TEXTS[::-1])
    with pytest.raises(TextError, match="one line"):
        text_pool_identity(["two\nlines"], "bad")


# ---------------------------------------------------------------- configuration

def test_bases_source_precedence(monkeypatch):
    monkeypatch.setitem(hub.DEFAULT_BASES, "toy", "bases/toy")
    monkeypatch.delenv("CLIPSCOPE_BASES", raising=False)
    assert hub.resolve_bases_source("toy") == str(hub.PROJECT_ROOT / "bases/toy")
    assert hub.resolve_bases_source("ViT-B-32/openai") is None
    monkeypatch.setenv("CLIPSCOPE_BASES", f"/data/all ; ViT-B-16/laion2b_s34b_b88k=org/name@{SHA}")
    assert hub.resolve_bases_source("ViT-B-16/laion2b_s34b_b88k") == f"org/name@{SHA}"
    assert hub.resolve_bases_source("toy") == "/data/all"
    assert hub.resolve_bases_source("toy", cli_value="/cli") == "/cli"
    monkeypatch.setenv("CLIPSCOPE_BASES", "toy=")
    with pytest.raises(ConfigError, match="SPEC=SOURCE"):
        hub.resolve_bases_source("toy")


def test_unpinned_revision_and_bad_sources_fail_before_any_download(artifact_dir, tmp_path):
    with pytest.raises(BasesError, match="not a pinned 40-hex commit sha"):
        hub.pull_artifact("org/name", "main")
    with pytest.raises(BasesError, match="not a Hub repo id"):
        hub.load_bases(tmp_path / "no" / "such" / "folder")
    with pytest.raises(BasesError, match="applies only to Hub repos"):
        hub.load_bases(artifact_dir, revision=SHA)
    flip_byte(artifact_dir / "tables/head_texts.parquet")
    with pytest.raises(BasesError, match="refusing to push.*head_texts"):
        hub.push_artifact(artifact_dir, "org/name")


# ---------------------------------------------------------------- the Hugging Face cache, offline

def populate_hub_cache(cache: Path, repo_id: str, artifact: Path, skip: str | None = None) -> Path:
    """Lay `artifact` out as huggingface_hub's cache does: blobs by hash, snapshot symlinks, refs/main."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SHA
    for source in (p for p in artifact.rglob("*") if p.is_file()):
        rel = source.relative_to(artifact).as_posix()
        if rel == skip:
            continue
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(source.read_bytes())
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return snapshot


OFFLINE_SCRIPT = """
import warnings, torch, pytest
from core.artifacts import hub
from core.artifacts.hub import load_bases
from core.artifacts.store import load_artifact
from core.errors import BasesError

assert str(hub.pull_artifact("org/bases", SHA)) == SNAPSHOT
local = load_artifact(LOCAL)
for source in (dict(source="org/bases", revision=SHA), dict(source="org/bases@" + SHA)):
    pulled = load_bases(**source, expect_model=local.manifest["model"])
    assert str(pulled.path) == SNAPSHOT
    for group in local.names("tensors"):
        got, want = pulled.tensors(group), local.tensors(group)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert pulled.table("head_texts") == local.table("head_texts")
with pytest.warns(UserWarning, match="not pinned"):
    assert str(hub.pull_artifact("org/bases", "main", allow_unpinned=True)) == SNAPSHOT
with pytest.raises(BasesError, match="tensors/neurons.safetensors: missing"):
    load_bases("org/partial@" + SHA)
with pytest.raises(BasesError) as caught:
    load_bases("org/uncached@" + SHA)
message = str(caught.value)
for part in ("not in the local Hugging Face cache", "HF_HUB_OFFLINE=1", "python -m core bases build"):
    assert part in message, message
print("offline ok")
"""


def test_pull_and_load_from_a_prepopulated_hub_cache_offline(artifact_dir, tmp_path):
    cache = tmp_path / "hub"
    snapshot = populate_hub_cache(cache, "org/bases", artifact_dir)
    populate_hub_cache(cache, "org/partial", artifact_dir, skip="tensors/neurons.safetensors")
    script = f"SHA = {SHA!r}\nSNAPSHOT = {str(snapshot)!r}\nLOCAL = {str(artifact_dir)!r}\n" + OFFLINE_SCRIPT
    before = sorted(cache.rglob("*"))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "offline ok" in result.stdout
    assert sorted(cache.rglob("*")) == before  # the cache was only read
