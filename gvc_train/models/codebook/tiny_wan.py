"""Tiny RANDOM diffusers Wan 2.1 pipelines for tests: the real folders' layout at toy sizes.

    save_tiny_wan_pipeline(folder, "t2v")   # a WanPipeline folder
    save_tiny_wan_pipeline(folder, "i2v")   # a WanImageToVideoPipeline folder (CLIP image encoder)
    save_tiny_wan_pipeline(folder, "flf2v") # the same with Wan2.1-FLF2V's two-image position embedding

writes with ``save_pretrained`` what ``WanVideoGenerator.from_folder`` (and diffusers'
``from_pretrained``) loads: an ``AutoencoderKLWan`` (4 latent channels, strides 4 x 8, non-trivial
``latents_mean`` / ``latents_std`` so that the normalisation is exercised), a
``WanTransformer3DModel`` (for i2v and flf2v ``in_channels = 2 z_dim + 4`` and ``image_dim`` as Wan
2.1 I2V: noise latent, 4 mask channels, condition latent; CLIP tokens in the cross-attention; for
flf2v ``pos_embed_seq_len`` = two images' CLIP tokens, as Wan2.1-FLF2V-14B), a random
``UMT5EncoderModel`` with a ``T5TokenizerFast`` built in code (a Unigram vocabulary over a few
words and every letter: no download, any lowercase text tokenizes), a UniPC flow scheduler
configured as the released folders' (``flow_shift`` 3), and for i2v a tiny ``CLIPVisionModel`` with
its ``CLIPImageProcessor``. Nothing here is pretrained: it exercises the plumbing, not the model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

Z_DIM = 4  # latent channels (the released VAE has 16)
TEXT_WIDTH, IMAGE_WIDTH, CLIP_SIZE, CLIP_PATCH = 16, 16, 32, 8
WORDS = "a the and of in on with man woman car road tree sky water walks runs drives red green blue".split()


def _tokenizer():
    from transformers import T5TokenizerFast

    # Unigram pieces with their log-probabilities: whole words beat letter-by-letter spellings.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"\u2581{w}", -2.0) for w in WORDS]
    pieces += [(f"\u2581{c}", -8.0) for c in string.ascii_lowercase] + [(c, -9.0) for c in string.ascii_lowercase + string.digits + ".,!?'-"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size, d_model=TEXT_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return UMT5EncoderModel(config).eval()


def _vae():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=4, z_dim=Z_DIM, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.3, -0.2, 0.1, -0.5], latents_std=[1.5, 0.7, 2.0, 1.1],
    ).eval()  # fmt: skip


def _transformer(kind: str):
    from diffusers import WanTransformer3DModel

    i2v = kind != "t2v"
    clip_tokens = (CLIP_SIZE // CLIP_PATCH) ** 2 + 1  # patches and the class token
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * Z_DIM + 4 if i2v else Z_DIM,
        out_channels=Z_DIM, text_dim=TEXT_WIDTH, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        image_dim=IMAGE_WIDTH if i2v else None, added_kv_proj_dim=24 if i2v else None,  # Wan I2V: added k/v of the model width
        pos_embed_seq_len=2 * clip_tokens if kind == "flf2v" else None,
    ).eval()  # fmt: skip


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    # As Wan-AI/Wan2.1-*-Diffusers' scheduler/scheduler_config.json (480p shift).
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000)


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=IMAGE_WIDTH, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=CLIP_SIZE, patch_size=CLIP_PATCH
    )
    processor = CLIPImageProcessor(size={"shortest_edge": CLIP_SIZE}, crop_size={"height": CLIP_SIZE, "width": CLIP_SIZE})
    return CLIPVisionModel(config).eval(), processor


def save_tiny_wan_pipeline(folder: str | Path, kind: str, seed: int = 0) -> Path:
    """Write a tiny random Wan pipeline of ``kind`` (``"t2v"``, ``"i2v"`` or ``"flf2v"``) to ``folder`` (module
    docstring); the same ``seed`` gives the same weights."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    if kind not in ("t2v", "i2v", "flf2v"):
        raise ValueError(f"kind {kind!r} is not 't2v', 'i2v' or 'flf2v'")
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    parts = dict(tokenizer=tokenizer, text_encoder=_text_encoder(len(tokenizer)), vae=_vae(), scheduler=_scheduler(), transformer=_transformer(kind))
    if kind == "t2v":
        pipe = WanPipeline(**parts)
    else:
        image_encoder, image_processor = _image_encoder()
        pipe = WanImageToVideoPipeline(**parts, image_encoder=image_encoder, image_processor=image_processor)
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder
