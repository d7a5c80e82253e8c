"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features").

The backbone (torchvision VGG16 or AlexNet) is built with ``weights=None`` and filled from a
LOCAL file the user supplies (a torchvision state dict, ``.pth`` or ``.safetensors``): nothing is
ever downloaded. The linear heads (``lin0..lin4``, 1x1 convs) come from the ``lpips`` package's
shipped ``weights/v0.1/<net>.pth`` when that package is installed, or from ``heads_path``.

The computation follows the reference ``lpips`` v0.1 code: inputs scaled to [-1, 1], then
its ImageNet-style shift/scale, features at five ReLU layers, unit-normalised over channels,
squared differences weighted by the heads, averaged over space, summed over layers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from gvc_train.safe_load import load_state_dict_file
from torch import nn

# (feature-layer end indices of the five slices, their channel counts) in torchvision's
# ``.features`` Sequential: after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for VGG16 and
# after relu1..relu5 for AlexNet, exactly the taps of the reference implementation.
_NETS: dict[str, tuple[list[int], list[int]]] = {
    "vgg": ([4, 9, 16, 23, 30], [64, 128, 256, 512, 512]),
    "alex": ([2, 5, 8, 10, 12], [64, 192, 384, 256, 256]),
}


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    return load_state_dict_file(path, f"LPIPS {what} weights")


def default_heads_path(net: str) -> Path | None:
    """The heads shipped inside the ``lpips`` pip package, if it is installed."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


def _build_trunk(net: str) -> nn.Sequential:
    """The torchvision trunk, uninitialised: built on the meta device (no time spent on random
    init of the large classifier) and materialised empty; the strict backbone load fills it."""
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.vgg16(weights=None) if net == "vgg" else torchvision.models.alexnet(weights=None)
    return model.features[: _NETS[net][0][-1]].to_empty(device="cpu")


class LPIPS(nn.Module):
    """``LPIPS(backbone_path)(x, y)``: per-sample perceptual distance, shape ``[B]``.

    ``x``, ``y``: images ``B x 3 x H x W`` or videos ``B x 3 x T x H x W`` in [0, 1] (a video's
    frames are scored independently and averaged). Differentiable in the inputs, so usable as
    a loss; its own parameters are frozen.
    """

    def __init__(self, backbone_path: str | Path, net: str = "vgg", heads_path: str | Path | None = None) -> None:
        super().__init__()
        if net not in _NETS:
            raise ValueError(f"LPIPS net must be one of {sorted(_NETS)}, not {net!r}")
        self.net = net
        ends, channels = _NETS[net]
        trunk = _build_trunk(net)
        self._load_backbone(trunk, Path(backbone_path))
        starts = [0] + ends[:-1]
        self.slices = nn.ModuleList(trunk[a:b] for a, b in zip(starts, ends))
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        if heads_path is None:
            heads_path = default_heads_path(net)
            if heads_path is None:
                raise FileNotFoundError(
                    f"LPIPS heads: install the 'lpips' package (it ships weights/v0.1/{net}.pth) or pass heads_path"
                )
        self._load_heads(Path(heads_path))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _load_backbone(self, trunk: nn.Sequential, path: Path) -> None:
        state = _load_tensors(path, f"{self.net} backbone")
        # Accept a whole torchvision model's state dict ("features.N.*", "classifier.*") or a
        # ``.features`` one ("N.*"); keep only the layers the five taps use.
        if any(k.startswith("features.") for k in state):
            state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        state = {k: v for k, v in state.items() if _layer_index(k) < len(trunk)}
        try:
            trunk.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            detail = (" ".join(line.strip() for line in first[1:3]) or first[0])[:300]
            raise ValueError(f"LPIPS backbone {path} does not fit torchvision {self.net}: {detail}") from None

    def _load_heads(self, path: Path) -> None:
        state = _load_tensors(path, f"{self.net} heads")
        try:
            for i, head in enumerate(self.heads):
                key = next((k for k in (f"lin{i}.model.1.weight", f"lin{i}.weight", f"{i}.weight") if k in state), None)
                if key is None:
                    raise KeyError(f"lin{i}.model.1.weight")
                with torch.no_grad():
                    head.weight.copy_(state[key])
        except (KeyError, RuntimeError) as e:
            raise ValueError(f"LPIPS heads {path} do not fit {self.net}: missing or misshaped {e}") from None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.dim() == 5:  # fold time into the batch: B3Thw -> (B*T)3hw
            b, c, t, h, w = x.shape
            fold = lambda v: v.transpose(1, 2).reshape(b * t, c, h, w)  # noqa: E731
            return self.forward(fold(x), fold(y)).view(b, t).mean(dim=1)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects B x 3 x H x W or B x 3 x T x H x W, got {tuple(x.shape)}")
        hx = (x * 2.0 - 1.0 - self.shift) / self.scale
        hy = (y * 2.0 - 1.0 - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for block, head in zip(self.slices, self.heads):
            hx, hy = block(hx), block(hy)
            diff = (_unit_normalise(hx) - _unit_normalise(hy)).pow(2)
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _layer_index(key: str) -> int:
    head = key.split(".")[0]
    return int(head) if head.isdigit() else -1


def _unit_normalise(feat_NChw: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return feat_NChw / (feat_NChw.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
