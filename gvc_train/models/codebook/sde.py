"""The rectified-flow sampler as a stochastic differential equation, with the noise chosen by the caller.

For a velocity model ``u(x, t)`` under the convention ``x_t = (1 - t) x0 + t noise`` (``models/flow``),
the deterministic sampler integrates ``dx = u dt`` from ``t = 1`` to 0. The reverse-time SDE
with the same marginals, for any diffusion coefficient ``g(t)``, is

    dx = [u - g(t)^2 / 2 * score] dt + g(t) dW,     score(x, t) = -((1 - t) u + x) / t

(the score of ``x_t`` when ``noise = x + (1 - t) u``). One Euler-Maruyama step from ``t`` to
``t' < t`` (``dt = t - t'``) is ``x' = x - dt [u - g^2 / 2 score] + g sqrt(dt) n`` with ``n`` the
step's standard normal noise, which the zero-shot codec picks from a codebook. ``g(t) = g_scale
t^g_power``; the default ``3 t^2`` is Turbo-DDCM's. The last ``tail`` steps are plain Euler ODE
steps (no noise: nothing to code, and the sample ends on the model's prediction). Times are
SD3's shifted grid ``shift_time(1 - i / N, shift)``.

Every update is element-wise on Python float scalars: the same bits whatever the thread count.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class SdeSchedule:
    """``num_steps`` steps from t = 1 to 0, the last ``tail`` deterministic (module docstring)."""

    num_steps: int = 20
    tail: int = 3
    shift: float = 1.0
    g_scale: float = 3.0
    g_power: float = 2.0

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 1 <= self.tail <= self.num_steps:
            raise ValueError(f"the deterministic tail must be 1..num_steps ({self.num_steps}) steps: the last step ends at t = 0, got {self.tail}")
        if not (self.shift > 0 and self.g_scale >= 0 and math.isfinite(self.g_scale) and math.isfinite(self.g_power)):
            raise ValueError(f"shift must be > 0 and g_scale >= 0 (finite), got shift={self.shift}, g_scale={self.g_scale}, g_power={self.g_power}")

    def times(self) -> list[float]:
        """The ``num_steps + 1`` times, 1 first and 0 last (Python floats: exact the same anywhere)."""
        out = []
        for i in range(self.num_steps + 1):
            t = 1.0 - i / self.num_steps
            out.append(self.shift * t / (1.0 + (self.shift - 1.0) * t) if self.shift != 1.0 else t)
        out[-1] = 0.0
        return out

    @property
    def stochastic_steps(self) -> int:
        """Steps that inject (coded) noise: the first ``num_steps - tail``."""
        return self.num_steps - self.tail

    def g(self, t: float) -> float:
        return self.g_scale * t**self.g_power


def x0_estimate(x: torch.Tensor, u: torch.Tensor, t: float) -> torch.Tensor:
    """The model's prediction of the clean sample: ``x0_hat = x - t u``."""
    return x - t * u


def score_of(x: torch.Tensor, u: torch.Tensor, t: float) -> torch.Tensor:
    """``-((1 - t) u + x) / t`` (t > 0)."""
    return -((1.0 - t) * u + x) / t


def sde_step(x: torch.Tensor, u: torch.Tensor, t: float, t_next: float, g: float, noise: torch.Tensor) -> torch.Tensor:
    """One Euler-Maruyama step of the reverse SDE from ``t`` to ``t_next`` with ``noise`` (standard normal, ``x``'s shape)."""
    dt = t - t_next
    drift = u - (0.5 * g * g) * score_of(x, u, t)
    return x - dt * drift + (g * math.sqrt(dt)) * noise


def ode_step(x: torch.Tensor, u: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE: ``x - (t - t_next) u``."""
    return x - (t - t_next) * u
