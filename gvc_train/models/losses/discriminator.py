"""PatchDiscriminator3D: a 3D-conv patch GAN over video clips (VQGAN's PatchGAN lifted to 3D).

VQGAN (Esser et al. 2021) uses pix2pix's N-layer PatchGAN on images; MAGVIT / MAGVIT-v2 and
video tokenizers after them replace its 2D convs with 3D ones so the discriminator also judges
motion (flicker, ghosting). Each output logit scores one spatio-temporal patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gvc_train.models.registry import register_component

__all__ = ["PatchDiscriminator3D"]


@register_component("PatchDiscriminator3D")
class PatchDiscriminator3D(nn.Module):
    """``B x 3 x T x H x W`` video in [0, 1] -> patch logits ``B x 1 x t x h x w``.

    As pix2pix/VQGAN's NLayerDiscriminator: ``num_layers`` convs of spatial stride 2 (the first
    ``temporal_downsample`` after the input conv also stride 2 in time), then two stride-1 convs;
    kernels 3 x 4 x 4. The default scores 70x70-pixel patches over 25 frames (receptive field).
    ``norm``: ``"group"`` (GroupNorm, batch-size independent unlike VQGAN's BatchNorm, which
    misbehaves with the small per-GPU batches of video training), ``"spectral"`` (spectral
    normalisation of every conv: SNGAN's Lipschitz control, no statistics) or ``"none"``.
    Works for any T >= 1 and H, W >= 3 * 2 ** num_layers.
    """

    # What a loaded config may hold (checked by gvc_train.components before building).
    config_bounds = {
        "in_channels": (1, 16), "base_channels": (1, 4096), "num_layers": (1, 8), "max_channel_mult": (1, 64),
        "temporal_downsample": (0, 8), "norm": {"group", "spectral", "none"}, "norm_groups": (1, 1024),
    }  # fmt: skip

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 3,
        max_channel_mult: int = 8,
        temporal_downsample: int = 2,
        norm: str = "group",
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        if norm not in ("group", "spectral", "none"):
            raise ValueError(f"norm must be 'group', 'spectral' or 'none', not {norm!r}")
        if not 0 <= temporal_downsample <= num_layers - 1:
            raise ValueError(f"temporal_downsample must be in [0, num_layers - 1], got {temporal_downsample}")

        def conv(cin: int, cout: int, stride_t: int, stride_s: int) -> nn.Module:
            layer = nn.Conv3d(cin, cout, (3, 4, 4), stride=(stride_t, stride_s, stride_s), padding=1)
            return spectral_norm(layer) if norm == "spectral" else layer

        def normalise(ch: int) -> nn.Module:
            return nn.GroupNorm(math.gcd(ch, norm_groups), ch) if norm == "group" else nn.Identity()

        layers: list[nn.Module] = [conv(in_channels, base_channels, 1, 2), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2**i, max_channel_mult)
            last = i == num_layers
            # Downsample time in the first `temporal_downsample` strided stages.
            stride_t = 2 if i <= temporal_downsample else 1
            layers += [conv(ch, out, 1 if last else stride_t, 1 if last else 2), normalise(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(conv(ch, 1, 1, 1))
        self.net = nn.Sequential(*layers)
        if norm != "spectral":
            self.apply(_init_weights)

    def forward(self, x_BCThw: torch.Tensor) -> torch.Tensor:
        return self.net(x_BCThw * 2.0 - 1.0)


def _init_weights(module: nn.Module) -> None:
    # pix2pix / VQGAN initialisation: N(0, 0.02) convs, N(1, 0.02) norm scales.
    if isinstance(module, nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
