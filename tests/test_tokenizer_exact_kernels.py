"""The tokenizer's inference arithmetic does not depend on how frames are grouped or cropped.

This is what lets a decoder step one latent frame at a time, or in spatial tiles, and still give
the pixels of a whole-video pass bit for bit (gvc_train/models/tokenizer/exact_kernels.py). The
property rests on how oneDNN's kernels round on the machine running the suite, so these tests
guard it wherever the suite runs.
"""

from __future__ import annotations

import pytest
import torch

from gvc_train.models.tokenizer import exact_kernels
from gvc_train.models.tokenizer.causal_vae import CausalVAE


def _vae(norm: str = "rms", attention: bool = True) -> CausalVAE:
    torch.manual_seed(0)
    vae = CausalVAE(
        base_channels=8, channel_mults=(1, 2, 4, 4), num_res_blocks=1, latent_channels=4,
        norm=norm, norm_groups=4, mid_attention=attention,
    ).eval()
    with torch.no_grad():
        for p in vae.parameters():  # off the identity-like inits, so every path carries signal
            p.add_(torch.randn_like(p) * 0.05)
    return vae


def test_the_extent_independent_kernels_are_available_here():
    assert exact_kernels.exact_kernels_available()


@pytest.mark.parametrize("norm,attention", [("rms", True), ("group", True), ("rms", False)])
def test_encode_and_decode_give_the_same_bits_for_every_grouping_of_frames(norm, attention):
    vae = _vae(norm, attention)
    x = torch.rand(1, 3, 17, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        z = vae.encode(x).mean
        for frames in (4, 8, 16):
            assert torch.equal(vae.encode(x, chunk_frames=frames).mean, z), frames
        whole = vae.decode(z)
        for latents in (1, 2, 3):
            assert torch.equal(vae.decode(z, chunk_latents=latents), whole), latents


def test_a_decoded_tile_with_the_receptive_margin_equals_the_untiled_region():
    vae = _vae("rms", attention=False)
    z = torch.randn(1, 4, 3, 36, 40, generator=torch.Generator().manual_seed(2))

    def tile(y0, y1, x0, x1, margin):
        ys, ye, xs, xe = max(0, y0 - margin), min(36, y1 + margin), max(0, x0 - margin), min(40, x1 + margin)
        part = vae.decode(z[:, :, :, ys:ye, xs:xe], chunk_latents=1)
        return part[:, :, :, 8 * (y0 - ys) : 8 * (y1 - ys), 8 * (x0 - xs) : 8 * (x1 - xs)]

    with torch.inference_mode():
        whole = vae.decode(z, chunk_latents=1)
        for y0, y1, x0, x1 in [(14, 22, 14, 26), (0, 12, 20, 40)]:
            assert torch.equal(tile(y0, y1, x0, x1, 14), whole[:, :, :, 8 * y0 : 8 * y1, 8 * x0 : 8 * x1])
        # A margin short of the receptive field changes the core: the check above can fail.
        assert not torch.equal(tile(14, 22, 14, 26, 6), whole[:, :, :, 112:176, 112:208])


def test_a_one_frame_slice_with_odd_strides_takes_the_same_kernel():
    conv = torch.nn.Conv3d(32, 16, 1)
    video = torch.randn(1, 32, 9, 20, 24).contiguous(memory_format=torch.channels_last_3d)
    one = torch.empty(1, 32, 1, 20, 24).as_strided((1, 32, 1, 20, 24), (32, 1, 32, 768, 32))
    one.copy_(video[:, :, :1])
    with torch.inference_mode():
        assert torch.equal(exact_kernels.conv_forward(conv, one), exact_kernels.conv_forward(conv, video)[:, :, :1])


def test_training_keeps_the_modules_own_convolution_and_sees_weight_updates():
    conv = torch.nn.Conv3d(8, 8, 3, padding=(0, 1, 1))
    x = torch.randn(1, 8, 4, 12, 12)
    assert torch.equal(exact_kernels.conv_forward(conv, x), conv(x))  # grad on: F.conv3d itself
    with torch.no_grad():
        before = exact_kernels.conv_forward(conv, x)
        conv.weight.mul_(2.0)  # an optimizer step updates in place
        after = exact_kernels.conv_forward(conv, x)
        assert torch.allclose(after - conv.bias.view(1, 8, 1, 1, 1), 2 * (before - conv.bias.view(1, 8, 1, 1, 1)), atol=1e-5)
