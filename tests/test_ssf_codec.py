"""The Scale-Space Flow family at inference: gvc-export of a stage checkpoint, gvc encode / decode /
info on it, exact round trips at odd sizes, intra period, rate = file size, determinism, and the
fingerprint and model checks.

The codec is tiny and random (widths 8/8/8, tests/component_cases.py's TINY_SSF): these are the
coding mechanics, not quality. 72x56 frames are coded padded to 128x128.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from component_cases import TINY_SSF

from gvc_train import gvc_cli
from gvc_train.codecs.base import describe_stream, open_codec
from gvc_train.codecs.ssf import SSFCodec
from gvc_train.codecs.ssf_stream import StreamConfig
from gvc_train.coding.container import BitstreamError, ChunkType, end_marker, read_stream
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.export import main as export_main
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY
from gvc_train.models import ScaleSpaceFlowCodec

FRAMES, WIDTH, HEIGHT = 9, 72, 56


def ssf_checkpoint(path: Path, seed: int = 0) -> Path:
    """What the SSF stage's checkpoint holds for its component (lit/checkpoint_meta.py), no Lightning."""
    torch.manual_seed(seed)
    model = ScaleSpaceFlowCodec(**TINY_SSF, num_qualities=2)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {"components": {"ssf": {"class": "ScaleSpaceFlowCodec", "config": model.config, "state_prefix": "model."}}, "provenance": {"recipe": "test"}}
    torch.save({"state_dict": state, CHECKPOINT_KEY: meta}, path)
    return path


def export_ssf(tmp: Path, name: str, seed: int = 0, intra_period: int | None = None) -> Path:
    """gvc-export of a tiny SSF checkpoint; codec.json's intra period rewritten when given."""
    folder = tmp / name
    assert export_main([str(ssf_checkpoint(tmp / f"{name}.ckpt", seed)), "--out", str(folder)]) == 0
    if intra_period is not None:
        from gvc_train.codecs.codec_folder import write_codec_json

        meta = json.loads((folder / "codec.json").read_text())
        extras = {k: meta[k] for k in ("quality_direction", "entropy_coder", "qualities", "pad_multiple")}
        write_codec_json(folder, "ssf", {**extras, "intra_period": intra_period}, meta["provenance"])
    return folder


