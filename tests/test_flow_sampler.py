"""gvc_train/models/flow/sampler.py: Euler sampling through diffusers' flow-match scheduler."""

from __future__ import annotations

import pytest
import torch

from gvc_train.models.flow.matching import interpolate, shift_time
from gvc_train.models.flow.modality_dropout import drop_masks
from gvc_train.models.flow.sampler import denoise, guided_velocity, make_scheduler, sample, sampling_times

SHAPE = (2, 4, 3, 6, 8)  # B x C x T x h x w


def test_diffusers_sigma_is_our_t() -> None:
    """The scheduler's forward process is our interpolation, and its grid is the shifted
    linspace(1, 0, N + 1)."""
    scheduler = make_scheduler(4, shift=3.0)
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    for i, timestep in enumerate(scheduler.timesteps):
        t_B = scheduler.sigmas[i].expand(SHAPE[0])
        scheduler.set_begin_index(i)  # scale_noise reads the sigma at the begin index
        torch.testing.assert_close(scheduler.scale_noise(x0, timestep.expand(SHAPE[0]), noise), interpolate(x0, noise, t_B))
    expected = shift_time(torch.linspace(1, 0, 5, dtype=torch.float64), 3.0).float()
    torch.testing.assert_close(sampling_times(4, shift=3.0), expected)
    assert sampling_times(1).tolist() == [1.0, 0.0]


def test_one_step_is_the_analytic_euler_update() -> None:
    """x_0 = x_1 - 1 * v(x_1, 1) for a linear velocity field; the model is called with t = 1."""
    noise, seen = torch.randn(SHAPE), []

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        seen.append(t_B.clone())
        return 0.5 * x + 2.0 * t_B[:, None, None, None, None]

    out = denoise(velocity, noise, num_steps=1, shift=3.0)
    torch.testing.assert_close(out, noise - (0.5 * noise + 2.0), rtol=0, atol=1e-6)
    assert len(seen) == 1 and seen[0].tolist() == [1.0, 1.0]


def test_steps_visit_the_grid_with_x_minus_dt_v() -> None:
    noise, seen = torch.randn(SHAPE), []

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        seen.append(t_B[0].item())
        return -x * t_B[:, None, None, None, None]

    times = sampling_times(3, shift=2.0)
    expected = noise.clone()
    for i in range(3):
        expected = expected - (times[i] - times[i + 1]) * (-expected * times[i])
    torch.testing.assert_close(denoise(velocity, noise, num_steps=3, shift=2.0), expected)
    assert seen == times[:-1].tolist()


@pytest.mark.parametrize("num_steps,shift", [(1, 1.0), (7, 1.0), (25, 3.0)])
def test_euler_on_a_straight_line_flow_recovers_x0(num_steps: int, shift: float) -> None:
    """Both exact velocity fields of the straight path from noise to x0 (the constant noise - x0,
    and the field (x - x0) / t that points every x at x0) are integrated exactly by Euler."""
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)

    def constant(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def toward_x0(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return (x - x0) / t_B[:, None, None, None, None]

    for velocity in (constant, toward_x0):
        torch.testing.assert_close(denoise(velocity, noise, num_steps=num_steps, shift=shift), x0, rtol=0, atol=1e-5)


def test_state_stays_float32_under_a_bf16_model() -> None:
    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    v_bf16 = (noise - x0).bfloat16()

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32
        return v_bf16

    out = denoise(velocity, noise, num_steps=8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, noise - v_bf16.float(), rtol=0, atol=1e-5)


def _conditioned(x: torch.Tensor, t_B: torch.Tensor, *, bias: torch.Tensor, dropped: dict[str, torch.Tensor]) -> torch.Tensor:
    keep = (~dropped["bias"]).float()[:, None, None, None, None]
    return 0.3 * x + keep * bias


def test_guidance_scale_1_is_the_conditional_pass() -> None:
    bias = torch.randn(SHAPE)
    conditional = {"bias": bias, "dropped": drop_masks(["bias"], SHAPE[0])}
    unconditional = {"bias": bias, "dropped": drop_masks(["bias"], SHAPE[0], dropped=["bias"])}
    plain = sample(_conditioned, SHAPE, conditional, generator=torch.Generator().manual_seed(1), num_steps=4)
    guided = sample(
        _conditioned, SHAPE, conditional, generator=torch.Generator().manual_seed(1), num_steps=4,
        guidance_scale=1.0, unconditional=unconditional,
    )  # fmt: skip
    assert torch.equal(plain, guided)
    stronger = sample(
        _conditioned, SHAPE, conditional, generator=torch.Generator().manual_seed(1), num_steps=4,
        guidance_scale=3.0, unconditional=unconditional,
    )  # fmt: skip
    assert not torch.equal(plain, stronger)


def test_guided_velocity_mixes_the_two_passes() -> None:
    x, t_B, bias = torch.randn(SHAPE), torch.full((SHAPE[0],), 0.5), torch.randn(SHAPE)
    conditional = {"bias": bias, "dropped": drop_masks(["bias"], SHAPE[0])}
    unconditional = {"bias": bias, "dropped": drop_masks(["bias"], SHAPE[0], dropped=["bias"])}
    v_c, v_u = _conditioned(x, t_B, **conditional), _conditioned(x, t_B, **unconditional)
    torch.testing.assert_close(guided_velocity(_conditioned, x, t_B, conditional, unconditional, 4.0), v_u + 4.0 * (v_c - v_u))
    with pytest.raises(ValueError, match="unconditional"):
        guided_velocity(_conditioned, x, t_B, conditional, None, 4.0)


def test_same_seed_same_sample_without_touching_the_global_rng() -> None:
    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * t_B[:, None, None, None, None]

    state = torch.random.get_rng_state()
    first = sample(velocity, SHAPE, generator=torch.Generator().manual_seed(7), num_steps=3)
    again = sample(velocity, SHAPE, generator=torch.Generator().manual_seed(7), num_steps=3)
    other = sample(velocity, SHAPE, generator=torch.Generator().manual_seed(8), num_steps=3)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_one_and_two_threads_give_identical_samples_on_a_conv_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(5, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv3d(32, 4, 3, padding=1))

    def velocity(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        t_map = t_B[:, None, None, None, None].expand(-1, 1, *x.shape[2:])
        return model(torch.cat([x, t_map], 1))

    threads = torch.get_num_threads()
    try:
        samples = []
        for count in (1, 2):
            torch.set_num_threads(count)
            samples.append(sample(velocity, (2, 4, 5, 32, 32), generator=torch.Generator().manual_seed(3), num_steps=4, shift=2.0))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(samples[0], samples[1])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        make_scheduler(0)
    with pytest.raises(ValueError, match="shift"):
        make_scheduler(4, shift=0.0)
