"""The zero-shot codec on the project's tiny controlled transformer (checkpoints/cgvc_tiny): every
mode codes to a file and back, the decoder's frames are the encoder's at 1 and 2 threads, and
bad streams end in one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gvc_train.codecs.base import describe_stream, open_codec
from gvc_train.codecs.zeroshot_folder import main as zeroshot_main
from gvc_train.codecs.zeroshot_folder import make_zeroshot_codec
from gvc_train.codecs.zeroshot_stream import ZeroShotConfig, float_bits
from gvc_train.coding.container import BitstreamError, ChunkType, chunk_bytes, end_marker, header_bytes, read_stream
from gvc_train.data.sample_videos import sample_video

SETTINGS = {"codebook_size": 64, "atoms": [1, 3], "num_steps": 4, "ode_tail": 1, "gop_frames": 5}
FRAMES = 9  # two GOPs of 5 frames sharing frame 4


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zeroshot")
    make_zeroshot_codec(out, model="checkpoints/cgvc_tiny", settings=SETTINGS)
    return out


def _threads(n: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    return previous


@pytest.mark.parametrize("mode", ["t2v", "i2v", "flf2v"])
def test_every_mode_decodes_to_the_encoders_frames(codec_dir: Path, tmp_path: Path, mode: str) -> None:
    codec = open_codec(codec_dir)
    stream = tmp_path / "s.gvc"
    recon: list[np.ndarray] = []
    previous = _threads(2)
    try:
        report = codec.encode(sample_video("carphone_pristine.mp4"), stream, 1, max_frames=FRAMES, on_recon=recon.append, mode=mode)
        decoded_2: list[np.ndarray] = []
        codec.decode(stream, decoded_2.append)
        torch.set_num_threads(1)
        decoded_1: list[np.ndarray] = []
        codec.decode(stream, decoded_1.append)
    finally:
        torch.set_num_threads(previous)
    assert report.frames == len(recon) == len(decoded_1) == len(decoded_2) == FRAMES
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(recon, decoded_1, decoded_2))
    assert recon[0].shape == (144, 176, 3)
    info = describe_stream(stream)
    assert sum(row["bytes"] for row in info["chunks"]) == stream.stat().st_size == report.file_bytes
    keyframes = [row["keyframe"] for row in info["chunks"] if row["type"] == "FRAMES"]
    assert keyframes == {"t2v": [], "i2v": [0], "flf2v": [0, 4, 8]}[mode]
    assert [row["gop"] for row in info["chunks"] if row["type"] == "ATOMS"] == [0, 1]
    # The atoms: steps x coded latent frames groups (frame 0 is given except in t2v's first GOP).
    stats = report.stats
    coded_latents = {"t2v": 2 + 1, "i2v": 1 + 1, "flf2v": 1 + 1}[mode]
    assert stats["groups"] == 3 * coded_latents
    assert stats["atom_bits_information"] <= stats["atom_bits_packed"]


def test_more_atoms_cost_more_bits_and_curves_are_modes(codec_dir: Path, tmp_path: Path) -> None:
    codec = open_codec(codec_dir)
    sizes = [codec.encode(sample_video("carphone_pristine.mp4"), tmp_path / f"q{q}.gvc", q, max_frames=5, mode="i2v").file_bytes for q in (0, 1)]
    assert sizes[0] < sizes[1]
    assert [label for label, _ in codec.curves()] == ["t2v", "i2v", "flf2v"]
    assert codec.curves(["flf2v"]) == [("flf2v", {"mode": "flf2v"})]
    with pytest.raises(ValueError, match="codes"):
        codec.curves(["v2v"])
    with pytest.raises(ValueError, match="mode"):
        codec.encode(sample_video("carphone_pristine.mp4"), tmp_path / "x.gvc", 0, mode="v2v")


def _rewritten(path: Path, **fields: int) -> bytes:
    header, chunks = read_stream(path.read_bytes())
    out = header_bytes(header)
    for chunk in chunks:
        payload = chunk.payload
        if chunk.type == ChunkType.CONFIG:
            config = ZeroShotConfig.parse(payload)
            payload = ZeroShotConfig(**{**config.__dict__, **fields}).payload()
        out += chunk_bytes(chunk.type, payload)
    return out + end_marker()


def test_bad_streams_end_in_one_clear_error(codec_dir: Path, tmp_path: Path) -> None:
    codec = open_codec(codec_dir)
    stream = tmp_path / "s.gvc"
    codec.encode(sample_video("carphone_pristine.mp4"), stream, 0, max_frames=5, mode="i2v")
    cases = {
        "seed": (_rewritten(stream, seed=7), "trajectory is not the encoder's"),
        "settings": (_rewritten(stream, shift_bits=float_bits(2.5)), "trajectory is not the encoder's"),
        "steps": (_rewritten(stream, num_steps=5), "bytes of atoms"),
        "codebook": (_rewritten(stream, codebook_size=65), "trajectory is not the encoder's"),
        "atoms": (_rewritten(stream, tail_atoms=3), "bytes of atoms"),  # i2v: both coded latent frames are the tail
        "truncated": (stream.read_bytes()[:-9], None),
        "flipped": (stream.read_bytes()[:-5] + bytes([stream.read_bytes()[-5] ^ 1]) + stream.read_bytes()[-4:], None),
    }
    for name, (data, message) in cases.items():
        bad = tmp_path / f"{name}.gvc"
        bad.write_bytes(data)
        with pytest.raises(BitstreamError, match=message) as caught:
            codec.decode(bad, None)
        assert "\n" not in str(caught.value), name


def test_gvc_zeroshot_refuses_a_folder_that_is_not_a_controlled_codec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert zeroshot_main(["--model", "checkpoints/latent_tiny", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "controlled" in err
    assert not (tmp_path / "z").exists()


def test_a_text_model_codes_its_caption(codec_dir: Path, tmp_path: Path) -> None:
    """checkpoints/cvg_tiny has a text encoder: its zero-shot folder is the text family, t2v sends the caption."""
    folder = tmp_path / "text"
    make_zeroshot_codec(folder, model="checkpoints/cvg_tiny", settings={**SETTINGS, "mode": "t2v"})
    codec = open_codec(folder)
    assert codec.family == "zeroshot_text" and codec.generator.takes_text
    stream = tmp_path / "t.gvc"
    recon: list[np.ndarray] = []
    codec.encode(sample_video("carphone_pristine.mp4"), stream, 0, max_frames=5, on_recon=recon.append, caption="a man talks on a phone in a car")
    decoded: list[np.ndarray] = []
    codec.decode(stream, decoded.append)
    assert len(decoded) == 5 and all(np.array_equal(a, b) for a, b in zip(recon, decoded))
    assert [r["caption"] for r in describe_stream(stream)["chunks"] if r["type"] == "TEXT"] == ["a man talks on a phone in a car"]
    # Another caption steers another trajectory: the same atoms do not decode under it.
    other = tmp_path / "o.gvc"
    codec.encode(sample_video("carphone_pristine.mp4"), other, 0, max_frames=5, caption="a red bus in the rain")
    assert other.read_bytes() != stream.read_bytes()
    with pytest.raises(ValueError, match="takes no caption"):
        open_codec(codec_dir).encode(sample_video("carphone_pristine.mp4"), tmp_path / "x.gvc", 0, max_frames=5, caption="text")


def test_gvc_cli_encodes_with_a_mode_and_seed(codec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gvc_train.gvc_cli import main as gvc

    stream = tmp_path / "c.gvc"
    args = [str(sample_video("carphone_pristine.mp4")), str(stream), "--codec", str(codec_dir), "--frames", "5", "--quality", "0"]
    assert gvc(["encode", *args, "--mode", "flf2v", "--seed", "3"]) == 0
    assert gvc(["info", str(stream)]) == 0
    out = capsys.readouterr().out
    assert "ATOMS" in out and "atoms " in out and "keyframes " in out
    assert gvc(["info", "--json", str(stream)]) == 0
    config = next(row for row in json.loads(capsys.readouterr().out)["chunks"] if row["type"] == "CONFIG")
    assert (config["mode"], config["seed"], config["atoms"]) == ("flf2v", 3, 1)
    assert gvc(["decode", str(stream), str(tmp_path / "frames"), "--codec", str(codec_dir)]) == 0
    assert len(list((tmp_path / "frames").glob("*.png"))) == 5
    assert gvc(["encode", *args, "--seed", "-1", "--overwrite"]) == 2
    assert "seed" in capsys.readouterr().err


def test_gvc_eval_draws_a_curve_per_mode(codec_dir: Path, tmp_path: Path) -> None:
    from gvc_train.gvc_cli import main as gvc

    out = tmp_path / "report"
    argv = ["eval", "--codec", str(codec_dir), "--anchors", "", "--video", str(sample_video("carphone_pristine.mp4")), "--frames", "5"]
    assert gvc([*argv, "--modes", "i2v,flf2v", "--no-progress", "--out", str(out)]) == 0
    points = json.loads((out / "report.json").read_text())["points"]
    name = codec_dir.name
    assert [(p["codec"], p["quality"]) for p in points] == [(f"{name}:i2v", 0), (f"{name}:i2v", 1), (f"{name}:flf2v", 0), (f"{name}:flf2v", 1)]
    assert all(p["mode"] in ("i2v", "flf2v") and p["atom_bits_packed"] >= p["atom_bits_information"] for p in points)
    assert len({p["stream"] for p in points}) == 4 and all((out / p["stream"]).is_file() for p in points)
    assert f"{name}:flf2v" in (out / "summary.md").read_text()
