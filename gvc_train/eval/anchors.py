"""Traditional-codec anchors through the ffmpeg binary: the same RGB frames in, elementary stream out.

Protocol (one function per step, each recorded in the :class:`AnchorPoint`):

* **Input.** The source RGB frames, padded by edge replication to what the encoder accepts
  (:func:`padded_size`: even sizes for 4:2:0; SVT-AV1 1.4 also refuses sides under 64), are
  written as one raw ``rgb24`` file, ``input.rgb`` (:func:`write_raw_input`). ffmpeg converts to
  ``yuv420p`` (swscale defaults, BT.601 limited range): that conversion is part of the anchor's
  loss, as it is in practice.
* **Encode.** :func:`encode_command` is the exact command that runs, in a folder holding
  ``input.rgb``; it is recorded verbatim and reproduces the stream byte for byte by hand.
  Thread counts are pinned in the command because the output of x264 (``threads``, at 640x272)
  and x265 (``pools``) depends on them (measured); SVT-AV1's does not (``lp`` only caps threads).
* **Settings.** ``low_delay=True``: no frame reordering (x264/x265 ``bframes=0``; SVT-AV1
  ``pred-struct=1``, its low-delay structure: every frame shown as coded, no hidden frames;
  SVT warns this mode is "work in progress"). ``low_delay=False``: each encoder's default
  random-access structure (x264: 3 B-frames, pyramid; x265: 4 B-frames, pyramid; SVT-AV1:
  hierarchical mini-GOPs of 16 with hidden frames). Rate-control lookahead stays on in both: it
  delays but does not reorder. ``intra_period``: ``32`` puts intra frames exactly at 0, 32, 64..
  (scene-cut detection off, closed GOP: x265 ``open-gop=0``, SVT ``irefresh-type=2``), so the
  anchor refreshes where a learned codec with that period would; ``-1``: only the first frame
  (x264 ``keyint=infinite``, x265/SVT ``keyint=-1``).
* **Rate.** The size of the coded stream, with no container: Annex-B ``.264``/``.hevc`` and, for
  AV1, the low-overhead OBU stream (``-f obu``: exactly the IVF file less its 32-byte file header
  and 12-byte frame headers). The encoders' informational SEI (x264's options string, ~0.7 KB;
  x265's version string) is not coded video and is left out: x265 ``info=0``, x264 through
  ``-bsf:v filter_units=remove_types=6``. Bits per pixel count the source (unpadded) pixels.
* **Decode.** :func:`decode_command` (the same ffmpeg, to raw ``rgb24``, frames cropped back to
  the source size); its output equals PyAV's ``to_ndarray("rgb24")`` on these streams.

Presets: x264 and x265 ``medium``; SVT-AV1 ``6`` (bikes 640x272, 96 frames, random access:
preset 4 is 4x slower for -12% BD-rate, preset 8 is 1.6x faster for +5%). Results are cached
(:mod:`gvc_train.eval.anchor_cache`) by input bytes, command line and ffmpeg version.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from gvc_train.eval.anchor_cache import AnchorCache, cache_key, default_cache_dir


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
MAX_PROBES = 8  # ladder search encodes on top of the ladder's own points (see anchor_ladder)
FFMPEG = "ffmpeg"
INPUT_NAME = "input.rgb"
DECODED_NAME = "decoded.rgb"
CacheDir = Union[str, "os.PathLike[str]", None, Literal[False]]


class AnchorError(RuntimeError):
    """Anything an anchor cannot do; ``str()`` is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclasses.dataclass
