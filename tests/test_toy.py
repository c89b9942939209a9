"""The shipped toy CLIP: loads through the standard path, meets its model card, trains, fails clearly."""

import json
import math

import pytest
import torch

from core.contributions import direct_effects, fold_weights
from core.errors import WeightsError
from core.models import TOY_WEIGHTS, load_clip
from core.toy import TARGETS, TrainConfig, evaluate_toy, to_pixels, train_toy
from core.trace import trace_vit
from core import world

CARD = json.loads((TOY_WEIGHTS.parent / "card.json").read_text())
N_FRESH = 1000


def margin(accuracy: float, n: int = N_FRESH // 2) -> float:
    """Fresh scenes differ from the card's: allow three standard errors of a binomial estimate, plus a point."""
    return 0.01 + 3 * (accuracy * (1 - accuracy) / n) ** 0.5


@pytest.fixture(scope="module")
def toy():
    return load_clip("toy")


def test_toy_is_the_local_file_loaded_like_any_checkpoint(toy):
    assert toy.info.source == "toy" and not toy.info.random_init
    assert toy.info.weights_sha256 == CARD["weights_sha256"]
    assert TOY_WEIGHTS.stat().st_size < 30e6
    assert "toy" in toy.info.display_name
    same = load_clip(f"{toy.info.arch}/{TOY_WEIGHTS}")
    for (name, a), (_, b) in zip(toy.model.state_dict().items(), same.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_toy_meets_its_model_card_on_fresh_heldout_scenes(toy):
    accuracy = evaluate_toy(toy, n=N_FRESH, seed=777)
    for attribute in ("shape", "colour", "position", "background", "count"):
        card = CARD["zero_shot"][attribute]
        assert accuracy[attribute] >= card - margin(card), (attribute, accuracy)
    # the card states plainly which of the project's targets the model meets
    card_text = (TOY_WEIGHTS.parent / "MODEL_CARD.md").read_text()
    for attribute, target in TARGETS.items():
        verdict = "NOT met" if CARD["zero_shot"][attribute] < target else "met"
        assert f"- {attribute}: target {100 * target:.0f}%, measured {100 * CARD['zero_shot'][attribute]:.1f}%: {verdict}" in card_text


def test_decomposition_of_the_toy_model_is_exact(toy):
    images, _ = world.render_batch(world.sample_scenes(4, seed=5, split="heldout"))
    pixels = to_pixels(images)
    visual = toy.model.visual
    with torch.inference_mode():
        expected = toy.model.encode_image(pixels)
    for convention in ("paper", "centered"):
        effects = direct_effects(trace_vit(visual, pixels, keep_values=True), fold_weights(visual),
                                 convention=convention, spatial=True)
        assert (effects.total() - expected).norm() / expected.norm() < 1e-5


def test_training_smoke_loss_falls(tmp_path):
    summary = train_toy(tmp_path / "smoke.safetensors", TrainConfig(steps=150, batch_size=32, warmup=20, lr=2e-3),
                        log=None)
    losses = summary["losses"]
    uniform = math.log(32)  # the loss of a model that cannot tell the batch's pairs apart
    assert sum(losses[-10:]) / 10 < uniform - 0.3 < sum(losses[:10]) / 10
    assert (tmp_path / "smoke.safetensors").is_file()


def test_corrupt_or_truncated_toy_weights_are_named(tmp_path):
    truncated = tmp_path / "toy_clip.safetensors"
    truncated.write_bytes(TOY_WEIGHTS.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="toy_clip.safetensors"):
        load_clip(f"Toy-ViT-S8-64/{truncated}")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pt"):
        load_clip(f"Toy-ViT-S8-64/{garbage}")
    other = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in load_clip("Tiny-ViT/none").model.state_dict().items()}, other)
    with pytest.raises(WeightsError, match="another architecture|tiny.safetensors"):
        load_clip(f"Toy-ViT-S8-64/{other}")
