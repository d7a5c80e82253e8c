"""The metric suite of ``gvc eval``: one call measures a reconstruction against its source.

    per_frame, mean, unavailable = compute_metrics(recon_THWC, source_THWC, options)

Inputs are uint8 RGB ``T x H x W x 3`` of equal shape. Metrics (keys):

* ``psnr``: RGB PSNR per frame (MSE over the three channels), peak 255, capped at 100 dB.
* ``psnr_y``: PSNR of BT.601 limited-range luma (the Y plane ffmpeg's default conversion
  writes; see ``eval.metrics``), peak 255, capped at 100 dB.
* ``ms_ssim``: RGB MS-SSIM per frame (mean over channels), Gaussian window and scale count
  from ``ms_ssim_params`` so it fits small frames (176x144: 11 taps, 4 scales).
* ``vmaf``: VMAF v0.6.1 per frame (``vmaf-torch``) on the 8-bit luma above, clipped to [0, 100].
* ``lpips``, ``dists``: per frame, when the user gives a local VGG16 state dict.
* ``fvd``: one value per video (it compares clip distributions: there is no per-frame FVD),
  when the user gives the I3D TorchScript file.

``mean`` is the average over frames of each per-frame metric (the learned-video-coding
convention: PSNR is averaged in dB, not computed from the pooled MSE), plus ``fvd``. A metric
that cannot be computed (no weights given, package missing, clip too short) is absent from
both and listed in ``unavailable`` with a one-line reason; a path that is given but cannot be
loaded is an error, not a silent omission. Networks are loaded once per path and reused
across calls (``gvc eval`` measures dozens of points against one source). Everything runs on
the CPU and is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gvc_train.eval.metrics import frame_psnr, frame_psnr_y, ms_ssim, ms_ssim_params, rgb_to_y
from gvc_train.frames import frames_to_tensor

NO_IMAGENET = "no ImageNet VGG16 weights ship with any package here"


@dataclasses.dataclass(frozen=True)
class MetricOptions:
    lpips_backbone: str | None = None  # local torchvision VGG16 (or AlexNet) state dict
    lpips_net: str = "vgg"
    lpips_heads: str | None = None  # default: the heads shipped in the lpips package
    dists_backbone: str | None = None  # local torchvision VGG16 state dict
    dists_weights: str | None = None  # alpha/beta; default: dists-pytorch's weights.pt
    i3d_path: str | None = None  # i3d_torchscript.pt (see eval.fvd)
    fvd_clip_frames: int = 16
    fvd_stride: int = 16
    vmaf: bool = True
    vmaf_chunk: int = 16
    frame_batch: int = 8  # frames per pass of the frame metrics: bounds memory at large sizes
    # Where the networks (LPIPS, DISTS, I3D) and VMAF run. "cpu" is the tested default; on
    # "cuda" results can differ in the last digits (cuDNN picks its own conv algorithms).
    device: str = "cpu"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> MetricOptions:
        """From ``gvc eval``'s dict; ``None`` values mean "the default", unknown keys are an error."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown metric options {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in values.items() if v is not None})


def _file_key(path: str) -> tuple[str, float]:
    p = Path(path).expanduser().resolve()
    return str(p), (p.stat().st_mtime if p.exists() else -1.0)


@functools.lru_cache(maxsize=4)
def _lpips(key: tuple[str, float], net: str, heads: str | None, frame_batch: int, device: str) -> torch.nn.Module:
    from gvc_train.eval.perceptual import LPIPSFrames

    return LPIPSFrames(key[0], net=net, heads_path=heads, frame_batch=frame_batch).to(device)


@functools.lru_cache(maxsize=4)
def _dists(key: tuple[str, float], weights: str | None, frame_batch: int, device: str) -> torch.nn.Module:
    from gvc_train.eval.perceptual import DISTS

    return DISTS(key[0], weights_path=weights, frame_batch=frame_batch).to(device)


