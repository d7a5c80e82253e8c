"""WanVideoGenerator on tiny random Wan 2.1 pipelines: our velocity, followed with Euler steps,
is the pipeline's own sampling; latents, determinism, the folder identity and the refusals."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch

from gvc_train.models.codebook.tiny_wan import save_tiny_wan_pipeline
from gvc_train.models.codebook.wan_generator import WanVideoGenerator, to_pil, pipeline_identity

FRAMES, SIZE, STEPS, CAPTION = 17, 64, 3, "a man walks on the road"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("wan")
    return {kind: str(save_tiny_wan_pipeline(root / kind, kind, seed=1)) for kind in ("t2v", "i2v", "flf2v")}


@pytest.fixture(scope="module")
def generators(folders) -> dict[str, WanVideoGenerator]:
    return {kind: WanVideoGenerator.from_folder(path, guidance_scale=1.0, negative_prompt="blurry") for kind, path in folders.items()}


@pytest.fixture(autouse=True)
def _ftfy_stand_in(monkeypatch):
    """WanImageToVideoPipeline's prompt cleaning calls ``ftfy`` unguarded (absent here); with
    ftfy as identity it cleans text as WanPipeline does without ftfy, which the generator uses."""
    import diffusers.pipelines.wan.pipeline_wan_i2v as i2v

    monkeypatch.setattr(i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)


def _keyframe(seed: int) -> torch.Tensor:
    """An 8-bit-exact [0, 1] frame: the pipeline's PIL path and our tensor path see the same pixels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, SIZE, SIZE), generator=generator).float() / 255


def _euler_scheduler(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe.scheduler.set_timesteps(STEPS)
    return pipe.scheduler.sigmas.clone()


@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_euler_on_our_velocity_is_the_pipelines_own_sampling(generators, mode: str, guidance: float) -> None:
    generator = WanVideoGenerator(generators[mode].pipe, guidance_scale=guidance, negative_prompt="blurry")
    assert mode in generator.modes
    first, last = _keyframe(1), _keyframe(2)
    shape = (1, generator.latent_channels, 1 + (FRAMES - 1) // generator.temporal_stride, SIZE // 8, SIZE // 8)
    x1 = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    conditions = generator.conditions(mode, shape, CAPTION, first, last if mode == "flf2v" else None)
    sigmas = _euler_scheduler(generator.pipe)
    x = x1.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x - (sigma - sigma_next) * generator.velocity(x, float(sigma), conditions)

    keys = {} if mode == "t2v" else {"image": to_pil(first)} | ({"last_image": to_pil(last)} if mode == "flf2v" else {})
    theirs = generator.pipe(
        prompt=CAPTION, negative_prompt="blurry", height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=STEPS,
        guidance_scale=guidance, latents=x1.clone(), output_type="latent", **keys,
    ).frames  # fmt: skip
    assert theirs.shape == x.shape
    torch.testing.assert_close(x, theirs.float(), rtol=1e-5, atol=1e-5)
    assert (x - x1).abs().mean() > 0.1  # the velocity moved it: the comparison is not of two copies of x1


def test_decode_latent_is_the_pipelines_decode(generators) -> None:
    generator = generators["t2v"]
    shape = (1, generator.latent_channels, 5, SIZE // 8, SIZE // 8)
    x1 = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    _euler_scheduler(generator.pipe)
    conditions = generator.conditions("t2v", shape, CAPTION)
    sigmas = generator.pipe.scheduler.sigmas.clone()
    x = x1.clone()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x - (sigma - sigma_next) * generator.velocity(x, float(sigma), conditions)
    video_BTCHW = generator.pipe(
        prompt=CAPTION, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=1.0,
        latents=x1.clone(), output_type="pt",
    ).frames  # fmt: skip
    torch.testing.assert_close(generator.decode_latent(x), video_BTCHW.permute(0, 2, 1, 3, 4).float(), rtol=1e-4, atol=1e-4)


def test_encode_and_decode_shapes_ranges_and_normalisation(generators) -> None:
    generator = generators["i2v"]
    video = torch.rand(1, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    latent = generator.encode_video(video)
    assert latent.shape == (1, generator.latent_channels, 5, SIZE // 8, SIZE // 8) and latent.dtype == torch.float32
    assert torch.equal(latent, generator.encode_video(video))  # the posterior mean, not a sample
    decoded = generator.decode_latent(latent)
    assert decoded.shape == video.shape and decoded.min() >= 0 and decoded.max() <= 1
    # normalise then un-normalise is the VAE's own round trip on raw latents
    vae = generator.pipe.vae
    raw = vae.encode(2 * video - 1).latent_dist.mode()
    expected = (vae.decode(raw, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)
    assert (latent - raw).abs().max() > 0.1  # latents_mean / latents_std were applied
    assert generator.size_multiple == 16 and generator.spatial_stride == 8 and generator.temporal_stride == 4
    with pytest.raises(ValueError, match="1 \\+ 4 k"):
        generator.encode_video(video[:, :, :16])


def test_velocity_is_bit_identical_call_to_call(generators) -> None:
    generator = WanVideoGenerator(generators["i2v"].pipe, guidance_scale=3.0)
    shape = (1, generator.latent_channels, 5, SIZE // 8, SIZE // 8)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the codec's setting (codecs/determinism.py): across thread counts the bits may differ
    try:
        conditions = generator.conditions("i2v", shape, CAPTION, _keyframe(5))
        again = generator.conditions("i2v", shape, CAPTION, _keyframe(5))
        for name in ("prompt_embeds", "negative_prompt_embeds", "image_embeds", "condition_BCThw"):
            assert torch.equal(getattr(conditions, name), getattr(again, name)), name
        first = generator.velocity(x, 0.625, conditions)
        assert first.dtype == torch.float32 and first.shape == x.shape
        assert torch.equal(first, generator.velocity(x, 0.625, conditions))
    finally:
        torch.set_num_threads(previous)


def test_identity_follows_the_bytes_not_the_place(folders, tmp_path) -> None:
    original = pipeline_identity(folders["t2v"])
    copy = shutil.copytree(folders["t2v"], tmp_path / "elsewhere")
    assert pipeline_identity(copy) == original
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    assert pipeline_identity(copy) != original
    assert pipeline_identity(folders["i2v"]) != original


def test_refusals_are_one_line(generators, tmp_path) -> None:
    shape = (1, 4, 5, 4, 4)
    for kind, mode in (("t2v", "i2v"), ("t2v", "flf2v"), ("i2v", "flf2v"), ("flf2v", "i2v")):
        with pytest.raises(ValueError) as error:
            generators[kind].conditions(mode, shape, CAPTION, _keyframe(0), _keyframe(1))
        assert "\n" not in str(error.value) and mode in str(error.value)
    with pytest.raises(ValueError, match="first_B3HW") as error:
        generators["i2v"].conditions("i2v", shape, CAPTION)
    with pytest.raises(ValueError, match="not a diffusers pipeline folder") as error:
        WanVideoGenerator.from_folder(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="not a Wan 2.1 pipeline") as error:
        WanVideoGenerator.from_folder(tmp_path)
    assert "\n" not in str(error.value)
