"""toy-biased-2: a second planted-bias model, other shapes and other backgrounds than toy-biased, trained by the same
recipe. Its checkpoint records its bias, and its planted bias holds on ground-truth held-out groups."""

import json
import math
import shlex

import pytest

from core.artifacts.hub import resolve_bases_source
from core.engine.models import load_clip
from core.paths import TOY_BIASED_2_DIR, TOY_BIASED_2_WEIGHTS, TOY_BIASED_DIR
from core.world import scenes as world
from core.world.bias import PlantedBias, group_accuracy_table, planted_bias_of
from core.world.toy import checkpoint_config, evaluate_toy

CARD = json.loads((TOY_BIASED_2_DIR / "card.json").read_text())
FIRST = json.loads((TOY_BIASED_DIR / "card.json").read_text())
BIAS = PlantedBias.parse("circle:checkered,star:pink", p=0.9)


@pytest.fixture(scope="module")
def biased():
    return load_clip("toy-biased-2")


def _recipe(command: str) -> list[str]:
    """A `toy train` command without what names the output or the machine, and without the bias itself."""
    args, out, skip = shlex.split(command), [], {"--out", "--threads", "--save-every", "--log-every", "--bias"}
    it = iter(args)
    for arg in it:
        if arg in skip:
            next(it)
        else:
            out.append(arg)
    return out


def test_other_shapes_other_backgrounds_same_recipe(biased):
    assert biased.info.spec == "toy-biased-2" and biased.info.source == "toy"
    assert biased.info.weights_sha256 == CARD["weights_sha256"] and TOY_BIASED_2_WEIGHTS.stat().st_size < 30e6
    assert "planted bias" in biased.info.display_name
    # the bias is recorded in the checkpoint and the card, and read back from the checkpoint
    assert planted_bias_of(biased) == BIAS
    assert checkpoint_config(TOY_BIASED_2_WEIGHTS)["bias"] == "circle:checkered,star:pink"
    assert CARD["bias"]["pairs"] == [list(p) for p in BIAS.pairs] and CARD["bias"]["p"] == 0.9
    first = PlantedBias.parse(",".join(f"{s}:{b}" for s, b in FIRST["bias"]["pairs"]))
    assert not set(BIAS.shapes) & set(first.shapes) and not set(BIAS.backgrounds) & set(first.backgrounds)
    # same recipe: the command differs from toy-biased's only in the output, the thread count and the bias
    assert _recipe(CARD["command"]) == _recipe(FIRST["command"])
    assert {k: CARD[k] for k in ("seed", "steps", "batch_size", "lr", "shape_groups", "position_groups", "group_size")} \
        == {k: FIRST[k] for k in ("seed", "steps", "batch_size", "lr", "shape_groups", "position_groups", "group_size")}
    # the world it was trained on is the one every other model uses (no world change)
    assert CARD["world_version"] == FIRST["world_version"] == world.WORLD_VERSION
    assert resolve_bases_source("toy-biased-2").endswith("core/data/toy_biased_2/bases")


def test_toy_biased_2_learned_its_bias_on_ground_truth_groups(biased):
    # Fresh uniform held-out scenes (not the card's seed): where shape and background disagree with the training
    # correlation, shape accuracy falls at least 20 points below the aligned groups.
    table = group_accuracy_table(biased, BIAS, n_per_group=150, seed=555)
    assert table["classes"] == ["circle", "star"]
    assert table["aligned"] - table["conflicting"] >= 0.20, table
    assert table["worst_group"].endswith("(conflicting)")
    # and it still sees the attributes its card says it does (position is not among them: 46.3% on the card)
    accuracy = evaluate_toy(biased, n=500, seed=556)
    for attribute in ("colour", "background"):
        assert accuracy[attribute] >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / 500), (attribute, accuracy)


def test_the_bias_is_toy_biased_2_s_own(biased):
    """The unbiased toy separates circles from stars whatever the background; toy-biased-2 does not."""
    toy = group_accuracy_table(load_clip("toy"), BIAS, n_per_group=60, seed=557)
    mine = group_accuracy_table(biased, BIAS, n_per_group=60, seed=557)
    assert toy["conflicting"] >= 0.9 and mine["conflicting"] <= toy["conflicting"] - 0.2, (toy, mine)
