"""Every family that decodes through a causal tokenizer follows the latent family's memory
budget (codecs/memory_plan.py): under a budget below the untiled need it decodes in a smaller
plan to the same frames as the encoder's reconstruction, and a budget nothing fits is refused
in one line before a frame is shown. (The latent family: tests/test_latent_budget.py; SSF:
tests/test_ssf_budget.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gvc_train.codecs.base import open_codec
import gvc_train.codecs.memory_plan as memory_plan
from gvc_train.codecs.memory_plan import SLACK_BYTES, OverBudget
from gvc_train.data.sample_videos import sample_video
from gvc_train.models.tokenizer.tiling import DecodePlan, choose_plan, estimate_memory


# The process's resident size as the planner sees it during these decodes: fixed, so that what a
# budget leaves does not move with the test process's own allocations between steps.
RESIDENT = 600 * 2**20


@pytest.fixture(autouse=True)
def fixed_resident(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_plan, "resident_bytes", lambda: RESIDENT)


def _below_untiled(codec, width: int, height: int) -> int:
    """A budget with room for the smallest plan of the codec's tokenizer, not the untiled one."""
    s = codec.tokenizer.spatial_stride
    latent_hw = (-(-height // s), -(-width // s))
    smallest, need, _ = choose_plan(codec.tokenizer, latent_hw, 0)
    assert need.total < estimate_memory(codec.tokenizer, latent_hw, DecodePlan()).total
    return RESIDENT + SLACK_BYTES + need.total


def _check_budget(codec, stream: Path, recon: list[np.ndarray], width: int, height: int, decode_plans: list[DecodePlan]) -> None:
    codec.max_memory = _below_untiled(codec, width, height)
    start = len(decode_plans)
    decoded: list[np.ndarray] = []
    report = codec.decode(stream, decoded.append)
    assert decode_plans[start:] and all(p != DecodePlan() for p in decode_plans[start:])
    assert report.stats["plan"] == decode_plans[-1].describe()  # the report says which plan decoded (make bench-sizes' table)
    assert len(decoded) == len(recon) and all(np.array_equal(a, b) for a, b in zip(decoded, recon))
    codec.max_memory = RESIDENT  # nothing left
    shown: list[np.ndarray] = []
    with pytest.raises(OverBudget, match="raise --max-memory"):
        codec.decode(stream, shown.append)
    assert shown == []


def test_progressive(tmp_path: Path, decode_plans: list[DecodePlan]) -> None:
    from progressive_fixtures import HEIGHT, WIDTH, write_clip, write_codec_dir

    codec = open_codec(write_codec_dir(tmp_path / "codec", "codebook"))
    (tmp_path / "clip").mkdir()
    clip = write_clip(tmp_path / "clip")
    recon: list[np.ndarray] = []
    codec.encode(clip, tmp_path / "s.gvc", codec.num_rate_points - 1, on_recon=recon.append)
    _check_budget(codec, tmp_path / "s.gvc", recon, WIDTH, HEIGHT, decode_plans)


def test_controlled(tmp_path: Path, decode_plans: list[DecodePlan]) -> None:
    from controlled_codec_fixtures import HEIGHT, WIDTH, write_codec_folder, write_moving_square_clip

    codec = open_codec(write_codec_folder(tmp_path / "codec", "controlled"))
    clip = write_moving_square_clip(tmp_path / "clip")
    recon: list[np.ndarray] = []
    codec.encode(clip, tmp_path / "s.gvc", 1, on_recon=recon.append)
    _check_budget(codec, tmp_path / "s.gvc", recon, WIDTH, HEIGHT, decode_plans)


def test_zeroshot(tmp_path: Path, decode_plans: list[DecodePlan]) -> None:
    from gvc_train.codecs.zeroshot_folder import make_zeroshot_codec

    make_zeroshot_codec(tmp_path / "codec", model="checkpoints/cgvc_tiny", settings={"codebook_size": 64, "atoms": [1, 3], "num_steps": 4, "ode_tail": 1, "gop_frames": 5})
    codec = open_codec(tmp_path / "codec")
    recon: list[np.ndarray] = []
    codec.encode(sample_video("carphone_pristine.mp4"), tmp_path / "s.gvc", 0, max_frames=5, on_recon=recon.append, mode="i2v")
    _check_budget(codec, tmp_path / "s.gvc", recon, 176, 144, decode_plans)


def test_controlled_clips_are_sized_by_the_budget_not_a_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clip is sampled whole (no smaller plan): its need is checked against the budget before
    # anything is allocated. 1920x1080 clips of the reference's 5 latent frames fit the default
    # budget (they were refused by a fixed 16.7 M-pixel clip limit before); a budget that leaves
    # less than the estimate is refused in one line.
    codec = open_codec(Path(__file__).resolve().parents[1] / "checkpoints" / "cgvc_tiny")
    need = codec.clip_memory(1920, 1080, 5)
    assert 300 * 2**20 < need < 512 * 2**20, need
    assert codec._clip_refusal(1920, 1080, 5) is None
    codec.max_memory = RESIDENT + SLACK_BYTES + need - 1
    assert codec._clip_refusal(1920, 1080, 5).startswith("sampling 1920x1080 clips of 5 latent frames needs ~")
    codec.max_memory = RESIDENT + SLACK_BYTES + need
    assert codec._clip_refusal(1920, 1080, 5) is None



def test_zeroshot_gops_are_sized_by_the_budget_where_the_generator_estimates_its_sampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As the controlled clips: a GOP is sampled whole, so its need is checked against the budget
    # before anything is allocated (1920x1080 GOPs of 17 frames were refused by a fixed pixel bound
    # whatever the budget); a generator without an estimate (a pipeline's own VAE) keeps the bound.
    from PIL import Image

    codec = open_codec(Path(__file__).resolve().parents[1] / "checkpoints" / "zeroshot_tiny")
    need = codec.gop_memory(1920, 1080, 17)
    assert 600 * 2**20 < need < 1024 * 2**20 and codec.gop_memory(1280, 720, 17) < need, need
    (tmp_path / "hd").mkdir()
    Image.fromarray(np.zeros((1080, 1920, 3), np.uint8)).save(tmp_path / "hd" / "im1.png")
    codec.max_memory = RESIDENT + SLACK_BYTES + need - 1
    with pytest.raises(OverBudget, match=r"^coding 1920x1080 GOPs of 17 frames needs ~.* raise --max-memory"):
        codec.encode(tmp_path / "hd", tmp_path / "s.gvc", 0)
    assert not (tmp_path / "s.gvc").exists()
    assert memory_plan.whole_pass_refusal("coding", need, codec.max_memory + 1) is None
    monkeypatch.setattr(codec.generator, "sampling_bytes", lambda latent_thw: None)
    with pytest.raises(ValueError, match="16711680-pixel limit"):
        codec.encode(tmp_path / "hd", tmp_path / "s.gvc", 0)
