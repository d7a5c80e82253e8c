"""The reference progressive codec in checkpoints/progressive_tiny on the held-out clip: its card's protocol.

96 frames of carphone_pristine.mp4 (176x144), coded once at the top quality into a real file:
the file's bits against the context model's own cross-entropy plus the container (within 0.5%:
the issue's acceptance), the frames against ``rd.json``'s top point, one stream cut with
``gvc truncate`` and decoded with the missing scales predicted and left at zero against
``rd.json``'s truncation points, and the context model's rate against a uniform code and a
per-scale unigram model of the same tokens (``rate.json``). Every figure of the card's tables
is rendered from ``rd.json`` and ``rate.json`` by :func:`card_tables`, so regenerating them and
the card keeps the test green and editing one alone does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs.base import open_codec
from gvc_train.data.sample_videos import HELD_OUT, sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval.codec_rd import markdown_table

from conftest import frames_ms_ssim, numpy_psnr

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "checkpoints" / "progressive_tiny"
FRAMES, WIDTH, HEIGHT = 96, 176, 144
CUT = 4  # scales kept by the cut the test decodes (of 7)
# How closely this machine must reproduce rd.json (as tests/test_reference_codec.py: float
# rounding of another CPU moves a few symbols and pixels).
RATE_REL = 0.005
PSNR_DB, MS_SSIM_ABS = 0.01, 1e-4


def _json(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The top quality's CodingReport, the encoder's frames, and one cut decoded with each fill."""
    codec = open_codec(REFERENCE)
    out = tmp_path_factory.mktemp("progressive_reference")
    recon: list[np.ndarray] = []
    top = codec.num_rate_points - 1
    report = codec.encode(sample_video(HELD_OUT), out / "top.gvc", top, max_frames=FRAMES, on_recon=recon.append)
    codec.truncate(report.path, out / "cut.gvc", scales=CUT)
    cuts = {}
    for fill in ("expectation", "zero"):
        frames: list[np.ndarray] = []
        codec.decode(out / "cut.gvc", frames.append, fill=fill)
        cuts[fill] = np.stack(frames)
    return {"report": report, "recon": np.stack(recon), "cut_bytes": (out / "cut.gvc").stat().st_size, "cuts": cuts, "top": top}


def test_reference_folder_is_small_and_complete() -> None:
    meta = _json("codec.json")
    assert meta["family"] == "progressive" and meta["qualities"] == 7
    assert sum(p.stat().st_size for p in REFERENCE.iterdir()) < 8 * 2**20
    assert all((REFERENCE / name).is_file() for name in ("CARD.md", "rd.json", "rate.json"))


def test_file_bits_are_the_models_cross_entropy_plus_the_container(coded: dict) -> None:
    report = coded["report"]
    assert report.frames == FRAMES and (report.width, report.height) == (WIDTH, HEIGHT)
    container = report.overhead_bytes * 8
    # the acceptance: within 0.5% of the context model's own cross-entropy plus the container
    assert abs(report.file_bytes * 8 - (report.estimate_bits + container)) <= 0.005 * (report.estimate_bits + container)
    # the ANS strings: the coded frequencies' bits plus one flush a group
    assert report.model_bits <= report.payload_bytes * 8 <= report.model_bits + 64 * report.chunks


def test_the_codec_reproduces_rd_json(coded: dict) -> None:
    rd = _json("rd.json")
    assert rd["frames"] == FRAMES
    (top,) = [p for p in rd["points"] if p.get("quality") == coded["top"]]
    report, source = coded["report"], read_frames(sample_video(HELD_OUT), count=FRAMES)
    assert report.file_bytes == pytest.approx(top["bytes"], rel=RATE_REL)
    assert report.model_bits == pytest.approx(top["model_bits"], rel=RATE_REL)
    assert numpy_psnr(coded["recon"], source) == pytest.approx(top["psnr"], abs=PSNR_DB)
    assert frames_ms_ssim(coded["recon"], source) == pytest.approx(top["ms_ssim"], abs=MS_SSIM_ABS)
    points = {(p["scales"], p["fill"]): p for p in rd["truncation"]["points"]}
    for fill, frames in coded["cuts"].items():
        p = points[(CUT, fill)]
        assert coded["cut_bytes"] == pytest.approx(p["bytes"], rel=RATE_REL), fill
        assert numpy_psnr(frames, source) == pytest.approx(p["metrics"]["psnr"], abs=PSNR_DB), fill
        assert frames_ms_ssim(frames, source) == pytest.approx(p["metrics"]["ms_ssim"], abs=MS_SSIM_ABS), fill


