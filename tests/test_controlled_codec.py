"""The controlled-generation codec (codecs/controlled.py): the tiny random folder and 11-frame
40x32 synthetic clip of tests/controlled_codec_fixtures.py; mechanics, not quality.

Keyframes every 4 frames (fixed clips of 5) give keyframes 0, 4, 8, 10: two whole clips and a
3-frame one padded to 5; the longest clip is 1 + 4 (3 - 1) = 9 frames.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs.base import describe_stream, open_codec
from gvc_train.codecs.controlled_stream import bytes_by_part
from gvc_train.coding.container import BitstreamError, ChunkType, chunk_bytes, iter_chunks, read_header
from gvc_train.coding.controls.track import ControlWriter

from controlled_codec_fixtures import FRAMES, HEIGHT, SETTINGS, TRANSFORMER, WIDTH, write_codec_folder, write_moving_square_clip


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_codec_folder(tmp_path_factory.mktemp("controlled_codec"), "controlled")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_moving_square_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def codec(codec_dir: Path):
    return open_codec(codec_dir)


@pytest.fixture(scope="module")
def coded(codec, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The clip coded with the settings' controls; the encoder's reconstruction."""
    stream = tmp_path_factory.mktemp("coded") / "clip.gvc"
    recon: list[np.ndarray] = []
    codec.encode(clip_dir, stream, 1, on_recon=recon.append)
    return stream, recon


def decoded(codec, stream: Path) -> np.ndarray:
    frames: list[np.ndarray] = []
    codec.decode(stream, frames.append)
    return np.stack(frames)


def test_decode_gives_every_frame_the_same_twice_and_as_the_encoder_said(codec, coded) -> None:
    stream, recon = coded
    first, second = decoded(codec, stream), decoded(codec, stream)
    assert first.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.array_equal(first, second)
    assert np.array_equal(first, np.stack(recon))


def test_info_lists_keyframes_and_controls_and_its_parts_sum_to_the_file(coded) -> None:
    stream, _ = coded
    info = describe_stream(stream)
    rows = info["chunks"]
    assert sum(row["bytes"] for row in rows) == stream.stat().st_size == info["bytes"]
    assert [row["keyframe"] for row in rows if row["type"] == "FRAMES"] == [0, 4, 8, 10]
    controls = [(row["control"], row["segment"]) for row in rows if row["type"] == "CONTROLS"]
    assert controls == [(name, s) for s in range(3) for name in ("luma", "flow")]
    parts = bytes_by_part(rows)
    assert set(parts) == {"header", "config", "control_table", "keyframes", "control:luma", "control:flow", "end"}
    assert sum(parts.values()) == stream.stat().st_size
    config = next(row for row in rows if row["type"] == "CONFIG")
    assert (config["num_steps"], config["guidance_scale"], config["seed"], config["clip_latent_frames"]) == (2, 1.5, 7, 3)


def test_a_subset_of_controls_is_sent_and_decodes(codec, clip_dir: Path, tmp_path: Path) -> None:
    stream = tmp_path / "luma.gvc"
    recon: list[np.ndarray] = []
    codec.encode(clip_dir, stream, 0, controls="luma", on_recon=recon.append)
    sent = {row.get("control") for row in describe_stream(stream)["chunks"] if row["type"] == "CONTROLS"}
    assert sent == {"luma"}
    frames = decoded(codec, stream)  # flow absent from the stream: passed to the model as dropped
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and np.array_equal(frames, np.stack(recon))
    none = tmp_path / "none.gvc"
    codec.encode(clip_dir, none, 0, controls=[], max_frames=5)
    assert not any(row["type"] == "CONTROL_TABLE" for row in describe_stream(none)["chunks"])
    assert decoded(codec, none).shape == (5, HEIGHT, WIDTH, 3)


def test_a_control_the_model_does_not_know_is_refused_in_one_line(codec, clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not take control\(s\) \['edges'\]") as e:
        codec.encode(clip_dir, tmp_path / "x.gvc", 0, controls="luma,edges")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "x.gvc").exists()


def test_a_gap_longer_than_the_longest_clip_is_split(codec, clip_dir: Path, tmp_path: Path) -> None:
    stream = tmp_path / "long.gvc"
    codec.encode(clip_dir, stream, 0, keyframes=json.dumps({"name": "fixed", "clip_frames": 20}))
    assert [row["keyframe"] for row in describe_stream(stream)["chunks"] if row["type"] == "FRAMES"] == [0, 8, 10]
    assert decoded(codec, stream).shape[0] == FRAMES


