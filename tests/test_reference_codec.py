"""The reference codec in checkpoints/latent_tiny on the held-out clip: the card's protocol.

96 frames of carphone_pristine.mp4 (176x144) at every quality, coded into real files:
file bits against the bits the model's likelihoods predict, rate against quality, and a
`gvc encode` / `gvc decode` round trip that finds the codec by its fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs import cli
from gvc_train.codecs.latent import LatentCodec
from gvc_train.data.sample_videos import HELD_OUT, sample_video
from gvc_train.data.video_io import read_frames

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "checkpoints" / "latent_tiny"
FRAMES, WIDTH, HEIGHT = 96, 176, 144


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[object, np.ndarray]]:
    """Every quality's CodingReport and the encoder's reconstruction."""
    codec = LatentCodec(REFERENCE)
    out = tmp_path_factory.mktemp("reference")
    result = {}
    for q in range(codec.num_qualities):
        recon: list[np.ndarray] = []
        report = codec.encode(sample_video(HELD_OUT), out / f"q{q}.gvc", q, max_frames=FRAMES, on_recon=recon.append)
        result[q] = (report, np.stack(recon))
    return result


def test_reference_codec_folder_is_small_and_complete() -> None:
    meta = json.loads((REFERENCE / "codec.json").read_text())
    assert meta["family"] == "latent" and meta["qualities"] >= 2
    assert sum(p.stat().st_size for p in REFERENCE.iterdir()) < 8 * 2**20
    assert (REFERENCE / "CARD.md").is_file() and (REFERENCE / "rd.json").is_file()


def test_file_bits_match_the_model_bits_plus_the_reported_overhead(coded: dict) -> None:
    for q, (report, _) in coded.items():
        assert report.file_bytes == Path(report.path).stat().st_size
        # the rANS strings cost the model's cross-entropy (as coded: Gaussians at the scale
        # table's entries) within 1%: CDF precision, tails, stream flush
        assert 0.99 * report.model_bits <= report.payload_bytes * 8 <= 1.01 * report.model_bits, q
        # the container (header, CONFIG, per-chunk framing, END) is all the rest, and small
        assert report.file_bytes * 8 <= 1.01 * report.model_bits + report.overhead_bytes * 8
        assert report.overhead_bytes <= 27 + 16 + 6 * report.chunks + 1, q
        assert report.overhead_bytes / report.file_bytes < 0.02, q


def test_rate_grows_with_the_quality_index(coded: dict) -> None:
    sizes = [coded[q][0].file_bytes for q in sorted(coded)]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes


def test_rates_agree_with_the_card(coded: dict) -> None:
    card = json.loads((REFERENCE / "rd.json").read_text())
    card_bytes = {p["quality"]: p["bytes"] for p in card["points"] if "quality" in p}
    for q, (report, _) in coded.items():
        # the same frames through the same deterministic codec; another CPU's float rounding
        # may move a symbol or two, not the rate
        assert report.file_bytes == pytest.approx(card_bytes[q], rel=0.01), q


def test_gvc_encode_decode_round_trip_keeps_size_count_and_reconstruction(
    coded: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)  # `gvc decode` finds the codec by fingerprint under checkpoints/
    monkeypatch.delenv("GVC_CODEC_PATH", raising=False)
    stream, out = tmp_path / "carphone.gvc", tmp_path / "frames"
    video = str(sample_video(HELD_OUT))
    assert cli.main(["encode", video, str(stream), "--codec", str(REFERENCE), "--quality", "1", "--frames", str(FRAMES)]) == 0
    assert cli.main(["decode", str(stream), str(out)]) == 0
    report, recon = coded[1]
    assert stream.read_bytes() == Path(report.path).read_bytes()
    decoded = read_frames(out)
    assert decoded.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.array_equal(decoded, recon)
    printed = capsys.readouterr().out
    bpp = stream.stat().st_size * 8 / (FRAMES * WIDTH * HEIGHT)
    assert f"{bpp:.5f} bpp" in printed
