"""Where decoded frames go: a folder of PNGs, a .y4m or an .mp4/.mkv, chosen by the path.

- ``DIR`` (no video extension): ``frame_000001.png``, ... exact RGB.
- ``.y4m``: YUV 4:4:4 8-bit through swscale (BT.601, limited range): the colour conversion
  rounds, so RGB read back differs by a level or two. Use PNGs to compare exactly.
- ``.mp4``/``.mkv``: x264's RGB mode (``libx264rgb``) at ``qp=0``, mathematically lossless;
  ffmpeg and PyAV decode it exactly, some browsers do not play RGB H.264.

Frames arrive one at a time (``write``), so memory does not grow with the video. The output is
written under a temporary name and renamed by ``close()``: a decode that fails midway leaves
no half-written file that looks complete.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

VIDEO_OUT_EXTENSIONS = {".y4m", ".mp4", ".mkv"}


class FrameSink:
    def __init__(self, path: str | os.PathLike, fps: Fraction | float) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.kind = self.path.suffix.lower() if self.path.suffix.lower() in VIDEO_OUT_EXTENSIONS else "png"
        self._tmp = self.path.with_name(self.path.name + ".part")
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self.frames = 0
        if self.kind == "png":
            if self._tmp.exists():
                shutil.rmtree(self._tmp)
            self._tmp.mkdir(parents=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, frame_HWC: np.ndarray) -> None:
        frame_HWC = np.ascontiguousarray(frame_HWC, dtype=np.uint8)
        self.frames += 1
        if self.kind == "png":
            Image.fromarray(frame_HWC).save(self._tmp / f"frame_{self.frames:06d}.png", compress_level=1)
            return
        if self._container is None:
            self._open(frame_HWC.shape[1], frame_HWC.shape[0])
        assert self._container is not None and self._stream is not None
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame_HWC, format="rgb24")):
            self._container.mux(packet)

    def _open(self, width: int, height: int) -> None:
        if self.kind == ".y4m":
            self._container = av.open(str(self._tmp), mode="w", format="yuv4mpegpipe")
            self._stream = self._container.add_stream("rawvideo", rate=self.fps)
            self._stream.pix_fmt = "yuv444p"
        else:
            fmt = "mp4" if self.kind == ".mp4" else "matroska"
            self._container = av.open(str(self._tmp), mode="w", format=fmt)
            self._stream = self._container.add_stream("libx264rgb", rate=self.fps)
            self._stream.pix_fmt = "rgb24"
            self._stream.options = {"qp": "0", "preset": "veryfast"}
        self._stream.width, self._stream.height = width, height

    @property
    def partial_path(self) -> Path:
        """Where ``close(partial=True)`` puts the frames of a decode that stopped early."""
        return self.path.with_name(self.path.stem + ".partial" + (self.path.suffix if self.kind != "png" else ""))

    def close(self, partial: bool = False) -> Path | None:
        """Finish the file and move it into place; returns its path.

        ``partial``: the decode stopped early; the good frames so far go to ``partial_path``
        (None when there were none), never to the name a complete output would have.
        """
        if self._container is not None and self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None
        target = self.partial_path if partial else self.path
        if partial and self.frames == 0:
            self.abort()
            return None
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(self._tmp, target)
        return target

    def abort(self) -> None:
        """Drop what was written (a failed decode)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; nothing to save
                pass
            self._container = None
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._tmp.exists():
            self._tmp.unlink()
