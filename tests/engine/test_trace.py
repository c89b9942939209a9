"""The traced forward against the stock open_clip forward and its own modules, used as referees."""

import pytest
import torch

from core.errors import ImageError, IndexRangeError, UnsupportedModelError
from core.engine.models import load_clip
from core.engine.trace import trace_vit
from tests.conftest import TINY_SPECS, random_pixels

PARITY_SPECS = TINY_SPECS + ("ViT-B-32/none", "ViT-B-16/none", pytest.param("ViT-L-14/none", marks=pytest.mark.slow),
                             "ViT-B-32-quickgelu/none")  # ViT-L-14 takes over 20 s on 2 cores


@pytest.mark.parametrize("spec", PARITY_SPECS)
def test_traced_embedding_equals_encode_image(spec):
    bundle = load_clip(spec)
    pixels = random_pixels(bundle, batch=2 if "L-14" not in spec else 1)
    with torch.inference_mode():
        expected = bundle.model.encode_image(pixels)
    trace = trace_vit(bundle.model.visual, pixels)
    assert torch.allclose(trace.embedding, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    assert (trace.embedding - expected).norm() / expected.norm() < 1e-5


@pytest.mark.parametrize("spec", TINY_SPECS)
def test_recorded_internals_match_module_referees(spec):
    bundle = load_clip(spec)
    visual = bundle.model.visual
    pixels = random_pixels(bundle)
    captured = {}
    hooks = []
    for index, block in enumerate(visual.transformer.resblocks):
        hooks.append(block.ln_1.register_forward_hook(lambda m, i, o, index=index: captured.__setitem__(("ln1", index), (i[0], o))))
        hooks.append(block.mlp.gelu.register_forward_hook(lambda m, i, o, index=index: captured.__setitem__(("gelu", index), o)))
    try:
        with torch.inference_mode():
            visual(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    trace = trace_vit(visual, pixels, mlp_layers=[0, 2])
    for index, block in enumerate(visual.transformer.resblocks):
        x, x_norm = captured[("ln1", index)]
        # ln_1 statistics at every token
        assert torch.allclose(trace.ln1_mean[:, index], x.mean(-1), atol=1e-5)
        assert torch.allclose(trace.ln1_std[:, index], (x.var(-1, unbiased=False) + block.ln_1.eps).sqrt(), atol=1e-5)
        # the class-token attention row, from nn.MultiheadAttention's own weights
        with torch.inference_mode():
            _, weights = block.attn(x_norm, x_norm, x_norm, need_weights=True, average_attn_weights=False)
        assert torch.allclose(trace.attn_cls[:, index], weights[:, :, 0], atol=1e-5)
        assert torch.allclose(trace.attn_cls[:, index].sum(-1), torch.ones(2, block.attn.num_heads), atol=1e-5)
    for index in (0, 2):
        assert torch.allclose(trace.mlp_post[index], captured[("gelu", index)], atol=1e-5)
    assert set(trace.mlp_post) == {0, 2}


def test_trace_shapes(tiny):
    info = tiny.info
    trace = trace_vit(tiny.model.visual, random_pixels(tiny, batch=3), keep_values=True)
    t = info.n_tokens
    assert trace.embedding.shape == (3, info.d_out)
    assert trace.ln1_mean.shape == (3, info.n_layers, t)
    assert trace.attn_cls.shape == (3, info.n_layers, info.n_heads, t)
    assert trace.head_cls.shape == (3, info.n_layers, info.n_heads, info.d_head)
    assert trace.values.shape == (3, info.n_layers, t, info.n_heads, info.d_head)
    assert torch.allclose(torch.einsum("blht,blthd->blhd", trace.attn_cls, trace.values), trace.head_cls, atol=1e-5)


@pytest.mark.parametrize("spec", TINY_SPECS)
def test_last_block_at_the_class_token_equals_the_full_block(spec):
    """The last block runs at the class token only unless its MLP activations are asked for: same trace."""
    bundle = load_clip(spec)
    visual = bundle.model.visual
    pixels = random_pixels(bundle, batch=3)
    last = bundle.info.n_layers - 1
    short, full = trace_vit(visual, pixels, keep_values=True), trace_vit(visual, pixels, mlp_layers=[last], keep_values=True)
    assert set(full.mlp_post) == {last} and not short.mlp_post
    for name in ("embedding", "cls_embed", "ln1_mean", "ln1_std", "attn_cls", "head_cls", "value_cls", "mlp_cls",
                 "resid_final", "ln_post_mean", "ln_post_std", "values"):
        assert torch.allclose(getattr(short, name), getattr(full, name), rtol=1e-5, atol=1e-6), name


def test_trace_keeps_only_its_own_storage(tiny):
    """No recorded tensor is a view into a layer's activations (which would keep qkv or MLP outputs alive)."""
    trace = trace_vit(tiny.model.visual, random_pixels(tiny, batch=2), mlp_layers=[1], keep_values=True)
    for name in ("embedding", "cls_embed", "ln1_mean", "ln1_std", "attn_cls", "head_cls", "value_cls", "mlp_cls",
                 "resid_final", "ln_post_mean", "ln_post_std", "values"):
        tensor = getattr(trace, name)
        assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
    post = trace.mlp_post[1]
    assert post.untyped_storage().nbytes() == post.numel() * post.element_size()


@pytest.mark.parametrize("spec,feature", [
    ("Tiny-ViT-QKNorm/none", "qk-norm"),
    ("Tiny-ViT-AvgPool/none", "'avg' pooling"),
    ("Tiny-ViT-AttnPool/none", "attentional pooler"),
    ("RN50/none", "ResNet"),
])
def test_unsupported_towers_are_named(spec, feature):
    with pytest.raises(UnsupportedModelError, match=feature):
        load_clip(spec)


def test_bad_inputs(tiny):
    with pytest.raises(ImageError, match="shape"):
        trace_vit(tiny.model.visual, torch.zeros(1, 3, 16, 16))
    with pytest.raises(IndexRangeError, match="layer 7 is out of range"):
        trace_vit(tiny.model.visual, random_pixels(tiny), mlp_layers=[7])
