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

Modules: this one runs the protocol (encode, decode, cache, ladder); the specs, the input file
and the command lines are :mod:`gvc_train.eval.anchor_commands` (every name re-exported here);
the ladder's CRF search on a rate curve is :mod:`gvc_train.eval.anchor_search`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

from gvc_train.eval.anchor_cache import AnchorCache, cache_key, default_cache_dir

# The protocol's data and command lines live in anchor_commands (re-exported: callers import
# them from here); the ladder's CRF search lives in anchor_search.
from gvc_train.eval.anchor_commands import (  # noqa: F401 (re-exported)
    ANCHORS, DECODED_NAME, DEFAULT_CRFS, DEFAULT_THREADS, FFMPEG, INPUT_NAME, X26X_PRESETS, AnchorError, AnchorSpec,
    anchor_spec, check_frames, decode_command, encode_command, ffmpeg_rate_arg, ffmpeg_version, input_recipe, pad_frames,
    padded_size, require_encoder, resolve_preset, write_raw_input,
)  # fmt: skip
from gvc_train.eval.anchor_search import crf_bracket, quality_span_crfs, spread_crfs

MAX_PROBES = 8  # ladder search encodes on top of the ladder's own points (see anchor_ladder)
# Encodes (each decoded and measured) that may extend a ladder into the codecs' quality range:
# on carphone a bracket to the top of the range, one to its bottom and the points between take 4-7.
MAX_SPAN_ENCODES = 8
CacheDir = Union[str, "os.PathLike[str]", None, Literal[False]]


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
    # "rate": placed to span the codecs' rates; "quality": added to reach the codecs' quality range
    span: str = "rate"
    stream: bytes = dataclasses.field(default=b"", repr=False)

    def record(self) -> dict[str, Any]:
        """Everything but the frames and the stream, for reports (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("frames", "stream")}


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
    ffmpeg_rate_arg(fps)  # a bad frame rate fails before any work
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
    key = cache_key(src.sha256, shlex.join(cmd), ffmpeg_version())
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
        meta = {"command": shlex.join(cmd), "input_sha256": src.sha256, "ffmpeg": ffmpeg_version().splitlines()[0]}
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
        ffmpeg_version=ffmpeg_version().splitlines()[0], encode_seconds=round(seconds, 3), cached=cached, stream=stream,
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
    quality_of: Callable[[AnchorPoint], dict[str, float]] | None = None, quality_range: dict[str, tuple[float, float]] | None = None,
    max_span_encodes: int = MAX_SPAN_ENCODES,
) -> list[AnchorPoint]:  # fmt: skip
    """``points`` anchor points, by increasing CRF, whose rates span ``bpp_range``, then any
    points that reach the codecs' quality range.

    ``bpp_range`` is (lowest, highest) bits per pixel of the learned codecs on these frames. The
    ladder's ends are the tightest CRFs that still cover it (the first point's bpp >= highest,
    the last's <= lowest; when a CRF limit makes that impossible, the limit), the points between
    are evenly spaced in CRF, i.e. about evenly in log-rate. Without a range: ``points`` CRFs
    evenly over DEFAULT_CRFS' span. Encodes: at most ``max_probes`` search encodes (bpp only),
    plus one per ladder CRF not already probed, so at most ``max_probes + points``; typically 6
    to 9 search encodes for both ends (every one cached, so a second ladder over the same frames
    and settings encodes nothing).

    Quality span: a codec far below the anchor in quality has no quality in common with a ladder
    placed by rate, hence no BD-rate. With ``quality_range`` ({metric: (lowest, highest) quality
    of the codecs}, on a scale about linear in CRF: dB) and ``quality_of`` (a point's qualities
    by the same names), a metric on which the ladder's lowest quality is above the codecs'
    highest gets CRFs toward the CRF limit until one is below it, then points through the shared
    interval (:func:`~gvc_train.eval.anchor_search.quality_span_crfs`); at most
    ``max_span_encodes`` more points, each marked ``span="quality"``.
    """
    s = _settings(anchor, low_delay, intra_period, preset, threads)
    cache = _open_cache(cache_dir)
    with _prepared(frames_THWC, fps, anchor) as src:
        crfs, probes = _choose_crfs(src, s, cache, bpp_range, points, max_probes)
        ladder = {c: _point(src, c, s, cache, probes.get(c)) for c in crfs}
        if quality_range and quality_of is not None:
            known = {c: quality_of(p) for c, p in ladder.items()}
            spent = [0]  # measure calls, so that the budget ends the search whatever they return

            def measure(crf: int) -> None:
                spent[0] += 1
                ladder[crf] = dataclasses.replace(_point(src, crf, s, cache, probes.get(crf)), span="quality")
                known[crf] = quality_of(ladder[crf])

            budget = lambda: max_span_encodes - spent[0]  # noqa: E731
            quality_span_crfs(known, quality_range, measure, budget, ANCHORS[anchor].crf_limits)
        return [ladder[c] for c in sorted(ladder)]


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
        return spread_crfs(defaults[0], defaults[-1], points, limits, set()), probes
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
    top, _ = crf_bracket(math.log(hi), log_bpp, measure, budget, limits, spec.log_bpp_per_crf)
    _, bottom = crf_bracket(math.log(lo), log_bpp, measure, budget, limits, spec.log_bpp_per_crf)
    return spread_crfs(top, bottom, points, limits, set(probes)), probes
