"""uint8 video frames <-> float video tensors: the one conversion every package uses.

Frames are what files hold and people look at: uint8 RGB, ``T x H x W x 3`` (numpy). Tensors are
what models take (DESIGN.md, "Video tensors"): float32 ``B x 3 x T x H x W`` in [0, 1].

* :func:`frames_to_tensor` is ``x / 255`` in float32, which is correctly rounded, so 255 maps to
  exactly 1.0 (the data pipeline, ``data/transforms.py``, computes the same values in numpy).
* :func:`tensor_to_frames` clamps to [0, 1], scales by 255 and rounds half to even
  (``torch.round``): what the latent codec's decoder has always written, so decoded frames stay
  byte for byte what they were.

Both keep the memory layout the permutation gives (no copy): the tensor is a channels-last view
of the frames and the frames a view of the tensor. Callers that need contiguous memory ask for it.
The bottom layer (torch and numpy only): ``codecs/``, ``eval/``, ``lit/`` and the demo import it.
"""

from __future__ import annotations

import numpy as np
import torch


def frames_to_tensor(frames: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 ``T x H x W x 3`` (or ``N x T x H x W x 3``) -> float32 ``1 x 3 x T x H x W``
    (``N x 3 x T x H x W``) in [0, 1].

    ``device``: where the division runs (the uint8 frames move there first, a quarter of the bytes).
    A read-only or non-contiguous array is copied first (torch cannot share a read-only buffer).
    """
    if frames.dtype != np.uint8 or frames.ndim not in (4, 5) or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N x] T x H x W x 3, got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.require(frames, requirements=("C", "W")))
    if device is not None:
        x = x.to(device)
    # permute, then add the batch axis: the strides every caller had before there was one helper
    x_BCThw = x.permute(0, 4, 1, 2, 3) if x.dim() == 5 else x.permute(3, 0, 1, 2).unsqueeze(0)
    return x_BCThw.float() / 255.0


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """Float ``3 x T x H x W`` (or ``1 x 3 x T x H x W``) in [0, 1] -> uint8 ``T x H x W x 3``.

    Values outside [0, 1] are clamped; ``x * 255`` is rounded half to even. Any float dtype and
    device: the arithmetic is float32 on the tensor's device, the frames come back to the CPU.
    """
    if x.dim() == 5:
        if x.shape[0] != 1:
            raise ValueError(f"tensor_to_frames takes one video; got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 4 or x.shape[0] != 3 or not x.is_floating_point():
        raise ValueError(f"expected a float 3 x T x H x W video, got {x.dtype} {tuple(x.shape)}")
    frames_THWC = (x.float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 3, 0)
    return frames_THWC.cpu().numpy()
