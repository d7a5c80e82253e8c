"""``gvc`` on bad input: one ``gvc: error:`` line on stderr and exit status 2 for every failure,
no traceback, no half-written output. The streams are those of test_latent_bitstream_fuzz.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs.latent import LatentCodec
from gvc_train.coding.container import ChunkType

from test_latent_bitstream_fuzz import Stream, _escape_payload, codec, other_codec_dir, streams, tiny_video  # noqa: F401 (fixtures)

Capture = pytest.CaptureFixture[str]
CliRuns = tuple[Path, dict[str, subprocess.CompletedProcess[str]]]


# ---- gvc: in subprocesses where the process matters, in-process (main()) for the rest -------
# Every gvc process spends ~9 CPU-seconds importing torch and compressai, so only three runs
# are real processes, started together: a decode failing midway (partial output), an encode
# failing after some frames (nothing but the error line on stderr: warnings included), and the
# crafted rANS stream (a crash is a signal, not an exception).


def _gvc(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("gvc")
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "gvc_train.codecs.cli", *args]


@pytest.fixture(scope="module")
def cli(
    tiny_codec_dir: Path, codec: LatentCodec, streams: dict[str, Stream], tiny_video: Path, tmp_path_factory: pytest.TempPathFactory
) -> CliRuns:
    root = tmp_path_factory.mktemp("cli")
    s = streams["chunked"]
    (root / "damaged.gvc").write_bytes(_damage_last_chunk(s))
    # FRAMES 1's own model check, then the crafted rANS string: decoded to the chunk's end, then refused
    crafted = s.chunks[1][1][:4] + _escape_payload(codec, 60_000)
    (root / "crafted.gvc").write_bytes(s.build([s.chunks[0], (int(ChunkType.FRAMES), crafted), *s.chunks[2:]]))
    corrupt = root / "corrupt_pngs"
    shutil.copytree(tiny_video, corrupt)
    (corrupt / "im5.png").write_bytes((tiny_video / "im5.png").read_bytes()[:100])  # frames 1-4 read, then a truncated PNG
    codec_args = ("--codec", str(tiny_codec_dir))
    jobs = {
        "decode_damaged": _gvc("decode", "damaged.gvc", "out", *codec_args),
        "encode_corrupt": _gvc("encode", "corrupt_pngs", "c.gvc", *codec_args, "--quality", "1"),
        "decode_crafted": _gvc("decode", "crafted.gvc", "crafted_out", *codec_args),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("GVC_DEBUG", "GVC_CODEC_PATH")}
    procs: dict[str, subprocess.Popen[str]] = {}
    results = {}
    try:
        for name, cmd in jobs.items():
            procs[name] = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return root, results


def _one_error_line(returncode: int, stderr: str) -> str:
    assert returncode == 2, (returncode, stderr[-2000:])
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gvc: error: "), stderr[-2000:]
    return lines[0]


def _damage_last_chunk(s: Stream) -> bytes:
    """The stream with a bit of its last FRAMES chunk flipped: chunks 1 and 2 (5 frames) decode first."""
    data = bytearray(s.data)
    data[-10] ^= 0x10
    return bytes(data)


def test_cli_decode_failing_midway_leaves_only_the_partial_output(cli: CliRuns) -> None:
    root, runs = cli
    result = runs["decode_damaged"]
    line = _one_error_line(result.returncode, result.stderr)
    assert "CRC" in line and "5 frames" in line and "out.partial" in line, line
    assert not (root / "out").exists() and not (root / "out.part").exists()
    assert sorted(p.name for p in (root / "out.partial").iterdir()) == [f"frame_{i:06d}.png" for i in range(1, 6)]


def test_cli_encode_of_a_corrupt_video(cli: CliRuns) -> None:
    root, runs = cli
    result = runs["encode_corrupt"]
    assert "im5.png" in _one_error_line(result.returncode, result.stderr)
    assert not list(root.glob("c.gvc*")), "a failed encode left a file"


def test_cli_decode_of_a_crafted_escape_stream_does_not_crash(cli: CliRuns) -> None:
    """In a fresh process the over-read of rANS's bypass count reliably crashed (exit -11) before
    ``coding/rans.py`` padded 16 bytes per payload byte; in the pytest process it often did not.
    The whole chunk is decoded; then its model check (stream version 2) refuses the garbage."""
    root, runs = cli
    result = runs["decode_crafted"]
    assert "probability model differs" in _one_error_line(result.returncode, result.stderr)
    assert not list((root / "crafted_out").glob("*.png"))


def _main(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    from gvc_train.codecs.cli import main

    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_decode_failing_midway_to_mp4(tiny_codec_dir: Path, streams: dict[str, Stream], tmp_path: Path, capsys: Capture) -> None:
    import av

    (tmp_path / "bad.gvc").write_bytes(_damage_last_chunk(streams["chunked"]))
    code, _, err = _main(capsys, "decode", str(tmp_path / "bad.gvc"), str(tmp_path / "out.mp4"), "--codec", str(tiny_codec_dir))
    assert "out.partial.mp4" in _one_error_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gvc", "out.partial.mp4"]
    with av.open(str(tmp_path / "out.partial.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and all(np.array_equal(a, b) for a, b in zip(frames, streams["chunked"].frames))


def test_cli_decode_of_another_codecs_stream(tiny_codec_dir: Path, streams: dict[str, Stream], tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "other.gvc").write_bytes(streams["other"].data)
    code, _, err = _main(capsys, "decode", str(tmp_path / "other.gvc"), str(tmp_path / "out.mp4"), "--codec", str(tiny_codec_dir))
    assert "another codec" in _one_error_line(code, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.gvc"]


def test_cli_info(streams: dict[str, Stream], tmp_path: Path, capsys: Capture) -> None:
    (tmp_path / "valid.gvc").write_bytes(streams["chunked"].data)
    code, out, err = _main(capsys, "info", str(tmp_path / "valid.gvc"))
    assert code == 0 and err == "", err
    fields = dict(line.split(None, 1) for line in out.splitlines()[:9])
    assert fields["family"] == "latent" and fields["fingerprint"] == streams["chunked"].header.fingerprint.hex()
    assert (fields["width"], fields["height"], fields["frames"], fields["fps"]) == ("40", "24", "9", "30/1")
    assert fields["bytes"] == str(len(streams["chunked"].data))
    *table, codec = out.splitlines()[9:]
    assert codec == "codec       not found (pass --codec DIR)"  # a test codec: in no search folder
    assert table[0].split() == ["chunk", "type", "offset", "bytes", "frames", "bits/frame"]
    assert [row.split()[1] for row in table[1:]] == ["CONFIG", "FRAMES", "FRAMES", "FRAMES"]
    assert [row.split()[4] for row in table[2:]] == ["0-0", "1-4", "5-8"]
    code, _, err = _main(capsys, "info", str(tmp_path / "missing.gvc"))
    assert "no bitstream" in _one_error_line(code, err)


@pytest.mark.parametrize("case", ["quality 3", "quality -1", "missing input", "not a video"])
def test_cli_encode_failures(case: str, tiny_codec_dir: Path, tiny_video: Path, tmp_path: Path, capsys: Capture) -> None:
    source, quality, words = {
        "quality 3": (str(tiny_video), "3", "quality"),
        "quality -1": (str(tiny_video), "-1", "quality"),
        "missing input": (str(tmp_path / "missing.mp4"), "1", "missing.mp4"),
        "not a video": (str(tiny_codec_dir / "codec.json"), "1", "codec.json"),
    }[case]
    code, _, err = _main(capsys, "encode", source, str(tmp_path / "x.gvc"), "--codec", str(tiny_codec_dir), "--quality", quality)
    assert words in _one_error_line(code, err)
    assert not list(tmp_path.iterdir()), "a failed encode left a file"
