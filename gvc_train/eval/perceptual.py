"""Perceptual distances per frame: DISTS (written here) and LPIPS (over ``models/losses/lpips.py``).

Both need ImageNet VGG16 weights that no package here ships, so both load a LOCAL torchvision
VGG16 state dict the user gives (``.pth`` or ``.safetensors``, whole model or ``.features``):
the network is built with ``weights=None`` and filled from that file; nothing is downloaded.
A ``.pth`` is read without unpickling code (``gvc_train.safe_load``: tensors and plain values
only); a file holding other pickled types is refused with one line.

DISTS (Ding, Ma, Wang, Simoncelli 2020, "Image Quality Assessment: Unifying Structure and
Texture Similarity"), as in the authors' ``DISTS_pytorch`` code: VGG16 up to relu5_3 with its
four max-pools replaced by L2 pooling (a 3x3 Hann window over squared activations, stride 2,
then the square root), inputs normalised with ImageNet mean/std, and six feature sets (the
input itself and relu1_2 .. relu5_3: 3 + 64 + 128 + 256 + 512 + 512 = 1475 channels). Per
channel, a texture term compares global means and a structure term global (co)variances;
the learned weights ``alpha`` (texture) and ``beta`` (structure), 1475 each, are normalised to
sum to 1 together, and the distance is ``1 - sum(alpha * S1 + beta * S2)``: 0 for identical
images. ``alpha``/``beta`` come from the ``dists-pytorch`` package's ``weights.pt`` (a
dependency; 12 kB) or from a file the user gives.

Scores are per frame: videos ``B x 3 x T x H x W`` in [0, 1] give ``[B, T]``; frames are run
through the network ``frame_batch`` at a time to bound memory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.safe_load import load_state_dict_file

# torchvision vgg16().features indices: max-pools DISTS replaces by L2 pooling, and where each
# of its five stages ends (after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_VGG_POOLS = {4: 64, 9: 128, 16: 256, 23: 512}
_STAGE_ENDS = (4, 9, 16, 23, 30)
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_C1 = _C2 = 1e-6  # the paper's stabilising constants


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    return load_state_dict_file(path, f"DISTS {what}")


def default_dists_weights_path() -> Path | None:
    """``weights.pt`` (alpha, beta) inside the ``dists-pytorch`` package, if installed. Found
    without importing the package (its ``__init__`` builds nothing, but imports torchvision)."""
    spec = importlib.util.find_spec("DISTS_pytorch")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights.pt"
    return path if path.is_file() else None


class L2Pool(nn.Module):
    """DISTS's L2 pooling: ``sqrt(hann3x3 * x**2)`` at stride 2, depthwise (replaces max-pool,
    which aliases; the Hann window is ``np.hanning(5)[1:-1]``, i.e. [0.5, 1, 0.5], outer, sum 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])
        g = torch.outer(a, a)
        self.register_buffer("filter", (g / g.sum()).expand(channels, 1, 3, 3).contiguous())

    def forward(self, x_NChw: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x_NChw.pow(2), self.filter, stride=2, padding=1, groups=x_NChw.shape[1])
        return (out + 1e-12).sqrt()


