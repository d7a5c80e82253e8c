"""CausalVAE: shapes, causality, chunked == whole, bad shapes; GAN parts. (Export, reload,
fingerprint and a training step: the component tester, test_component_contract.py.)"""

from __future__ import annotations

import pytest
import torch

from gvc_train.models import (
    CausalVAE,
    DiagonalGaussian,
    PatchDiscriminator3D,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
)

TINY = dict(base_channels=8, num_res_blocks=1, latent_channels=4)


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    torch.manual_seed(0)
    model = CausalVAE(**TINY).eval()
    # Random (not identity-like) temporal convs so the causality tests exercise real mixing.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_conv" in name or "proj" in name:
                p.normal_(0.0, 0.1)
    return model


def test_shapes_and_properties(vae: CausalVAE) -> None:
    x = torch.rand(2, 3, 9, 32, 48)
    with torch.no_grad():
        recon, posterior = vae(x, sample_posterior=True, generator=torch.Generator().manual_seed(1))
    assert posterior.mean.shape == (2, 4, 3, 4, 6)
    assert posterior.std.shape == posterior.logvar.shape == posterior.mean.shape
    assert recon.shape == x.shape
    assert posterior.kl().shape == (2,)
    assert (vae.spatial_stride, vae.temporal_stride, vae.latent_channels) == (8, 4, 4)
    assert vae.latent_shape(9, 32, 48) == (4, 3, 4, 6)
    assert vae.last_layer_weight is vae.decoder.conv_out.weight
    # A single frame is a valid video: 1 frame <-> 1 latent frame.
    with torch.no_grad():
        z = vae.encode(torch.rand(1, 3, 1, 16, 16)).mode()
        assert z.shape == (1, 4, 1, 2, 2)
        assert vae.decode(z).shape == (1, 3, 1, 16, 16)


def test_diagonal_gaussian() -> None:
    g = DiagonalGaussian(torch.zeros(2, 3, 1, 2, 2), torch.zeros(2, 3, 1, 2, 2))
    assert torch.equal(g.kl(), torch.zeros(2))
    g = DiagonalGaussian(torch.ones(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1))
    assert torch.allclose(g.kl(), torch.tensor([1.0]))  # 0.5 * mean^2 summed over 2 elements
    s1 = g.sample(torch.Generator().manual_seed(3))
    s2 = g.sample(torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and torch.equal(g.mode(), g.mean)


def test_encoder_is_causal(vae: CausalVAE) -> None:
    torch.manual_seed(1)
    x = torch.rand(1, 3, 13, 16, 16)
    with torch.no_grad():
        base = vae.encode(x).mean
        for frame in (0, 1, 4, 5, 8, 12):
            x2 = x.clone()
            x2[:, :, frame] = torch.rand_like(x2[:, :, frame])
            moved = (vae.encode(x2).mean - base).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
            for j in range(base.shape[2]):
                if frame > 4 * j:
                    assert moved[j] == 0, f"latent {j} changed when frame {frame} changed"
                else:
                    assert moved[j] > 0, f"latent {j} ignores frame {frame}"


def test_decoder_is_causal(vae: CausalVAE) -> None:
    torch.manual_seed(2)
    z = torch.randn(1, 4, 4, 2, 2)
    with torch.no_grad():
        base = vae.decode(z)
        z2 = z.clone()
        z2[:, :, 2] += 1.0
        moved = (vae.decode(z2) - base).abs().amax(dim=(0, 1, 3, 4))
    # Latent j >= 1 makes frames 4j-3 .. 4j; nothing before them may change.
    assert torch.all(moved[:5] == 0)
    assert torch.all(moved[5:] > 0)


@pytest.mark.parametrize("chunk", [4, 8, 12])
def test_chunked_encode_equals_whole(vae: CausalVAE, chunk: int) -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 3, 17, 16, 16)
    with torch.no_grad():
        whole = vae.encode(x)
        chunked = vae.encode(x, chunk_frames=chunk)
    torch.testing.assert_close(chunked.mean, whole.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.logvar, whole.logvar, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_decode_equals_whole(vae: CausalVAE, chunk: int) -> None:
    torch.manual_seed(4)
    z = torch.randn(2, 4, 5, 2, 2)
    with torch.no_grad():
        whole = vae.decode(z)
        chunked = vae.decode(z, chunk_latents=chunk)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_longer_first_chunks_stream_too(vae: CausalVAE) -> None:
    # The first chunk may hold 1 + 4m frames (1 + m latents); the first frame is still alone.
    torch.manual_seed(7)
    x = torch.rand(1, 3, 13, 16, 16)
    with torch.no_grad():
        whole = vae.encode(x).mean
        p1, state = vae.encode_chunk(x[:, :, :5], vae.init_encoder_state())
        p2, _ = vae.encode_chunk(x[:, :, 5:], state)
        torch.testing.assert_close(torch.cat([p1.mean, p2.mean], dim=2), whole, atol=1e-5, rtol=0)
        video = vae.decode(whole)
        v1, dstate = vae.decode_chunk(whole[:, :, :2], vae.init_decoder_state())
        v2, _ = vae.decode_chunk(whole[:, :, 2:], dstate)
        assert v1.shape[2] == 5 and v2.shape[2] == 8
        torch.testing.assert_close(torch.cat([v1, v2], dim=2), video, atol=1e-5, rtol=0)


def test_gradient_checkpointing_changes_nothing() -> None:
    torch.manual_seed(8)
    model = CausalVAE(**TINY).train()
    x = torch.rand(1, 3, 5, 16, 16)
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        recon, _ = model(x, sample_posterior=False)
        recon.square().mean().backward()
        grads.append(model.encoder.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_stream_state_is_bounded_and_not_mutated(vae: CausalVAE) -> None:
    torch.manual_seed(5)
    x = torch.rand(1, 3, 1 + 4 * 6, 16, 16)
    sizes = []
    with torch.no_grad():
        state = vae.init_encoder_state()
        _, state = vae.encode_chunk(x[:, :, :1], state)
        for i in range(6):
            before = dict(state.cache)
            _, new_state = vae.encode_chunk(x[:, :, 1 + 4 * i : 5 + 4 * i], state)
            assert all(state.cache[k] is before[k] for k in before)  # old state untouched
            state = new_state
            sizes.append((state.num_cached_elements(), state.num_cached_frames()))
        assert state.frames_seen == x.shape[2]
        assert len(set(sizes)) == 1, f"encoder cache grows with T: {sizes}"
        assert max(t.shape[2] for t in state.cache.values()) <= 2

        dstate = vae.init_decoder_state()
        z = torch.randn(1, 4, 7, 2, 2)
        dsizes = []
        for j in range(7):
            _, dstate = vae.decode_chunk(z[:, :, j : j + 1], dstate)
            dsizes.append(dstate.num_cached_elements())
        assert len(set(dsizes[1:])) == 1, f"decoder cache grows with t: {dsizes}"


def test_stream_rejects_bad_chunks(vae: CausalVAE) -> None:
    state = vae.init_encoder_state()
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.encode_chunk(torch.rand(1, 3, 4, 16, 16), state)
    _, state = vae.encode_chunk(torch.rand(1, 3, 1, 16, 16), state)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode_chunk(torch.rand(1, 3, 3, 16, 16), state)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(torch.rand(1, 3, 9, 16, 16), chunk_frames=6)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 8, 16, 16), "1 \\+ 4k"),
        ((1, 3, 9, 20, 16), "multiples of 8"),
        ((1, 3, 5, 16, 12), "multiples of 8"),
        ((1, 1, 5, 16, 16), "channels"),
        ((3, 5, 16, 16), "B x C x T x H x W"),
    ],
)
def test_bad_shapes_raise(vae: CausalVAE, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.rand(*shape))


