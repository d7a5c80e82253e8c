"""Coded trajectories: the decoder replays the encoder's exactly, and more atoms get closer to the target.

The velocity is the exact one of Gaussian data ``x0 ~ N(0, s^2)``: ``u = (t - (1 - t) s^2) /
((1 - t)^2 s^2 + t^2) x`` (the flow's ideal model, so the curve measures the coding, not a model)."""

from __future__ import annotations

import torch

from gvc_train.models.codebook.noise_codebook import codebook_key, gaussian
from gvc_train.models.codebook.sde import SdeSchedule, sde_step
from gvc_train.models.codebook.trajectory import code_trajectory

S2 = 0.5**2
SHAPE = (1, 4, 3, 6, 6)


def gaussian_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    return (t - (1 - t) * S2) / ((1 - t) ** 2 * S2 + t * t) * x


def test_decoder_replays_the_encoder_exactly() -> None:
    schedule = SdeSchedule(num_steps=8, tail=2, shift=2.0)
    target = gaussian(codebook_key(5, "target"), SHAPE) * S2**0.5
    x_enc, picks = code_trajectory(gaussian_velocity, SHAPE, schedule, 256, [0, 3, 5], seed=7, gop=1, target=target)
    x_dec, again = code_trajectory(gaussian_velocity, SHAPE, schedule, 256, [0, 3, 5], seed=7, gop=1, picks=picks)
    assert torch.equal(x_enc, x_dec)
    assert len(picks) == 6 and picks[0][0] is None and len(picks[0][2].indices) == 5
    # Another seed or GOP replays another trajectory from the same picks.
    x_other, _ = code_trajectory(gaussian_velocity, SHAPE, schedule, 256, [0, 3, 5], seed=8, gop=1, picks=picks)
    assert not torch.equal(x_enc, x_other)


def test_more_atoms_reduce_the_latent_error_on_average() -> None:
    """The measured curve: mean squared error to the target over 4 targets, for M = 1, 2, 4, 8, 16."""
    schedule = SdeSchedule(num_steps=10, tail=2)
    curve = []
    for m in (1, 2, 4, 8, 16):
        errors = []
        for k in range(4):
            target = gaussian(codebook_key(k, "target"), SHAPE) * S2**0.5
            x0, _ = code_trajectory(gaussian_velocity, SHAPE, schedule, 512, [m] * 3, seed=k, gop=0, target=target)
            errors.append(float((x0 - target).square().mean()))
        curve.append(sum(errors) / len(errors))
    assert all(a > b for a, b in zip(curve, curve[1:])), curve
    assert curve[-1] < 0.5 * curve[0], curve


def test_sde_step_keeps_the_marginal_of_gaussian_data() -> None:
    """With random (uncoded) noise, SDE steps from exact N(0, (1-t)^2 s^2 + t^2) samples keep the
    variance the flow has at each time (the conversion is right, to first order in dt)."""
    schedule = SdeSchedule(num_steps=50, tail=1)
    times = schedule.times()
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    for i in range(40):
        t, t_next = times[i], times[i + 1]
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(i + 1))
        x = sde_step(x, gaussian_velocity(x, t), t, t_next, schedule.g(t), noise)
    t = times[40]
    assert abs(float(x.var()) - ((1 - t) ** 2 * S2 + t * t)) < 0.03
