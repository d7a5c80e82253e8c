"""Read videos and PNG-frame folders as uint8 ``H x W x 3`` RGB frames, one at a time.

Video files (mp4, mkv, webm, y4m, ...) are decoded with PyAV (``thread_type`` AUTO); a folder of
PNG files is one video whose frames are the PNGs in natural name order (``im2`` before
``im10``). Frames come from an iterator, so memory stays at a frame or two whatever the
length of the video. Every failure to read (missing file, not a video, corrupt or truncated
stream, odd frame) is one :class:`VideoReadError` with a one-line message; frames yielded
before a mid-stream failure are good and may be kept.

"Source pixels" means PyAV's ``frame.to_ndarray(format="rgb24")`` of the decoded frame; with
``resize_short`` the frame is converted and area-downscaled in one swscale call instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # av and PIL are imported where a file is read: decoding a stream to y4m or PNG needs neither
    import av

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".y4m", ".avi", ".nut", ".ts"})
FRAME_EXTENSION = ".png"
DEFAULT_PNG_FPS = 30.0  # PNG folders carry no frame rate; Vimeo-90k comes from ~24-30 fps videos

_PIL_MODES_8BIT = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1"})


class VideoReadError(Exception):
    """An input that cannot be read as a video; ``str()`` is ``"<path>: <reason>"`` on one line."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(str(reason).split())  # one line, whatever FFmpeg or PIL said
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # of the frames the reader yields (after resize_short)
    height: int
    source_width: int
    source_height: int
    fps: float  # 0.0 when the container does not say
    num_frames: int | None  # declared by the container (or the PNG count); None when unknown
    is_png_folder: bool


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers by value: ``im2.png`` before ``im10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def png_frame_paths(folder: str | os.PathLike) -> list[str]:
    names = [n for n in os.listdir(folder) if n.lower().endswith(FRAME_EXTENSION)]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def is_video_file(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def is_png_folder(path: str | os.PathLike) -> bool:
    """A directory holding PNG files and no video files is one video."""
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    has_png = any(n.lower().endswith(FRAME_EXTENSION) for n in names)
    return has_png and not any(is_video_file(n) for n in names)


def find_sources(path: str | os.PathLike) -> list[str]:
    """The videos under ``path``: itself if a file or PNG folder, else a sorted walk of the tree.

    Directory walks keep files with a video extension and PNG folders; other files (captions,
    notes) and hidden entries are ignored. Order is deterministic (natural sort at every level).
    """
    path = os.fspath(path)
    if not os.path.isdir(path) or is_png_folder(path):
        return [path]
    found: list[str] = []
    for root, dirs, files in os.walk(path):
        # Hidden entries are skipped: macOS leaves "._clip.mp4" resource forks beside videos.
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        files = [f for f in files if not f.startswith(".")]
        pngs = [f for f in files if f.lower().endswith(FRAME_EXTENSION)]
        videos = sorted((f for f in files if is_video_file(f)), key=natural_key)
        if pngs and not videos and root != path:
            found.append(root)
        found.extend(os.path.join(root, f) for f in videos)
    return found


def caption_path(path: str | os.PathLike) -> str:
    """A source's sidecar caption file: ``clip.mp4`` -> ``clip.txt``; a PNG folder ``seq/`` -> ``seq.txt`` beside it."""
    path = os.path.normpath(os.fspath(path))
    return path + ".txt" if os.path.isdir(path) else os.path.splitext(path)[0] + ".txt"


def read_caption(path: str | os.PathLike) -> str | None:
    """The text of ``path``'s sidecar caption (:func:`caption_path`), stripped; None without one
    (or an empty one); ValueError in one line for one that is not UTF-8 or cannot be read.
    Here beside the reader because ``gvc-shard`` and the text codecs' encoder both read it."""
    txt = caption_path(path)
    if not os.path.isfile(txt):
        return None
    try:
        with open(txt, encoding="utf-8") as f:
            text = f.read().strip()
    except UnicodeDecodeError:
        raise ValueError(f"caption {txt} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"caption {txt} cannot be read ({exc.strerror})") from None
    return text or None


def scaled_size(width: int, height: int, resize_short: int | None) -> tuple[int, int]:
    """Output size for ``resize_short``: downscale only, short side = S, long side even-rounded.

    The long side is rounded to an even number so that the stored clips can be re-encoded to
    4:2:0 (the traditional-codec anchors) without padding.
    """
    short = min(width, height)
    if resize_short is None or short <= resize_short:
        return width, height
    if resize_short < 2:
        raise ValueError(f"resize_short must be >= 2, got {resize_short}")
    long_side = max(2, 2 * round(max(width, height) * resize_short / short / 2))
    return (long_side, resize_short) if width >= height else (resize_short, long_side)


class VideoReader:
    """One open video or PNG folder: ``info`` on construction, then ``frames()`` once.

    The constructor decodes the first frame (kept for ``frames()``) so that ``info`` has the true
    frame size and an input that cannot yield a single frame fails here, not mid-way.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resize_short: int | None = None,
        png_fps: float = DEFAULT_PNG_FPS,
        threads: int = 0,
    ) -> None:
        self.path = os.fspath(path)
        self._container: av.container.InputContainer | None = None
        self._pngs: list[str] = []
        self._first: np.ndarray | None = None
        self._stream_iter: Iterator[av.VideoFrame] | None = None
        self._consumed = False
        if not os.path.exists(self.path):
            raise VideoReadError(self.path, "no such file or directory")
        if os.path.isdir(self.path):
            self._open_png_folder(resize_short, png_fps)
        elif self.path.lower().endswith(".yuv"):
            raise VideoReadError(
                self.path, "raw .yuv has no size or pixel-format header: convert it to .y4m or .mkv with ffmpeg first"
            )
        else:
            self._open_video(resize_short, threads)

    # -- opening ---------------------------------------------------------------------------

    def _open_png_folder(self, resize_short: int | None, png_fps: float) -> None:
        self._pngs = png_frame_paths(self.path)
        if not self._pngs:
            raise VideoReadError(self.path, "directory holds no PNG frames")
        first = self._read_png(self._pngs[0], 0)
        height, width = first.shape[:2]
        self._out_size = scaled_size(width, height, resize_short)
        self._src_size = (width, height)
        self._first = self._resize(first)
        self.info = VideoInfo(self.path, *self._out_size, width, height, float(png_fps), len(self._pngs), True)

    def _open_video(self, resize_short: int | None, threads: int) -> None:
        if os.path.isfile(self.path) and os.path.getsize(self.path) == 0:
            raise VideoReadError(self.path, "empty file (0 bytes)")  # FFmpeg: "Header too large" or EINVAL
        import av

        with _FFmpegErrorLog() as log:
            try:
                self._container = av.open(self.path, metadata_errors="ignore")
            except av.error.InvalidDataError:
                raise VideoReadError(self.path, _invalid_data_reason(self.path, log.last())) from None
            except (av.error.FFmpegError, OSError) as exc:
                raise VideoReadError(self.path, _open_error_reason(self.path, exc, log.last())) from None
        try:
            _check_y4m_frame_rate(self.path)
            self._open_stream(resize_short, threads)
        except BaseException:
            self.close()  # whatever failed after av.open, the container is not leaked
            raise

    def _open_stream(self, resize_short: int | None, threads: int) -> None:
        assert self._container is not None
        if not self._container.streams.video:
            raise VideoReadError(self.path, "has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads: the fastest PyAV decode measured
        if threads:
            stream.codec_context.thread_count = threads
        self._stream = stream
        self._declared = _declared_frames(self._container, stream)
        self._stream_iter = self._container.decode(stream)
        frame = self._next_video_frame(0)
        if frame is None:
            raise VideoReadError(self.path, "no frame could be decoded")
        self._src_size = (frame.width, frame.height)
        self._out_size = scaled_size(frame.width, frame.height, resize_short)
        self._first = self._video_frame_to_rgb(frame)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        self.info = VideoInfo(self.path, *self._out_size, *self._src_size, fps, self._declared, False)

    # -- frames ----------------------------------------------------------------------------

    def frames(self, max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Yield ``H x W x 3`` uint8 RGB frames in order; raises VideoReadError on damage.

        A stream that ends well before the frame count its container declares raises
        "truncated" after yielding what it had.
        """
        if self._consumed:
            raise RuntimeError("VideoReader.frames() can be iterated once")
        self._consumed = True
        limit = len(self._pngs) if self._pngs else None
        if max_frames is not None:
            limit = max_frames if limit is None else min(limit, max_frames)
        if limit is not None and limit <= 0:
            return
        assert self._first is not None
        first, self._first = self._first, None
        yield first
        if self._pngs:
            for index in range(1, limit):
                yield self._resize(self._read_png(self._pngs[index], index))
            return
        count = 1
        while limit is None or count < limit:
            frame = self._next_video_frame(count)
            if frame is None:
                break
            if (frame.width, frame.height) != self._src_size:
                raise VideoReadError(
                    self.path,
                    f"frame size changes mid-stream from {self._src_size[0]}x{self._src_size[1]} "
                    f"to {frame.width}x{frame.height} at frame {count}",
                )
            yield self._video_frame_to_rgb(frame)
            count += 1
        if limit is not None and count >= limit:
            return  # stopped at max_frames: the rest of the stream was not read
        declared = self._declared
        if declared is not None and count < declared - max(2, declared // 50):
            raise VideoReadError(self.path, f"stream ends after {count} of {declared} declared frames (truncated file?)")

    def _next_video_frame(self, index: int) -> av.VideoFrame | None:
        import av

        assert self._stream_iter is not None
        try:
            return next(self._stream_iter)
        except StopIteration:
            return None
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise VideoReadError(self.path, f"decode error at frame {index}: {_ffmpeg_reason(exc)}") from None

    def _video_frame_to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        if self._out_size == self._src_size:
            return frame.to_ndarray(format="rgb24")
        width, height = self._out_size
        return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()

    def _read_png(self, path: str, index: int) -> np.ndarray:
        from PIL import Image

        name = os.path.basename(path)
        try:
            with Image.open(path) as image:
                if image.mode not in _PIL_MODES_8BIT:
                    raise VideoReadError(self.path, f"frame {name}: PNG mode {image.mode} is not 8-bit (convert first)")
                array = np.asarray(image.convert("RGB"))  # alpha is dropped; grey and palette expand
        except VideoReadError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise VideoReadError(self.path, f"frame {name}: {exc}") from None
        if index and (array.shape[1], array.shape[0]) != self._src_size:
            raise VideoReadError(
                self.path, f"frame {name} is {array.shape[1]}x{array.shape[0]}, earlier frames {self._src_size[0]}x{self._src_size[1]}"
            )
        return array

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        if self._out_size == self._src_size:
            return rgb
        import av

        width, height = self._out_size
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        return frame.reformat(width=width, height=height, interpolation="AREA").to_ndarray()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._stream_iter = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe(path: str | os.PathLike, resize_short: int | None = None, png_fps: float = DEFAULT_PNG_FPS) -> VideoInfo:
    """Size, frame rate and declared frame count (decodes one frame to be sure it can)."""
    with VideoReader(path, resize_short=resize_short, png_fps=png_fps) as reader:
        return reader.info


def iter_frames(
    path: str | os.PathLike, max_frames: int | None = None, resize_short: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the frames of one video or PNG folder; bounded memory."""
    with VideoReader(path, resize_short=resize_short) as reader:
        yield from reader.frames(max_frames)


def read_frames(
    path: str | os.PathLike, start: int = 0, count: int | None = None, resize_short: int | None = None
) -> np.ndarray:
    """Frames ``[start, start + count)`` as one ``T x H x W x 3`` array (for tests and evaluation)."""
    stop = None if count is None else start + count
    frames = [f for i, f in enumerate(iter_frames(path, max_frames=stop, resize_short=resize_short)) if i >= start]
    if not frames:
        raise VideoReadError(path, f"no frames in range [{start}, {stop})")
    return np.stack(frames)


def _declared_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """The frame count the container claims: mp4's sample count, else duration x rate, else None."""
    import av

    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base * rate)))
    if container.duration:
        return int(round(container.duration / av.time_base * float(rate)))
    return None


class _FFmpegErrorLog:
    """FFmpeg's own error messages while opening a file: its reason for a failure.

    PyAV turns a failed open into an errno whose text can mislead: a y4m header with a bad width
    ends in EBUSY ("Device or resource busy") while FFmpeg logs "Picture size 0x16 is invalid".
    PyAV keeps FFmpeg's log off unless a level is set, so the level is raised to ERROR for the
    duration (never lowered) and restored after; the messages are captured, not printed.
    """

    def __enter__(self) -> "_FFmpegErrorLog":
        import av.logging

        self._level, self._skip = av.logging.get_level(), av.logging.get_skip_repeated()
        if self._level is None or self._level < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # else a second file with the same fault gets no reason
        self._capture = av.logging.Capture(local=False)  # frame threads log from other threads
        self.messages = self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import av.logging

        self._capture.__exit__(*exc)
        av.logging.set_level(self._level)
        av.logging.set_skip_repeated(self._skip)

    def last(self) -> str | None:
        """The last error-level message as ``"component: message"``, or None."""
        import av.logging

        errors = [(name, message) for level, name, message in self.messages if level <= av.logging.ERROR]
        if not errors:
            return None
        name, message = errors[-1]
        return f"{name}: {' '.join(message.split()).rstrip('.')}" if name else " ".join(message.split()).rstrip(".")


def _open_error_reason(path: str, exc: BaseException, ffmpeg_says: str | None) -> str:
    reason = f"cannot open: {ffmpeg_says or _ffmpeg_reason(exc)}"
    header = _y4m_header(path)
    if header is None:
        return reason
    text, complete = header
    if not complete:  # FFmpeg calls this "Header too large"
        return f"{reason} (y4m header '{text}' has no end of line: truncated, or not a y4m header)"
    return f"{reason} (y4m header '{text}')"


def _y4m_header(path: str) -> tuple[str, bool] | None:
    """(first line, whether it ends in a newline) of a YUV4MPEG2 file, else None. For messages:
    at most 60 characters, bytes other than printable ASCII shown as '?'."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"YUV4MPEG2"):
        return None
    line, newline, _ = head.partition(b"\n")
    text = "".join(chr(b) if 32 <= b < 127 else "?" for b in line[:60]) + ("..." if len(line) > 60 else "")
    return text, bool(newline)


def _check_y4m_frame_rate(path: str) -> None:
    """Refuse a y4m whose ``F`` token is damaged: FFmpeg silently reads it as 25 fps."""
    header = _y4m_header(path)
    if header is None:
        return
    for token in header[0].split()[1:]:
        if token.startswith("F"):
            num, _, den = token[1:].partition(":")
            if not (num.isdigit() and den.isdigit() and int(num) > 0 and int(den) > 0):
                raise VideoReadError(path, f"y4m header: frame rate '{token}' is not F<num>:<den> with both > 0 (header '{header[0]}')")


def _invalid_data_reason(path: str, ffmpeg_says: str | None = None) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        head = b""
    if head[4:8] == b"ftyp":  # an mp4/mov whose index (moov box) is missing: usually cut short
        return "mp4/mov without a readable index (moov box): truncated or unfinished file?"
    header = _y4m_header(path)
    if header is not None:
        return f"not a readable y4m ({ffmpeg_says or 'invalid data'}; header '{header[0]}')"
    return "not a readable video (FFmpeg: invalid data found when processing input)"


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's message without the errno prefix and the repeated file name."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).strip() or type(exc).__name__