def _rewrite(stream: Path, out: Path, replace) -> Path:
    """``stream`` with each chunk's payload passed through ``replace(chunk) -> payload`` (CRCs redone)."""
    data = stream.read_bytes()
    f = io.BytesIO(data)
    read_header(f)
    parts = [data[: f.tell()]]
    for chunk in iter_chunks(f, offset=f.tell()):
        parts.append(chunk_bytes(chunk.type, replace(chunk)))
    out.write_bytes(b"".join(parts) + bytes([ChunkType.END]))
    return out


def test_a_stream_naming_a_modality_the_model_does_not_know_is_one_error(codec, coded, tmp_path: Path) -> None:
    stream, _ = coded
    table = ControlWriter.build({"luma": {}, "edges": {}}).payload
    forged = _rewrite(stream, tmp_path / "edges.gvc", lambda c: table if c.type == ChunkType.CONTROL_TABLE else c.payload)
    with pytest.raises(BitstreamError, match="'edges'.*does not know") as e:
        codec.decode(forged, None)
    assert "\n" not in str(e.value)


def test_a_damaged_control_chunk_is_one_error(codec, coded, tmp_path: Path) -> None:
    stream, _ = coded
    data = bytearray(stream.read_bytes())
    row = next(r for r in describe_stream(stream)["chunks"] if r["type"] == "CONTROLS")
    data[row["offset"] + row["bytes"] - 6] ^= 0x10  # inside the payload: the CRC catches it
    (tmp_path / "flipped.gvc").write_bytes(bytes(data))
    with pytest.raises(BitstreamError, match="CRC") as e:
        codec.decode(tmp_path / "flipped.gvc", None)
    assert "\n" not in str(e.value)

    def garble(chunk):  # a valid CRC over a coder payload that is not one
        if chunk.type != ChunkType.CONTROLS:
            return chunk.payload
        return chunk.payload[:2] + bytes(b ^ 0x5A for b in chunk.payload[2:])

    with pytest.raises(BitstreamError, match="CONTROLS chunk") as e:
        codec.decode(_rewrite(stream, tmp_path / "garbled.gvc", garble), None)
    assert "\n" not in str(e.value)


def test_gvc_encode_controls_flag_and_info_split(codec_dir: Path, clip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gvc_train.codecs.cli import main

    stream = tmp_path / "cli.gvc"
    assert main(["encode", str(clip_dir), str(stream), "--codec", str(codec_dir), "--frames", "5", "--controls", "luma"]) == 0
    assert main(["info", str(stream)]) == 0
    out = capsys.readouterr().out
    assert "control luma" in out and "control flow" not in out and "keyframes" in out
    assert main(["encode", str(clip_dir), str(tmp_path / "bad.gvc"), "--codec", str(codec_dir), "--controls", "luma,pose"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvc: error:") and "'pose'" in err and "\n" not in err


def test_the_text_variant_sends_a_caption_through_the_text_pathway(clip_dir: Path, tmp_path: Path) -> None:
    from component_cases import _text_encoder

    folder = write_codec_folder(
        tmp_path / "text_codec", "controlled_text", seed=1, transformer={**TRANSFORMER, "text_dim": 16},
        settings={**SETTINGS, "controls": ["luma", "caption"], "guidance_scale": 1.0}, extra={"text_encoder": _text_encoder()},
    )  # fmt: skip
    codec = open_codec(folder)
    with_caption, without = tmp_path / "caption.gvc", tmp_path / "luma.gvc"
    recon: list[np.ndarray] = []
    codec.encode(clip_dir, with_caption, 0, max_frames=5, caption="a man in car", on_recon=recon.append)
    codec.encode(clip_dir, without, 0, max_frames=5, controls="luma")
    assert {r.get("control") for r in describe_stream(with_caption)["chunks"] if r["type"] == "CONTROLS"} == {"luma", "caption"}
    frames = decoded(codec, with_caption)
    assert np.array_equal(frames, np.stack(recon))
    assert not np.array_equal(frames[1:-1], decoded(codec, without)[1:-1])  # the caption conditions the generated frames
    with pytest.raises(ValueError, match="caption"):  # no caption given and no captioner: one line
        codec.encode(clip_dir, tmp_path / "x.gvc", 0, max_frames=5)


def test_a_damaged_keyframe_or_a_cut_stream_is_one_error(codec, coded, tmp_path: Path) -> None:
    stream, _ = coded

    def garble(chunk):  # valid CRC, keyframe index kept, model check and rANS bytes changed
        return chunk.payload[:1] + bytes(b ^ 0x33 for b in chunk.payload[1:]) if chunk.type == ChunkType.FRAMES else chunk.payload

    for bad in (_rewrite(stream, tmp_path / "key.gvc", garble), tmp_path / "cut.gvc"):
        if bad.name == "cut.gvc":
            bad.write_bytes(stream.read_bytes()[: stream.stat().st_size // 2])
        with pytest.raises(BitstreamError) as e:
            codec.decode(bad, None)
        assert "\n" not in str(e.value)
