"""Text side: batched cached embeddings, zero-shot classifiers, scores that sum to cosine."""

import pytest
import torch

from core.engine.contributions import direct_effects, fold_weights
from core.errors import TextError
from core.engine.text import (cache_dir, clean_texts, component_scores, encode_texts, model_key, read_text_pool,
                       texts_sha256, zero_shot_classifier)
from core.engine.trace import trace_vit
from tests.conftest import random_pixels


def test_embeddings_are_unit_norm_and_batched_consistently(tiny):
    texts = [f"a photo of thing {i}" for i in range(7)]
    whole = encode_texts(tiny, texts, batch_size=100, use_cache=False)
    pieces = encode_texts(tiny, texts, batch_size=3, use_cache=False)
    assert whole.shape == (7, tiny.info.d_out)
    assert torch.allclose(whole.norm(dim=-1), torch.ones(7), atol=1e-5)
    assert torch.allclose(whole, pieces, atol=1e-5)
    with torch.inference_mode():
        direct = torch.nn.functional.normalize(tiny.model.encode_text(tiny.tokenizer(texts[:2])), dim=-1)
    assert torch.allclose(whole[:2], direct, atol=1e-5)


def test_disk_cache_is_keyed_by_model_and_texts(tiny):
    texts = ["a red circle", "a blue square"]
    first = encode_texts(tiny, texts)
    path = cache_dir() / "text" / model_key(tiny) / f"{texts_sha256(texts)}.safetensors"
    assert path.is_file()
    # a cached entry is read back, not recomputed: poison it and see it used
    from safetensors.torch import save_file
    save_file({"embeddings": torch.zeros_like(first)}, path)
    assert torch.equal(encode_texts(tiny, texts), torch.zeros_like(first))
    # a different text list is a different entry; a broken entry is recomputed
    assert not torch.equal(encode_texts(tiny, texts[::-1]), torch.zeros(2, tiny.info.d_out))
    path.write_bytes(b"not a safetensors file")
    assert torch.allclose(encode_texts(tiny, texts), first, atol=1e-6)


def test_zero_shot_classifier_averages_normalised_templates(tiny):
    classifier = zero_shot_classifier(tiny, ["cat", "dog"], ["a photo of a {}.", "a {}."], use_cache=False)
    embeddings = encode_texts(tiny, ["a photo of a cat.", "a cat.", "a photo of a dog.", "a dog."], use_cache=False)
    expected = torch.nn.functional.normalize(embeddings.reshape(2, 2, -1).mean(1), dim=-1)
    assert torch.allclose(classifier, expected, atol=1e-6)


def test_scores_of_all_components_sum_to_cosine(tiny):
    pixels = random_pixels(tiny, batch=2)
    visual = tiny.model.visual
    effects = direct_effects(trace_vit(visual, pixels), fold_weights(visual))
    texts = encode_texts(tiny, ["a red circle", "two squares", "a dog"])
    total = (component_scores(effects.heads, texts, effects.norm).sum((1, 2))
             + component_scores(effects.mlps, texts, effects.norm).sum(1)
             + component_scores(effects.embedding_term, texts, effects.norm))
    with torch.inference_mode():
        image = torch.nn.functional.normalize(tiny.model.encode_image(pixels), dim=-1)
    assert torch.allclose(total, image @ texts.T, atol=1e-5)


def test_bad_texts_and_pools(tiny, tmp_path):
    with pytest.raises(TextError, match="empty"):
        encode_texts(tiny, ["fine", "  "])
    with pytest.raises(TextError, match="no texts"):
        encode_texts(tiny, [])
    kept, problems = clean_texts(["a", "", "b", "a", "  c  "])
    assert kept == ["a", "b", "c"] and len(problems) == 2
    pool = tmp_path / "pool.txt"
    pool.write_text("one\n\ntwo\none\n")
    texts, problems = read_text_pool(pool)
    assert texts == ["one", "two"] and any("duplicate" in p for p in problems)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(TextError, match="no non-empty"):
        read_text_pool(tmp_path / "empty.txt")
    with pytest.raises(TextError, match="not found"):
        read_text_pool(tmp_path / "missing.txt")
