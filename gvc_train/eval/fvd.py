"""Fréchet Video Distance (Unterthiner et al. 2018) with a user-supplied I3D TorchScript file.

The network is the one nearly every PyTorch FVD uses: ``i3d_torchscript.pt``, the Kinetics-400
I3D of the original TensorFlow FVD converted to TorchScript by the StyleGAN-V authors
(universome/stylegan-v ``src/metrics/frechet_video_distance.py``; also the "styleganv" FVD of
common_metrics_on_video_quality). Nothing ships it and nothing here downloads it: the user
gives its path (``gvc eval --i3d PATH``).

A TorchScript file is a program, not only weights: loading it does not unpickle Python objects
(TorchScript's own reader builds tensors and TorchScript types only), but its code runs on the
videos when FVD is computed, with whatever torch operators it calls. So, unlike the checkpoints
and state dicts that gvc_train reads as plain data (``gvc_train.safe_load``), there is no safe
way to read an untrusted one: give ``--i3d`` only a file from a source you trust, as you would
a script. (Refusing it without an extra opt-in flag would only repeat what ``--i3d PATH``
already says: run this network.)

Its interface, as those ports call it:

    features_N400 = i3d(x_NCTHW, rescale=False, resize=False, return_features=True)

* ``x``: float ``[N, 3, T, 224, 224]`` in [-1, 1] (``rescale=True`` would take [0, 255] and map
  it, ``resize=True`` would resize inside; StyleGAN-V calls it that way on uint8 frames);
* ``return_features=True``: the 400-d logits-layer features before the softmax (FVD's
  features), ``[N, 400]``; ``False`` would give class probabilities.

Preprocessing here follows the rescale=False/resize=False ports: scale the shorter side to 224
(bilinear, per frame), centre-crop 224x224, map [0, 1] to [-1, 1]. Clips are 16 consecutive
frames (the FVD reference's length), taken every ``stride`` frames (16: non-overlapping).

The distance between the two feature sets is the Fréchet distance of Gaussians fitted to them:
``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))`` with the unbiased covariance
(``np.cov``), as in those ports; the trace of the square root comes from an eigendecomposition
(the value of their ``scipy.linalg.sqrtm``, ~60x faster at D = 400; ``method="sqrtm"`` keeps
theirs). With few clips (one 96-frame video gives 6) the covariance has rank < 400 and the FVD
of one video is a rough number; pool clips over videos for a stable figure.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.frames import frames_to_tensor

CLIP_FRAMES = 16
I3D_RESOLUTION = 224
I3D_KWARGS = {"rescale": False, "resize": False, "return_features": True}


def load_i3d(path: str | Path) -> torch.jit.ScriptModule:
    """Load the I3D TorchScript file (on the CPU, eval mode); clear errors for a missing or
    non-TorchScript file. The file is code (see the module notes): trusted files only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D TorchScript file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript, but the I3D file is one
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - one clear line whatever TorchScript says
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path} is not a TorchScript module (torch.jit.load failed: {type(e).__name__}: {first})") from None


