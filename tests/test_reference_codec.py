"""The reference codec in checkpoints/latent_tiny on the held-out clip: the card's protocol.

96 frames of carphone_pristine.mp4 (176x144) at every quality, coded into real files:
file bits against the bits the model's likelihoods predict, rate against quality, and a
`gvc encode` / `gvc decode` round trip that finds the codec by its fingerprint. The codec must
reproduce every learned-codec figure of ``rd.json`` (rate, model bits, PSNR, MS-SSIM, the
tokenizer ceiling), and every figure of ``CARD.md``'s tables (and the prose figures drawn from
them) must be ``rd.json``'s: both comparisons hold whatever the figures are, so regenerating
``rd.json`` and the card keeps them green and editing one alone does not.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs.latent import MODEL_CHECK_BYTES, LatentCodec
from gvc_train.data.sample_videos import HELD_OUT, sample_video
from gvc_train.data.video_io import read_frames

from conftest import frames_ms_ssim, numpy_psnr

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "checkpoints" / "latent_tiny"
FRAMES, WIDTH, HEIGHT = 96, 176, 144
# How closely this machine must reproduce rd.json. Rate: the same quality-0 encode came out
# 7,256, 7,268 and 7,272 bytes on three CPUs (0.22%: float rounding in the tokenizer's encoder
# moves a few symbols). Distortion: a few moved symbols or pixels one level off change the mean
# PSNR by far less than the card's 0.01 dB (the tokenizer ceiling, recomputed here: 1e-6 dB off).
RATE_REL = 0.005
PSNR_DB, MS_SSIM_ABS = 0.01, 1e-4


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
    # a base-16 tokenizer (2.68 M float32 parameters, 10.7 MB) and a 0.26 M-parameter latent codec
    assert sum(p.stat().st_size for p in REFERENCE.iterdir()) < 16 * 2**20
    assert (REFERENCE / "CARD.md").is_file() and (REFERENCE / "rd.json").is_file()


def test_file_bits_match_the_model_bits_plus_the_reported_overhead(coded: dict) -> None:
    for q, (report, _) in coded.items():
        assert report.file_bytes == Path(report.path).stat().st_size
        # the rANS strings cost the model's cross-entropy (as coded: Gaussians at the scale
        # table's entries) within 1%: CDF precision, tails, stream flush
        assert 0.99 * report.model_bits <= report.payload_bytes * 8 <= 1.01 * report.model_bits, q
        # the container (header, CONFIG, per-chunk framing and model check, END) is all the rest, and small
        assert report.file_bytes * 8 <= 1.01 * report.model_bits + report.overhead_bytes * 8
        assert report.overhead_bytes <= 27 + 16 + (7 + MODEL_CHECK_BYTES) * report.chunks + 1, q
        assert report.overhead_bytes / report.file_bytes < 0.02, q


def test_rate_grows_with_the_quality_index(coded: dict) -> None:
    sizes = [coded[q][0].file_bytes for q in sorted(coded)]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), sizes


def _rd() -> dict:
    return json.loads((REFERENCE / "rd.json").read_text())


def test_the_codec_reproduces_rd_json(coded: dict) -> None:
    """Every learned-codec point of rd.json, recomputed: rate, bits, PSNR and MS-SSIM of what it decodes to."""
    points = {p["quality"]: p for p in _rd()["points"] if "quality" in p}
    assert sorted(points) == sorted(coded), "rd.json has a point for every quality and no other"
    source = read_frames(sample_video(HELD_OUT), count=FRAMES)
    for q, (report, recon) in coded.items():
        p = points[q]
        assert report.file_bytes == pytest.approx(p["bytes"], rel=RATE_REL), q
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (FRAMES * WIDTH * HEIGHT), rel=1e-12), q
        assert report.payload_bytes * 8 == pytest.approx(p["payload_bits"], rel=RATE_REL), q
        assert report.model_bits == pytest.approx(p["model_bits"], rel=RATE_REL), q
        assert report.estimate_bits == pytest.approx(p["estimate_bits"], rel=RATE_REL), q
        assert report.overhead_bytes == p["overhead_bytes"], q
        assert numpy_psnr(recon, source) == pytest.approx(p["psnr"], abs=PSNR_DB), q
        assert frames_ms_ssim(recon, source) == pytest.approx(p["ms_ssim"], abs=MS_SSIM_ABS), q


def test_the_tokenizer_ceiling_reproduces_rd_json() -> None:
    from gvc_train.eval.codec_rd import tokenizer_point

    (p,) = [p for p in _rd()["points"] if p["codec"] == f"{REFERENCE.name} tokenizer only"]
    ceiling = tokenizer_point(REFERENCE, sample_video(HELD_OUT), FRAMES)
    assert ceiling["psnr"] == pytest.approx(p["psnr"], abs=PSNR_DB)
    assert ceiling["ms_ssim"] == pytest.approx(p["ms_ssim"], abs=MS_SSIM_ABS)


def _table(card: str, header: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with ``header``."""
    lines = card.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(header)]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _same(cell: str, value: float, where: str, min_decimals: int) -> None:
    """``cell`` is ``value`` as printed: rounded to the cell's own decimals (at least ``min_decimals``)."""
    text = cell.replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    assert decimals >= min_decimals, f"{where}: {cell!r} has fewer than {min_decimals} decimals"
    assert float(text) == round(value, decimals), f"{where}: the card says {cell}, rd.json {value}"


