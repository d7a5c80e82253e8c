"""Traditional-codec anchors through the ffmpeg binary: the same RGB frames in, raw bitstream out.

Frames go to ffmpeg as raw ``rgb24`` on stdin (so every codec sees exactly the frames the
learned codec sees); the output is the codec's elementary stream (Annex-B ``.264``/``.hevc``,
IVF for AV1), so the rate carries no container overhead. Decoding back to RGB uses PyAV; the
colour conversion (BT.601, 4:2:0) is part of the anchor's loss, as it is in practice.

``low_delay`` turns B-frames off (``-bf 0``): the setting comparable to a causal learned codec.
Without it, each encoder's default (random-access) GOP structure is used.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gvc_train.data.video_io import read_frames

ANCHORS = {
    "x264": ("libx264", ".264", "h264"),
    "x265": ("libx265", ".hevc", "hevc"),
    "svtav1": ("libsvtav1", ".ivf", "ivf"),
}
DEFAULT_CRFS = {"x264": (23, 28, 33, 38, 43), "x265": (25, 30, 35, 40, 45), "svtav1": (35, 41, 47, 53, 59)}


class AnchorError(RuntimeError):
    pass


@dataclasses.dataclass
class AnchorPoint:
    anchor: str
    crf: int
    low_delay: bool
    preset: str
    bytes: int
    command: str
    frames: np.ndarray  # decoded, T x H x W x 3 uint8


def encode_anchor(
    frames_THWC: np.ndarray, fps: float, anchor: str, crf: int, low_delay: bool = True, preset: str = "medium"
) -> AnchorPoint:
    """Encode ``frames_THWC`` (uint8 RGB) with one anchor at one CRF and decode it back."""
    if anchor not in ANCHORS:
        raise AnchorError(f"unknown anchor {anchor!r}; known: {', '.join(ANCHORS)}")
    lib, suffix, fmt = ANCHORS[anchor]
    t, h, w, _ = frames_THWC.shape
    pad_h, pad_w = h % 2, w % 2  # 4:2:0 needs even sizes: pad (edge), crop after decoding
    src = np.pad(frames_THWC, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frames_THWC
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"anchor{suffix}"
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        cmd += ["-s", f"{w + pad_w}x{h + pad_h}", "-r", f"{fps:.6f}", "-i", "-", "-pix_fmt", "yuv420p", "-c:v", lib]
        if anchor == "svtav1":
            cmd += ["-crf", str(crf), "-preset", preset if preset.isdigit() else "8"]
            if low_delay:
                cmd += ["-svtav1-params", "pred-struct=1"]
        else:
            cmd += ["-crf", str(crf), "-preset", preset]
            if low_delay:
                cmd += ["-bf", "0"]
            if anchor == "x265":
                cmd += ["-x265-params", "log-level=error"]
        cmd += ["-f", fmt, str(out)]
        proc = subprocess.run(cmd, input=np.ascontiguousarray(src).tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise AnchorError(f"{anchor} failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
        decoded = read_frames(out)[:, :h, :w]
        size = out.stat().st_size
    if decoded.shape[0] != t:
        raise AnchorError(f"{anchor} decoded {decoded.shape[0]} frames of {t}")
    return AnchorPoint(anchor, crf, low_delay, preset, size, shlex.join(cmd), decoded)
