"""The shard writer (gvc-shard), the lossless clip coder and the video reader.

Inputs are kept small (the 176x144 carphone clip, a few frames of bikes) so the file runs in
seconds on a CPU. ffmpeg (Debian's) only makes odd inputs: y4m, a faststart mp4 to truncate.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib

import av
import av.logging
import numpy as np
import pytest
import webdataset
from PIL import Image

from gvc_train.data import clip_codec
from gvc_train.data.clip_codec import ClipDecodeError, decode_clip, encode_clip
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.sample_format import INDEX_FILE, ClipMeta, ShardIndex, frames_field, sample_key
from gvc_train.data.shard_cli import main, parse_size
from gvc_train.data.shard_writer import NothingWrittenError, write_shards
from gvc_train.data.video_io import VideoReadError, probe, read_frames, scaled_size

DATA = str(sample_video("bikes.mp4").parent)
CARPHONE = os.path.join(DATA, "carphone_pristine.mp4")
BIKES = os.path.join(DATA, "bikes.mp4")
# `make setup` installs Debian's ffmpeg; the tests use it to make y4m and damaged inputs.
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


def pyav_rgb(path: str, count: int | None = None) -> np.ndarray:
    """Reference pixels: PyAV directly, not through video_io."""
    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if count is not None and len(frames) == count:
                break
    return np.stack(frames)


def read_samples(out_dir: str) -> list[dict[str, bytes]]:
    """Every sample of every shard listed in index.json, in order, grouped the WebDataset way."""
    index = ShardIndex.load(out_dir)
    samples: list[dict[str, bytes]] = []
    for path in index.shard_paths(out_dir):
        with tarfile.open(path) as tar:
            for member in tar:
                key, field = member.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][field] = tar.extractfile(member).read()
    return samples


def clip_of(sample: dict[str, bytes]) -> np.ndarray:
    field = frames_field(sample)
    assert field is not None
    return decode_clip(field.split(".", 1)[1], sample[field])


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture
def quiet() -> list[str]:
    """Collects write_shards log lines instead of printing them."""
    return []


# ---- round trip -------------------------------------------------------------------------


def test_round_trip_pixels_meta_overlap_and_shard_rotation(tmp_path, quiet):
    out = str(tmp_path / "out")
    index = write_shards(
        [CARPHONE], out, clip_frames=5, overlap=2, max_frames_per_video=16, maxcount=2, log=quiet.append
    )
    reference = pyav_rgb(CARPHONE, 16)
    starts = [0, 3, 6, 9]  # stride 5 - 2; a clip at 12 would need frames up to 16
    samples = read_samples(out)
    assert [s["__key__"] for s in samples] == [sample_key("carphone_pristine", i) for i in starts]
    for start, sample in zip(starts, samples):
        clip = clip_of(sample)
        assert clip.dtype == np.uint8 and clip.shape == (5, 144, 176, 3)
        np.testing.assert_array_equal(clip, reference[start : start + 5])
        meta = ClipMeta.from_json(sample["json"])
        assert meta == ClipMeta(CARPHONE, start, 5, meta.fps, 176, 144)
        assert meta.fps == pytest.approx(30000 / 1001)
        assert "txt" not in sample
    assert [s.samples for s in index.shards] == [2, 2]
    assert [s.name for s in index.shards] == ["shard-000000.tar", "shard-000001.tar"]
    assert (index.total_clips, index.total_frames, index.clip_frames, index.overlap) == (4, 20, 5, 2)
    assert index.sources[0]["frames_read"] == 16 and index.sources[0]["error"] is None
    assert ShardIndex.load(out) == index
    assert sorted(os.listdir(out)) == [INDEX_FILE, "shard-000000.tar", "shard-000001.tar"]  # no .partial left
    assert quiet == []


def test_webdataset_reads_the_shards(tmp_path, quiet):
    out = str(tmp_path / "out")
    index = write_shards([CARPHONE], out, clip_frames=4, max_frames_per_video=8, relative=True, log=quiet.append)
    samples = list(webdataset.WebDataset(index.shard_paths(out), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["carphone_pristine-000000", "carphone_pristine-000004"]
    assert ClipMeta.from_json(samples[1]["json"]).source == "carphone_pristine.mp4"  # relative=True
    np.testing.assert_array_equal(clip_of(samples[1]), pyav_rgb(CARPHONE, 8)[4:8])


def test_resize_short_area_downscales_and_never_upscales(tmp_path, quiet):
    assert scaled_size(1280, 720, 272) == (484, 272)
    assert scaled_size(640, 272, 272) == (640, 272)
    assert scaled_size(144, 176, 100) == (100, 122)  # portrait, long side rounded to even
    assert scaled_size(176, 144, 1000) == (176, 144)
    out = str(tmp_path / "out")
    write_shards([BIKES], out, clip_frames=3, max_frames_per_video=3, resize_short=136, log=quiet.append)
    (sample,) = read_samples(out)
    clip = clip_of(sample)
    assert clip.shape == (3, 136, 320, 3)
    with av.open(BIKES) as container:
        first = next(container.decode(video=0))
        expected = first.reformat(width=320, height=136, format="rgb24", interpolation="AREA").to_ndarray()
    np.testing.assert_array_equal(clip[0], expected)
    assert (ClipMeta.from_json(sample["json"]).width, ClipMeta.from_json(sample["json"]).height) == (320, 136)


# ---- other input kinds ------------------------------------------------------------------


def test_png_folders_natural_order_walk_and_caption(tmp_path, quiet):
    frames = pyav_rgb(CARPHONE, 11)
    root = tmp_path / "vimeo" / "sequences"
    for seq in ("00001/0001", "00002/0001"):  # the same leaf name twice: keys must stay unique
        folder = root / seq
        folder.mkdir(parents=True)
        for i, frame in enumerate(frames, start=1):  # im1 .. im11: im10 sorts after im9
            Image.fromarray(frame).save(folder / f"im{i}.png")
    (root / "00001" / "0001.txt").write_text("a man on the phone\n", encoding="utf-8")
    (root / "notes.md").write_text("ignored")
    (root / "._00001.mp4").write_bytes(b"a macOS resource fork: hidden, ignored")

    out = str(tmp_path / "out")
    index = write_shards([str(tmp_path / "vimeo")], out, clip_frames=11, png_fps=24.0, log=quiet.append)
    samples = read_samples(out)
    assert [s["__key__"] for s in samples] == ["sequences_00001_0001-000000", "sequences_00002_0001-000000"]
    for sample in samples:
        np.testing.assert_array_equal(clip_of(sample), frames)
        assert ClipMeta.from_json(sample["json"]).fps == 24.0
    assert samples[0]["txt"].decode() == "a man on the phone"
    assert "txt" not in samples[1]
    assert [s["caption"] for s in index.sources] == [True, False]
    assert index.skipped == [] and quiet == []


def test_y4m_input(tmp_path, quiet):
    y4m = str(tmp_path / "carphone.y4m")
    ffmpeg("-i", CARPHONE, "-frames:v", "8", y4m)
    out = str(tmp_path / "out")
    index = write_shards([y4m], out, clip_frames=4, log=quiet.append)
    samples = read_samples(out)
    reference = pyav_rgb(y4m)
    assert len(reference) == 8 and index.total_clips == 2
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(clip_of(sample), reference[4 * i : 4 * i + 4])
    # y4m holds the decoded 4:2:0 frames, so its pixels are the mp4's too
    np.testing.assert_array_equal(reference, pyav_rgb(CARPHONE, 8))


def test_caption_beside_video_is_carried_in_every_clip(tmp_path, quiet):
    video = tmp_path / "talk.mp4"
    shutil.copy(CARPHONE, video)
    (tmp_path / "talk.txt").write_text("  A person talks on a phone. \n", encoding="utf-8")
    out = str(tmp_path / "out")
    write_shards([str(video)], out, clip_frames=3, max_frames_per_video=9, log=quiet.append)
    samples = read_samples(out)
    assert len(samples) == 3
    assert {s["txt"].decode("utf-8") for s in samples} == {"A person talks on a phone."}


def test_same_names_in_different_folders_get_distinct_keys(tmp_path, quiet):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(CARPHONE, tmp_path / folder / "clip.mp4")
    out = str(tmp_path / "out")
    inputs = [str(tmp_path / "a" / "clip.mp4"), str(tmp_path / "b" / "clip.mp4"), CARPHONE]
    write_shards(inputs, out, clip_frames=4, max_frames_per_video=4, log=quiet.append)
    assert [s["__key__"] for s in read_samples(out)] == ["a_clip-000000", "b_clip-000000", "carphone_pristine-000000"]


# ---- bad inputs ---------------------------------------------------------------------------


def test_corrupt_and_truncated_inputs_are_reported_and_skipped(tmp_path, capsys):
    rng = np.random.default_rng(0)
    corrupt = tmp_path / "random.mp4"
    corrupt.write_bytes(rng.integers(0, 256, 40_000, dtype=np.uint8).tobytes())
    data = open(CARPHONE, "rb").read()
    half = tmp_path / "half.mp4"  # index (moov) at the end: half a file cannot be opened
    half.write_bytes(data[: len(data) // 2])
    faststart = tmp_path / "faststart.mp4"
    ffmpeg("-i", CARPHONE, "-c", "copy", "-movflags", "+faststart", str(faststart))
    cut = tmp_path / "cut.mp4"  # index first: the first half decodes, then the stream stops
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")

    out = str(tmp_path / "out")
    inputs = [CARPHONE, str(corrupt), str(half), str(cut), str(text), str(tmp_path / "missing.mkv")]
    rc = main([*inputs, "--out", out, "--workers", "1", "--no-progress", "--max-frames-per-video", "120"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "Traceback" not in captured.out + captured.err

    index = ShardIndex.load(out)
    skipped = {os.path.basename(s["source"]): s["reason"] for s in index.skipped}
    assert set(skipped) == {"random.mp4", "half.mp4", "notes.mp4", "missing.mkv"}
    assert "not a readable video" in skipped["random.mp4"]
    assert "without a readable index (moov box): truncated" in skipped["half.mp4"]
    assert skipped["missing.mkv"] == "no such file or directory"
    by_name = {os.path.basename(s["source"]): s for s in index.sources}
    assert by_name["carphone_pristine.mp4"]["clips"] == 7 and by_name["carphone_pristine.mp4"]["error"] is None
    damaged = by_name["cut.mp4"]
    assert damaged["clips"] >= 1 and damaged["frames_read"] < 120 and damaged["error"]
    # each problem is one line on stderr during the run, and listed again in the summary
    for name in ("random.mp4", "half.mp4", "cut.mp4", "notes.mp4", "missing.mkv"):
        lines = [line for line in captured.err.splitlines() if name in line]
        assert len(lines) == 1, (name, captured.err)
        assert name in captured.out
    # the clips kept from the damaged file are its first frames, bit-exact
    cut_samples = [s for s in read_samples(out) if s["__key__"].startswith("cut-")]
    assert len(cut_samples) == damaged["clips"]
    np.testing.assert_array_equal(clip_of(cut_samples[0]), pyav_rgb(CARPHONE, 17))


def test_nothing_written_exits_non_zero_with_a_clear_message(tmp_path, capsys):
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(1000))
    out = str(tmp_path / "out")
    rc = main([str(junk), str(tmp_path / "nope"), "--out", out, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "gvc-shard: nothing written: none of 2 inputs gave a clip" in err
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(out, INDEX_FILE))
    with pytest.raises(NothingWrittenError) as excinfo:
        write_shards([CARPHONE], str(tmp_path / "out2"), clip_frames=5, max_frames_per_video=4, log=lambda _: None)
    assert excinfo.value.index.skipped[0]["reason"] == "only 4 frames, fewer than clip_frames=5"


def test_bad_options_and_occupied_output(tmp_path, capsys, quiet):
    out = str(tmp_path / "out")
    assert main([CARPHONE, "--out", out, "--clip-frames", "4", "--overlap", "4"]) == 2
    assert "overlap must be in [0, clip_frames)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([CARPHONE, "--out", out, "--maxsize", "lots"])
    assert parse_size("1G") == 1 << 30 and parse_size("500M") == 500 << 20 and parse_size("1e9") == 10**9

    write_shards([CARPHONE], out, clip_frames=4, max_frames_per_video=4, log=quiet.append)
    assert main([CARPHONE, "--out", out, "--clip-frames", "4", "--max-frames-per-video", "4", "--no-progress"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert main([CARPHONE, "--out", out, "--clip-frames", "2", "--max-frames-per-video", "4", "--overwrite",
                 "--no-progress"]) == 0
    assert ShardIndex.load(out).total_clips == 2


def test_inputs_from_a_list_file(tmp_path, capsys):
    listing = tmp_path / "train.txt"
    listing.write_text(f"# the training list\n{CARPHONE}\n\n", encoding="utf-8")
    out = str(tmp_path / "out")
    assert main(["--inputs-from", str(listing), "--out", out, "--clip-frames", "4", "--max-frames-per-video", "4",
                 "--no-progress"]) == 0
    assert [s["source"] for s in ShardIndex.load(out).sources] == [CARPHONE]
    with pytest.raises(SystemExit):
        main(["--out", out])  # no input at all: a usage error
    assert "no INPUT given" in capsys.readouterr().err


# ---- workers and the console script -----------------------------------------------------


def test_worker_processes_give_the_same_shards(tmp_path, quiet):
    inputs = [CARPHONE, BIKES, str(tmp_path / "missing.mp4")]
    options = dict(clip_frames=4, max_frames_per_video=12, maxcount=4, log=quiet.append)
    one = write_shards(inputs, str(tmp_path / "w1"), workers=1, **options)
    two = write_shards(inputs, str(tmp_path / "w2"), workers=2, **options)
    assert one == two
    for shard in one.shards:
        assert (tmp_path / "w1" / shard.name).read_bytes() == (tmp_path / "w2" / shard.name).read_bytes()


def test_console_script_in_a_subprocess(tmp_path):
    script = shutil.which("gvc-shard", path=os.path.dirname(sys.executable))
    # The entry point once the package is installed (pip install -e .); the module otherwise.
    command = [script] if script else [sys.executable, "-m", "gvc_train.data.shard_cli"]
    out = str(tmp_path / "out")
    result = subprocess.run(
        [*command, CARPHONE, "--out", out, "--clip-frames", "9", "--max-frames-per-video", "18", "--prefix", "val"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 2 clips (18 frames) from 1 inputs into 1 shards" in result.stdout
    assert json.loads(open(os.path.join(out, INDEX_FILE)).read())["shards"][0]["name"] == "val-000000.tar"


# ---- the clip coder ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (3, 5, 7, 3), (2, 64, 48, 3)])
def test_clip_codec_round_trip_is_bit_exact(shape):
    frames = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    fmt, payload = encode_clip(frames)
    assert fmt == "rgbdz"
    np.testing.assert_array_equal(decode_clip(fmt, payload), frames)
    view = frames[:, ::-1, ::-1]  # a non-contiguous input is fine too
    np.testing.assert_array_equal(decode_clip(*encode_clip(view)), view)
    np.testing.assert_array_equal(clip_codec.decode_clip_cthw(fmt, payload), frames.transpose(3, 0, 1, 2))


def test_clip_codec_refuses_bad_frames():
    with pytest.raises(ValueError, match="uint8 T x H x W x 3"):
        encode_clip(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8 T x H x W x 3"):
        encode_clip(np.zeros((2, 4, 4, 3), np.float32))


def _header(t: int, h: int, w: int, size: int) -> bytes:
    head = struct.pack("<4sBBH3IQ", b"GVCZ", 1, 0, 0, t, h, w, size)
    return head + struct.pack("<I", zlib.crc32(head))


def test_decode_clip_damaged_payloads_raise_clip_decode_error():
    frames = pyav_rgb(CARPHONE, 3)
    fmt, payload = encode_clip(frames)
    body = payload[clip_codec.HEADER_SIZE :]
    damaged = {
        "empty": b"",
        "header only": payload[: clip_codec.HEADER_SIZE],
        "truncated body": payload[: len(payload) // 2],
        "last byte gone": payload[:-1],
        "bad magic": b"XXXX" + payload[4:],
        "header bit flip": payload[:12] + bytes([payload[12] ^ 1]) + payload[13:],
        "body bit flip": payload[:-10] + bytes([payload[-10] ^ 0x40]) + payload[-9:],
        # well-formed headers asking for huge clips: refused before any allocation
        "huge frame count": _header(2**31, 144, 176, len(body)) + body,
        "huge clip": _header(4096, 8192, 8192, len(body)) + body,
        "size disagrees with zstd frame": _header(3000, 144, 176, len(body)) + body,
        "zero size": _header(0, 144, 176, len(body)) + body,
        "body length disagrees": _header(3, 144, 176, len(body) + 1) + body,
        "checksum bit flip": payload[:-1] + bytes([payload[-1] ^ 1]),
        "trailing bytes": _header(3, 144, 176, len(body) + 2) + body + b"\0\0",
    }
    for name, data in damaged.items():
        with pytest.raises(ClipDecodeError):
            decode_clip(fmt, data)
            pytest.fail(f"{name}: decoded")
    with pytest.raises(ClipDecodeError, match="unknown clip format 'png'"):
        decode_clip("png", payload)
    with pytest.raises(ClipDecodeError):
        decode_clip(fmt, "not bytes")  # type: ignore[arg-type]

    rng = np.random.default_rng(2)  # random single-byte damage anywhere: an error or the exact clip
    for _ in range(200):
        i = int(rng.integers(len(payload)))
        data = payload[:i] + bytes([payload[i] ^ int(rng.integers(1, 256))]) + payload[i + 1 :]
        try:
            out = decode_clip(fmt, data)
        except ClipDecodeError:
            continue
        np.testing.assert_array_equal(out, frames)


# ---- the reader -------------------------------------------------------------------------


_Y4M = b"YUV4MPEG2 W16 H16 F25:1 Ip A1:1 C420jpeg\n" + (b"FRAME\n" + bytes(16 * 16 * 3 // 2)) * 2


@pytest.mark.parametrize(
    "damage, reason",
    [
        ((b"W16", b"Wxx"), "Picture size 0x16 is invalid (y4m header 'YUV4MPEG2 Wxx H16 "),  # once "Device or resource busy"
        ((b"W16", b"W0"), "Picture size 0x16 is invalid"),
        ((b"H16", b"H0"), "Picture size 16x0 is invalid"),
        ((b"H16", b"H-3"), "Picture size 16x4294967293 is invalid"),
        ((b"W16", b"W99999999"), "Picture size 99999999x16 is invalid"),
        ((b"W16 ", b""), "YUV4MPEG has invalid header"),
        ((b"C420jpeg", b"Cxyz"), "unknown pixel format"),
        ((b"F25:1", b"F25:0"), "frame rate 'F25:0' is not F<num>:<den>"),  # FFmpeg would silently read 25 fps
        ((b"F25:1", b"Fabc"), "frame rate 'Fabc' is not F<num>:<den>"),
        (19, "Header too large (y4m header 'YUV4MPEG2 W16 H16 F' has no end of line: truncated"),  # header cut short
        (9, "Header too large (y4m header 'YUV4MPEG2' has no end of line"),
        (0, "empty file (0 bytes)"),
    ],
)
def test_damaged_y4m_headers_say_the_decoders_reason(tmp_path, damage, reason):
    """Every damaged header gets FFmpeg's own reason (or ours where FFmpeg has none), in one line,
    the same the second time (FFmpeg's log skips repeated messages) and for probe and read alike."""
    path = tmp_path / "damaged.y4m"
    path.write_bytes(_Y4M[:damage] if isinstance(damage, int) else _Y4M.replace(*damage))
    for read in (read_frames, probe, read_frames):
        with pytest.raises(VideoReadError) as excinfo:
            read(str(path))
        message = str(excinfo.value)
        assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
        assert "busy" not in message and "Invalid argument" not in message
    assert av.logging.get_level() is None and av.logging.get_skip_repeated()  # PyAV's settings restored
    (tmp_path / "good.y4m").write_bytes(_Y4M)
    assert read_frames(str(tmp_path / "good.y4m")).shape == (2, 16, 16, 3) and probe(str(tmp_path / "good.y4m")).fps == 25.0


def test_video_read_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(VideoReadError) as excinfo:
        read_frames(str(bad))
    assert str(excinfo.value).startswith(str(bad) + ": ") and "\n" not in str(excinfo.value)
    raw = tmp_path / "raw.yuv"
    raw.write_bytes(b"\x10" * 64)
    with pytest.raises(VideoReadError, match="convert it to .y4m or .mkv"):
        read_frames(str(raw))
    np.testing.assert_array_equal(read_frames(CARPHONE, start=2, count=3), pyav_rgb(CARPHONE, 5)[2:])
