"""The bitwise quantizer kind: each channel of a code is one sign bit (Infinity/BSQ style).

At scale ``k`` a residual ``r`` (``N x D x h_k x w_k``, D the code channels) becomes the bits
``b = (r >= 0)`` (int64, 0 or 1) and the code values ``(2b - 1) * m_k``: a sign times a positive
magnitude per (scale, channel), ``m`` of shape ``K x D``. BSQ's fixed ``1/sqrt(D)`` suits an
encoder trained with the quantizer; here the tokenizer is frozen and the residual shrinks from
scale to scale, so the magnitudes are learned: ``update="ema"`` keeps each one at the running
mean of ``|r|`` (the value that minimises the squared error of a sign quantizer), all-reduced
over ranks; ``update="gradient"`` makes them parameters (log-parameterised, always positive).
Either starts from the data: on the first training forward each scale's magnitudes are set from
its own residual before it is quantized.

The context model predicts one Bernoulli per bit; :meth:`SignBits.values` also maps bit
probabilities to the expected code value ``(2p - 1) * m_k``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gvc_train.models.progressive.sync import all_reduce_sum_

SOFT_BIT_SHARPNESS = 4.0  # sigmoid(4 r / m): ~0.98 at r = m, the regularizer's soft bits


class SignBits(nn.Module):
    """Sign bits with per-(scale, channel) magnitudes (see the module docstring)."""

    def __init__(self, num_scales: int, dim: int, update: str, decay: float) -> None:
        super().__init__()
        self.num_scales, self.dim, self.update_kind, self.decay = num_scales, dim, update, decay
        init = 1.0 / math.sqrt(dim)  # BSQ's value until data sets it
        if update == "gradient":
            self.log_magnitude = nn.Parameter(torch.full((num_scales, dim), math.log(init)))
        else:
            self.register_buffer("magnitude", torch.full((num_scales, dim), init))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def magnitudes(self, scale: int) -> torch.Tensor:
        """The positive magnitudes of scale ``scale``, ``D`` (float32)."""
        if self.update_kind == "gradient":
            return self.log_magnitude[scale].exp()
        return self.magnitude[scale]

    @staticmethod
    def to_bits(r_NDhw: torch.Tensor) -> torch.Tensor:
        """The sign bits of ``r``: int64, 1 where ``r >= 0``, else 0."""
        return (r_NDhw >= 0).to(torch.int64)

    def values(self, scale: int, bits_NDhw: torch.Tensor) -> torch.Tensor:
        """Code values ``(2b - 1) * m_scale`` of bits (or of bit probabilities: the expectation),
        ``N x D x h x w`` float32."""
        sign = bits_NDhw.to(torch.float32) * 2.0 - 1.0
        return sign * self.magnitudes(scale).view(1, -1, 1, 1)

    @torch.no_grad()
    def observe(self, scale: int, r_NDhw: torch.Tensor) -> torch.Tensor:
        """Training only, before scale ``scale`` is quantized: the global mean ``|r|`` per channel
        (``D``, all-reduced); on the first training forward it becomes the scale's magnitudes."""
        stat = torch.cat([r_NDhw.abs().sum((0, 2, 3)), r_NDhw.new_full((1,), r_NDhw[:, 0].numel())])
        stat = all_reduce_sum_(stat.float())
        mean_abs = (stat[:-1] / stat[-1]).clamp_min(1e-6)
        if not bool(self.initialized):
            self._set(scale, mean_abs)
        return mean_abs

    @torch.no_grad()
    def finish(self, mean_abs_per_scale: list[torch.Tensor]) -> None:
        """Training only, after the forward: the EMA step (unless these stats initialised the
        magnitudes); marks the magnitudes initialised."""
        if self.update_kind == "ema" and bool(self.initialized) and len(mean_abs_per_scale) == self.num_scales:
            self.magnitude.mul_(self.decay).add_(torch.stack(mean_abs_per_scale), alpha=1 - self.decay)
        self.initialized.fill_(True)

    def _set(self, scale: int, value: torch.Tensor) -> None:
        if self.update_kind == "gradient":
            self.log_magnitude[scale] = value.log()
        else:
            self.magnitude[scale] = value

    def entropy_penalty(self, scale: int, r_NDhw: torch.Tensor) -> torch.Tensor:
        """BSQ's entropy regularizer, in bits per bit, on soft bits ``sigmoid(4 r / m)``: the mean
        entropy of each token's bits (small: confident bits) minus the entropy of each channel's
        mean over this rank's batch (large: balanced bits). Differentiable w.r.t. ``r``."""
        p = torch.sigmoid(SOFT_BIT_SHARPNESS * r_NDhw / self.magnitudes(scale).detach().view(1, -1, 1, 1))
        per_token = _binary_entropy(p).mean()
        per_channel = _binary_entropy(p.mean((0, 2, 3))).mean()
        return per_token - per_channel


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())
