"""The reference controlled-generation codecs (CGVC: luma and adaptive keyframes; CVG: caption,
segmentation, pose and flow on fixed clips) on the held-out clip: their cards' protocol.

96 frames of carphone_pristine.mp4 (176x144), coded once at the default rate point into a real
file and decoded twice, with the caller at 1 and at 2 torch threads: the source's frame count
and size, identical frames (the codecs' determinism switch), the file's bytes the sum of its
parts as ``gvc info`` lists them, the figures of ``rd.json``; a stream with modalities removed
(``controls=``) decodes and gives ``ablation.json``'s row. Every table of a card is rendered from
its json files by ``eval.controlled_card.card_tables``, so regenerating them keeps the test
green and editing one alone does not. The folders are required: a missing one fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gvc_train.codecs.base import describe_stream, open_codec
from gvc_train.data.sample_videos import HELD_OUT, sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.eval.ablation import bytes_by_part
from gvc_train.eval.controlled_card import card_tables
from gvc_train.eval.controlled_reference import encode_options

from conftest import frames_ms_ssim, numpy_psnr

REPO = Path(__file__).resolve().parents[1]
# The reference folders (committed; a missing one fails the test).
REFERENCES = (REPO / "checkpoints" / "cgvc_tiny", REPO / "checkpoints" / "cvg_tiny")
FRAMES, WIDTH, HEIGHT = 96, 176, 144
# How closely this machine must reproduce the json files (as tests/test_reference_progressive.py).
RATE_REL = 0.005
PSNR_DB, MS_SSIM_ABS = 0.01, 1e-4


def _json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _decode(codec, stream: Path, threads: int) -> np.ndarray:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        frames: list[np.ndarray] = []
        codec.decode(stream, frames.append)
    finally:
        torch.set_num_threads(previous)
    return np.stack(frames)


def _reduced_row(folder: Path) -> dict:
    """The ablation row the test codes: the first proper non-empty subset of the default controls, else none."""
    rows, default = _json(folder, "ablation.json")["rows"], set(_json(folder, "rd.json")["controls"])
    return next((r for r in rows if r["controls"] and set(r["controls"]) < default), next(r for r in rows if not r["controls"]))


@pytest.fixture(scope="module", params=REFERENCES, ids=lambda p: p.name)
def coded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder: Path = request.param
    assert (folder / "codec.json").is_file(), f"the reference codec {folder} is missing"
    codec, video = open_codec(folder), sample_video(HELD_OUT)
    out = tmp_path_factory.mktemp(folder.name)
    options = encode_options(codec, video)
    report = codec.encode(video, out / "default.gvc", codec.default_rate_point, max_frames=FRAMES, **options)
    reduced = _reduced_row(folder)
    codec.encode(video, out / "reduced.gvc", codec.default_rate_point, max_frames=FRAMES, controls=reduced["controls"], **options)
    return {
        "folder": folder, "codec": codec, "report": report, "one_thread": _decode(codec, report.path, 1), "two_threads": _decode(codec, report.path, 2),
        "reduced_row": reduced, "reduced_stream": out / "reduced.gvc", "reduced": _decode(codec, out / "reduced.gvc", 1),
        "source": read_frames(video, count=FRAMES),
    }  # fmt: skip


def test_the_folder_is_complete_and_small(coded: dict) -> None:
    folder = coded["folder"]
    assert _json(folder, "codec.json")["family"] in ("controlled", "controlled_text")
    assert all((folder / name).is_file() for name in ("CARD.md", "rd.json", "ablation.json"))
    assert sum(p.stat().st_size for p in folder.iterdir()) < 16 * 2**20


def test_encode_then_decode_gives_the_source_frame_count_and_size(coded: dict) -> None:
    report = coded["report"]
    assert report.frames == FRAMES and (report.width, report.height) == (WIDTH, HEIGHT)
    assert coded["one_thread"].shape == coded["source"].shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_decoding_twice_at_1_and_2_caller_threads_gives_identical_frames(coded: dict) -> None:
    assert np.array_equal(coded["one_thread"], coded["two_threads"])


def test_the_file_is_the_sum_of_its_parts_as_gvc_info_lists_them(coded: dict) -> None:
    report, rd = coded["report"], _json(coded["folder"], "rd.json")
    rows = describe_stream(report.path)["chunks"]
    assert sum(r["bytes"] for r in rows) == report.file_bytes
    parts = bytes_by_part(rows, report.file_bytes)
    assert parts["keyframes"] > 0 and all(parts[f"control {n}"] > 0 for n in rd["controls"])
    assert parts["other"] == sum(r["bytes"] for r in rows if r["type"] in ("HEADER", "CONFIG", "CONTROL_TABLE", "END"))
    for part, size in rd["split"]["parts"].items():
        assert parts[part] == pytest.approx(size, rel=RATE_REL, abs=2), part


def test_the_codec_reproduces_rd_json(coded: dict) -> None:
    rd, report = _json(coded["folder"], "rd.json"), coded["report"]
    assert rd["frames"] == FRAMES and rd["default_quality"] == report.quality
    (point,) = [p for p in rd["points"] if p["codec"] == rd["codec"] and p.get("quality") == report.quality]
    assert report.file_bytes == pytest.approx(point["bytes"], rel=RATE_REL)
    assert numpy_psnr(coded["one_thread"], coded["source"]) == pytest.approx(point["psnr"], abs=PSNR_DB)
    assert frames_ms_ssim(coded["one_thread"], coded["source"]) == pytest.approx(point["ms_ssim"], abs=MS_SSIM_ABS)


def test_a_stream_with_modalities_removed_decodes_to_ablation_json_row(coded: dict) -> None:
    row, stream, frames = coded["reduced_row"], coded["reduced_stream"], coded["reduced"]
    rows = describe_stream(stream)["chunks"]
    sent = {r["control"] for r in rows if r["type"] == "CONTROLS"}
    assert sent == set(row["controls"]) and sent < set(_json(coded["folder"], "rd.json")["controls"])
    assert frames.shape == coded["source"].shape
    assert stream.stat().st_size == pytest.approx(row["bytes"], rel=RATE_REL)
    assert numpy_psnr(frames, coded["source"]) == pytest.approx(row["metrics"]["psnr"], abs=PSNR_DB)


@pytest.mark.parametrize("folder", REFERENCES, ids=lambda p: p.name)
def test_every_table_of_the_card_is_rendered_from_the_json_files(folder: Path) -> None:
    card = (folder / "CARD.md").read_text()
    for table in card_tables(_json(folder, "rd.json"), _json(folder, "ablation.json")):
        assert table in card, f"the card does not hold this table as rd.json/ablation.json give it:\n{table.splitlines()[0]}"