def preprocess(video_BCTHW: torch.Tensor, resolution: int = I3D_RESOLUTION) -> torch.Tensor:
    """[0, 1] videos -> I3D input: shorter side to ``resolution`` (bilinear), centre crop, [-1, 1]."""
    b, c, t, h, w = video_BCTHW.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h <= w else (math.ceil(h * scale), resolution)
    frames_Nchw = video_BCTHW.transpose(1, 2).reshape(b * t, c, h, w).float()
    frames_Nchw = F.interpolate(frames_Nchw, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    frames_Nchw = frames_Nchw[:, :, top : top + resolution, left : left + resolution]
    x_BCTHW = frames_Nchw.reshape(b, t, c, resolution, resolution).transpose(1, 2)
    return (x_BCTHW * 2.0 - 1.0).contiguous()


def clip_starts(num_frames: int, clip_frames: int = CLIP_FRAMES, stride: int = CLIP_FRAMES) -> list[int]:
    """First frame of every whole clip of ``clip_frames`` frames, every ``stride`` frames."""
    if clip_frames < 1 or stride < 1:
        raise ValueError(f"clip_frames and stride must be >= 1, got {clip_frames}, {stride}")
    return list(range(0, num_frames - clip_frames + 1, stride))


@torch.inference_mode()
def i3d_features(
    i3d: torch.nn.Module,
    frames_THWC: np.ndarray,
    clip_frames: int = CLIP_FRAMES,
    stride: int = CLIP_FRAMES,
    batch: int = 2,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """I3D features ``[num_clips, D]`` (float64) of the clips of one uint8 ``T x H x W x 3`` video."""
    starts = clip_starts(frames_THWC.shape[0], clip_frames, stride)
    if not starts:
        raise ValueError(f"FVD needs at least {clip_frames} frames, the video has {frames_THWC.shape[0]}")
    out = []
    for i in range(0, len(starts), batch):
        clips = np.stack([frames_THWC[s : s + clip_frames] for s in starts[i : i + batch]])  # N T H W C
        x_NCTHW = preprocess(frames_to_tensor(clips, device=device))
        feats = i3d(x_NCTHW, **I3D_KWARGS)
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[0] != x_NCTHW.shape[0]:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise ValueError(f"I3D must return features [N, D] for N clips; got {shape} for N = {x_NCTHW.shape[0]}")
        out.append(feats.double().cpu().numpy())
    return np.concatenate(out)


def gaussian_stats(feats_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``, N - 1) of features ``[N, D]``; one sample gives
    a zero covariance."""
    feats = np.asarray(feats_ND, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise ValueError(f"features must be [N >= 1, D], got {feats.shape}")
    sigma = np.cov(feats, rowvar=False) if feats.shape[0] > 1 else np.zeros((feats.shape[1],) * 2)
    return feats.mean(axis=0), np.atleast_2d(sigma)


def frechet_distance_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, method: str = "eigh"
) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b))``, clamped at 0 (a distance; tiny
    negatives are round-off).

    Only the trace of the matrix square root is needed, and ``S_a S_b`` is similar to the PSD
    ``S_a^1/2 S_b S_a^1/2``, so ``tr sqrtm(S_a S_b)`` is the sum of the square roots of that
    matrix's eigenvalues: ``method="eigh"`` (default) computes it so, in ~0.15 s at D = 400.
    ``method="sqrtm"`` is the reference ports' ``scipy.linalg.sqrtm`` (real part taken), which
    gives the same number (tests check it) but took 9-12 s at D = 400 here with SciPy 1.17.
    """
    diff = float(np.square(np.asarray(mu_a) - np.asarray(mu_b)).sum())
    if method == "eigh":
        w, v = np.linalg.eigh(sigma_a)
        root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        inner = root_a @ sigma_b @ root_a
        trace_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
    elif method == "sqrtm":
        import scipy.linalg

        with warnings.catch_warnings():
            # Fewer clips than feature dimensions make S_a S_b singular: expected here.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
            if not np.isfinite(covmean).all():  # nudge the diagonals, pytorch-fid's fix
                offset = np.eye(sigma_a.shape[0]) * 1e-6
                covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
        trace_covmean = float(np.real(np.trace(covmean)))
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', not {method!r}")
    return max(0.0, diff + float(np.trace(sigma_a)) + float(np.trace(sigma_b)) - 2.0 * trace_covmean)


def frechet_distance(feats_a_ND: np.ndarray, feats_b_ND: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (same D)."""
    if np.shape(feats_a_ND)[1:] != np.shape(feats_b_ND)[1:]:
        raise ValueError(f"feature sets differ in dimension: {np.shape(feats_a_ND)} vs {np.shape(feats_b_ND)}")
    return frechet_distance_from_stats(*gaussian_stats(feats_a_ND), *gaussian_stats(feats_b_ND))


def fvd(
    i3d: torch.nn.Module, recon_THWC: np.ndarray, source_THWC: np.ndarray, clip_frames: int = CLIP_FRAMES, stride: int = CLIP_FRAMES
) -> float:
    """FVD between the clips of one reconstruction and of its source (uint8 ``T x H x W x 3``)."""
    return frechet_distance(i3d_features(i3d, recon_THWC, clip_frames, stride), i3d_features(i3d, source_THWC, clip_frames, stride))
