"""VMAF (Netflix's Video Multimethod Assessment Fusion, model v0.6.1) per frame, on the luma plane.

The score comes from ``vmaf-torch`` (import name ``vmaf_torch``): a PyTorch port of libvmaf's
features (VIF at 4 scales, ADM, motion2) and the v0.6.1 SVM, embedded in its code, so it needs
no model file and no network. It takes ``[N, 1, H, W]`` Y in 0..255, reference first.

Scores are clipped to [0, 100], as libvmaf does with the v0.6.1 model (its ``score_clip``), so
the two agree. Frames go through in chunks to bound memory; motion2 of frame i needs frames i-1
and i+1, so every chunk is computed with one frame of context on each side and the context
frames' scores are dropped: the result is identical to one pass over the whole clip.

:func:`libvmaf_reference` runs the real libvmaf, through the ``libvmaf`` filter of the static
ffmpeg that the ``imageio-ffmpeg`` package ships (Debian's ffmpeg has no libvmaf), on the same
8-bit Y planes written as yuv420p with neutral chroma (VMAF reads luma only). It is the
cross-check for ``vmaf-torch``, not part of ``gvc eval``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

VMAF_MODEL = "vmaf_v0.6.1"
DEFAULT_CHUNK = 16  # frames per vmaf-torch pass: ~0.4 GB of temporaries at 640x272


class VmafUnavailable(RuntimeError):
    """vmaf-torch, or an ffmpeg with libvmaf for the cross-check, is not installed."""


def vmaf_unavailable_reason() -> str | None:
    """``None`` when ``vmaf-torch`` imports, else one line saying why VMAF cannot be computed."""
    try:
        import vmaf_torch  # noqa: F401
    except ImportError as e:
        return f"the vmaf-torch package does not import ({e}); pip install 'vmaf-torch>=1.1'"
    return None


@functools.lru_cache(maxsize=1)
def _vmaf_module() -> torch.nn.Module:
    try:
        from vmaf_torch import VMAF
    except ImportError as e:
        raise VmafUnavailable(vmaf_unavailable_reason() or str(e)) from None
    return VMAF(temporal_pooling=False, enable_motion=True, clip_score=True, NEG=False).eval()


def _as_y_NHW(name: str, y: np.ndarray | torch.Tensor) -> torch.Tensor:
    y_NHW = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if y_NHW.dim() == 4 and y_NHW.shape[1] == 1:  # accept vmaf-torch's own [N, 1, H, W]
        y_NHW = y_NHW[:, 0]
    if y_NHW.dim() != 3:
        raise ValueError(f"VMAF {name}: expected Y planes N x H x W (0..255), got shape {tuple(y_NHW.shape)}")
    return y_NHW


@torch.inference_mode()
def vmaf_frames(
    ref_Y_NHW: np.ndarray | torch.Tensor,
    dist_Y_NHW: np.ndarray | torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """VMAF v0.6.1 of every frame (``float64 [N]``, in [0, 100]) of ``dist`` against ``ref``.

    ``ref_Y_NHW``, ``dist_Y_NHW``: luma planes ``N x H x W`` in 0..255 (8-bit code values, as
    in a yuv420p file; uint8 or float). The first frame's motion feature is 0, as in libvmaf.
    """
    ref, dist = _as_y_NHW("reference", ref_Y_NHW), _as_y_NHW("distorted", dist_Y_NHW)
    if ref.shape != dist.shape:
        raise ValueError(f"VMAF inputs differ in shape: {tuple(ref.shape)} vs {tuple(dist.shape)}")
    if chunk < 1:
        raise ValueError(f"VMAF chunk must be >= 1, got {chunk}")
    model = _vmaf_module().to(device)  # the module is cached; .to() moves its few buffers
    n = ref.shape[0]
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        # One frame of context each side (motion2 looks at i-1 and i+1); the window's own first
        # frame gets motion 0 and its last frame the one-sided motion, so both are dropped.
        lo, hi = max(start - 1, 0), min(stop + 1, n)
        r_N1HW = ref[lo:hi].to(device).float().unsqueeze(1)
        d_N1HW = dist[lo:hi].to(device).float().unsqueeze(1)
        window = model(r_N1HW, d_N1HW).reshape(-1).double().cpu().numpy()
        scores[start:stop] = window[start - lo : start - lo + (stop - start)]
    return scores


def find_libvmaf_ffmpeg() -> str | None:
    """The imageio-ffmpeg static binary when it is installed and has the libvmaf filter, else None."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None
    return exe if _has_libvmaf(exe) else None


@functools.lru_cache(maxsize=4)
def _has_libvmaf(exe: str) -> bool:
    try:
        out = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.split()[1:2] == ["libvmaf"] for line in out.splitlines())


def _write_yuv420p(path: Path, y_NHW: np.ndarray) -> None:
    n, h, w = y_NHW.shape
    chroma = np.full((n, (h + 1) // 2 * ((w + 1) // 2) * 2), 128, dtype=np.uint8)  # U and V, neutral
    path.write_bytes(np.concatenate([y_NHW.reshape(n, -1), chroma], axis=1).tobytes())


def libvmaf_reference(
    ref_Y_NHW: np.ndarray,
    dist_Y_NHW: np.ndarray,
    model: str = f"version={VMAF_MODEL}",
    n_threads: int = 1,
    ffmpeg: str | None = None,
) -> np.ndarray:
    """Per-frame VMAF from libvmaf itself (``float64 [N]``), for cross-checking :func:`vmaf_frames`.

    ``ref_Y_NHW``, ``dist_Y_NHW``: uint8 luma ``N x H x W``. Raises :class:`VmafUnavailable`
    when no ffmpeg with libvmaf is found (``pip install imageio-ffmpeg``: its static build has it).
    """
    exe = ffmpeg or find_libvmaf_ffmpeg()
    if exe is None:
        raise VmafUnavailable(
            "libvmaf reference not available: needs the imageio-ffmpeg package (pip install imageio-ffmpeg; its "
            "static ffmpeg has the libvmaf filter, Debian's ffmpeg does not)"
        )
    ref, dist = np.asarray(ref_Y_NHW), np.asarray(dist_Y_NHW)
    if ref.shape != dist.shape or ref.ndim != 3 or ref.dtype != np.uint8 or dist.dtype != np.uint8:
        raise ValueError(f"libvmaf_reference expects two uint8 N x H x W arrays, got {ref.shape} {ref.dtype} and {dist.shape} {dist.dtype}")
    n, h, w = ref.shape
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_yuv420p(folder / "ref.yuv", np.ascontiguousarray(ref))
        _write_yuv420p(folder / "dis.yuv", np.ascontiguousarray(dist))
        raw = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{w}x{h}"]
        log = folder / "vmaf.json"
        # libvmaf's first input is the distorted video, the second the reference.
        lavfi = f"[0:v][1:v]libvmaf=model={model}:log_path={log}:log_fmt=json:n_threads={n_threads}"
        cmd = [exe, "-hide_banner", "-loglevel", "error", *raw, "-i", str(folder / "dis.yuv"), *raw, "-i", str(folder / "ref.yuv")]
        cmd += ["-lavfi", lavfi, "-f", "null", "-"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"libvmaf failed: {proc.stderr.strip()[-300:]}")
        frames = json.loads(log.read_text())["frames"]
    if len(frames) != n:
        raise RuntimeError(f"libvmaf scored {len(frames)} frames of {n}")
    return np.array([f["metrics"]["vmaf"] for f in frames], dtype=np.float64)