def test_the_context_model_beats_a_uniform_code_and_a_unigram_of_the_same_tokens(coded: dict) -> None:
    rate = _json("rate.json")
    assert rate["frames"] == FRAMES and rate["quality"] == coded["top"]
    assert rate["bpp_model"] * FRAMES * WIDTH * HEIGHT == pytest.approx(coded["report"].model_bits, rel=RATE_REL)
    assert rate["model_vs_uniform"] < 0.9 and rate["model_vs_unigram"] < 0.95  # the family's point, measured


def card_tables(rd: dict, rate: dict) -> list[str]:
    """The card's tables, rendered from rd.json and rate.json (the card holds them verbatim)."""
    rows = markdown_table(rd["points"]).splitlines()  # what codec_rd prints
    trunc = rd["truncation"]
    fills = trunc["fills"]
    cut = ["| scales kept | bytes | bpp | " + " | ".join(f"PSNR {f} | MS-SSIM {f}" for f in fills) + " |", "|---" * (3 + 2 * len(fills)) + "|"]
    by_scale: dict[int, dict[str, dict]] = {}
    for p in trunc["points"]:
        by_scale.setdefault(p["scales"], {})[p["fill"]] = p
    for k, per_fill in sorted(by_scale.items()):
        first = per_fill[fills[0]]
        cells = " | ".join(f"{per_fill[f]['metrics']['psnr']:.2f} | {per_fill[f]['metrics']['ms_ssim']:.4f}" for f in fills)
        cut.append(f"| {k} of {trunc['of_scales']} | {first['bytes']:,} | {first['bpp']:.4f} | {cells} |")
    points = [p for p in rd["points"] if "quality" in p]
    acc = ["| quality | file bytes | payload / model bits | file / (cross-entropy + container) | container | encode / decode (frames/s, 1 thread) |", "|---|---|---|---|---|---|"]
    for p in points:
        ratio = p["bytes"] * 8 / (p["estimate_bits"] + p["overhead_bytes"] * 8)
        acc.append(f"| {p['quality']} | {p['bytes']:,} | {p['payload_bits'] / p['model_bits']:.4f} | {ratio:.4f} | "
                   f"{p['overhead_bytes']} B ({100 * p['overhead_bytes'] / p['bytes']:.2f}%) | {p['encode_fps']:.1f} / {p['decode_fps']:.1f} |")  # fmt: skip
    scales = ["| scale | tokens | context model (bpp) | uniform (bpp) | per-scale unigram, oracle (bpp) |", "|---|---|---|---|---|"]
    for r in rate["per_scale"]:
        scales.append(f"| {r['scale']} | {r['tokens']:,} | {r['bpp_model']:.5f} | {r['bpp_uniform']:.5f} | {r['bpp_unigram']:.5f} |")
    total = sum(r["tokens"] for r in rate["per_scale"])
    scales.append(f"| all | {total:,} | {rate['bpp_model']:.5f} | {rate['bpp_uniform']:.5f} | {rate['bpp_unigram']:.5f} |")
    return ["\n".join(t) for t in (rows, cut, acc, scales)]


def test_every_table_of_the_card_is_rendered_from_rd_and_rate_json() -> None:
    card = (REFERENCE / "CARD.md").read_text()
    for table in card_tables(_json("rd.json"), _json("rate.json")):
        assert table in card, f"the card does not hold this table as rd.json/rate.json give it:\n{table.splitlines()[0]}"
    rate = _json("rate.json")
    assert f"{rate['model_vs_uniform']:.3f} of the uniform code's" in card and f"{rate['model_vs_unigram']:.3f} of the unigram's" in card
