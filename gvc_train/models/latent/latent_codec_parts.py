"""Building blocks of the latent codec: residual conv blocks, the ConvGRU memory, the state.

Everything here is plain 2D convolution over one latent frame ``B x C x h x w``; the codec
(``latent_codec.py``) runs them one latent frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import nn

from gvc_train.models import sample_noise


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """``x + conv(act(conv(act(x))))``: two 3x3 convs with LeakyReLU, as in DCVC's blocks."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x, 0.1)), 0.1))


def trunk(in_channels: int, channels: int, out_channels: int, num_res_blocks: int) -> nn.Sequential:
    """conv in -> ``num_res_blocks`` ResBlocks -> conv out, all at stride 1."""
    layers: list[nn.Module] = [conv3x3(in_channels, channels)]
    layers += [ResBlock(channels) for _ in range(num_res_blocks)]
    layers += [nn.LeakyReLU(0.1), conv3x3(channels, out_channels)]
    return nn.Sequential(*layers)


class HyperAnalysis(nn.Module):
    """h_a: ``y`` (M channels, h x w) -> ``z`` (Z channels, ceil(h/2) x ceil(w/2))."""

    def __init__(self, y_channels: int, channels: int, z_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv3x3(y_channels, channels),
            nn.LeakyReLU(0.1),
            conv3x3(channels, channels, stride=2),
            nn.LeakyReLU(0.1),
            conv3x3(channels, z_channels),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class HyperSynthesis(nn.Module):
    """h_s: ``z_hat`` -> hyper features at y's size (subpixel x2 upsampling, then cropped).

    Cropping rather than padding y keeps odd latent sizes (e.g. 22 x 18 for 176 x 144 video)
    exact: the decoder knows y's size from the header, so it crops the same way.
    """

    def __init__(self, z_channels: int, channels: int) -> None:
        super().__init__()
        self.conv_in = conv3x3(z_channels, channels)
        self.up = conv3x3(channels, channels * 4)
        self.conv_out = conv3x3(channels, channels)

    def forward(self, z_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.leaky_relu(self.conv_in(z_hat), 0.1)
        x = F.pixel_shuffle(self.up(x), 2)[..., : size[0], : size[1]]
        return self.conv_out(F.leaky_relu(x, 0.1))


class ConvGRUCell(nn.Module):
    """Convolutional GRU (Shi et al. 2015 / Ballas et al. 2016): the codec's recurrent memory.

    ``h' = (1 - u) * h + u * tanh(W_c [x, r * h])`` with gates ``u, r = sigmoid(W_g [x, h])``.
    """

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = conv3x3(in_channels + hidden_channels, 2 * hidden_channels)
        self.candidate = conv3x3(in_channels + hidden_channels, hidden_channels)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        u, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        c = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
        return (1.0 - u) * h + u * c


@dataclass(frozen=True)
class LatentCodecState:
    """What the decoder carries from one latent frame to the next.

    ``prev`` is the last decoded latent frame ``B x C x h x w`` and ``memory`` the ConvGRU's
    hidden state; both are ``None`` before the first frame (``frames_seen == 0``), when the
    codec uses its all-zero context plus the learned "no past" embedding. Tensors are not
    detached: unrolled training backpropagates through them (detach them for truncated BPTT).
    """

    prev: torch.Tensor | None = None
    memory: torch.Tensor | None = None
    frames_seen: int = 0

    def detach(self) -> "LatentCodecState":
        return LatentCodecState(
            None if self.prev is None else self.prev.detach(),
            None if self.memory is None else self.memory.detach(),
            self.frames_seen,
        )


class _KeyedNoiseQuantize:
    """compressai's training noise drawn through :mod:`gvc_train.models.sample_noise`, so that
    it is keyed by sample position under ``keyed_noise`` (DDP-invariant training); everything
    else (rounding, tables, coding, state dict) is compressai's own."""

    def quantize(self, inputs: torch.Tensor, mode: str, means: torch.Tensor | None = None) -> torch.Tensor:
        if mode == "noise":
            return inputs + sample_noise.uniform_like(inputs)
        return super().quantize(inputs, mode, means)  # type: ignore[misc]


class KeyedEntropyBottleneck(_KeyedNoiseQuantize, EntropyBottleneck):
    """compressai's forward quantizes ``C x 1 x (B h w)`` values (channels first), so the
    batch size is remembered here to key the noise by sample, not by channel."""

    _batch: int | None = None

    def forward(self, x: torch.Tensor, training: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._batch = x.shape[0]
        try:
            return super().forward(x, training)
        finally:
            self._batch = None

    def quantize(self, inputs: torch.Tensor, mode: str, means: torch.Tensor | None = None) -> torch.Tensor:
        if mode == "noise" and self._batch and inputs.dim() == 3:
            c, one, n = inputs.shape
            b = self._batch
            noise_BCN = sample_noise.uniform_like(inputs.new_empty(b, c, n // b))
            return inputs + noise_BCN.permute(1, 0, 2).reshape(c, one, n)
        return super().quantize(inputs, mode, means)


class KeyedGaussianConditional(_KeyedNoiseQuantize, GaussianConditional):
    pass
