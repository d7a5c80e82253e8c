"""Euler sampling of a rectified flow with diffusers' ``FlowMatchEulerDiscreteScheduler``.

Conventions (checked against diffusers 0.42's scheduler; tests/test_flow_sampler.py holds them):

- diffusers' ``sigma`` is our ``t`` (:mod:`.matching`): its forward process ``scale_noise`` is
  ``sigma * noise + (1 - sigma) * x0`` and its step ``x + (sigma_next - sigma) * model_output``
  is our Euler step ``x_{t-dt} = x_t - dt * v`` with ``model_output = v = noise - x0``.
- The velocity model is called with ``t_B = sigma`` (float32 in [0, 1]), not with diffusers'
  ``timestep = 1000 * sigma``.
- The time grid is ``shift_time(linspace(1, 0, N + 1), shift)``: we hand the scheduler the
  unshifted ``1, (N-1)/N, ..., 1/N`` and it shifts them and appends 0. (Its own default grid
  ends at a doubly shifted ``1/1000`` before 0, a discrete-training leftover we do not want.)
- A fresh scheduler per call: diffusers' scheduler keeps a step counter, so sharing one between
  calls (or threads) would mix their steps.

Determinism: no global RNG; the initial noise comes from the caller's ``torch.Generator``. Given
the same generator seed, machine and thread count the samples are identical. Between thread
counts they are identical where the velocity model's kernels are (the Euler update and guidance
are element-wise); the tests check a small conv model at 1 and 2 threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from gvc_train.models import sample_noise
from gvc_train.models.flow.matching import VelocityFn


def make_scheduler(num_steps: int, shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """A scheduler set for ``num_steps`` Euler steps from t = 1 to t = 0; ``scheduler.sigmas``
    holds the ``num_steps + 1`` times, ``shift_time(1 - i / num_steps, shift)``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    unshifted = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    scheduler.set_timesteps(sigmas=unshifted.tolist())
    scheduler.set_begin_index(0)  # step i is the i-th time; no lookup of timesteps by value
    return scheduler


def sampling_times(num_steps: int, shift: float = 1.0) -> torch.Tensor:
    """The ``num_steps + 1`` times (float32, from 1 down to 0) the sampler visits."""
    return make_scheduler(num_steps, shift).sigmas.clone()


def guided_velocity(
    velocity: VelocityFn,
    x: torch.Tensor,
    t_B: torch.Tensor,
    conditions: Mapping[str, Any],
    unconditional: Mapping[str, Any] | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guidance: ``v_u + scale * (v_c - v_u)``, ``v_c`` with ``conditions`` and
    ``v_u`` with ``unconditional`` (the same conditions with the guided subset of modalities
    dropped, e.g. through :func:`~gvc_train.models.flow.modality_dropout.drop_masks`).

    At scale 1 (or without ``unconditional``) only the conditional pass runs: its result is
    exactly ``v_c``, and it costs one model call. The two passes run as two calls rather than
    one doubled batch, so a sample never depends on what it is batched with."""
    v_c = velocity(x, t_B, **conditions)
    if guidance_scale == 1.0 or unconditional is None:
        if guidance_scale != 1.0:
            raise ValueError(f"guidance scale {guidance_scale} needs the unconditional pass's conditions")
        return v_c
    v_u = velocity(x, t_B, **unconditional)
    return v_u + guidance_scale * (v_c - v_u)


def denoise(
    velocity: VelocityFn,
    noise: torch.Tensor,
    conditions: Mapping[str, Any] | None = None,
    *,
    num_steps: int,
    shift: float = 1.0,
    guidance_scale: float = 1.0,
    unconditional: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Integrate from ``x_1 = noise`` (B x ..., e.g. B x C x T x h x w) to ``x_0`` in
    ``num_steps`` Euler steps; returns ``x_0`` with ``noise``'s shape and dtype. The state between
    steps is float32 (the model is called with it; a bf16 model casts or autocasts it)."""
    scheduler = make_scheduler(num_steps, shift)
    x = noise.float()
    batch = noise.shape[0]
    with torch.no_grad():
        for i, timestep in enumerate(scheduler.timesteps):
            t_B = scheduler.sigmas[i].to(device=noise.device, dtype=torch.float32).expand(batch)
            v = guided_velocity(velocity, x, t_B, conditions or {}, unconditional, guidance_scale)
            # v in float32: diffusers casts the new state to the model output's dtype, and a
            # bf16 state would round every step; the state stays float32 whatever the model runs in.
            x = scheduler.step(v.float(), timestep, x, return_dict=False)[0]
    return x.to(noise.dtype)


def sample(
    velocity: VelocityFn,
    shape: Sequence[int],
    conditions: Mapping[str, Any] | None = None,
    *,
    generator: torch.Generator,
    num_steps: int,
    shift: float = 1.0,
    guidance_scale: float = 1.0,
    unconditional: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``x_1 ~ N(0, 1)`` of ``shape`` from ``generator`` (seeded by the caller: the seed is
    what a stream stores) and :func:`denoise` it. The generator must live on ``device``."""
    noise = sample_noise.normal(torch.Size(shape), torch.device(device), dtype, generator=generator)
    return denoise(
        velocity, noise, conditions, num_steps=num_steps, shift=shift,
        guidance_scale=guidance_scale, unconditional=unconditional,
    )  # fmt: skip
