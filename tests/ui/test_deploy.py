"""spaces/deploy.py writes README front-matter that the Hub accepts (the Spaces configuration reference)."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from tests.browser import ROOT

SHA = "0123456789abcdef0123456789abcdef01234567"
# The Spaces configuration reference (huggingface.co/docs/hub/spaces-config-reference): keys and their types.
KEYS = {"title": str, "emoji": str, "colorFrom": str, "colorTo": str, "sdk": str, "sdk_version": str,
        "python_version": str, "app_file": str, "app_port": int, "base_path": str, "fullWidth": bool, "header": str,
        "short_description": str, "models": list, "datasets": list, "tags": list, "thumbnail": str, "pinned": bool,
        "hf_oauth": bool, "hf_oauth_scopes": list, "hf_oauth_expiration_minutes": int, "disable_embedding": bool,
        "startup_duration_timeout": str, "custom_headers": dict, "preload_from_hub": list, "license": str,
        "suggested_hardware": str, "suggested_storage": str}
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@pytest.fixture(scope="module")
def deploy():
    spec = importlib.util.spec_from_file_location("clipscope_deploy_test", ROOT / "spaces" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check(matter: dict) -> None:
    from huggingface_hub import SpaceHardware

    unknown = set(matter) - set(KEYS)
    assert not unknown, f"keys the Hub does not know: {unknown}"
    for key, value in matter.items():
        assert isinstance(value, KEYS[key]), (key, value)
    assert matter["sdk"] == "gradio" and matter["app_file"] == "app.py"
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", matter["sdk_version"]) and re.fullmatch(r"3\.\d+", matter["python_version"])
    assert matter["colorFrom"] in COLOURS and matter["colorTo"] in COLOURS
    assert 0 < len(matter["short_description"]) <= 60  # the Hub refuses longer
    assert len(matter["emoji"]) == 1 and not matter["emoji"].isascii()
    assert matter["title"].startswith("clipscope") and len(matter["title"]) <= 50
    assert matter["suggested_hardware"] in {h.value for h in SpaceHardware}
    assert all(isinstance(t, str) and re.fullmatch(r"[a-z0-9-]+", t) for t in matter["tags"])
    assert all(REPO_ID.fullmatch(m) for m in matter.get("models", []) + matter.get("datasets", []))
    for item in matter.get("preload_from_hub", []):
        parts = item.split(" ")
        assert len(parts) == 3 and REPO_ID.fullmatch(parts[0]) and parts[1] != "*"
        assert re.fullmatch(r"[0-9a-f]{40}", parts[2]), "preloads are pinned to a commit"
    assert "suggested_storage" not in matter and "hardware" not in matter  # ignored by the Hub


TABS = ["decomposition", "heads", "neurons", "circuits", "segmentation", "adversarial", "suite"]


@pytest.mark.parametrize("tab", TABS)
def test_front_matter_for_the_offline_default(deploy, tab):
    matter = deploy.front_matter(tab)
    check(matter)
    assert matter["suggested_hardware"] == "cpu-basic" and "preload_from_hub" not in matter
    text = deploy.card_text(tab, matter, deploy.card_body(tab))
    assert yaml.safe_load(text.split("---\n")[1]) == matter
    for arxiv in deploy.CARDS[tab].papers:  # the papers' links, which list the Space on the papers' pages
        assert f"https://arxiv.org/abs/{arxiv}" in text


def test_front_matter_for_a_real_clip_with_hub_bases(deploy):
    matter = deploy.front_matter("suite", model="ViT-B-16/laion2b_s34b_b88k", model_revision=SHA,
                                 bases=f"org/clip-bases@{SHA}")
    check(matter)
    assert matter["models"] == ["laion/CLIP-ViT-B-16-laion2B-s34B-b88K"]
    assert matter["datasets"] == ["org/clip-bases"]
    # The documented form ("repo file1,file2 sha") covers model repos; bases are fetched pinned on first use.
    assert matter["preload_from_hub"] == [f"laion/CLIP-ViT-B-16-laion2B-s34B-b88K open_clip_model.safetensors {SHA}"]
    assert matter["suggested_hardware"] == "zero-a10g"
    with pytest.raises(SystemExit, match="pinned"):
        deploy.front_matter("heads", model="ViT-B-16/laion2b_s34b_b88k")
    with pytest.raises(SystemExit, match="pinned"):
        deploy.front_matter("heads", bases="org/clip-bases@main")


def test_committed_cards_are_the_generated_ones(deploy):
    for tab in TABS[:-1]:
        committed = (ROOT / "spaces" / tab / "README.md").read_text(encoding="utf-8")
        assert committed == deploy.card_text(tab, deploy.front_matter(tab), deploy.card_body(tab)), (
            f"spaces/{tab}/README.md is stale: run python spaces/deploy.py --write-cards")


def test_the_whole_suite_stages_as_one_space(deploy, tmp_path):
    folder = deploy.stage("suite", tmp_path / "space")
    assert (folder / "app.py").is_file() and (folder / "spaces" / "ui_common.py").is_file()
    assert (folder / "spaces" / "heads" / "app.py").is_file() and not (folder / "spaces" / "deploy.py").exists()
    assert not (folder / "spaces" / "__init__.py").exists()
    requirements = (folder / "requirements.txt").read_text()
    assert "gradio" not in requirements and "spaces" not in requirements and "torch==" in requirements
    check(yaml.safe_load((folder / "README.md").read_text(encoding="utf-8").split("---\n")[1]))


@pytest.mark.parametrize("tab", TABS[:-1])
def test_each_tab_stages_alone(deploy, tab, tmp_path):
    folder = deploy.stage(tab, tmp_path / "space")
    assert (folder / "app.py").is_file() and (folder / "ui_common.py").is_file() and (folder / "core").is_dir()
    assert not (folder / "spaces").exists() and not (folder / "__init__.py").exists()
    check(yaml.safe_load((folder / "README.md").read_text(encoding="utf-8").split("---\n")[1]))


def _pin(requirements: str, name: str) -> tuple[int, ...]:
    line = next(line for line in requirements.splitlines() if line.startswith(f"{name}=="))
    return tuple(int(part) for part in line.split("==")[1].split(".")[:2])


def test_a_zerogpu_space_pins_a_torch_that_zerogpu_runs(deploy, tmp_path):
    root = (ROOT / "requirements.txt").read_text()
    cpu = deploy.stage("heads", tmp_path / "cpu")
    assert [l for l in (cpu / "requirements.txt").read_text().splitlines() if l.startswith("torch==")]
    assert _pin((cpu / "requirements.txt").read_text(), "torch") == _pin(root, "torch")  # CPU Spaces keep the root pins
    zero = deploy.stage("suite", tmp_path / "zero", model="ViT-B-16/laion2b_s34b_b88k", model_revision=SHA)
    requirements = (zero / "requirements.txt").read_text()
    assert (2, 8) <= _pin(requirements, "torch") <= (2, 11)  # huggingface.co/docs/hub/spaces-zerogpu
    assert _pin(requirements, "torchvision") == (0, _pin(requirements, "torch")[1] + 15)  # torchvision 0.N+15 <-> torch 2.N
    others = lambda text: sorted(l for l in text.splitlines() if not l.startswith(("torch", "gradio", "#")) and l)
    assert others(requirements) == others(root)