def _build_vgg_trunk() -> nn.Sequential:
    """VGG16 ``features[:30]`` (to relu5_3), uninitialised: built on the meta device and
    materialised empty, so no time goes to random init; the strict load fills every weight."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None)
    return model.features[: _STAGE_ENDS[-1]].to_empty(device="cpu")


class DISTS(nn.Module):
    """``DISTS(backbone_path, weights_path=None)(x, y)``: per-image distance ``[B]`` for
    ``B x 3 x H x W`` in [0, 1], per-frame ``[B, T]`` for ``B x 3 x T x H x W``. Frozen;
    differentiable in the inputs."""

    def __init__(self, backbone_path: str | Path, weights_path: str | Path | None = None, frame_batch: int = 8) -> None:
        super().__init__()
        trunk = _build_vgg_trunk()
        self._load_backbone(trunk, Path(backbone_path))
        for index, channels in _VGG_POOLS.items():
            trunk[index] = L2Pool(channels)
        starts = (0,) + _STAGE_ENDS[:-1]
        self.stages = nn.ModuleList(trunk[a:b] for a, b in zip(starts, _STAGE_ENDS))
        if weights_path is None:
            weights_path = default_dists_weights_path()
            if weights_path is None:
                raise FileNotFoundError("DISTS alpha/beta: install the 'dists-pytorch' package (it ships weights.pt) or pass weights_path")
        alpha, beta = self._load_alpha_beta(Path(weights_path))
        self.register_buffer("alpha", alpha)
        self.register_buffer("beta", beta)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.frame_batch = frame_batch
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _load_backbone(trunk: nn.Sequential, path: Path) -> None:
        state = _load_state(path, "VGG16 backbone")
        if any(k.startswith("features.") for k in state):  # a whole torchvision model
            state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        state = {k: v for k, v in state.items() if k.split(".")[0].isdigit() and int(k.split(".")[0]) < len(trunk)}
        try:
            trunk.load_state_dict(state, strict=True)
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            detail = (" ".join(line.strip() for line in lines[1:3]) or lines[0])[:300]
            raise ValueError(f"DISTS backbone {path} does not fit torchvision vgg16: {detail}") from None

    @staticmethod
    def _load_alpha_beta(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        state = _load_state(path, "alpha/beta weights")
        total = sum(DISTS_CHANNELS)
        try:
            alpha, beta = (state[k].float().reshape(1, total, 1, 1) for k in ("alpha", "beta"))
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"DISTS alpha/beta weights {path} need 'alpha' and 'beta' with {total} values each: {e}") from None
        return alpha, beta

    def _features(self, x_NChw: torch.Tensor) -> list[torch.Tensor]:
        h = (x_NChw - self.mean) / self.std
        feats = [x_NChw]  # the raw input is DISTS's first "feature" (3 channels)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def _distance(self, x_NChw: torch.Tensor, y_NChw: torch.Tensor) -> torch.Tensor:
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        score = x_NChw.new_zeros(x_NChw.shape[0])
        for fx, fy, a, b in zip(self._features(x_NChw), self._features(y_NChw), alphas, betas):
            mx, my = fx.mean(dim=(2, 3), keepdim=True), fy.mean(dim=(2, 3), keepdim=True)
            texture = (2 * mx * my + _C1) / (mx.pow(2) + my.pow(2) + _C1)
            vx = (fx - mx).pow(2).mean(dim=(2, 3), keepdim=True)
            vy = (fy - my).pow(2).mean(dim=(2, 3), keepdim=True)
            cov = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            structure = (2 * cov + _C2) / (vx + vy + _C2)
            score = score + (a * texture + b * structure).sum(dim=(1, 2, 3))
        return 1.0 - score

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_frame(self._distance, x, y, self.frame_batch, "DISTS")


class LPIPSFrames(nn.Module):
    """LPIPS (``models/losses/lpips.py``: local VGG16/AlexNet backbone, ``lpips`` package heads) as
    per-frame scores: ``[B]`` for images, ``[B, T]`` for videos ``B x 3 x T x H x W`` in [0, 1]."""

    def __init__(
        self, backbone_path: str | Path, net: str = "vgg", heads_path: str | Path | None = None, frame_batch: int = 8
    ) -> None:
        super().__init__()
        from gvc_train.models.losses.lpips import LPIPS  # here: importing gvc_train.models pulls in every model

        self.lpips = LPIPS(backbone_path, net=net, heads_path=heads_path)
        self.frame_batch = frame_batch

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_frame(self.lpips, x, y, self.frame_batch, "LPIPS")


def per_frame(fn, x: torch.Tensor, y: torch.Tensor, frame_batch: int, name: str) -> torch.Tensor:
    """Apply an image metric ``fn(N3hw, N3hw) -> [N]`` to every frame, ``frame_batch`` at a time."""
    if x.shape != y.shape:
        raise ValueError(f"{name} inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() not in (4, 5) or x.shape[1] != 3:
        raise ValueError(f"{name} expects B x 3 x H x W or B x 3 x T x H x W in [0, 1], got {tuple(x.shape)}")
    if x.dim() == 4:
        return torch.cat([fn(x[i : i + frame_batch], y[i : i + frame_batch]) for i in range(0, x.shape[0], frame_batch)])
    b, c, t, h, w = x.shape
    fold = lambda v: v.transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731 - B3Thw -> (B*T)3hw
    return per_frame(fn, fold(x), fold(y), frame_batch, name).view(b, t)
