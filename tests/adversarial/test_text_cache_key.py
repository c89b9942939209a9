"""The text-embedding cache is keyed by the weights in use: a model changed in memory never gets stale embeddings."""

import copy
from dataclasses import replace

import torch

from core.engine.models import load_clip
from core.engine.text import encode_texts, model_key

TEXTS = ["a red circle", "a square on a dotted background", "two stars"]


def test_a_model_trained_in_memory_under_the_same_identity_gets_its_own_embeddings():
    toy = load_clip("toy")
    shipped = encode_texts(toy, TEXTS)  # now cached on disk under the toy's identity
    trained = replace(toy, model=copy.deepcopy(toy.model))
    assert trained.info == toy.info  # same identity: spec, weights file, hash
    with torch.no_grad():  # an optimiser step, as training would do it
        for name, param in trained.model.named_parameters():
            if not name.startswith("visual."):
                param.add_(0.05 * torch.randn_like(param))
    assert model_key(trained) != model_key(toy)
    embeddings = encode_texts(trained, TEXTS)
    assert torch.allclose(embeddings, encode_texts(trained, TEXTS, use_cache=False), atol=1e-6)
    assert not torch.allclose(embeddings, shipped, atol=1e-3)
    # the shipped model still reads its own entry
    assert torch.equal(encode_texts(toy, TEXTS), shipped)


def test_the_key_follows_in_place_edits_of_one_model_object():
    toy = load_clip("toy")
    model = copy.deepcopy(toy.model)
    bundle = replace(toy, model=model)
    before = model_key(bundle)
    assert model_key(bundle) == before  # stable while nothing changes
    with torch.inference_mode():
        model.token_embedding.weight.mul_(1.5)
    assert model_key(bundle) != before
    model.load_state_dict(toy.model.state_dict())  # back to the shipped weights: the shipped key again
    assert model_key(bundle) == model_key(toy)
    # the image tower does not change text embeddings, and does not change the key
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert model_key(bundle) == model_key(toy)
