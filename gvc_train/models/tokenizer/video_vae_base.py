"""What the video VAEs share: strides, latent shapes, the input-shape check and ``forward``.

A class using it implements ``encode`` (video -> DiagonalGaussian) and ``decode``, and sets
``_spatial_stride``, ``_temporal_stride`` and ``_latent_channels`` (and ``in_channels`` where it
knows its input channels) in its constructor.
"""

from __future__ import annotations

import torch

from gvc_train.models.tokenizer.distributions import DiagonalGaussian


class VideoVAEBase:
    _spatial_stride: int
    _temporal_stride: int
    _latent_channels: int
    in_channels: int | None = None

    @property
    def spatial_stride(self) -> int:
        return self._spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self._temporal_stride

    @property
    def latent_channels(self) -> int:
        return self._latent_channels

    def num_latent_frames(self, num_frames: int) -> int:
        return 1 + (num_frames - 1) // self._temporal_stride

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, t, h, w)`` of the latent of a valid ``T x H x W`` video."""
        s = self._spatial_stride
        return (self._latent_channels, self.num_latent_frames(num_frames), height // s, width // s)

    def check_video_shape(self, x_BCThw: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``B x C x (1 + stride*k) x H x W`` with H, W multiples of the stride."""
        if x_BCThw.dim() != 5:
            raise ValueError(f"expected video B x C x T x H x W, got shape {tuple(x_BCThw.shape)}")
        _, c, t, h, w = x_BCThw.shape
        ts, s = self._temporal_stride, self._spatial_stride
        if self.in_channels is not None and c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {c} (shape {tuple(x_BCThw.shape)})")
        if t < 1 or (t - 1) % ts:
            raise ValueError(f"frame count must be 1 + {ts}k (1, {1 + ts}, {1 + 2 * ts}, ...), got T={t}")
        if h % s or w % s or h == 0 or w == 0:
            raise ValueError(f"height and width must be positive multiples of {s}, got {h}x{w}")

    def forward(
        self,
        x_BCThw: torch.Tensor,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """Encode, take a posterior sample (or the mode), decode: ``(recon_BCThw, posterior)``."""
        posterior = self.encode(x_BCThw)  # type: ignore[attr-defined]
        z_BCthw = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z_BCthw), posterior  # type: ignore[attr-defined]
