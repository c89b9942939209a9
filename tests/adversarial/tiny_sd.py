"""A real diffusers StableDiffusionPipeline with tiny random components, built offline from configs.

As diffusers' own tests build it (get_dummy_components), with the tokenizer made from open_clip's
BPE file instead of a Hub download (a CLIP tokenizer needs only its vocabulary and merges).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import open_clip
import torch


def clip_bpe(n_merges: int):
    from open_clip.tokenizer import bytes_to_unicode

    rows = gzip.open(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz").read().decode().split("\n")
    merges = [tuple(r.split()) for r in rows[1:48895][:n_merges]]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def tiny_pipeline():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4,
                                    out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                    norm_num_groups=2)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                                  set_alpha_to_one=False, steps_offset=1)
        torch.manual_seed(0)
        vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            norm_num_groups=2)
        torch.manual_seed(0)
        vocab, merges = clip_bpe(486)
        tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
        # transformers 5 silently builds a 2-token tokenizer from wrong arguments: check it is the real one
        assert len(tokenizer) == 1000 and tokenizer.model_max_length == 77
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, layer_norm_eps=1e-5,
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
