"""The SSF peer in checkpoints/ssf_tiny on the held-out clip: its card's protocol and its budget.

96 frames of carphone_pristine.mp4 (176x144) coded into real files at the lowest and the top
quality with the first frame the only keyframe (``rd.json``'s intra period, the anchors'): the
files against ``rd.json``'s points (rate, PSNR, MS-SSIM), the top stream decoded back to the
encoder's own reconstruction, and the card's tables rendered from ``rd.json`` by
:func:`card_tables` (regenerating both keeps the test green, editing one alone does not). The
equal-compute claim is checked from the artifacts: the run's CPU budget (its recipe, recorded in
``codec.json``) is the reference latent codec's tokenizer plus codec CPU seconds (their
components' provenance), and the run spent it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs.base import open_codec
from gvc_train.data.sample_videos import HELD_OUT, sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval.codec_rd import markdown_table

from conftest import frames_ms_ssim, numpy_psnr

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "checkpoints" / "ssf_tiny"
LATENT_REFERENCE = REPO / "checkpoints" / "latent_tiny"
FRAMES, WIDTH, HEIGHT = 96, 176, 144
# How closely this machine must reproduce rd.json. SSF's scale path is floating point and its
# inter frames predict from the decoder's own previous frame, so another CPU's rounding moves a
# few symbols and can drift over the 95 inter frames: a looser bound than the latent codec's
# fixed-point decoder needs (tests/test_reference_codec.py).
RATE_REL = 0.01
PSNR_DB, MS_SSIM_ABS = 0.02, 2e-4


def _json(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The lowest and the top quality: each CodingReport and reconstruction; the top one decoded."""
    codec = open_codec(REFERENCE)
    out = tmp_path_factory.mktemp("ssf_reference")
    result: dict = {"qualities": {}}
    for q in (0, codec.num_rate_points - 1):
        recon: list[np.ndarray] = []
        report = codec.encode(sample_video(HELD_OUT), out / f"q{q}.gvc", q, max_frames=FRAMES, on_recon=recon.append, intra_period=-1)
        result["qualities"][q] = (report, np.stack(recon))
    top = max(result["qualities"])
    decoded: list[np.ndarray] = []
    open_codec(REFERENCE).decode(result["qualities"][top][0].path, decoded.append)
    result["decoded_top"] = np.stack(decoded)
    return result


def test_reference_folder_is_complete() -> None:
    meta = _json("codec.json")
    assert meta["family"] == "ssf" and meta["qualities"] == 4
    # 4.0 M float32 parameters (16 MB) and the entropy models' tables
    assert sum(p.stat().st_size for p in REFERENCE.iterdir()) < 20 * 2**20
    assert (REFERENCE / "CARD.md").is_file() and (REFERENCE / "rd.json").is_file()


def test_the_codec_reproduces_rd_json(coded: dict) -> None:
    rd = _json("rd.json")
    assert rd["frames"] == FRAMES and rd["intra_period"] == -1
    points = {p["quality"]: p for p in rd["points"] if "quality" in p}
    assert sorted(points) == list(range(4)), "rd.json has a point for every quality"
    source = read_frames(sample_video(HELD_OUT), count=FRAMES)
    for q, (report, recon) in coded["qualities"].items():
        p = points[q]
        assert report.frames == FRAMES and (report.width, report.height) == (WIDTH, HEIGHT)
        assert report.file_bytes == pytest.approx(p["bytes"], rel=RATE_REL), q
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (FRAMES * WIDTH * HEIGHT), rel=1e-12), q
        assert numpy_psnr(recon, source) == pytest.approx(p["psnr"], abs=PSNR_DB), q
        assert frames_ms_ssim(recon, source) == pytest.approx(p["ms_ssim"], abs=MS_SSIM_ABS), q
    sizes = [points[q]["bytes"] for q in sorted(points)]
    assert all(a < b for a, b in zip(sizes, sizes[1:])), f"rate grows with the quality index: {sizes}"


def test_the_decoder_gives_the_encoders_reconstruction(coded: dict) -> None:
    top = max(coded["qualities"])
    assert np.array_equal(coded["decoded_top"], coded["qualities"][top][1])


def card_tables(rd: dict) -> list[str]:
    """The card's tables, rendered from rd.json (the card holds them verbatim)."""
    rows = markdown_table(rd["points"])  # what codec_rd prints
    acc = ["| quality | file bytes | rANS strings | container | encode / decode (frames/s, 1 thread) |", "|---|---|---|---|---|"]
    for p in (p for p in rd["points"] if "quality" in p):
        acc.append(f"| {p['quality']} | {p['bytes']:,} | {p['payload_bits'] // 8:,} B | {p['overhead_bytes']} B "
                   f"({100 * p['overhead_bytes'] / p['bytes']:.2f}%) | {p['encode_fps']:.1f} / {p['decode_fps']:.1f} |")  # fmt: skip
    return [rows, "\n".join(acc)]


def test_every_table_of_the_card_is_rendered_from_rd_json() -> None:
    card = (REFERENCE / "CARD.md").read_text()
    for table in card_tables(_json("rd.json")):
        assert table in card, f"the card does not hold this table as rd.json gives it:\n{table.splitlines()[0]}"


def _provenance(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())["provenance"]


def test_the_run_spent_the_reference_codecs_training_cpu_time() -> None:
    """Equal compute, from the artifacts: the budget is latent_tiny's tokenizer plus latent codec
    (each component's own training provenance: the export keeps a frozen part's)."""
    budget = _provenance(LATENT_REFERENCE, "tokenizer")["cpu_seconds"] + _provenance(LATENT_REFERENCE, "latent_codec")["cpu_seconds"]
    provenance = _provenance(REFERENCE, "codec")
    (limit,) = [float(v) for v in re.findall(r"max_cpu_seconds: ([\d.]+)", provenance["recipe"])]
    assert abs(limit - budget) <= 1, f"the SSF run's budget {limit} is not latent_tiny's {budget} CPU s"
    # CpuBudget stops at the first step past the budget (a step is ~1.3 CPU s)
    assert budget <= provenance["cpu_seconds"] <= budget + 30, provenance["cpu_seconds"]
    assert f"{provenance['cpu_seconds']:,.0f} CPU s" in (REFERENCE / "CARD.md").read_text()