def test_every_figure_of_the_card_is_rd_json() -> None:
    card, rd = (REFERENCE / "CARD.md").read_text(), _rd()
    # the RD table: one row per rd.json point, in rd.json's order
    rows = _table(card, "| codec | setting | bpp | PSNR (dB) | MS-SSIM |")
    assert [r[0] for r in rows] == [p["codec"] for p in rd["points"]], "the card's RD rows are not rd.json's points"
    for (codec, setting, bpp, psnr, ssim), p in zip(rows, rd["points"]):
        where = f"RD table, {codec} {setting}"
        if "quality" in p:
            assert setting == f"quality {p['quality']}", where
        elif "crf" in p:
            assert setting.startswith(f"crf {p['crf']}") and ("no B-frames" in setting) == p["low_delay"], where
        if p["bpp"] is None:
            assert bpp == "-", where
        else:
            _same(bpp, p["bpp"], f"{where} bpp", 4)
        _same(psnr, p["psnr"], f"{where} PSNR", 2)
        _same(ssim, p["ms_ssim"], f"{where} MS-SSIM", 4)
    assert f"({rd['frames']} frames, {WIDTH}x{HEIGHT}" in card and rd["frames"] == FRAMES

    # the rate accounting table: one row per quality
    points = [p for p in rd["points"] if "quality" in p]
    rows = _table(card, "| quality | file bytes |")
    assert [int(r[0]) for r in rows] == [p["quality"] for p in points]
    for (_, size, model, estimate, overhead, speed), p in zip(rows, points):
        where = f"rate table, quality {p['quality']}"
        assert size == f"{p['bytes']:,}", f"{where}: the card says {size} bytes, rd.json {p['bytes']}"
        _same(model, p["payload_bits"] / p["model_bits"], f"{where} payload / model bits", 4)
        _same(estimate, p["payload_bits"] / p["estimate_bits"], f"{where} payload / estimate", 4)
        m = re.fullmatch(r"(\d+) B \(([\d.]+)%\)", overhead)
        assert m and int(m[1]) == p["overhead_bytes"], f"{where}: overhead {overhead}, rd.json {p['overhead_bytes']} B"
        _same(m[2], 100 * p["overhead_bytes"] / p["bytes"], f"{where} overhead share", 2)
        enc, dec = speed.split(" / ")
        _same(enc, p["encode_fps"], f"{where} encode fps", 1)
        _same(dec, p["decode_fps"], f"{where} decode fps", 1)

    # the prose figures drawn from the tables: "rounded" as printed; "up to" rounded up, "from" down
    (ceiling,) = [p for p in rd["points"] if p["bpp"] is None]
    q0, q3 = points[0], points[-1]
    under_model = [100 * (1 - p["payload_bits"] / p["model_bits"]) for p in points]
    under_estimate = [100 * (1 - p["payload_bits"] / p["estimate_bits"]) for p in points]
    figures = {
        r"At ([\d.]+)-([\d.]+) bpp": [("rounded", q0["bpp"]), ("rounded", q3["bpp"])],
        r"within ([\d.]+) dB of its tokenizer": [("up to", max(abs(p["psnr"] - ceiling["psnr"]) for p in points))],
        r"\(([\d.]+) dB with unquantized latents\)": [("rounded", ceiling["psnr"])],
        r"rate up (\d+)% from quality 0 to": [("rounded", 100 * (q3["bytes"] / q0["bytes"] - 1))],
        r"MS-SSIM up ([\d.]+)\)": [("rounded", q3["ms_ssim"] - q0["ms_ssim"])],
        r"strings are within ([\d.]+)% of it": [("up to", max(abs(u) for u in under_model))],
        r"writes between ([\d.]+)% more and ([\d.]+)% less than that": [("up to", -min(under_estimate)), ("up to", max(under_estimate))],
        r"1-byte END: (\d+) bytes": [("rounded", p["overhead_bytes"]) for p in points[:1]],
    }
    assert len({p["overhead_bytes"] for p in points}) == 1, "the card gives one overhead for every quality"
    prose = " ".join(card.split())
    for pattern, expected in figures.items():
        m = re.search(pattern, prose)
        assert m, f"the card no longer says {pattern!r}: update it or this test"
        for text, (kind, value) in zip(m.groups(), expected):
            d = len(text.split(".")[1]) if "." in text else 0
            shown = {"rounded": round(value, d), "up to": math.ceil(value * 10**d - 1e-9) / 10**d,
                     "from": math.floor(value * 10**d + 1e-9) / 10**d}[kind]  # fmt: skip
            assert float(text) == shown, f"the card says {m[0]!r}: {kind} {value:.6g} is {shown} at its precision"
