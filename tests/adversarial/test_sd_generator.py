"""The sd generator on the real diffusers pipeline class with tiny random components, offline."""

import numpy as np
import pytest

from core.adversarial.generators import StableDiffusionGenerator, load_sd_pipeline, sd_gpu_seconds
from core.errors import ConfigError, WeightsError
from tests.adversarial.tiny_sd import tiny_pipeline

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_two_steps_at_32px_are_deterministic_per_seed(pipe):
    generator = StableDiffusionGenerator(pipe, steps=2, size=32, checkpoint="tiny")
    prompts = ["a square on a dotted background", "a photo of a cat"]
    first = generator.generate(prompts, seeds=[0, 1])
    again = generator.generate(prompts, seeds=[0, 1])
    assert [im.size for im in first.images] == [(32, 32), (32, 32)]
    for a, b in zip(first.images, again.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = generator.generate(prompts[:1], seeds=[2])
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    # a seed gives the same image whatever the batch it is drawn in
    alone = generator.generate(prompts[1:], seeds=[1])
    assert np.array_equal(np.asarray(first.images[1]), np.asarray(alone.images[0]))
    assert first.valid == [True, True] and first.seeds == [0, 1]
    assert "safety checker none in this checkpoint" in generator.label and "2 steps" in generator.label


def test_loads_through_the_production_path_from_a_folder_and_a_pinned_cache(pipe, tmp_path, monkeypatch):
    folder = tmp_path / "tiny-sd"
    pipe.save_pretrained(folder)
    loaded = load_sd_pipeline(str(folder), None)
    reference = StableDiffusionGenerator(pipe, steps=2, size=32).generate(["a dog"], [5]).images[0]
    image = StableDiffusionGenerator(loaded, steps=2, size=32).generate(["a dog"], [5]).images[0]
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert np.array_equal(np.asarray(reference), np.asarray(image))
    # A Hub id at a pinned sha, read from the Hugging Face cache with the Hub off.
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--acme--tiny-sd" / "snapshots" / SHA
    snapshot.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(folder, snapshot)
    (tmp_path / "hub" / "models--acme--tiny-sd" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-sd" / "refs" / "main").write_text(SHA)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = load_sd_pipeline("acme/tiny-sd", SHA, local_files_only=True)
    image = StableDiffusionGenerator(cached, steps=2, size=32).generate(["a dog"], [5]).images[0]
    assert np.array_equal(np.asarray(reference), np.asarray(image))


def test_offline_missing_checkpoint_says_how_to_supply_it():
    with pytest.raises(WeightsError, match="hf download stabilityai/sd-turbo --revision") as err:
        load_sd_pipeline("stabilityai/sd-turbo", "b261bac6fd2cf515557d5d0707481eafa0485ec2", local_files_only=True)
    assert "--generator world" in str(err.value)
    with pytest.raises(ConfigError, match="pin a revision"):
        load_sd_pipeline("stabilityai/sd-turbo", None)


def test_bad_generation_settings_and_gpu_duration(pipe):
    with pytest.raises(ConfigError, match="multiple of 8"):
        StableDiffusionGenerator(pipe, steps=2, size=30)
    with pytest.raises(ConfigError, match="steps"):
        StableDiffusionGenerator(pipe, steps=0)
    assert sd_gpu_seconds(4, 100) > sd_gpu_seconds(1, 100) > sd_gpu_seconds(1, 1) > 0
