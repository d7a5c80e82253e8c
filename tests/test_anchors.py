"""Traditional-codec anchors: padding, GOP structure, rate, ladder, cache and by-hand reproduction."""

from __future__ import annotations

import hashlib
import math
import shlex
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval import anchor_commands, anchors as A
from gvc_train.eval.anchor_search import crf_bracket, spread_crfs
from gvc_train.eval.anchor_cache import AnchorCache

ALL = ("x264", "x265", "svtav1")
FPS = 30000 / 1001
HIGH_QUALITY = {"x264": 18, "x265": 20, "svtav1": 20}


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    return read_frames(sample_video("carphone_pristine.mp4"), count=66)


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every encoder run (not decodes) from here on, in order."""
    runs: list[list[str]] = []
    real = A._run

    def counting(cmd: list[str], cwd: Path, what: str) -> None:
        if "-c:v" in cmd:
            runs.append(cmd)
        real(cmd, cwd, what)

    monkeypatch.setattr(A, "_run", counting)
    return runs


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255**2 / mse)


def decoded_frames(stream: bytes, suffix: str, tmp_path: Path) -> list[av.VideoFrame]:
    path = tmp_path / f"probe{suffix}"
    path.write_bytes(stream)
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def av1_frame_headers(stream: bytes) -> list[tuple[bool, bool]]:
    """(show_existing_frame, show_frame) of every frame header in a low-overhead OBU stream.

    AV1 reorders by coding frames hidden (show_frame = 0) and showing them later with
    show_existing_frame; these are the first bits of an uncompressed header in a video
    sequence (reduced_still_picture_header = 0, which SVT-AV1 uses for video).
    """
    headers, i = [], 0
    while i < len(stream):
        header = stream[i]
        obu_type, has_extension = (header >> 3) & 15, (header >> 2) & 1
        i += 1 + has_extension
        size = shift = 0
        while True:  # leb128 obu_size (the obu muxer always writes it)
            byte = stream[i]
            i += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if obu_type in (3, 6):  # OBU_FRAME_HEADER, OBU_FRAME
            first = stream[i]
            existing = bool(first >> 7)
            headers.append((existing, True if existing else bool((first >> 4) & 1)))
        i += size
    return headers


def test_padded_size_and_edge_replication() -> None:
    assert A.padded_size("x264", 29, 37) == (30, 38)
    assert A.padded_size("x265", 144, 176) == (144, 176)
    assert A.padded_size("svtav1", 29, 37) == (64, 64)  # SVT-AV1 1.4 refuses sides under 64
    assert A.padded_size("svtav1", 65, 100) == (66, 100)
    frames = np.arange(2 * 3 * 5 * 3, dtype=np.uint8).reshape(2, 3, 5, 3)
    padded = A.pad_frames(frames, 4, 6)
    assert padded.shape == (2, 4, 6, 3)
    np.testing.assert_array_equal(padded[:, :3, :5], frames)
    np.testing.assert_array_equal(padded[:, 3, :5], frames[:, 2])  # bottom row repeated
    np.testing.assert_array_equal(padded[:, :, 5], padded[:, :, 4])  # right column repeated


def test_the_frame_rate_argument_is_an_exact_fraction() -> None:
    assert A.ffmpeg_rate_arg(FPS) == "30000/1001" and A.ffmpeg_rate_arg(25.0) == "25/1"
    assert "-framerate 30000/1001" in " ".join(A.encode_command("x264", 30, height=16, width=16, fps=FPS, low_delay=True, intra_period=-1))


@pytest.mark.parametrize("anchor", ALL)
def test_odd_size_round_trip_is_padded_then_cropped(anchor: str, carphone: np.ndarray) -> None:
    source = np.ascontiguousarray(carphone[:4, 40:69, 60:97])  # 37 x 29: odd both ways
    p = A.encode_anchor(source, FPS, anchor, HIGH_QUALITY[anchor], True, cache_dir=False)  # codec_rd's call form
    coded_h, coded_w = A.padded_size(anchor, 29, 37)
    assert p.frames.shape == source.shape and (p.coded_height, p.coded_width) == (coded_h, coded_w)
    assert f"-s {coded_w}x{coded_h}" in p.command
    assert psnr(p.frames, source) > 34  # a crop off by a row or column would fall far below
    assert p.bytes == len(p.stream) and p.bpp == pytest.approx(p.bytes * 8 / (4 * 29 * 37))
    assert p.preset == A.ANCHORS[anchor].default_preset and p.intra_period == -1 and not p.cached
    assert b"x264 - core" not in p.stream and b"x265 (build" not in p.stream  # no encoder-info SEI counted


@pytest.mark.parametrize("anchor", ALL)
def test_low_delay_never_reorders_and_random_access_does(anchor: str, carphone: np.ndarray, tmp_path: Path) -> None:
    source = np.ascontiguousarray(carphone[:24, :64, :64])
    for low_delay in (True, False):
        p = A.encode_anchor(source, FPS, anchor, 30, low_delay, cache_dir=False)
        if anchor == "svtav1":
            headers = av1_frame_headers(p.stream)
            hidden = sum(1 for existing, shown in headers if not shown or existing)
            assert (hidden == 0) == low_delay, f"low_delay={low_delay}: {hidden} hidden/shown-later frames"
            assert len(headers) == 24 or not low_delay
        else:
            b_frames = sum(f.pict_type == av.video.frame.PictureType.B for f in decoded_frames(p.stream, A.ANCHORS[anchor].suffix, tmp_path))
            assert (b_frames == 0) == low_delay, f"low_delay={low_delay}: {b_frames} B-frames"


@pytest.mark.parametrize("anchor", ALL)
def test_intra_period_puts_key_frames_exactly_every_period(anchor: str, carphone: np.ndarray, tmp_path: Path) -> None:
    source = np.ascontiguousarray(carphone[:66, :64, :64])
    cases = [(32, False, [0, 32, 64]), (32, True, [0, 32, 64]), (-1, False, [0])]
    for intra_period, low_delay, expected in cases:
        p = A.encode_anchor(source, FPS, anchor, 35, low_delay, intra_period=intra_period, cache_dir=False)
        keys = [i for i, f in enumerate(decoded_frames(p.stream, A.ANCHORS[anchor].suffix, tmp_path)) if f.key_frame]
        assert keys == expected, f"intra_period={intra_period} low_delay={low_delay}"


def test_av1_rate_is_the_ivf_file_less_its_headers(carphone: np.ndarray, tmp_path: Path) -> None:
    source = np.ascontiguousarray(carphone[:10, :64, :64])
    p = A.encode_anchor(source, FPS, "svtav1", 40, False, cache_dir=False)
    A.write_raw_input(source, "svtav1", tmp_path / A.INPUT_NAME)
    ivf = shlex.split(p.command)[:-3] + ["-f", "ivf", "stream.ivf"]
    subprocess.run(ivf, cwd=tmp_path, check=True, capture_output=True)
    assert p.bytes == (tmp_path / "stream.ivf").stat().st_size - 32 - 12 * 10  # file header, 10 frame headers


@pytest.mark.parametrize("anchor", ALL)
def test_recorded_commands_reproduce_the_point_by_hand(anchor: str, carphone: np.ndarray, tmp_path: Path) -> None:
    source = np.ascontiguousarray(carphone[:8, 10:39, 20:57])  # odd size: the padding is in the recipe
    p = A.encode_anchor(source, FPS, anchor, 32, False, intra_period=32, cache_dir=False)
    A.write_raw_input(source, anchor, tmp_path / A.INPUT_NAME)  # what p.input_recipe describes
    assert p.input_recipe.endswith(hashlib.sha256((tmp_path / A.INPUT_NAME).read_bytes()).hexdigest())
    subprocess.run(shlex.split(p.command), cwd=tmp_path, check=True, capture_output=True)
    stream = (tmp_path / shlex.split(p.command)[-1]).read_bytes()
    assert stream == p.stream and len(stream) == p.bytes
    subprocess.run(shlex.split(p.decode_command), cwd=tmp_path, check=True, capture_output=True)
    raw = np.fromfile(tmp_path / A.DECODED_NAME, dtype=np.uint8).reshape(8, p.coded_height, p.coded_width, 3)
    by_hand = raw[:, :29, :37]
    assert psnr(by_hand, source) == psnr(p.frames, source)
    np.testing.assert_array_equal(by_hand, p.frames)


def test_ladder_spans_the_requested_range_tightly(carphone: np.ndarray, tmp_path: Path, encodes: list[list[str]]) -> None:
    source = np.ascontiguousarray(carphone[:12, :48, :64])
    cache = tmp_path / "cache"
    hi = A.encode_anchor(source, FPS, "x264", 26, cache_dir=cache).bpp * 0.999
    lo = A.encode_anchor(source, FPS, "x264", 36, cache_dir=cache).bpp * 1.001
    encodes.clear()
    ladder = A.anchor_ladder(source, FPS, "x264", bpp_range=(lo, hi), points=5, cache_dir=tmp_path / "other_cache")
    crfs = [p.crf for p in ladder]
    assert len(ladder) == 5 and crfs == sorted(set(crfs))
    assert ladder[0].bpp >= hi and ladder[-1].bpp <= lo  # the anchor covers the learned codecs' range
    assert len(encodes) <= A.MAX_PROBES + 5
    inner = [A.encode_anchor(source, FPS, "x264", c, cache_dir=cache).bpp for c in (crfs[0] + 1, crfs[-1] - 1)]
    assert inner[0] < hi and inner[1] > lo  # one CRF inward would no longer cover it
    encodes.clear()
    assert A.crf_ladder(source, FPS, "x264", (lo, hi), 5, cache_dir=tmp_path / "other_cache") == crfs
    assert encodes == []  # every probe and point came from the cache


def test_ladder_without_range_spreads_the_default_crfs(encodes: list[list[str]]) -> None:
    source = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert A.crf_ladder(source, FPS, "x264", None, 5, cache_dir=False) == list(A.DEFAULT_CRFS["x264"])
    assert A.crf_ladder(source, FPS, "svtav1", None, 3, cache_dir=False) == [35, 47, 59]
    assert encodes == []


def test_ladder_search_on_a_synthetic_rate_curve() -> None:
    truth = {c: 1.0 - 0.1 * c for c in range(0, 52)}  # ln bpp, log-linear in CRF
    known: dict[int, float] = {}
    budget = [8]

    def measure(c: int) -> None:
        budget[0] -= 1
        known[c] = truth[c]

    measure(33)
    assert crf_bracket(math.log(0.5) + 0.05, known, measure, lambda: budget[0], (0, 51), -0.11) == (16, 17)
    assert budget[0] >= 0
    assert crf_bracket(5.0, known, lambda c: measure(c), lambda: 99, (0, 51), -0.11) == (0, 0)  # out of reach: the limit
    assert spread_crfs(30, 31, 5, (0, 51), set()) == [29, 30, 31, 32, 33]  # widened both ways to 5 distinct CRFs
    assert spread_crfs(49, 51, 5, (0, 51), set()) == [47, 48, 49, 50, 51]
    assert spread_crfs(20, 40, 5, (0, 51), {24}) == [20, 24, 30, 35, 40]  # the probe at 24 stands in for 25


def test_cache_hits_without_encoding_and_misses_on_any_change(carphone: np.ndarray, tmp_path: Path, encodes: list[list[str]]) -> None:
    source = np.ascontiguousarray(carphone[:6, :32, :48])
    first = A.encode_anchor(source, FPS, "x264", 30, cache_dir=tmp_path)
    again = A.encode_anchor(source, FPS, "x264", 30, cache_dir=tmp_path)
    assert len(encodes) == 1 and again.cached and not first.cached
    assert again.stream == first.stream and again.command == first.command
    np.testing.assert_array_equal(again.frames, first.frames)
    A.encode_anchor(source, FPS, "x264", 30, preset="fast", cache_dir=tmp_path)  # another command line
    A.encode_anchor(source, FPS, "x264", 30, intra_period=32, cache_dir=tmp_path)
    changed = source.copy()
    changed[0, 0, 0, 0] ^= 1
    A.encode_anchor(changed, FPS, "x264", 30, cache_dir=tmp_path)  # other input bytes
    assert len(encodes) == 4


@pytest.mark.parametrize("damage", ["stream", "sidecar", "wrong_key"])
def test_a_damaged_cache_entry_is_recomputed(damage: str, carphone: np.ndarray, tmp_path: Path, encodes: list[list[str]]) -> None:
    source = np.ascontiguousarray(carphone[:6, :32, :48])
    first = A.encode_anchor(source, FPS, "x264", 30, cache_dir=tmp_path)
    (sidecar,) = tmp_path.glob("*.json")
    if damage == "stream":
        stream = sidecar.with_suffix(".264")
        stream.write_bytes(stream.read_bytes()[:-10])
    elif damage == "sidecar":
        sidecar.write_text("{ not json")
    else:
        sidecar.write_text(sidecar.read_text().replace('"key": "', '"key": "0'))
    again = A.encode_anchor(source, FPS, "x264", 30, cache_dir=tmp_path)
    assert len(encodes) == 2 and not again.cached and again.stream == first.stream
    assert A.encode_anchor(source, FPS, "x264", 30, cache_dir=tmp_path).cached  # and it was rewritten whole


def test_cache_rejects_a_stream_whose_checksum_does_not_match(tmp_path: Path) -> None:
    cache = AnchorCache(tmp_path)
    cache.store("k", ".264", b"abc", {"command": "x"})
    loaded = cache.load("k", ".264")
    assert loaded is not None and loaded[0] == b"abc" and loaded[1]["command"] == "x"
    (tmp_path / "k.264").write_bytes(b"abd")
    assert cache.load("k", ".264") is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda f: A.encode_anchor(f, FPS, "vp9", 30, cache_dir=False), "unknown anchor 'vp9'"),
        (lambda f: A.encode_anchor(f[0], FPS, "x264", 30, cache_dir=False), "T x H x W x 3"),
        (lambda f: A.encode_anchor(f[:0], FPS, "x264", 30, cache_dir=False), "T x H x W x 3"),
        (lambda f: A.encode_anchor(f.astype(np.float32), FPS, "x264", 30, cache_dir=False), "uint8"),
        (lambda f: A.encode_anchor(f, FPS, "svtav1", 30, preset="medium", cache_dir=False), "0..13"),
        (lambda f: A.encode_anchor(f, FPS, "x264", 30, preset="quick", cache_dir=False), "preset must be one of"),
        (lambda f: A.encode_anchor(f, FPS, "x264", 60, cache_dir=False), "crf must be an integer in 0..51"),
        (lambda f: A.encode_anchor(f, FPS, "x264", 30, intra_period=0, cache_dir=False), "intra period"),
        (lambda f: A.encode_anchor(f, 0.0, "x264", 30, cache_dir=False), "fps"),
        (lambda f: A.anchor_ladder(f, FPS, "x264", bpp_range=(0.0, 0.1), cache_dir=False), "bpp range"),
    ],
)
def test_bad_requests_are_one_line_anchor_errors(call: Any, message: str) -> None:
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(A.AnchorError, match=message.replace(".", r"\.").replace("'", ".")) as info:
        call(frames)
    assert "\n" not in str(info.value)


def test_missing_ffmpeg_or_encoder_is_an_anchor_error(monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    monkeypatch.setattr(anchor_commands, "_encoders", lambda binary: frozenset({"libx264"}))
    with pytest.raises(A.AnchorError, match="has no libsvtav1 encoder"):
        A.encode_anchor(frames, FPS, "svtav1", 30, cache_dir=False)
    monkeypatch.setattr(anchor_commands, "FFMPEG", "ffmpeg-that-is-not-installed")
    with pytest.raises(A.AnchorError, match="not found on PATH"):
        A.encode_anchor(frames, FPS, "x264", 30, cache_dir=False)
