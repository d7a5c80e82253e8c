"""The anchors' protocol as data: encoders and their limits, the input file, the exact ffmpeg
command lines, and the ffmpeg binary's checks. What each setting means and why is the protocol
note in :mod:`gvc_train.eval.anchors`, which runs these commands (and re-exports every name here).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    encoder: str  # ffmpeg encoder
    muxer: str  # ffmpeg muxer of the container-free stream
    suffix: str
    default_preset: str
    crf_limits: tuple[int, int]
    min_side: int  # smallest width and height the encoder accepts
    log_bpp_per_crf: float  # d ln(bpp) / d CRF, typical; the ladder's first guess of the slope


ANCHORS = {
    "x264": AnchorSpec("libx264", "h264", ".264", "medium", (0, 51), 2, -0.11),
    "x265": AnchorSpec("libx265", "hevc", ".hevc", "medium", (0, 51), 2, -0.11),
    "svtav1": AnchorSpec("libsvtav1", "obu", ".obu", "6", (1, 63), 64, -0.06),
}
DEFAULT_CRFS = {"x264": (23, 28, 33, 38, 43), "x265": (25, 30, 35, 40, 45), "svtav1": (35, 41, 47, 53, 59)}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
DEFAULT_THREADS = 2
FFMPEG = "ffmpeg"
INPUT_NAME = "input.rgb"
DECODED_NAME = "decoded.rgb"


class AnchorError(RuntimeError):
    """Anything an anchor cannot do; ``str()`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def anchor_spec(anchor: str) -> AnchorSpec:
    if anchor not in ANCHORS:
        raise AnchorError(f"unknown anchor {anchor!r}; known: {', '.join(ANCHORS)}")
    return ANCHORS[anchor]


def resolve_preset(anchor: str, preset: str | int | None) -> str:
    """The anchor's default preset for None; x264/x265 take names, SVT-AV1 takes 0..13."""
    spec = anchor_spec(anchor)
    name = spec.default_preset if preset is None else str(preset)
    if anchor == "svtav1":
        if not (name.isdigit() and 0 <= int(name) <= 13):
            raise AnchorError(f"svtav1 preset must be a number 0..13, got {name!r}")
    elif name not in X26X_PRESETS:
        raise AnchorError(f"{anchor} preset must be one of {', '.join(X26X_PRESETS)}, got {name!r}")
    return name


def padded_size(anchor: str, height: int, width: int) -> tuple[int, int]:
    """Height and width the encoder gets: even (4:2:0), and at least the encoder's minimum side."""
    side = anchor_spec(anchor).min_side
    return max(side, height + height % 2), max(side, width + width % 2)


def check_frames(frames_THWC: np.ndarray) -> None:
    shape = getattr(frames_THWC, "shape", None)
    if shape is None or len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
        raise AnchorError(f"anchor frames must be a non-empty T x H x W x 3 array, got shape {shape}")
    if frames_THWC.dtype != np.uint8:
        raise AnchorError(f"anchor frames must be uint8 RGB, got {frames_THWC.dtype}")


def pad_frames(frames_THWC: np.ndarray, height: int, width: int) -> np.ndarray:
    """Edge-replicate the bottom rows and right columns up to ``height`` x ``width``."""
    _, h, w, _ = frames_THWC.shape
    if (h, w) == (height, width):
        return np.ascontiguousarray(frames_THWC)
    return np.pad(frames_THWC, ((0, 0), (0, height - h), (0, width - w), (0, 0)), mode="edge")


def write_raw_input(frames_THWC: np.ndarray, anchor: str, path: str | os.PathLike[str]) -> tuple[int, int]:
    """Write what the recorded command reads as ``input.rgb``; returns the padded (height, width)."""
    check_frames(frames_THWC)
    _, h, w, _ = frames_THWC.shape
    height, width = padded_size(anchor, h, w)
    Path(path).write_bytes(pad_frames(frames_THWC, height, width).tobytes())
    return height, width


def input_recipe(anchor: str, frames: int, height: int, width: int, sha256: str) -> str:
    coded_h, coded_w = padded_size(anchor, height, width)
    return (
        f"{INPUT_NAME}: the {frames} source frames of {width}x{height}, padded by edge replication (bottom rows, right "
        f"columns) to {coded_w}x{coded_h}, as raw rgb24, frame after frame, row-major (gvc_train.eval.anchors."
        f"write_raw_input); sha256 {sha256}"
    )


def ffmpeg_rate_arg(fps: float) -> str:
    """ffmpeg's ``-framerate`` argument for ``fps``: ``29.97002997`` -> ``"30000/1001"``, exact for
    NTSC rates, and the same string every time (it is part of the command, so of the cache key)."""
    if not (fps > 0 and math.isfinite(fps)):
        raise AnchorError(f"anchor fps must be a positive number, got {fps}")
    f = Fraction(fps).limit_denominator(100000)
    return f"{f.numerator}/{f.denominator}"


def encode_command(
    anchor: str, crf: int, *, height: int, width: int, fps: float, low_delay: bool, intra_period: int, preset: str | int | None = None,
    threads: int = DEFAULT_THREADS,
) -> list[str]:  # fmt: skip
    """The ffmpeg command for one point; ``height``/``width`` are the padded (coded) size."""
    spec = anchor_spec(anchor)
    preset = resolve_preset(anchor, preset)
    lo, hi = spec.crf_limits
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not lo <= crf <= hi:
        raise AnchorError(f"{anchor} crf must be an integer in {lo}..{hi}, got {crf!r}")
    if intra_period != -1 and not (isinstance(intra_period, (int, np.integer)) and intra_period >= 1):
        raise AnchorError(f"intra period must be -1 (first frame only) or >= 1, got {intra_period!r}")
    if threads < 1:
        raise AnchorError(f"threads must be >= 1, got {threads}")
    cmd = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{width}x{height}", "-framerate", ffmpeg_rate_arg(fps), "-i", INPUT_NAME, "-pix_fmt", "yuv420p"]
    cmd += ["-c:v", spec.encoder, "-preset", preset, "-crf", str(int(crf))]
    if anchor == "x264":
        keyint = "infinite" if intra_period == -1 else str(intra_period)
        params = [f"threads={threads}", f"keyint={keyint}", "scenecut=0"] + (["bframes=0"] if low_delay else [])
        cmd += ["-x264-params", ":".join(params), "-bsf:v", "filter_units=remove_types=6"]  # 6: SEI (options string)
    elif anchor == "x265":
        params = ["log-level=error", "info=0", f"pools={threads}", "frame-threads=1", f"keyint={intra_period}"]
        params += ["scenecut=0", "open-gop=0"] + (["bframes=0"] if low_delay else [])
        cmd += ["-x265-params", ":".join(params)]
    else:
        params = [f"lp={threads}", f"keyint={intra_period}", "irefresh-type=2", "scd=0", f"pred-struct={1 if low_delay else 2}"]
        cmd += ["-svtav1-params", ":".join(params)]
    return cmd + ["-f", spec.muxer, f"stream{spec.suffix}"]


def decode_command(anchor: str) -> list[str]:
    """Stream -> raw rgb24 at the coded size, every frame once (no frame-rate conversion)."""
    head = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", f"stream{anchor_spec(anchor).suffix}"]
    return head + ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", DECODED_NAME]


def ffmpeg_version(binary: str | None = None) -> str:
    """The whole ``ffmpeg -version`` text (build and library versions): part of every cache key.
    ``binary`` None is :data:`FFMPEG` as it is now (a caller may point it at another build)."""
    return _ffmpeg_version(FFMPEG if binary is None else binary)


@functools.lru_cache(maxsize=None)
def _ffmpeg_version(binary: str) -> str:
    if shutil.which(binary) is None:
        raise AnchorError(f"{binary!r} not found on PATH: the anchors need the ffmpeg command-line tool")
    return subprocess.run([binary, "-version"], capture_output=True, text=True, check=False).stdout.strip()


@functools.lru_cache(maxsize=None)
def _encoders(binary: str) -> frozenset[str]:
    out = subprocess.run([binary, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False).stdout
    return frozenset(line.split()[1] for line in out.splitlines() if len(line.split()) > 1 and line.startswith(" V"))


def require_encoder(anchor: str) -> None:
    spec = anchor_spec(anchor)
    ffmpeg_version()
    if spec.encoder not in _encoders(FFMPEG):
        raise AnchorError(f"{anchor}: this ffmpeg ({shutil.which(FFMPEG)}) has no {spec.encoder} encoder")