@pytest.fixture(scope="module")
def ssf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_ssf(tmp_path_factory.mktemp("ssf"), "ssf_codec", intra_period=4)


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 frames of 72x56 from carphone (not multiples of 128: coded padded)."""
    folder = tmp_path_factory.mktemp("ssf_video")
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=FRAMES)):
        Image.fromarray(frame[40 : 40 + HEIGHT, 50 : 50 + WIDTH]).save(folder / f"im{i + 1}.png")
    return folder


def _encode(codec: SSFCodec, video: Path, out: Path, quality: int = 1, **kw: object):
    recon: list[np.ndarray] = []
    report = codec.encode(video, out, quality, on_recon=recon.append, **kw)
    return np.stack(recon), report


def _decode(codec: SSFCodec, stream: Path) -> np.ndarray:
    frames: list[np.ndarray] = []
    codec.decode(stream, frames.append)
    return np.stack(frames)


def test_gvc_export_writes_a_codec_that_gvc_encode_decode_and_info_use(tmp_path: Path, odd_video: Path, capsys) -> None:
    folder = export_ssf(tmp_path, "exported")
    meta = json.loads((folder / "codec.json").read_text())
    assert meta["family"] == "ssf" and list(meta["components"]) == ["ssf"]
    assert (meta["qualities"], meta["intra_period"], meta["pad_multiple"]) == (2, 32, 128)
    codec = open_codec(folder)
    assert isinstance(codec, SSFCodec) and codec.num_rate_points == 2 and codec.intra_period == 32

    stream = tmp_path / "x.gvc"
    assert gvc_cli.main(["encode", str(odd_video), str(stream), "--codec", str(folder), "--quality", "1"]) == 0
    assert gvc_cli.main(["decode", str(stream), str(tmp_path / "out"), "--codec", str(folder)]) == 0
    recon, _ = _encode(codec, odd_video, tmp_path / "api.gvc")
    assert (tmp_path / "api.gvc").read_bytes() == stream.read_bytes()
    assert np.array_equal(read_frames(tmp_path / "out"), recon)  # through PNG files: exact
    capsys.readouterr()
    assert gvc_cli.main(["info", str(stream), "--codec", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "ssf" in out and "keyframes" in out and str(folder) in out
    assert gvc_cli.main(["encode", str(odd_video), str(tmp_path / "y.gvc"), "--codec", str(folder), "--latents-per-chunk", "2"]) == 2
    assert "takes no option ['latents_per_chunk']" in capsys.readouterr().err


def test_round_trip_at_an_odd_size_is_the_encoders_reconstruction(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = SSFCodec(ssf_dir)
    recon, report = _encode(codec, odd_video, tmp_path / "x.gvc")
    assert recon.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert (report.frames, report.width, report.height, report.quality) == (FRAMES, WIDTH, HEIGHT, 1)
    size = (tmp_path / "x.gvc").stat().st_size
    assert report.file_bytes == size and report.bpp == pytest.approx(size * 8 / (FRAMES * WIDTH * HEIGHT))  # rate = the file
    assert 0 < report.payload_bytes < size
    decoded = _decode(codec, tmp_path / "x.gvc")
    assert np.array_equal(decoded, recon)
    # the first frame is the keyframe of the frame padded by edge replication, cropped back
    x = frames_to_tensor(read_frames(odd_video, count=1))[:, :, 0]
    with torch.inference_mode():
        x_hat, _ = codec.model.encode_keyframe(F.pad(x, (0, 128 - WIDTH, 0, 128 - HEIGHT), mode="replicate"), 1)
    assert np.array_equal(tensor_to_frames(x_hat[:, :, None, :HEIGHT, :WIDTH])[0], recon[0])


def test_intra_period_places_the_keyframes(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = SSFCodec(ssf_dir)
    for period, keyframes in ((None, [0, 4, 8]), (3, [0, 3, 6]), (-1, [0]), (1, list(range(FRAMES)))):
        stream = tmp_path / f"p{period}.gvc"
        recon, _ = _encode(codec, odd_video, stream, intra_period=period)
        rows = [r for r in describe_stream(stream)["chunks"] if r["type"] == "FRAMES"]
        assert [r["first_frame"] for r in rows] == list(range(FRAMES))
        assert [r["first_frame"] for r in rows if r["frame_type"] == "intra"] == keyframes, period
        assert [r["keyframe"] for r in rows if "keyframe" in r] == keyframes
        assert all(r["motion_bytes"] > 0 and r["residual_bytes"] > 0 for r in rows if r["frame_type"] == "inter")
        assert np.array_equal(_decode(codec, stream), recon), period
    config = describe_stream(tmp_path / "pNone.gvc")["chunks"][0]
    assert (config["intra_period"], config["pad_multiple"], config["quality"]) == (4, 128, 1)
    with pytest.raises(ValueError, match="intra_period"):
        codec.encode(odd_video, tmp_path / "bad.gvc", 1, intra_period=0)


def test_streams_and_frames_are_identical_with_one_or_two_threads(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = SSFCodec(ssf_dir)
    previous = torch.get_num_threads()
    try:
        results = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            recon, _ = _encode(codec, odd_video, tmp_path / f"t{threads}.gvc", quality=0)
            results[threads] = (recon, (tmp_path / f"t{threads}.gvc").read_bytes(), _decode(codec, tmp_path / f"t{threads}.gvc"))
    finally:
        torch.set_num_threads(previous)
    assert results[1][1] == results[2][1]
    assert np.array_equal(results[1][0], results[2][0]) and np.array_equal(results[1][2], results[2][2])
    assert np.array_equal(results[1][0], results[1][2])
    assert torch.get_num_threads() == previous


def test_a_stream_of_another_codec_is_refused_by_fingerprint(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    other = SSFCodec(export_ssf(tmp_path, "other", seed=1, intra_period=4))
    codec = SSFCodec(ssf_dir)
    assert other.fingerprint != codec.fingerprint
    other.encode(odd_video, tmp_path / "other.gvc", 1, max_frames=2)
    with pytest.raises(BitstreamError, match="another codec"):
        codec.decode(tmp_path / "other.gvc", None)


def _rewrite(data: bytes, config: StreamConfig | None = None, order: list[int] | None = None) -> bytes:
    """The stream with CONFIG replaced and/or its FRAMES chunks reordered, every CRC valid."""
    from test_latent_bitstream_fuzz import _chunk

    header, chunks = read_stream(data)
    frames = [c.payload for c in chunks[1:]]
    frames = frames if order is None else [frames[i] for i in order]
    body = _chunk(ChunkType.CONFIG, (config or StreamConfig.parse(chunks[0].payload)).payload())
    body += b"".join(_chunk(ChunkType.FRAMES, p) for p in frames)
    return data[: chunks[0].offset] + body + end_marker()


def test_the_model_check_stops_a_consistent_forgery(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    """CRC-valid rewrites that decode without any parsing error: the model check names them."""
    codec = SSFCodec(ssf_dir)
    _encode(codec, odd_video, tmp_path / "x.gvc", intra_period=4)
    data = (tmp_path / "x.gvc").read_bytes()
    config = StreamConfig.parse(read_stream(data)[1][0].payload)
    forged = {
        "another quality": _rewrite(data, dataclasses.replace(config, quality=0)),
        "inter frames 2 and 3 swapped": _rewrite(data, order=[0, 1, 3, 2, 4, 5, 6, 7, 8]),
        "keyframes 4 and 8 swapped": _rewrite(data, order=[0, 1, 2, 3, 8, 5, 6, 7, 4]),
    }
    for name, stream in forged.items():
        (tmp_path / "f.gvc").write_bytes(stream)
        with pytest.raises(BitstreamError, match="probability model differs"):
            codec.decode(tmp_path / "f.gvc", None)
    # a decoder whose arithmetic differs: the motion latent's scales (so its CDF choice) shifted
    with torch.no_grad():
        codec.model.motion_hyperprior.hyper_decoder_scale.deconv3.bias += 2.0
    with pytest.raises(BitstreamError, match="frame 1: this decoder's probability model differs"):
        codec.decode(tmp_path / "x.gvc", None)


def test_bounds_and_life_cycle_errors_are_one_line(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    codec = SSFCodec(ssf_dir)
    codec.max_frame_pixels = 128 * 128 - 1
    with pytest.raises(ValueError, match="frame limit"):
        codec.encode(odd_video, tmp_path / "big.gvc", 1)
    assert not (tmp_path / "big.gvc").exists()
    codec = SSFCodec(ssf_dir)
    codec.encode(odd_video, tmp_path / "x.gvc", 1, max_frames=1)
    codec.max_frame_pixels = 128 * 128 - 1
    with pytest.raises(BitstreamError, match="frame limit"):
        codec.decode(tmp_path / "x.gvc", None)
    with pytest.raises(ValueError, match="quality"):
        codec.encode(odd_video, tmp_path / "q.gvc", 2)
    untrained = ScaleSpaceFlowCodec(**TINY_SSF)
    with pytest.raises(ValueError, match="entropy tables are not built"):
        SSFCodec.check_components({"ssf": untrained}, "here")


def test_the_model_check_covers_frame_index_and_quality() -> None:
    """The check's seed: a stream's frames cannot be moved or requantized unnoticed (the SSF's
    entropy coding itself has no temporal context)."""
    from gvc_train.codecs.ssf import _ModelCheck

    values = set()
    for index, quality in ((0, 0), (1, 0), (0, 1)):
        check = _ModelCheck()
        check.start("encode", index, quality)
        check.add("encode", [1, 2], [3, 4])
        before = check.value
        check.add("decode", [9], [9])  # the other side's calls do not count (the encoder decodes z too)
        assert check.value == before
        values.add(check.value)
    assert len(values) == 3


def test_gvc_eval_codes_at_the_protocols_intra_period(ssf_dir: Path, odd_video: Path, tmp_path: Path) -> None:
    sizes = {}
    for period in (-1, 2):  # the anchors' --intra-period reaches the codec: both refresh alike
        report_dir = tmp_path / f"report{period}"
        argv = ["eval", "--codec", str(ssf_dir), "--anchors", "", "--video", str(odd_video), "--frames", "5", "--no-progress",
                "--intra-period", str(period), "--out", str(report_dir)]  # fmt: skip
        assert gvc_cli.main(argv) == 0
        report = json.loads((report_dir / "report.json").read_text())
        points = [p for p in report["points"] if p["codec"] == ssf_dir.name]
        assert [p["quality"] for p in points] == [0, 1] and {p["family"] for p in points} == {"ssf"}
        assert {p["intra_period"] for p in points} == {period} and {p["frames"] for p in points} == {5}
        for p in points:
            assert p["bytes"] == (report_dir / p["stream"]).stat().st_size
        sizes[period] = sum(p["bytes"] for p in points)
    assert sizes[-1] != sizes[2]
    # gvc encode --intra-period: keyframes at 0, 2, 4
    stream = tmp_path / "cli.gvc"
    assert gvc_cli.main(["encode", str(odd_video), str(stream), "--codec", str(ssf_dir), "--frames", "5", "--intra-period", "2"]) == 0
    rows = describe_stream(stream)["chunks"]
    assert [r["first_frame"] for r in rows if "keyframe" in r] == [0, 2, 4]


def test_gvc_decode_of_a_damaged_stream_is_one_line_and_exit_2(ssf_dir: Path, odd_video: Path, tmp_path: Path, capsys) -> None:
    SSFCodec(ssf_dir).encode(odd_video, tmp_path / "x.gvc", 1, max_frames=3)
    data = (tmp_path / "x.gvc").read_bytes()
    (tmp_path / "cut.gvc").write_bytes(data[: len(data) - 20])
    capsys.readouterr()
    assert gvc_cli.main(["decode", str(tmp_path / "cut.gvc"), str(tmp_path / "out"), "--codec", str(ssf_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gvc: error: ") and err.count("\n") == 1
    assert "the 2 frames decoded before it are in" in err  # frame by frame: what came before the damage is kept
