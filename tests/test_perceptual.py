"""LPIPS loading and values; PSNR and MS-SSIM."""

from __future__ import annotations

import pytest
import torch
import torchvision
from pytorch_msssim import ms_ssim as reference_ms_ssim
from safetensors.torch import save_file

from gvc_train.eval.metrics import frame_psnr, ms_ssim, ms_ssim_params, psnr
from gvc_train.models.losses.lpips import LPIPS

# The reference lpips package's VGG slices (its module names slice1..slice5 hold these layers).
_SLICES = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Two random VGG16 backbones: a whole-model .pth and a features-only .safetensors."""
    folder = tmp_path_factory.mktemp("vgg")
    torch.manual_seed(0)
    whole = torchvision.models.vgg16(weights=None).features.state_dict()
    torch.save({f"features.{k}": v for k, v in whole.items()}, folder / "vgg_a.pth")
    torch.manual_seed(1)
    other = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(folder / "vgg_b.safetensors"))
    return folder, whole


def test_lpips_loads_the_backbone(backbones) -> None:
    folder, whole = backbones
    a = LPIPS(folder / "vgg_a.pth")
    b = LPIPS(folder / "vgg_b.safetensors")
    loaded = {k: v for block in a.slices for k, v in block.state_dict().items()}
    assert all(torch.equal(loaded[k], whole[k]) for k in loaded) and len(loaded) == 26
    torch.manual_seed(2)
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    da, db = a(x, y), b(x, y)
    assert da.shape == (2,) and torch.all(da > 0)
    assert not torch.allclose(da, db)
    assert torch.equal(a(x, x), torch.zeros(2))


@pytest.mark.filterwarnings("ignore::UserWarning")  # lpips calls torchvision's deprecated `pretrained=`
def test_lpips_matches_the_reference_package(backbones) -> None:
    import lpips  # the reference implementation (a dependency: it ships the heads)
    folder, whole = backbones
    # pnet_rand: a random trunk (no download), which then gets the same weights as ours.
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    slice_of = {i: s for s, layers in _SLICES.items() for i in layers}
    ref.net.load_state_dict({f"slice{slice_of[int(k.split('.')[0])]}.{k}": v for k, v in whole.items()})
    ours = LPIPS(folder / "vgg_a.pth")
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), ref(x, y, normalize=True).flatten(), rtol=1e-5, atol=1e-6)


def test_lpips_video_and_gradient(backbones) -> None:
    folder, _ = backbones
    metric = LPIPS(folder / "vgg_a.pth")
    torch.manual_seed(4)
    x = torch.rand(2, 3, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 3, 32, 32)
    video = metric(x, y)
    frames = torch.stack([metric(x[:, :, t], y[:, :, t]) for t in range(3)], dim=1).mean(dim=1)
    torch.testing.assert_close(video, frames)
    video.sum().backward()
    assert x.grad is not None and all(not p.requires_grad for p in metric.parameters())


def test_lpips_errors(backbones, tmp_path) -> None:
    folder, _ = backbones
    with pytest.raises(FileNotFoundError, match="not found"):
        LPIPS(tmp_path / "missing.pth", heads_path=tmp_path / "h.pth")
    alex = torchvision.models.alexnet(weights=None).features.state_dict()
    torch.save(alex, tmp_path / "alex.pth")
    with pytest.raises(ValueError, match="does not fit torchvision vgg"):
        LPIPS(tmp_path / "alex.pth", heads_path=folder / "vgg_a.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth is not a torch.save file"):
        LPIPS(tmp_path / "junk.pth", heads_path=folder / "vgg_a.pth")
    # a crafted pickle is refused before anything in it runs
    import io

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (io.open, (str(tmp_path / "ran"), "w"))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="could run code"):
        LPIPS(tmp_path / "evil.pth", heads_path=folder / "vgg_a.pth")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ValueError, match="heads"):
        LPIPS(folder / "vgg_a.pth", heads_path=folder / "vgg_a.pth")


def test_psnr_known_mse() -> None:
    x = torch.full((2, 3, 5, 8, 8), 0.5)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    torch.testing.assert_close(psnr(x, y), torch.tensor([20.0, 40.0]))
    torch.testing.assert_close(psnr(x * 255, y * 255, data_range=255.0), torch.tensor([20.0, 40.0]))
    assert frame_psnr(x, y).shape == (2, 5)
    assert torch.isfinite(psnr(x, x)).all() and psnr(x, x)[0] == pytest.approx(100.0)


def test_ms_ssim_params_rule() -> None:
    assert ms_ssim_params(256, 256) == (11, 5)
    assert ms_ssim_params(144, 176) == (11, 4)
    assert ms_ssim_params(64, 64) == (11, 3)
    assert ms_ssim_params(64, 64, levels=5) == (3, 5)
    for h, w in [(256, 256), (144, 176), (64, 64), (16, 16), (8, 8)]:
        win, levels = ms_ssim_params(h, w)
        assert min(h, w) > (win - 1) * 2 ** (levels - 1)
    with pytest.raises(ValueError, match="too small"):
        ms_ssim_params(32, 32, win_size=11, levels=5)


def test_ms_ssim_values_and_loss() -> None:
    torch.manual_seed(5)
    video = torch.rand(2, 3, 3, 64, 64)
    torch.testing.assert_close(ms_ssim(video, video), torch.ones(2))
    qcif = torch.rand(2, 3, 144, 176)
    torch.testing.assert_close(ms_ssim(qcif, qcif), torch.ones(2))
    # With 5 levels and the 11-tap window it is exactly pytorch_msssim's ms_ssim.
    x = torch.rand(2, 3, 168, 168)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    ours = ms_ssim(x, y)
    ref = reference_ms_ssim(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ours, ref)
    # Usable as a loss.
    z = torch.rand(1, 3, 1, 64, 64, requires_grad=True)
    (1 - ms_ssim(z, video[:1, :, :1])).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
