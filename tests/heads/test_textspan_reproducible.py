"""TextSpan on real models gives the same texts whatever the image order or thread count, and equals the literal
port at the same (numerical) rank: the toy model end to end, random-weight ViT-B-16 on its head outputs."""

from contextlib import contextmanager

import pytest
import torch

from core.engine.models import load_clip
from core.engine.text import encode_texts
from core.heads.outputs import default_heads, head_outputs_from_batches, pil_batches
from core.heads.textspan import CRITERIA, RANK_RTOL, text_span, text_span_reference
from core.world.scenes import heldout_scenes, load_toy_texts


@contextmanager
def threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _outputs(bundle, images, heads):
    return head_outputs_from_batches(bundle, pil_batches(bundle, images), heads, capacity=len(images)).outputs


def _numerical_ranks(outputs):
    singular = torch.linalg.svdvals(outputs.double())
    return (singular > RANK_RTOL * singular[:, :1]).sum(1).tolist()


@pytest.fixture(scope="module")
def toy_fits():
    bundle = load_clip("toy")
    heads = [(layer, head) for layer in range(bundle.info.n_layers) for head in range(bundle.info.n_heads)]
    images = [image for image, _, _ in heldout_scenes(120, seed=5)]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0)).tolist()
    texts = encode_texts(bundle, load_toy_texts()).cpu()
    outputs = _outputs(bundle, images, heads)
    permuted = _outputs(bundle, [images[i] for i in order], heads)
    with threads(1):
        one_thread = _outputs(bundle, images, heads)
    return outputs, permuted, one_thread, texts


@pytest.mark.slow  # over 20 s on 2 cores: the full suite runs it, `-m "not slow"` leaves it out
@pytest.mark.parametrize("criterion", CRITERIA)
def test_toy_textspan_is_reproducible(toy_fits, criterion):
    outputs, permuted, one_thread, texts = toy_fits
    result = text_span(outputs, texts, n_texts=20, criterion=criterion)
    # 24-wide heads plus 3 offsets: the span is capped well below the requested 80.
    assert result.params["rank"] == 80 and result.params["ranks"] == _numerical_ranks(outputs)
    assert all(rank <= 27 for rank in result.params["ranks"])
    assert torch.equal(text_span(permuted, texts, n_texts=20, criterion=criterion).text_indices, result.text_indices)
    with threads(1):
        assert torch.equal(text_span(one_thread, texts, n_texts=20, criterion=criterion).text_indices,
                           result.text_indices)
    literal, _ = text_span_reference(outputs, texts, n_texts=20, criterion=criterion, rank=result.params["ranks"])
    assert torch.equal(literal.text_indices, result.text_indices)
    torch.testing.assert_close(literal.variance_explained, result.variance_explained, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_random_vit_b16_textspan_is_reproducible():
    bundle = load_clip("ViT-B-16/none")
    heads = default_heads(bundle.info)  # 48 heads of the last 4 layers
    images = [image for image, _, _ in heldout_scenes(72, seed=6)]
    outputs = _outputs(bundle, images, heads)
    # A random tower's text embeddings are random directions: seeded unit vectors stand in for them.
    texts = torch.nn.functional.normalize(torch.randn(300, bundle.info.d_out, generator=torch.Generator().manual_seed(7)),
                                          dim=-1)
    result = text_span(outputs, texts, n_texts=20, rank=72)
    ranks = result.params["ranks"]
    assert ranks == _numerical_ranks(outputs) and all(rank <= bundle.info.d_head + 3 for rank in ranks)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    assert torch.equal(text_span(outputs[:, order], texts, n_texts=20, rank=72).text_indices, result.text_indices)
    with threads(1):
        assert torch.equal(text_span(outputs, texts, n_texts=20, rank=72).text_indices, result.text_indices)
    last_layer = slice(36, 48)  # the literal port is slow: the 12 heads of the last layer
    literal, _ = text_span_reference(outputs[last_layer], texts, n_texts=20, rank=ranks[last_layer])
    assert torch.equal(literal.text_indices, result.text_indices[last_layer])
