"""Where decoded frames go: a folder of PNGs, a .y4m or an .mp4/.mkv, chosen by the path.

- ``DIR`` (no video extension): ``frame_000001.png``, ... exact RGB.
- ``.y4m``: YUV 4:4:4 8-bit through swscale (BT.601, limited range): the colour conversion
  rounds, so RGB read back differs by a level or two. Use PNGs to compare exactly.
- ``.mp4``/``.mkv``: x264's RGB mode (``libx264rgb``) at ``qp=0``, mathematically lossless;
  ffmpeg and PyAV decode it exactly, some browsers do not play RGB H.264.

Any other suffix (``.webm``, ``.avi``) is refused rather than silently becoming a folder.

Frames arrive one at a time (``write``), so memory does not grow with the video. The output
follows :mod:`gvc_train.safe_output`: checked before decoding (never the input, an existing
output only with ``overwrite``, a folder only if it holds nothing but frames), written under a
hidden temporary name and moved into place by ``close()``: a decode that fails midway leaves no
half-written file that looks complete, and never deletes anything it did not write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # av (video files) and PIL (PNG folders) are imported by the sink that writes one
    import av

from gvc_train.safe_output import OutputError, check_target, commit, free_name, make_parent, remove_path, temp_beside

VIDEO_OUT_EXTENSIONS = {".y4m", ".mp4", ".mkv"}
_FRAME_NAME = re.compile(r"frame_\d{6}\.png")


def output_kind(path: str | os.PathLike) -> str:
    """``.y4m``, ``.mp4``, ``.mkv``, or ``png`` for a folder; OutputError for anything else."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in VIDEO_OUT_EXTENSIONS:
        return suffix
    if not suffix or path.is_dir():
        return "png"
    raise OutputError(
        f"cannot write {suffix} video: name the output .mp4 (lossless RGB H.264), .mkv, .y4m, or a folder without a suffix for PNG frames"
    )


def check_frame_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> str:
    """:func:`output_kind` after :func:`check_target`; the worse error first (the input itself)."""
    try:
        kind = output_kind(path)
    except OutputError:
        check_target(path, inputs=inputs, overwrite=True)  # names the input, if it is one
        raise
    check_target(path, inputs=inputs, overwrite=overwrite, folder=kind == "png", owns=is_frame_file)
    return kind


def is_frame_file(path: Path) -> bool:
    """What a PNG-folder output holds: ``frame_000001.png`` ... (and nothing else)."""
    return path.is_file() and not path.is_symlink() and _FRAME_NAME.fullmatch(path.name) is not None


class FrameSink:
    def __init__(
        self, path: str | os.PathLike, fps: Fraction | float, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()
    ) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        self.kind = check_frame_output(self.path, inputs, overwrite)
        folder = self.kind == "png"
        self._inputs, self._overwrite = list(inputs), overwrite
        make_parent(self.path)
        self._tmp = temp_beside(self.path, folder=folder)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self.frames = 0
        if folder:
            self._tmp.mkdir()

    def write(self, frame_HWC: np.ndarray) -> None:
        frame_HWC = np.ascontiguousarray(frame_HWC, dtype=np.uint8)
        self.frames += 1
        if self.kind == "png":
            from PIL import Image

            Image.fromarray(frame_HWC).save(self._tmp / f"frame_{self.frames:06d}.png", compress_level=1)
            return
        if self._container is None:
            self._open(frame_HWC.shape[1], frame_HWC.shape[0])
        assert self._container is not None and self._stream is not None
        import av

        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame_HWC, format="rgb24")):
            self._container.mux(packet)

    def _open(self, width: int, height: int) -> None:
        import av

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
        """Where ``close(partial=True)`` puts the frames of a decode that stopped early: beside the
        output, a name that does not exist yet (``out.partial.mp4``, ``out.partial-2.mp4`` ...)."""
        return free_name(self.path.with_name(self.path.stem + ".partial" + (self.path.suffix if self.kind != "png" else "")))

    def close(self, partial: bool = False) -> Path | None:
        """Finish the file and move it into place; returns its path.

        ``partial``: the decode stopped early; the good frames so far go to ``partial_path``
        (None when there were none), never to the name a complete output would have.
        """
        try:
            self._finish_container()
        except BaseException:
            self.abort()
            raise
        if partial and self.frames == 0:
            self.abort()
            return None
        if partial:
            target = self.partial_path
            os.rename(self._tmp, target)
            return target
        try:
            commit(self._tmp, self.path, inputs=self._inputs, overwrite=self._overwrite, folder=self.kind == "png", owns=is_frame_file)
        except BaseException:
            self.abort()
            raise
        return self.path

    def _finish_container(self) -> None:
        if self._container is not None and self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._container = None

    def abort(self) -> None:
        """Drop what was written (a failed decode): the temporary, nothing else."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; nothing to save
                pass
            self._container = None
        remove_path(self._tmp)
