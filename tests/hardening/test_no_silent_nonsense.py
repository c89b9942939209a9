"""Inputs that used to give a silently wrong answer (NaN printed as a number, 0% for everything, a black image,
"0 activated neurons") or a crash deep inside are refused where they enter, with a CoreError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import BasesError, ConfigError, ImageError, TextError, WeightsError

MODEL = "Tiny-ViT/none"


@pytest.mark.parametrize("name", ["nan_weights", "inf_weights"])
def test_non_finite_weights_are_refused_at_load(hostile, name):
    from core.engine.models import load_clip

    with pytest.raises(WeightsError, match="NaN or infinite values \\(first in visual.proj\\)"):
        load_clip(f"Tiny-ViT/{getattr(hostile, name)}")


def test_a_text_file_given_as_a_checkpoint_is_a_weights_error(hostile):
    from core.engine.models import load_clip

    with pytest.raises(WeightsError, match="could not load weights from .*plain.pt"):
        load_clip(f"Tiny-ViT/{hostile.plain_pt}")


def test_toy_evaluate_refuses_no_scenes():
    from core.engine.models import load_clip
    from core.world.toy import evaluate_toy

    bundle = load_clip(MODEL)
    with pytest.raises(ConfigError, match="at least 1"):
        evaluate_toy(bundle, n=0)
    from core.world.scenes import sample_scenes

    pair = next(seed for seed in range(100) if sample_scenes(1, seed, split="heldout")[0].count == 2)
    with pytest.raises(ConfigError, match="hold none that position applies to"):  # no single object: not "0%"
        evaluate_toy(bundle, n=1, seed=pair)


@pytest.mark.parametrize("values, message", [
    (np.full((8, 8), np.nan, dtype=np.float32), "NaN or infinite"),
    (np.full((8, 8), np.inf, dtype=np.float32), "NaN or infinite"),
    (np.full((8, 8), -2.0, dtype=np.float32), "negative"),
    (np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "negative"),
    (np.where(np.eye(8, dtype=bool), np.nan, 0.5).astype(np.float32), "NaN or infinite"),
])
def test_float_images_without_a_meaning_as_brightness_are_refused(tmp_path, values, message):
    from core.engine.images import load_image

    path = tmp_path / "image.tiff"
    Image.fromarray(values, mode="F").save(path)
    with pytest.raises(ImageError, match=message):
        load_image(path)
    with pytest.raises(ImageError, match=message):
        load_image(values)


def test_a_well_formed_float_image_still_loads(tmp_path):
    from core.engine.images import load_image

    values = np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "ok.tiff")
    image = load_image(tmp_path / "ok.tiff")
    assert image.mode == "RGB" and np.asarray(image).max() == 255 and np.asarray(image).min() == 0


def test_pipes_and_devices_are_never_opened_as_images(hostile):
    from core.engine.images import load_image

    for path in (hostile.fifo, hostile.zero_link, "/dev/zero"):
        with pytest.raises(ImageError, match="regular file"):
            load_image(path)


@pytest.mark.parametrize("template, message", [("a {0} photo", "exactly one"), ("a {x} of {}", "exactly one"),
                                               ("{} and {}", "exactly one"), ("no field", "exactly one"),
                                               ("a {} {", "malformed"), ("a {!r}", "exactly one"),
                                               ("a {:>10}", "exactly one")])
def test_templates_need_exactly_one_plain_field(template, message):
    from core.engine.text import check_template, format_templates

    with pytest.raises(TextError, match=message):
        check_template(template)
    with pytest.raises(TextError):
        format_templates(["cat"], [template])
    assert format_templates(["cat"], ["a {{literal}} {}"]) == ["a {literal} cat"]


@pytest.mark.parametrize("texts, message", [(["caf\udce9"], "not valid UTF-8"), (["x" * 20_000], "over the limit"),
                                            ([""], "empty"), ("one string", "single string"), ([], "no texts")])
def test_texts_are_checked_before_the_tokenizer(texts, message):
    from core.engine.text import check_texts

    with pytest.raises(TextError, match=message):
        check_texts(texts)


def test_text_pools_refuse_pipes_binary_and_oversized_lines(hostile):
    from core.engine.text import read_text_pool

    for path, message in ((hostile.fifo_txt, "regular file"), (hostile.latin1, "not UTF-8"),
                          (hostile.long_line, "over the limit"), (hostile.blank_txt, "no non-empty"),
                          (hostile.folder, "folder")):
        with pytest.raises(TextError, match=message):
            read_text_pool(path)


# ---------------------------------------------------------------- artifacts

LOAD_TIME_ONLY = {"wrong_shape_rehashed", "index_out_of_range", "layers_not_ints", "texts_not_list"}
DEEP_ONLY = {"nan_tensor", "inf_threshold"}


def test_verify_names_each_kind_of_damage(hostile):
    import re

    from core.artifacts.store import verify_artifact

    assert verify_artifact(hostile.bases, deep=True) == []
    for name, (folder, expect) in hostile.tampered.items():
        problems = verify_artifact(folder, deep=True)
        if name in LOAD_TIME_ONLY:
            continue
        assert problems and re.search(expect, problems[0], re.IGNORECASE), (name, problems)
        if name not in DEEP_ONLY:
            assert verify_artifact(folder), name  # the check on every load sees it too


def test_every_damaged_artifact_is_refused_where_it_is_used(hostile):
    import re

    from core.artifacts.store import load_artifact
    from core.engine.models import load_clip
    from core.neurons.bases import load_neuron_basis

    info = load_clip(MODEL).info
    basis = load_neuron_basis(load_artifact(hostile.bases, expect_model=info.identity()), 1, info)
    assert basis.stats.pcs.shape == (info.d_mlp, info.d_out)
    for name, (folder, expect) in hostile.tampered.items():
        with pytest.raises(BasesError) as caught:
            load_neuron_basis(load_artifact(folder, expect_model=info.identity()), 1, info)
        assert re.search(expect, str(caught.value), re.IGNORECASE), (name, str(caught.value))


def test_a_link_out_of_the_folder_is_refused_even_with_matching_hashes(hostile):
    from core.artifacts.store import verify_artifact

    folder, _ = hostile.tampered["data_to_system_file"]
    problems = verify_artifact(folder)
    assert any("outside the artifact folder" in problem for problem in problems)


def test_nan_metric_written_by_the_library_is_refused(tmp_path):
    from core.artifacts.store import ArtifactWriter

    writer = ArtifactWriter(tmp_path / "b", model={"spec": "x", "arch": "a", "pretrained": "p",
                                                   "weights_sha256": None, "random_init": True})
    writer.add_tensors("g", {"t": torch.ones(2)})
    with pytest.raises(BasesError, match="finite"):
        writer.finalize(metrics={"m": float("inf")})


def test_textspan_groups_with_inconsistent_shapes_are_refused(tmp_path):
    from core.artifacts.store import ArtifactWriter, load_artifact, text_pool_identity
    from core.heads.bases import artifact_result, group_name

    writer = ArtifactWriter(tmp_path / "b", model={"spec": "x", "arch": "a", "pretrained": "p",
                                                   "weights_sha256": None, "random_init": True},
                            text_pool=text_pool_identity(["a", "b", "c"], "p"), algorithms={"textspan": {}})
    good = {"indices": torch.tensor([0, 1]), "variance_explained": torch.ones(2), "cumulative": torch.ones(2),
            "mean": torch.zeros(4), "directions": torch.zeros(2, 4), "total_variance": torch.ones(1),
            "rank": torch.tensor([2])}
    writer.add_tensors(group_name((0, 0)), good)
    writer.add_tensors(group_name((0, 1)), {**good, "directions": torch.zeros(2, 5), "mean": torch.zeros(5)})
    writer.add_tensors(group_name((0, 2)), {**good, "indices": torch.tensor([0, 7])})
    writer.finalize()
    artifact = load_artifact(tmp_path / "b")
    artifact_result(artifact, [(0, 0)])
    with pytest.raises(BasesError, match="d_out = 4"):
        artifact_result(artifact, [(0, 0), (0, 1)])
    with pytest.raises(BasesError, match="outside 0..2"):
        artifact_result(artifact, [(0, 2)])
