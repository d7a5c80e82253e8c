"""VideoGenerator: what the zero-shot codec needs of a pretrained rectified-flow video model.

The zero-shot family (``codecs/zeroshot.py``) trains nothing: it steers the sampling trajectory
of a pretrained generator. Any model that can say the five things below can be a codec: the
project's controlled diffusion transformer (``controlled_generator.py``) and a diffusers Wan 2.1
pipeline loaded from a local folder (``wan_generator.py``).

Conventions (the project's, ``models/flow/matching.py``): ``x_t = (1 - t) x0 + t noise`` with
``t`` in [0, 1] (1 = pure noise), the velocity is ``noise - x0``. Latents are ``1 x C x T x h x w``
float32 in the flow's data space (already scaled / normalised as the model was trained), ``T = 1 +
(frames - 1) / temporal_stride`` (causal: latent frame 0 is frame 0 alone), ``h = H / spatial_stride``.
Videos are ``1 x 3 x T x H x W`` float32 RGB in [0, 1] whose ``H`` and ``W`` are multiples of
:attr:`size_multiple` and whose frame count is ``1 + temporal_stride k`` (the codec pads).

Modes (:data:`MODES`): ``t2v`` (text only), ``i2v`` (the first frame given), ``flf2v`` (the first
and the last frame given). A generator lists the ones it can do in :attr:`modes`.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

MODES = ("t2v", "i2v", "flf2v")


class VideoGenerator(abc.ABC):
    """A pretrained rectified-flow video model seen by the zero-shot codec (module docstring)."""

    modes: tuple[str, ...]  # a subset of MODES
    temporal_stride: int  # frames per latent frame after the first
    spatial_stride: int  # pixels per latent row / column
    size_multiple: int  # frame height and width must be multiples of this (stride x patch)
    latent_channels: int
    max_latent_frames: int | None  # the longest clip it can generate at once (None: no limit)
    guidance_scale: float = 1.0  # classifier-free guidance in velocity (1: none); streams record it

    @abc.abstractmethod
    def encode_video(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        """The target latent ``x0`` of a clip: ``1 x C x T x h x w`` float32 (deterministic: posterior mean)."""

    @abc.abstractmethod
    def decode_latent(self, latent_BCThw: torch.Tensor) -> torch.Tensor:
        """The clip's frames, ``1 x 3 x T x H x W`` float32 in [0, 1] (clamped)."""

    @abc.abstractmethod
    def conditions(
        self,
        mode: str,
        latent_shape: tuple[int, ...],
        caption: str | None = None,
        first_B3HW: torch.Tensor | None = None,
        last_B3HW: torch.Tensor | None = None,
    ) -> Any:
        """Everything :meth:`velocity` needs for one clip beside ``x`` and ``t`` (opaque to the
        codec): ``first_B3HW`` for ``i2v`` and ``flf2v``, ``last_B3HW`` for ``flf2v`` (``1 x 3 x H x W``
        in [0, 1], the decoded keyframes both sides have); ``caption`` where the model takes text
        (None: the model's empty prompt). ValueError in one line for a mode it cannot do."""

    @abc.abstractmethod
    def velocity(self, x_BCThw: torch.Tensor, t: float, conditions: Any) -> torch.Tensor:
        """``v = noise - x0`` predicted at ``x_t`` (with classifier-free guidance where the
        generator was built with a guidance scale other than 1): float32, ``x``'s shape.
        Deterministic: the same inputs give the same bits on one machine and thread count."""

    @property
    def device(self) -> torch.device:
        """Where :meth:`velocity` wants ``x`` (the trajectory's state lives there)."""
        return torch.device("cpu")

    def sampling_bytes(self, latent_thw: tuple[int, int, int]) -> int | None:
        """What sampling a clip of ``latent_thw`` (latent frames, rows, columns) holds at its peak
        beside the weights, or None where the generator has no estimate (the codec then keeps a
        fixed bound on a GOP's pixels)."""
        return None

    @property
    def takes_text(self) -> bool:
        """Whether a caption changes :meth:`velocity`."""
        return False
