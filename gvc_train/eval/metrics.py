"""Distortion metrics on [0, 1] images and videos: PSNR (RGB and luma) and MS-SSIM, per sample.

Shapes: images ``B x C x H x W`` or videos ``B x C x T x H x W``; every function returns one
value per sample, shape ``[B]``. Video MS-SSIM is computed per frame and averaged over frames
(the learned-video-coding convention); ``psnr`` pools the MSE over the whole clip, and
``frame_psnr`` gives per-frame values to average instead, as codec papers report.

Luma (``rgb_to_y``, ``frame_psnr_y``) is BT.601 (Kr 0.299, Kb 0.114) in limited range (Y in
16..235 on the 8-bit scale): the Y plane that ffmpeg's default ``rgb24 -> yuv420p`` conversion
writes, which is what the traditional anchors code (eval/anchors.py) and what ffmpeg's ``psnr``
filter and libvmaf measure on a yuv420p file. BT.709 would be the HD choice, but the sample and
test videos are SD and carry no colour tags, so the codecs here see BT.601. PSNR-Y peaks at 255
on that scale (as in those tools); an RGB error of ``k`` on every channel is a Y error of
``219 / 255 * k``.
"""

from __future__ import annotations

import torch

# pytorch_msssim's per-scale Gaussian SSIM. These two helpers are private (unchanged since
# pytorch-msssim 0.2); its public ms_ssim hard-codes 5 scales, too many for small frames.
# tests/test_perceptual.py checks the 5-scale result against the public ms_ssim.
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

# Wang et al. 2003's scale weights (the ones pytorch_msssim and every MS-SSIM table use).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# PSNR of identical inputs is capped (MSE floored) instead of returning inf, which would poison
# averages and logs: 100 dB for data_range 1.
_MIN_MSE_RATIO = 1e-10


# BT.601 luma weights (ITU-R BT.601: Kr = 0.299, Kb = 0.114).
BT601_LUMA = (0.299, 0.587, 0.114)


