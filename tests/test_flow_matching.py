"""gvc_train/models/flow/matching.py: the rectified-flow convention, training times, the loss."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from gvc_train.models import sample_noise
from gvc_train.models.flow.matching import (
    TimeSampling,
    flow_matching_loss,
    flow_matching_loss_B,
    interpolate,
    shift_time,
    target_velocity,
)


def test_path_runs_from_data_at_0_to_noise_at_1_with_the_target_as_its_derivative() -> None:
    x0, noise = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64), torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
    assert torch.equal(interpolate(x0, noise, torch.zeros(2)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(2)), noise)
    t, h = torch.tensor([0.3, 0.7], dtype=torch.float64), 1e-4
    derivative = (interpolate(x0, noise, t + h) - interpolate(x0, noise, t - h)) / (2 * h)
    torch.testing.assert_close(derivative, target_velocity(x0, noise), atol=1e-8, rtol=0)


def test_shift_is_diffusers_static_shift() -> None:
    unshifted = torch.linspace(1, 1000, 1000) / 1000
    for shift in (1.0, 3.0, 0.5):
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        torch.testing.assert_close(shift_time(unshifted, shift), scheduler.sigmas.flip(0))
    assert shift_time(torch.tensor([0.0, 1.0]), 3.0).tolist() == [0.0, 1.0]


def test_time_sampling_distributions() -> None:
    with sample_noise.keyed_noise(seed=1, step=0, first_index=0):
        uniform = TimeSampling("uniform").draw(4000)
        logit_normal = TimeSampling("logit_normal", mean=0.5, std=0.8).draw(4000)
    assert uniform.shape == (4000,) and uniform.dtype == torch.float32
    assert 0 <= uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.02  # sd of mean 0.0046
    logits = torch.logit(logit_normal.double())
    assert abs(logits.mean() - 0.5) < 0.06 and abs(logits.std() - 0.8) < 0.05


def test_shifted_times_are_the_shift_of_the_same_draws() -> None:
    for kind in ("uniform", "logit_normal"):
        with sample_noise.keyed_noise(seed=2, step=3, first_index=0):
            plain = TimeSampling(kind).draw(16)
        with sample_noise.keyed_noise(seed=2, step=3, first_index=0):
            shifted = TimeSampling(kind, shift=3.0).draw(16)
        torch.testing.assert_close(shifted, shift_time(plain, 3.0))
        assert (shifted >= plain).all()  # shift > 1 moves toward noise


def test_time_sampling_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        TimeSampling("cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TimeSampling(std=0.0)


def test_loss_is_the_velocity_error_at_the_keyed_time_and_noise() -> None:
    """Draw order: t, then the noise; the model sees x_t, t and the conditions."""
    x0 = torch.randn(3, 2, 2, 4, 4)
    seen = {}

    def velocity(x: torch.Tensor, t_B: torch.Tensor, *, scale: float) -> torch.Tensor:
        seen.update(x=x, t=t_B)
        return scale * x

    times = TimeSampling("uniform", shift=2.0)
    with sample_noise.keyed_noise(seed=5, step=7, first_index=0):
        loss_B, t_B = flow_matching_loss_B(velocity, x0, {"scale": 0.5}, times)
    with sample_noise.keyed_noise(seed=5, step=7, first_index=0):
        t_expected = times.draw(3)
        noise = sample_noise.normal(x0.shape, x0.device, x0.dtype)
    x_t = interpolate(x0, noise, t_expected)
    assert torch.equal(t_B, t_expected) and torch.equal(seen["t"], t_expected) and torch.equal(seen["x"], x_t)
    torch.testing.assert_close(loss_B, (0.5 * x_t - (noise - x0)).square().flatten(1).mean(1))


def test_ddp_split_gives_the_global_batch_loss() -> None:
    """2 ranks x 2 samples (first_index 0 and 2) draw what 1 x 4 draws; with equal local
    batches the mean of the ranks' weighted losses is the global weighted loss."""
    x0, weights = torch.randn(4, 2, 1, 4, 4), torch.tensor([1.0, 0.5, 2.0, 0.0])
    conv = torch.nn.Conv3d(2, 2, 3, padding=1)

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return conv(x) * t_B[:, None, None, None, None]

    with torch.no_grad():
        with sample_noise.keyed_noise(seed=0, step=11, first_index=0):
            whole = flow_matching_loss(velocity, x0, weights_B=weights)
        ranks = []
        for rank in range(2):
            with sample_noise.keyed_noise(seed=0, step=11, first_index=2 * rank):
                part = slice(2 * rank, 2 * rank + 2)
                ranks.append(flow_matching_loss(velocity, x0[part], weights_B=weights[part]))
    torch.testing.assert_close(torch.stack(ranks).mean(), whole)


def test_weights_scale_each_sample() -> None:
    x0 = torch.randn(4, 2, 1, 2, 2)

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    with sample_noise.keyed_noise(seed=0, step=0, first_index=0):
        loss_B, _ = flow_matching_loss_B(velocity, x0)
    with sample_noise.keyed_noise(seed=0, step=0, first_index=0):
        weighted = flow_matching_loss(velocity, x0, weights_B=torch.tensor([0.0, 1.0, 2.0, 0.0]))
    torch.testing.assert_close(weighted, (loss_B[1] + 2 * loss_B[2]) / 4)
    with pytest.raises(ValueError, match="weights_B"):
        flow_matching_loss(velocity, x0, weights_B=torch.ones(3))