@functools.lru_cache(maxsize=2)
def _i3d(key: tuple[str, float], device: str) -> torch.nn.Module:
    from gvc_train.eval.fvd import load_i3d

    return load_i3d(key[0]).to(device)


# Source-side I3D features, keyed by a digest of the source frames: every point of one video
# shares them, and they cost as much as the reconstruction's.
_SOURCE_FEATURES: dict[tuple[Any, ...], np.ndarray] = {}


def _source_i3d_features(i3d_key: tuple[str, float], source_THWC: np.ndarray, opts: MetricOptions) -> np.ndarray:
    from gvc_train.eval.fvd import i3d_features

    digest = hashlib.blake2b(np.ascontiguousarray(source_THWC).data, digest_size=16).hexdigest()
    key = (i3d_key, digest, source_THWC.shape, opts.fvd_clip_frames, opts.fvd_stride, opts.device)
    if key not in _SOURCE_FEATURES:
        if len(_SOURCE_FEATURES) >= 8:
            _SOURCE_FEATURES.pop(next(iter(_SOURCE_FEATURES)))
        i3d = _i3d(i3d_key, opts.device)
        _SOURCE_FEATURES[key] = i3d_features(i3d, source_THWC, opts.fvd_clip_frames, opts.fvd_stride, device=opts.device)
    return _SOURCE_FEATURES[key]


def _require_file(path: str, flag: str) -> str:
    if not os.path.isfile(os.path.expanduser(path)):
        raise FileNotFoundError(f"{flag} {path}: no such file")
    return path


def metric_settings(height: int, width: int, options: Mapping[str, Any] | MetricOptions | None = None) -> dict[str, str]:
    """One line per metric saying exactly how it is computed at this frame size (for reports)."""
    opts = options if isinstance(options, MetricOptions) else MetricOptions.from_mapping(options)
    win, levels = ms_ssim_params(height, width)
    return {
        "psnr": "RGB, MSE over the 3 channels per frame, peak 255, capped at 100 dB, averaged over frames in dB",
        "psnr_y": "BT.601 limited-range luma (16..235, unrounded), peak 255, capped at 100 dB, averaged in dB",
        "ms_ssim": f"RGB per channel then averaged; Gaussian window {win} taps (sigma 1.5), {levels} scales "
        f"(Wang et al. weights, first {levels} renormalised) for {width}x{height}",
        "vmaf": "VMAF v0.6.1 (vmaf-torch), 8-bit BT.601 limited-range luma, clipped to [0, 100]",
        "lpips": f"LPIPS v0.1 {opts.lpips_net}, lpips package heads, per frame at full resolution",
        "dists": "DISTS (Ding et al. 2020), VGG16 with L2 pooling, dists-pytorch alpha/beta, per frame at full resolution",
        "fvd": f"I3D (Kinetics-400 TorchScript) features of {opts.fvd_clip_frames}-frame clips every {opts.fvd_stride} "
        "frames, 224x224 (short side resized, centre crop), Frechet distance recon vs source",
    }


def _check_inputs(recon_THWC: np.ndarray, source_THWC: np.ndarray) -> None:
    for name, a in (("reconstruction", recon_THWC), ("source", source_THWC)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] < 1:
            desc = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{name}: expected uint8 RGB frames T x H x W x 3, got {desc}")
    if recon_THWC.shape != source_THWC.shape:
        raise ValueError(f"reconstruction {recon_THWC.shape} and source {source_THWC.shape} differ in shape")