def rgb_to_y(x: torch.Tensor, full_range: bool = False) -> torch.Tensor:
    """BT.601 luma of RGB in [0, 1] (channels on dim 1: ``B x 3 [x T] x H x W``), as 8-bit code
    values (float, unrounded): ``16 + 219 * Y'`` in limited range (default), ``255 * Y'`` in full."""
    if x.dim() not in (4, 5) or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects B x 3 x H x W or B x 3 x T x H x W, got {tuple(x.shape)}")
    kr, kg, kb = BT601_LUMA
    y = kr * x[:, 0:1].float() + kg * x[:, 1:2].float() + kb * x[:, 2:3].float()
    return 255.0 * y if full_range else 16.0 + 219.0 * y


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() not in (4, 5):
        raise ValueError(f"expected B x C x H x W or B x C x T x H x W, got {tuple(x.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    _check_pair(x, y)
    return (x.float() - y.float()).pow(2).flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-sample PSNR in dB over all elements of each sample (a video's MSE is pooled over frames)."""
    err = mse(x, y).clamp_min(_MIN_MSE_RATIO * data_range**2)
    return 10.0 * torch.log10(data_range**2 / err)


def frame_psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-frame PSNR of videos ``B x C x T x H x W``: shape ``[B, T]`` (average it over T to
    report a sequence's PSNR the way learned-video-coding papers do)."""
    _check_pair(x, y)
    if x.dim() != 5:
        raise ValueError(f"frame_psnr expects video B x C x T x H x W, got {tuple(x.shape)}")
    err = (x.float() - y.float()).pow(2).mean(dim=(1, 3, 4)).clamp_min(_MIN_MSE_RATIO * data_range**2)
    return 10.0 * torch.log10(data_range**2 / err)


def frame_psnr_y(x: torch.Tensor, y: torch.Tensor, full_range: bool = False) -> torch.Tensor:
    """Per-frame PSNR of BT.601 luma (see the module note), peak 255: shape ``[B, T]`` for videos
    ``B x 3 x T x H x W`` in [0, 1]. Luma is not rounded to integers, so it measures the RGB
    reconstruction itself, not an 8-bit re-quantisation of it. Capped at 100 dB like ``psnr``."""
    _check_pair(x, y)
    if x.dim() != 5:
        raise ValueError(f"frame_psnr_y expects video B x 3 x T x H x W, got {tuple(x.shape)}")
    return frame_psnr(rgb_to_y(x, full_range), rgb_to_y(y, full_range), data_range=255.0)


def ms_ssim_params(height: int, width: int, win_size: int | None = None, levels: int | None = None) -> tuple[int, int]:
    """Choose ``(win_size, levels)`` that fit a ``height x width`` frame.

    MS-SSIM low-passes and halves the frame ``levels - 1`` times and needs the Gaussian window
    to fit inside the coarsest scale: ``min(height, width) > (win_size - 1) * 2 ** (levels - 1)``.
    (pytorch_msssim's ``ms_ssim`` asserts that rule with ``levels`` fixed at 5.) The rule here:
    keep the standard 11-tap window and drop the coarsest scales until it fits (5 levels from
    161 px, 4 from 81 px, 3 from 41 px: 176x144 QCIF gets 4 levels, 64x64 crops get 3); below
    that, shrink the window (odd, down to 3) at 1 level. With 5 levels and a window of 11 the
    result is exactly pytorch_msssim's ``ms_ssim``.
    """
    side = min(height, width)
    if win_size is not None and win_size % 2 == 0:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if levels is not None and not 1 <= levels <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"levels must be in [1, {len(MS_SSIM_WEIGHTS)}], got {levels}")
    if win_size is None and levels is None:
        win_size = 11
        levels = next((n for n in range(5, 0, -1) if side > (win_size - 1) * 2 ** (n - 1)), 1)
        while side <= (win_size - 1) and win_size > 3:
            win_size -= 2
    elif win_size is None:
        win_size = next((w for w in range(11, 2, -2) if side > (w - 1) * 2 ** (levels - 1)), 3)
    elif levels is None:
        levels = next((n for n in range(5, 0, -1) if side > (win_size - 1) * 2 ** (n - 1)), 1)
    if side <= (win_size - 1) * 2 ** (levels - 1):
        raise ValueError(
            f"a {height}x{width} frame is too small for MS-SSIM with win_size {win_size} and {levels} levels "
            f"(needs min side > (win_size - 1) * 2 ** (levels - 1) = {(win_size - 1) * 2 ** (levels - 1)})"
        )
    return win_size, levels


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int | None = None,
    levels: int | None = None,
) -> torch.Tensor:
    """Per-sample MS-SSIM (``[B]``) of images or videos; differentiable (loss: ``1 - ms_ssim``).

    ``win_size`` / ``levels`` default to :func:`ms_ssim_params`' choice for the frame size; with
    fewer than 5 levels the first ``levels`` standard weights are used, renormalised to sum 1.
    Uses pytorch_msssim's Gaussian-window SSIM at each scale and its pooling (average, odd
    sides padded), with MS-SSIM's product of contrast terms over scales.
    """
    _check_pair(x, y)
    if x.dim() == 5:  # per frame, then the mean over frames
        b, c, t, h, w = x.shape
        fold = lambda v: v.transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
        return ms_ssim(fold(x), fold(y), data_range, win_size, levels).view(b, t).mean(dim=1)
    win_size, levels = ms_ssim_params(x.shape[-2], x.shape[-1], win_size, levels)
    x, y = x.float(), y.float()
    weights = x.new_tensor(MS_SSIM_WEIGHTS[:levels])
    weights = weights / weights.sum()
    win = _fspecial_gauss_1d(win_size, 1.5).to(x).repeat([x.shape[1], 1, 1, 1])
    terms = []
    for level in range(levels):
        ssim_BC, cs_BC = _ssim(x, y, win=win, data_range=data_range, size_average=False)
        if level < levels - 1:
            terms.append(torch.relu(cs_BC))
            padding = [s % 2 for s in x.shape[2:]]
            x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=padding)
            y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim_BC))
    per_channel = torch.prod(torch.stack(terms, dim=0) ** weights.view(-1, 1, 1), dim=0)
    return per_channel.mean(dim=1)
