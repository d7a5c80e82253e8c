"""ScaleSpaceFlowCodec: compressai's layout at the defaults, quality gains, the per-frame coding
round trip (the decoder reproduces the encoder's reconstruction), clear errors."""

from __future__ import annotations

import time

import pytest
import torch

from gvc_train.models.ssf.ssf_codec import FRAME_MULTIPLE, ScaleSpaceFlowCodec

TINY = dict(mid_planes=8, planes=8, hyper_planes=8, num_levels=3)


def _codec(num_qualities: int = 3, **kwargs) -> ScaleSpaceFlowCodec:
    torch.manual_seed(0)
    return ScaleSpaceFlowCodec(**{**TINY, **kwargs}, num_qualities=num_qualities).eval()


def _gop(frames: int = 3, height: int = 128, width: int = 256) -> torch.Tensor:
    """A smooth moving pattern (a learned codec's untrained transforms still code it sensibly)."""
    torch.manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, height // 16, width // 16 + frames), scale_factor=16, mode="bilinear")
    return torch.stack([base[..., 16 * t : 16 * t + width] for t in range(frames)], dim=2)


def test_the_defaults_without_qualities_have_compressais_state_dict() -> None:
    from compressai.models.video import ScaleSpaceFlow

    with torch.device("meta"):
        ours, theirs = ScaleSpaceFlowCodec().state_dict(), ScaleSpaceFlow().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    with torch.device("meta"):
        gained = ScaleSpaceFlowCodec(num_qualities=4).state_dict()
    assert sorted(set(gained) - set(theirs)) == sorted(f"{g}.{k}" for g in ("gain", "inv_gain") for k in ("img", "motion", "res"))


def test_tiny_size_and_speed_are_what_the_recipe_expects() -> None:
    """recipes/tiny/ssf.yaml's widths: parameters and the forward time of a 3-frame 128 x 128 GOP
    on one thread (a loose bound: the measured ~0.16 s may double on a shared machine)."""
    codec = ScaleSpaceFlowCodec(mid_planes=48, planes=64, hyper_planes=64, num_qualities=4)
    assert 3.9e6 < sum(p.numel() for p in codec.parameters()) < 4.2e6
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        video = torch.rand(1, 3, 3, 128, 128)
        with torch.no_grad():
            codec(video, 0)
            start = time.perf_counter()
            codec(video, 0)
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert elapsed < 2.0


def test_round_trip_decodes_the_encoders_reconstruction_frame_by_frame() -> None:
    codec = _codec()
    codec.update(force=True)
    frames = _gop().unbind(dim=2)
    x_ref, out = codec.encode_keyframe(frames[0], 2)
    encoded = [(out["strings"], out["shape"])]
    references = [x_ref]
    for x in frames[1:]:
        x_ref, out = codec.encode_inter(x, x_ref, 2)  # the encoder's own reconstruction as reference
        encoded.append((out["strings"], out["shape"]))
        references.append(x_ref)
    assert all(isinstance(s[0], bytes) for s in encoded[0][0])  # one bytes object per batch element
    decoded = [codec.decode_keyframe(*encoded[0], 2)]
    for strings, shapes in encoded[1:]:
        decoded.append(codec.decode_inter(decoded[-1], strings, shapes, 2))
    for got, expected in zip(decoded, references):
        assert torch.equal(got, expected)
    # The GOP API is the same thing.
    assert all(torch.equal(a, b) for a, b in zip(codec.decompress(*codec.compress(list(frames), 2), 2), references))
    # The quality is part of the decoder's state: another index reconstructs something else.
    assert not torch.equal(codec.decode_keyframe(*encoded[0], 0), references[0])


def test_a_higher_quality_index_spends_more_bits() -> None:
    codec = _codec()
    with torch.no_grad():
        for encoder in (codec.img_encoder, codec.motion_encoder, codec.res_encoder):
            encoder[-1].weight *= 100  # untrained latents are near 0 and round to 0 at every gain
        bits = [float(codec(_gop(), q)["bits"].sum()) for q in range(3)]
    assert bits[0] < bits[1] < bits[2]


def test_forward_returns_frames_likelihoods_and_bits_per_item() -> None:
    codec = _codec().train()
    video = _gop(frames=3, width=128).repeat(2, 1, 1, 1, 1)
    out = codec(video, torch.tensor([0, 2]))
    assert out["x_hat"].shape == video.shape and out["x_hat"].dtype == torch.float32
    assert out["bits"].shape == (2, 3) and torch.isfinite(out["bits"]).all()
    assert list(out["likelihoods"][0]) == ["keyframe"] and list(out["likelihoods"][1]) == ["motion", "residual"]
    aux = codec.aux_loss()
    assert isinstance(aux, torch.Tensor) and aux.ndim == 0
    assert len(codec.aux_losses()) == 3 and torch.allclose(sum(codec.aux_losses()), aux)


def test_hyperpriors_stay_float32_under_bf16_autocast() -> None:
    codec = _codec().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = codec(_gop(frames=2, width=128), 1)
    likelihoods = [t for frame in out["likelihoods"] for part in frame.values() for t in part.values()]
    assert all(t.dtype == torch.float32 for t in likelihoods)
    assert torch.isfinite(out["bits"]).all()


def test_bad_input_is_one_clear_error() -> None:
    codec = _codec()
    with pytest.raises(ValueError, match=f"multiples of {FRAME_MULTIPLE}"):
        codec(torch.rand(1, 3, 2, 144, 176), 0)
    with pytest.raises(ValueError, match="quality index must be in"):
        codec(_gop(width=128), 3)
    with pytest.raises(ValueError, match="B x 3 x T x H x W"):
        codec(torch.rand(1, 3, 128, 128), 0)
    with pytest.raises(RuntimeError, match="update"):
        codec.encode_keyframe(torch.rand(1, 3, 128, 128), 0)
    with pytest.raises(ValueError, match="gain_range"):
        ScaleSpaceFlowCodec(**TINY, num_qualities=2, gain_range=(2.0, 1.0))