def compute_metrics(
    recon_THWC: np.ndarray, source_THWC: np.ndarray, options: Mapping[str, Any] | MetricOptions | None = None
) -> tuple[dict[str, list[float]], dict[str, float], dict[str, str]]:
    """``(per_frame, mean, unavailable)`` of a reconstruction against its source (module doc)."""
    _check_inputs(recon_THWC, source_THWC)
    opts = options if isinstance(options, MetricOptions) else MetricOptions.from_mapping(options)
    unavailable: dict[str, str] = {}
    frame_nets: dict[str, torch.nn.Module] = {}
    if opts.lpips_backbone:
        key = _file_key(_require_file(opts.lpips_backbone, "--lpips-backbone"))
        frame_nets["lpips"] = _lpips(key, opts.lpips_net, opts.lpips_heads, opts.frame_batch, opts.device)
    else:
        unavailable["lpips"] = f"LPIPS: no --lpips-backbone given (a local torchvision VGG16 state dict; {NO_IMAGENET})"
    if opts.dists_backbone:
        key = _file_key(_require_file(opts.dists_backbone, "--dists-backbone"))
        frame_nets["dists"] = _dists(key, opts.dists_weights, opts.frame_batch, opts.device)
    else:
        unavailable["dists"] = f"DISTS: no --dists-backbone given (a local torchvision VGG16 state dict; {NO_IMAGENET})"
    t = recon_THWC.shape[0]
    i3d_key = None  # loaded before the frame metrics run, so a bad --i3d fails at once
    if not opts.i3d_path:
        unavailable["fvd"] = "FVD: no --i3d given (the I3D TorchScript i3d_torchscript.pt; no package ships it)"
    elif t < opts.fvd_clip_frames:
        unavailable["fvd"] = f"FVD: the video has {t} frames, fewer than one {opts.fvd_clip_frames}-frame clip"
    else:
        i3d_key = _file_key(_require_file(opts.i3d_path, "--i3d"))
        _i3d(i3d_key, opts.device)

    per_frame: dict[str, list[float]] = {k: [] for k in ("psnr", "psnr_y", "ms_ssim", *frame_nets)}
    recon_y: list[np.ndarray] = []
    source_y: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, t, opts.frame_batch):
            x = frames_to_tensor(recon_THWC[start : start + opts.frame_batch])
            y = frames_to_tensor(source_THWC[start : start + opts.frame_batch])
            per_frame["psnr"] += frame_psnr(x, y)[0].tolist()
            per_frame["psnr_y"] += frame_psnr_y(x, y)[0].tolist()
            folded = lambda v: v[0].transpose(0, 1)  # noqa: E731 - 1 3 t h w -> t 3 h w
            per_frame["ms_ssim"] += ms_ssim(folded(x), folded(y)).tolist()
            for name, net in frame_nets.items():
                per_frame[name] += net(x.to(opts.device), y.to(opts.device))[0].tolist()
            if opts.vmaf:  # VMAF reads 8-bit luma, as it would from a yuv420p file
                recon_y.append(rgb_to_y(x)[0, 0].round().clamp(0, 255).to(torch.uint8).numpy())
                source_y.append(rgb_to_y(y)[0, 0].round().clamp(0, 255).to(torch.uint8).numpy())

    if opts.vmaf:
        from gvc_train.eval.vmaf import vmaf_frames, vmaf_unavailable_reason

        reason = vmaf_unavailable_reason()
        if reason is None:
            ref_y, dist_y = np.concatenate(source_y), np.concatenate(recon_y)
            per_frame["vmaf"] = vmaf_frames(ref_y, dist_y, chunk=opts.vmaf_chunk, device=opts.device).tolist()
        else:
            unavailable["vmaf"] = f"VMAF: {reason}"
    else:
        unavailable["vmaf"] = "VMAF: turned off in the metric options"

    mean = {k: float(np.mean(v)) for k, v in per_frame.items()}
    if i3d_key is not None:
        from gvc_train.eval.fvd import frechet_distance, i3d_features

        i3d = _i3d(i3d_key, opts.device)
        recon_feats = i3d_features(i3d, recon_THWC, opts.fvd_clip_frames, opts.fvd_stride, device=opts.device)
        mean["fvd"] = frechet_distance(recon_feats, _source_i3d_features(i3d_key, source_THWC, opts))
    return per_frame, mean, unavailable
