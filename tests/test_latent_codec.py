"""LatentVideoCodec: shapes, rate, training, quality, causality, the update() life cycle. (Export,
reload, fingerprint and a finite training step: the component tester, test_component_contract.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from gvc_train.models import LatentVideoCodec

TINY = dict(latent_channels=16, channels=16, y_channels=8, z_channels=8, memory_channels=8, num_res_blocks=1, num_qualities=3)


def _codec(**overrides: object) -> LatentVideoCodec:
    torch.manual_seed(0)
    return LatentVideoCodec(**{**TINY, **overrides})


def _latent(t: int, b: int = 2, h: int = 4, w: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, t, h, w, generator=g)


@pytest.mark.parametrize("t", [1, 2, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_shapes_and_bits(t: int, mode: str) -> None:
    codec = _codec()
    codec.train(mode == "train")
    x = _latent(t)
    out = codec(x, quality=1)
    assert out["recon"].shape == x.shape
    assert len(out["likelihoods"]["y"]) == t and len(out["likelihoods"]["z"]) == t
    assert out["likelihoods"]["y"][0].shape == (2, 8, 4, 6)  # g_a at stride 1
    assert out["likelihoods"]["z"][0].shape == (2, 8, 2, 3)  # hyperprior at stride 2
    assert out["bits"].shape == (2, t)
    assert torch.isfinite(out["bits"]).all() and (out["bits"] > 0).all()
    total = codec.rate_bits(out["likelihoods"])
    assert torch.isfinite(total) and total > 0
    assert math.isclose(total.item(), out["bits"].sum().item(), rel_tol=1e-4)


def test_odd_latent_size() -> None:
    codec = _codec().eval()
    x = _latent(2, b=1, h=5, w=3)
    out = codec(x, quality=0)
    assert out["recon"].shape == x.shape


@pytest.mark.parametrize("quantizer", ["noise", "ste"])
def test_rate_distortion_training_reduces_loss(quantizer: str) -> None:
    codec = _codec(train_quantizer=quantizer).train()
    x = _latent(2, b=2)
    opt = torch.optim.Adam([p for n, p in codec.named_parameters() if not n.endswith(".quantiles")], lr=5e-3)
    aux_opt = torch.optim.Adam([p for n, p in codec.named_parameters() if n.endswith(".quantiles")], lr=1e-2)
    lam = 20.0

    def loss_fn() -> torch.Tensor:
        torch.manual_seed(123)  # same noise each time, so losses are comparable
        out = codec(x, quality=2)
        bpe = codec.rate_bits(out["likelihoods"]) / x.numel()
        return bpe + lam * torch.mean((out["recon"] - x) ** 2)

    with torch.no_grad():
        first = float(loss_fn())
    for _ in range(20):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        aux_opt.zero_grad()
        codec.aux_loss().backward()
        aux_opt.step()
    with torch.no_grad():
        last = float(loss_fn())
    assert last < 0.8 * first, (first, last)


def test_quality_index_selects_gains_and_changes_rate() -> None:
    codec = _codec().eval()
    gains = [codec.gains(q, 1)[0].flatten() for q in range(3)]
    assert gains[0].mean() < gains[1].mean() < gains[2].mean()  # higher index, larger gain
    assert torch.allclose(codec.gains(2, 1)[0] * codec.gains(2, 1)[1], torch.ones(1, 8, 1, 1))
    x = _latent(2) * 4
    with torch.no_grad():
        bits = [float(codec(x, quality=q)["bits"].sum()) for q in range(3)]
        per_item = codec(x, quality=torch.tensor([0, 2]))["bits"]
        lo, hi = codec(x[:1], quality=0)["bits"], codec(x[1:], quality=2)["bits"]
    assert bits[0] < bits[1] < bits[2], bits
    assert torch.allclose(per_item, torch.cat([lo, hi]), rtol=1e-4)
    with pytest.raises(ValueError):
        codec(x, quality=3)
    with pytest.raises(ValueError):
        codec(x, quality=-1)


def test_first_frame_does_not_see_later_frames() -> None:
    codec = _codec().eval()
    x = _latent(3)
    x2 = x.clone()
    x2[:, :, 1:] = torch.randn_like(x2[:, :, 1:]) * 3
    with torch.no_grad():
        a, b = codec(x, quality=1), codec(x2, quality=1)
    assert torch.equal(a["recon"][:, :, 0], b["recon"][:, :, 0])
    assert torch.equal(a["bits"][:, 0], b["bits"][:, 0])
    assert not torch.equal(a["recon"][:, :, 1], b["recon"][:, :, 1])


def test_forward_frame_unrolls_like_forward() -> None:
    codec = _codec().eval()
    x = _latent(3)
    with torch.no_grad():
        whole = codec(x, quality=1)
        state = codec.init_state()
        recons = []
        for i in range(3):
            out, state = codec.forward_frame(x[:, :, i], state, 1)
            recons.append(out["recon"])
    assert state.frames_seen == 3 and state.memory is not None
    assert torch.equal(torch.stack(recons, dim=2), whole["recon"])


def test_eval_context_uses_mean_subtracted_rounding() -> None:
    codec = _codec().eval()
    x = _latent(1)
    with torch.no_grad():
        gain, inv_gain = codec.gains(1, 2)
        ctx = codec.context(codec.init_state(), x[:, :, 0])
        y = codec.g_a(torch.cat([x[:, :, 0], ctx], dim=1)) * gain
        z_hat = torch.round(codec.h_a(y) - codec.entropy_bottleneck._get_medians()) + codec.entropy_bottleneck._get_medians()
        scales, means = codec.entropy_parameters(z_hat, ctx)
        y_hat = torch.round(y - means) + means
        expected = codec.synthesize(y_hat, inv_gain, ctx)
        out, _ = codec.forward_frame(x[:, :, 0], codec.init_state(), 1)
    assert torch.allclose(out["recon"], expected, atol=1e-6)


def test_update_builds_the_tables_and_changes_no_output() -> None:
    # Export and reload of an updated codec (its tables travel with it: CompressionModel's
    # load_state_dict resizes them) are in test_component_contract.py.
    codec = _codec().eval()
    x = _latent(2)
    with torch.no_grad():
        a = codec(x, quality=1)
    assert codec.update(force=True)
    assert codec.entropy_bottleneck._quantized_cdf.numel() > 0
    assert codec.gaussian_conditional.scale_table.numel() > 0
    with torch.no_grad():
        c = codec(x, quality=1)
    assert torch.isfinite(c["bits"]).all() and torch.equal(a["recon"], c["recon"])
    assert torch.isfinite(codec.aux_loss())


def test_bad_inputs() -> None:
    codec = _codec()
    with pytest.raises(ValueError):
        codec(torch.zeros(1, 8, 1, 4, 6), quality=0)
    with pytest.raises(ValueError):
        codec(torch.zeros(1, 16, 4, 6), quality=0)
    with pytest.raises(TypeError):
        codec(_latent(1), quality=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LatentVideoCodec(num_qualities=0)