class AnchorPoint:
    anchor: str
    crf: int
    low_delay: bool
    preset: str
    bytes: int  # the elementary stream, no container (see the module docstring)
    command: str  # the encode command, run in a folder holding input.rgb (see input_recipe)
    frames: np.ndarray  # decoded, cropped to the source size: T x H x W x 3 uint8
    intra_period: int = -1
    bpp: float = 0.0  # bytes * 8 over the source (unpadded) pixels of all frames
    width: int = 0
    height: int = 0
    coded_width: int = 0  # after padding
    coded_height: int = 0
    input_recipe: str = ""
    decode_command: str = ""
    ffmpeg_version: str = ""
    encode_seconds: float = 0.0  # of the encode that made the stream (also when read from the cache)
    cached: bool = False
    stream: bytes = dataclasses.field(default=b"", repr=False)

    def record(self) -> dict[str, Any]:
        """Everything but the frames and the stream, for reports (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("frames", "stream")}


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


def fps_fraction(fps: float) -> str:
    """``29.97002997`` -> ``30000/1001``: exact for NTSC rates, and the same string every time."""
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
    cmd += ["-s", f"{width}x{height}", "-framerate", fps_fraction(fps), "-i", INPUT_NAME, "-pix_fmt", "yuv420p"]
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


@functools.lru_cache(maxsize=None)
def ffmpeg_version(binary: str = FFMPEG) -> str:
    """The whole ``ffmpeg -version`` text (build and library versions): part of every cache key."""
    if shutil.which(binary) is None:
        raise AnchorError(f"{binary!r} not found on PATH: the anchors need the ffmpeg command-line tool")
    return subprocess.run([binary, "-version"], capture_output=True, text=True, check=False).stdout.strip()


@functools.lru_cache(maxsize=None)
def _encoders(binary: str) -> frozenset[str]:
    out = subprocess.run([binary, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False).stdout
    return frozenset(line.split()[1] for line in out.splitlines() if len(line.split()) > 1 and line.startswith(" V"))


def require_encoder(anchor: str) -> None:
    spec = anchor_spec(anchor)
    ffmpeg_version(FFMPEG)
    if spec.encoder not in _encoders(FFMPEG):
        raise AnchorError(f"{anchor}: this ffmpeg ({shutil.which(FFMPEG)}) has no {spec.encoder} encoder")


@dataclasses.dataclass(frozen=True)
class _Settings:
    anchor: str
    low_delay: bool
    intra_period: int
    preset: str
    threads: int


@dataclasses.dataclass(frozen=True)
class _Source:
    frames: np.ndarray  # the unpadded source
    fps: float
    folder: Path  # holds input.rgb; encodes and decodes run here
    coded_height: int
    coded_width: int
    sha256: str  # of input.rgb

    @property
    def pixels(self) -> int:
        return int(np.prod(self.frames.shape[:3]))


@contextmanager
def _prepared(frames_THWC: np.ndarray, fps: float, anchor: str) -> Iterator[_Source]:
    """Write input.rgb once into a temporary folder, for every encode of these frames."""
    check_frames(frames_THWC)
    require_encoder(anchor)
    fps_fraction(fps)
    with tempfile.TemporaryDirectory(prefix="gvc_anchor_") as tmp:
        height, width = write_raw_input(frames_THWC, anchor, Path(tmp) / INPUT_NAME)
        sha256 = hashlib.sha256((Path(tmp) / INPUT_NAME).read_bytes()).hexdigest()
        yield _Source(frames_THWC, fps, Path(tmp), height, width, sha256)


def _open_cache(cache_dir: CacheDir) -> AnchorCache | None:
    if cache_dir is False:
        return None
    return AnchorCache(default_cache_dir() if cache_dir is None else cache_dir)


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    """Every ffmpeg run (encode or decode) goes through here; SVT-AV1's banner is silenced."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, env={**os.environ, "SVT_LOG": "1"}, check=False)
    if proc.returncode != 0:
        err = [line for line in proc.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise AnchorError(f"{what} failed (ffmpeg exit {proc.returncode}): {' | '.join(err[-3:])[-400:]}")


def _encode(src: _Source, crf: int, s: _Settings, cache: AnchorCache | None, refresh: bool = False) -> tuple[bytes, list[str], float, bool]:
    """(stream, command, encode seconds, read from the cache) for one CRF."""
    spec = ANCHORS[s.anchor]
    cmd = encode_command(
        s.anchor, crf, height=src.coded_height, width=src.coded_width, fps=src.fps, low_delay=s.low_delay,
        intra_period=s.intra_period, preset=s.preset, threads=s.threads,
    )  # fmt: skip
    key = cache_key(src.sha256, shlex.join(cmd), ffmpeg_version(FFMPEG))
    hit = None if cache is None or refresh else cache.load(key, spec.suffix)
    if hit is not None:
        return hit[0], cmd, float(hit[1].get("encode_seconds", 0.0)), True
    out = src.folder / cmd[-1]
    started = time.perf_counter()
    _run(cmd, src.folder, f"{s.anchor} crf {crf}")
    seconds = time.perf_counter() - started
    stream = out.read_bytes()
    out.unlink()
    if not stream:
        raise AnchorError(f"{s.anchor} crf {crf}: ffmpeg wrote an empty stream")
    if cache is not None:
        meta = {"command": shlex.join(cmd), "input_sha256": src.sha256, "ffmpeg": ffmpeg_version(FFMPEG).splitlines()[0]}
        cache.store(key, spec.suffix, stream, {**meta, "encode_seconds": round(seconds, 3)})
    return stream, cmd, seconds, False


def _decode(src: _Source, anchor: str, stream: bytes) -> np.ndarray:
    """Decode with the recorded command and crop back to the source size."""
    cmd = decode_command(anchor)
    stream_path, decoded_path = src.folder / cmd[cmd.index("-i") + 1], src.folder / DECODED_NAME
    stream_path.write_bytes(stream)
    try:
        _run(cmd, src.folder, f"{anchor} decode")
        raw = np.fromfile(decoded_path, dtype=np.uint8)
    finally:
        stream_path.unlink(missing_ok=True)
        decoded_path.unlink(missing_ok=True)
    t, h, w, _ = src.frames.shape
    if raw.size != t * src.coded_height * src.coded_width * 3:
        got = raw.size / (src.coded_height * src.coded_width * 3)
        raise AnchorError(f"{anchor} decoded {got:g} frames of {src.coded_width}x{src.coded_height}, expected {t}")
    return raw.reshape(t, src.coded_height, src.coded_width, 3)[:, :h, :w].copy()


_Encoded = tuple[bytes, list[str], float, bool]  # what _encode returns


def _point(src: _Source, crf: int, s: _Settings, cache: AnchorCache | None, encoded: _Encoded | None = None) -> AnchorPoint:
    """Encode (or take a ladder probe's stream), decode, and record one point."""
    stream, cmd, seconds, cached = encoded or _encode(src, crf, s, cache)
    try:
        frames = _decode(src, s.anchor, stream)
    except AnchorError:
        if not cached:
            raise
        # a stored stream that passed its checksum but does not decode: encode afresh, overwrite
        stream, cmd, seconds, cached = _encode(src, crf, s, cache, refresh=True)
        frames = _decode(src, s.anchor, stream)
    t, h, w, _ = src.frames.shape
    return AnchorPoint(
        s.anchor, int(crf), s.low_delay, s.preset, len(stream), shlex.join(cmd), frames, intra_period=s.intra_period,
        bpp=len(stream) * 8 / src.pixels, width=w, height=h, coded_width=src.coded_width, coded_height=src.coded_height,
        input_recipe=input_recipe(s.anchor, t, h, w, src.sha256), decode_command=shlex.join(decode_command(s.anchor)),
        ffmpeg_version=ffmpeg_version(FFMPEG).splitlines()[0], encode_seconds=round(seconds, 3), cached=cached, stream=stream,
    )  # fmt: skip


def _settings(anchor: str, low_delay: bool, intra_period: int, preset: str | int | None, threads: int) -> _Settings:
    return _Settings(anchor, bool(low_delay), int(intra_period), resolve_preset(anchor, preset), int(threads))


def encode_anchor(
    frames_THWC: np.ndarray, fps: float, anchor: str, crf: int, low_delay: bool = True, preset: str | int | None = None, *,
    intra_period: int = -1, threads: int = DEFAULT_THREADS, cache_dir: CacheDir = None,
) -> AnchorPoint:  # fmt: skip
    """Encode ``frames_THWC`` (uint8 RGB) with one anchor at one CRF and decode it back.

    ``preset`` None is the anchor's default (x264/x265 ``medium``, SVT-AV1 ``6``). ``cache_dir``
    None is :func:`~gvc_train.eval.anchor_cache.default_cache_dir`; False turns the cache off.
    """
    s = _settings(anchor, low_delay, intra_period, preset, threads)
    with _prepared(frames_THWC, fps, anchor) as src:
        return _point(src, crf, s, _open_cache(cache_dir))


def anchor_ladder(
    frames_THWC: np.ndarray, fps: float, anchor: str, *, low_delay: bool = True, intra_period: int = -1,
    bpp_range: tuple[float, float] | None = None, points: int = 5, preset: str | int | None = None,
    threads: int = DEFAULT_THREADS, cache_dir: CacheDir = None, max_probes: int = MAX_PROBES,
) -> list[AnchorPoint]:  # fmt: skip
    """``points`` anchor points, by increasing CRF, whose rates span ``bpp_range``.

    ``bpp_range`` is (lowest, highest) bits per pixel of the learned codecs on these frames. The
    ladder's ends are the tightest CRFs that still cover it (the first point's bpp >= highest,
    the last's <= lowest; when a CRF limit makes that impossible, the limit), the points between
    are evenly spaced in CRF, i.e. about evenly in log-rate. Without a range: ``points`` CRFs
    evenly over DEFAULT_CRFS' span. Encodes: at most ``max_probes`` search encodes (bpp only),
    plus one per ladder CRF not already probed, so at most ``max_probes + points``; typically 6
    to 9 search encodes for both ends (every one cached, so a second ladder over the same frames
    and settings encodes nothing).
    """
    s = _settings(anchor, low_delay, intra_period, preset, threads)
    cache = _open_cache(cache_dir)
    with _prepared(frames_THWC, fps, anchor) as src:
        crfs, probes = _choose_crfs(src, s, cache, bpp_range, points, max_probes)
        return [_point(src, c, s, cache, probes.get(c)) for c in crfs]


def crf_ladder(
    frames_THWC: np.ndarray, fps: float, anchor: str, bpp_range: tuple[float, float] | None, points: int = 5, *,
    low_delay: bool = True, intra_period: int = -1, preset: str | int | None = None, threads: int = DEFAULT_THREADS,
    cache_dir: CacheDir = None, max_probes: int = MAX_PROBES,
) -> list[int]:  # fmt: skip
    """The CRFs :func:`anchor_ladder` codes (the same search, without decoding the points)."""
    s = _settings(anchor, low_delay, intra_period, preset, threads)
    with _prepared(frames_THWC, fps, anchor) as src:
        return _choose_crfs(src, s, _open_cache(cache_dir), bpp_range, points, max_probes)[0]


def _choose_crfs(
    src: _Source, s: _Settings, cache: AnchorCache | None, bpp_range: tuple[float, float] | None, points: int, max_probes: int
) -> tuple[list[int], dict[int, _Encoded]]:
    spec = ANCHORS[s.anchor]
    limits = spec.crf_limits
    if not (isinstance(points, int) and 2 <= points <= limits[1] - limits[0] + 1):
        raise AnchorError(f"ladder points must be an integer in 2..{limits[1] - limits[0] + 1}, got {points!r}")
    probes: dict[int, _Encoded] = {}
    defaults = DEFAULT_CRFS[s.anchor]
    if bpp_range is None:
        return _spread(defaults[0], defaults[-1], points, limits, set()), probes
    lo, hi = sorted(float(b) for b in bpp_range)
    if not (lo > 0 and math.isfinite(hi)):
        raise AnchorError(f"ladder bpp range must be positive and finite, got {tuple(bpp_range)}")
    log_bpp: dict[int, float] = {}

    def measure(crf: int) -> None:
        probes[crf] = _encode(src, crf, s, cache)
        log_bpp[crf] = math.log(len(probes[crf][0]) * 8 / src.pixels)

    def budget() -> int:
        return max_probes - len(probes)

    measure(defaults[len(defaults) // 2])
    top, _ = _boundary(math.log(hi), log_bpp, measure, budget, limits, spec.log_bpp_per_crf)
    _, bottom = _boundary(math.log(lo), log_bpp, measure, budget, limits, spec.log_bpp_per_crf)
    return _spread(top, bottom, points, limits, set(probes)), probes


def _boundary(
    target: float, known: dict[int, float], measure: Callable[[int], None], budget: Callable[[], int], limits: tuple[int, int],
    default_slope: float,
) -> tuple[int, int]:  # fmt: skip
    """CRFs a < b with ln bpp(a) >= target > ln bpp(b), adjacent if the probe budget allows.

    bpp falls with CRF about log-linearly, so the next probe is the log-linear interpolation
    inside the bracket, or, before there is one, an extrapolation along the local slope with
    25% overshoot (to get a bracket in one step). A side that no CRF within the limits reaches
    is that limit; a side the budget ran out on is the unmeasured next guess.
    """
    lo_crf, hi_crf = limits
    while True:
        above = [c for c in known if known[c] >= target]
        a = max(above) if above else None
        below = [c for c in known if known[c] < target and (a is None or c > a)]
        b = min(below) if below else None
        if a is not None and b is not None:
            if b - a <= 1 or budget() <= 0:
                return a, b
            guess = a + (known[a] - target) / (known[a] - known[b]) * (b - a)
            measure(min(b - 1, max(a + 1, round(guess))))
            continue
        ref = min(known) if a is None else max(known)  # every known rate is on one side of the target
        if ref == (lo_crf if a is None else hi_crf):
            return (lo_crf, ref) if a is None else (ref, hi_crf)
        step = max(1, math.ceil(1.25 * abs((target - known[ref]) / _local_slope(known, ref, default_slope))))
        guess = max(lo_crf, ref - step) if a is None else min(hi_crf, ref + step)
        if budget() <= 0:
            return (guess, ref) if a is None else (ref, guess)
        measure(guess)


def _local_slope(known: dict[int, float], ref: int, default: float) -> float:
    """d ln(bpp) / d CRF between ``ref`` and its nearest measured neighbour; ``default`` if unusable."""
    others = [c for c in known if c != ref]
    if not others:
        return default
    near = min(others, key=lambda c: abs(c - ref))
    slope = (known[ref] - known[near]) / (ref - near)
    return slope if -1.0 < slope < -0.01 else default


def _spread(top: int, bottom: int, points: int, limits: tuple[int, int], probed: set[int]) -> list[int]:
    """``points`` distinct CRFs from ``top`` to ``bottom``, widened (within the limits) if too close."""
    lo_crf, hi_crf = limits
    top, bottom = min(top, bottom), max(top, bottom)
    while bottom - top + 1 < points:  # fewer CRFs than points in the range: reach a little beyond it
        bottom = min(hi_crf, bottom + 1)
        if bottom - top + 1 < points:
            top = max(lo_crf, top - 1)
    step = (bottom - top) / (points - 1)
    crfs = [math.floor(top + i * step + 0.5) for i in range(points)]  # step >= 1: distinct, increasing
    for i in range(1, points - 1):  # a probe one CRF away saves an encode and barely shifts the spacing
        if crfs[i] not in probed:
            near = [c for c in (crfs[i] - 1, crfs[i] + 1) if c in probed and crfs[i - 1] < c < crfs[i + 1]]
            crfs[i] = near[0] if near else crfs[i]
    return crfs