def test_train_step_with_gan_and_adaptive_weight() -> None:
    torch.manual_seed(6)
    vae = CausalVAE(**TINY).train()
    disc = PatchDiscriminator3D(base_channels=8, num_layers=2, temporal_downsample=1)
    x = torch.rand(2, 3, 5, 32, 32)
    recon, posterior = vae(x)
    nll = (recon - x).abs().mean()
    g_loss = hinge_g_loss(disc(recon))
    weight = adaptive_gan_weight(nll, g_loss, vae.last_layer_weight)
    assert weight.ndim == 0 and weight > 0 and not weight.requires_grad
    (nll + weight * g_loss + 1e-6 * posterior.kl().mean()).backward()  # graph survives the weight
    assert vae.encoder.conv_in.weight.grad is not None
    with torch.no_grad():
        d_loss = hinge_d_loss(disc(x), disc(recon))
        assert d_loss.ndim == 0
        with pytest.raises(ValueError, match="autograd graph"):
            adaptive_gan_weight(nll, g_loss, vae.last_layer_weight)


@pytest.mark.parametrize("norm", ["group", "spectral"])
def test_discriminator_shapes_and_hinge_losses(norm: str) -> None:
    # its export and reload (both norms) are in test_component_contract.py
    disc = PatchDiscriminator3D(base_channels=8, num_layers=3, norm=norm).eval()
    x = torch.rand(2, 3, 9, 64, 64)
    with torch.no_grad():
        logits = disc(x)
    assert logits.shape[:2] == (2, 1) and logits.shape[2] == 3 and logits.shape[3] == 6
    assert hinge_d_loss(torch.full((3,), 2.0), torch.full((3,), -2.0)) == 0
    assert hinge_g_loss(torch.full((3,), 0.5)) == -0.5


def test_rms_norm_variant_streams_exactly() -> None:
    torch.manual_seed(9)
    model = CausalVAE(**TINY, norm="rms", mid_attention=False).eval()
    x = torch.rand(1, 3, 9, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x, chunk_frames=4).mean, model.encode(x).mean, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="norm must be"):
        CausalVAE(**TINY, norm="batch")


def test_adaptive_gan_weight_is_the_gradient_norm_ratio() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)
    out = torch.randn(5, 4) @ w
    nll, g_loss = out.pow(2).mean(), -out.mean()
    g_nll = torch.autograd.grad(nll, w, retain_graph=True)[0]
    g_g = torch.autograd.grad(g_loss, w, retain_graph=True)[0]
    expected = g_nll.norm() / (g_g.norm() + 1e-4)
    torch.testing.assert_close(adaptive_gan_weight(nll, g_loss, w), expected)
    # clamped at max_weight when the GAN gradient vanishes
    assert float(adaptive_gan_weight(nll, 0 * out.sum(), w, max_weight=7.0)) == 7.0
