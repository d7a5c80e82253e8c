"""Rectified flow: the convention, training times and the flow-matching loss.

Convention (the same as diffusers' flow-match schedulers, whose ``sigma`` is our ``t``)::

    x_t = (1 - t) * x0 + t * noise        t in [0, 1]: 0 = data, 1 = pure N(0, 1) noise
    v   = dx_t / dt = noise - x0          the velocity the model learns

Sampling integrates dx/dt = v from t = 1 down to t = 0, so an Euler step from t to t - dt is
``x_{t-dt} = x_t - dt * v``. The model is called with ``t`` itself (float, in [0, 1], one per
sample), never with diffusers' ``timestep = 1000 * sigma``.

Every random draw (the times and the noise) goes through :mod:`gvc_train.models.sample_noise`,
so inside ``keyed_noise`` a training step depends on its global batch, not on how many ranks
share it; outside it the global RNG is used, as everywhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from gvc_train.models import sample_noise

VelocityFn = Callable[..., torch.Tensor]
"""``velocity(x_BCThw, t_B, **conditions) -> v_BCThw``; ``t_B`` float in [0, 1]."""


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift ``shift * t / (1 + (shift - 1) * t)``: ``shift > 1`` moves times toward
    noise (t = 1), which larger inputs need. Identity at ``shift = 1``; keeps 0 and 1 fixed.
    The same formula as diffusers' ``FlowMatchEulerDiscreteScheduler`` with a static ``shift``."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise``, ``t_B`` broadcast over every dimension after the batch."""
    t = t_B.to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def target_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``d x_t / dt = noise - x0``."""
    return noise - x0


@dataclasses.dataclass(frozen=True)
class TimeSampling:
    """How training draws ``t``: ``uniform`` on [0, 1), or ``logit_normal`` (``sigmoid`` of
    ``N(mean, std)``, SD3's default with mean 0, std 1: more weight on middle times); then
    :func:`shift_time` by ``shift``."""

    kind: Literal["uniform", "logit_normal"] = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("uniform", "logit_normal"):
            raise ValueError(f"time sampling kind must be 'uniform' or 'logit_normal', not {self.kind!r}")
        if self.std <= 0 or self.shift <= 0:
            raise ValueError(f"time sampling needs std > 0 and shift > 0, got std={self.std}, shift={self.shift}")

    def draw(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``t_B``: float32, one time per sample, in [0, 1]. One keyed-noise site."""
        if self.kind == "uniform":
            t = sample_noise.uniform_like(torch.empty(batch, device=device), 0.0, 1.0)
        else:
            n = sample_noise.normal(torch.Size((batch,)), torch.device(device), torch.float32)
            t = torch.sigmoid(self.mean + self.std * n)
        return shift_time(t, self.shift)


def flow_matching_loss_B(
    velocity: VelocityFn,
    x0: torch.Tensor,
    conditions: Mapping[str, Any] | None = None,
    times: TimeSampling = TimeSampling(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample loss ``mean((velocity(x_t, t) - (noise - x0))^2)`` over every dimension after
    the batch, and the times it used: ``(loss_B, t_B)``, both float32 of shape ``(B,)``.

    ``x0``: B x ... (any layout; B x C x T x h x w for video latents). Draws ``t`` first, then
    the noise (two keyed-noise sites, in that order)."""
    batch = x0.shape[0]
    t_B = times.draw(batch, x0.device)
    noise = sample_noise.normal(x0.shape, x0.device, x0.dtype)
    v = velocity(interpolate(x0, noise, t_B), t_B, **(conditions or {}))
    loss_B = (v.float() - target_velocity(x0, noise).float()).square().flatten(1).mean(1)
    return loss_B, t_B


def flow_matching_loss(
    velocity: VelocityFn,
    x0: torch.Tensor,
    conditions: Mapping[str, Any] | None = None,
    times: TimeSampling = TimeSampling(),
    weights_B: torch.Tensor | None = None,
) -> torch.Tensor:
    """The batch's flow-matching loss, a scalar: ``mean_B(weight_B * loss_B)``.

    Weights are not renormalised by their sum on purpose: the plain mean over the batch is what
    makes the average of equal-sized ranks' losses (DDP) equal the global batch's loss."""
    loss_B, _ = flow_matching_loss_B(velocity, x0, conditions, times)
    if weights_B is not None:
        if weights_B.shape != loss_B.shape:
            raise ValueError(f"weights_B must have shape {tuple(loss_B.shape)}, got {tuple(weights_B.shape)}")
        loss_B = loss_B * weights_B.to(loss_B)
    return loss_B.mean()
