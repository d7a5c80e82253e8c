"""The tokenizer posterior: a diagonal Gaussian over the latent (as in LDM / SD-VAE / Wan-VAE)."""

from __future__ import annotations

from typing import Sequence

import torch

from gvc_train.models import sample_noise

# logvar is clamped as in LDM's DiagonalGaussianDistribution: exp() of a wild encoder output must
# not overflow to inf (or underflow to 0 std) early in training.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element; tensors are ``B x C x t x h x w`` (or any ``B x ...``)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @classmethod
    def from_moments(cls, moments: torch.Tensor, dim: int = 1) -> "DiagonalGaussian":
        """Split ``[mean, logvar]`` stacked along ``dim`` (the encoder's 2*C output channels)."""
        mean, logvar = moments.chunk(2, dim=dim)
        return cls(mean, logvar)

    @classmethod
    def cat(cls, parts: Sequence["DiagonalGaussian"], dim: int = 2) -> "DiagonalGaussian":
        """Join posteriors of consecutive chunks (along latent time by default)."""
        if not parts:
            raise ValueError("DiagonalGaussian.cat needs at least one part")
        return cls(torch.cat([p.mean for p in parts], dim), torch.cat([p.logvar for p in parts], dim))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> torch.Tensor:
        return torch.exp(self.logvar)

    @property
    def shape(self) -> torch.Size:
        return self.mean.shape

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample (differentiable in mean and logvar)."""
        noise = sample_noise.normal(self.mean.shape, self.mean.device, self.mean.dtype, generator)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over every non-batch dimension: shape ``[B]``."""
        kl = 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)

    def __repr__(self) -> str:
        return f"DiagonalGaussian(shape={tuple(self.mean.shape)})"
