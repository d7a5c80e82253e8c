"""Convolutions whose per-pixel arithmetic does not depend on the tensor's extent (CPU inference).

Why this exists: on the CPU, ``F.conv3d`` picks its kernel from the input's shape. It runs
oneDNN only when ``B*C*T*H > 20480`` and otherwise PyTorch's im2col ``slow_conv3d``, and the two
round differently (~2e-6). So a decode's pixels depended on how the frames were grouped into
steps, and a spatial tile could never equal the same region of an untiled frame. oneDNN's
direct convolution, called for every shape, gives each output pixel the same arithmetic
whatever the extent of the tensor around it (crops and time windows are bit-identical to the
full result on this machine: ``tests/test_tokenizer_exact_kernels.py`` guards that wherever the
suite runs), and at the small shapes of one-latent steps it is also ~10x faster.

Used only when autograd is off (inference, validation), on CPU float32 tensors with oneDNN
present; training and other devices keep ``F.conv2d``/``F.conv3d`` (same math, their own
rounding). Inputs go in channels-last, the layout in which oneDNN needs no reorder.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def exact_kernels_available() -> bool:
    """oneDNN's convolution is usable here and its results do not depend on the input's extent.

    The second half is checked once per process on a small case (a crop of a conv's input gives
    the crop of its output, bit for bit), so a platform where the property fails falls back to
    the shape-dependent kernels rather than silently breaking the equality that tiling relies on.
    """
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.aten, "mkldnn_convolution"):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 5, 24, 20, generator=gen)
        w = torch.randn(8, 8, 3, 3, 3, generator=gen)
        b = torch.randn(8, generator=gen)
        with torch.no_grad():
            full = _mkldnn(x, w, b, (1, 1, 1), (0, 1, 1))
            part = _mkldnn(x[:, :, 1:4, 3:17, 2:15], w, b, (1, 1, 1), (0, 1, 1))
        return bool(torch.equal(full[:, :, 1:2, 4:16, 3:14], part[:, :, :, 1:-1, 1:-1]))
    except RuntimeError:
        return False


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last with the canonical strides, also on its size-1 dimensions.

    ``contiguous(memory_format=...)`` keeps a tensor whose size-1 dimensions have other strides
    (a one-frame slice of a channels-last video), and ``mkldnn_convolution`` then reads the
    layout as channels-first and picks another oneDNN kernel, which rounds differently.
    """
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    canonical = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    if x.stride() == canonical.stride():
        return x
    return canonical.copy_(x)


def _mkldnn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride, padding) -> torch.Tensor:
    dims = x.dim() - 2
    return torch.ops.aten.mkldnn_convolution(
        _channels_last(x), _channels_last(w), b, list(padding), list(stride), [1] * dims, 1
    )


def _use_exact(x: torch.Tensor) -> bool:
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.enabled
        and exact_kernels_available()
    )


def _cached_weight(conv: nn.Module) -> torch.Tensor:
    """The conv's weight in channels-last, converted once and again only after the weight changes."""
    weight = conv.weight
    key = (weight.data_ptr(), weight._version, weight.dtype)
    cached = conv.__dict__.get("_exact_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, _channels_last(weight.detach()))
        conv.__dict__["_exact_weight"] = cached
    return cached[1]


def cat_for_conv(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat(tensors, dim)`` written straight into the layout :func:`conv_forward` reads
    when the exact kernels apply: the same values without a second copy to channels-last (a
    causal conv's cache and its new frames arrive channels-first; the copy was ~10% of decoding)."""
    x = tensors[-1]
    if not _use_exact(x):
        return torch.cat(tensors, dim)
    shape = list(x.shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return torch.cat(tensors, dim, out=torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt))


def conv_forward(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` through the extent-independent kernel when it applies, else the module's own."""
    if not _use_exact(x) or conv.groups != 1 or any(d != 1 for d in conv.dilation) or conv.padding_mode != "zeros":
        return nn.Conv3d.forward(conv, x) if x.dim() == 5 else nn.Conv2d.forward(conv, x)
    if isinstance(conv.padding, str):
        raise ValueError(f"{type(conv).__name__}: string padding {conv.padding!r} is not supported here")
    return torch.ops.aten.mkldnn_convolution(
        _channels_last(x), _cached_weight(conv), conv.bias, list(conv.padding), list(conv.stride),
        list(conv.dilation), 1,
    )


def rms_normalize(x_BCThw: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / ||x||`` over channels at each position, in one layout whatever the producer's.

    The channel reduction rounds differently over channels-first and channels-last memory, and
    which one a layer receives depends on the step (a one-frame first step arrives channels-first
    from a concatenation), so inference normalises a canonical channels-last copy.
    """
    if _use_exact(x_BCThw):
        x_BCThw = _channels_last(x_BCThw)
    return F.normalize(x_BCThw, dim=1, eps=eps)


def group_norm_per_frame(
    x_BCThw: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """GroupNorm with statistics over (channels in group, h, w) of each frame separately.

    ``F.group_norm`` over frames stacked as a batch computes each frame's statistics on its own.
    The input is made NCHW-contiguous on purpose: the channels-last GroupNorm kernel takes
    another code path for a batch of one and rounds differently, which would make a frame's
    pixels depend on how many frames a step holds.
    """
    b, c, t, h, w = x_BCThw.shape
    x_NChw = x_BCThw.transpose(1, 2).reshape(b * t, c, h, w).contiguous()
    y_NChw = F.group_norm(x_NChw, groups, weight, bias, eps)
    return y_NChw.reshape(b, t, c, h, w).transpose(1, 2)
