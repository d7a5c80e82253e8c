"""The latent family under a memory budget (``--max-memory``): a budget below the untiled need
decodes in strips, to the same frames as an unlimited decode and as the encoder's reconstruction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gvc_train.codecs.latent import LatentCodec
from gvc_train.codecs.memory_plan import SLACK_BYTES, DefaultBudget, OverBudget, parse_memory, resident_bytes
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
import gvc_train.codecs.tokenizer_io as tokenizer_io
from gvc_train.models.tokenizer.encoder_tiling import choose_encode_plan
from gvc_train.models.tokenizer.tiling import BesideOther, DecodePlan, estimate_memory


@pytest.fixture(scope="module")
def rms_codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_codec_dir's codec with an RMS-norm tokenizer (the kind that decodes in strips)."""
    from gvc_train.codecs.codec_folder import write_codec_json
    from gvc_train.components import save_component
    from gvc_train.models import CausalVAE, LatentVideoCodec

    folder = tmp_path_factory.mktemp("rms_codec")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = CausalVAE(latent_channels=4, base_channels=8, channel_mults=[1, 2, 2, 2], num_res_blocks=1, mid_attention=False, norm="rms")
        codec = LatentVideoCodec(latent_channels=4, channels=8, y_channels=4, z_channels=4, memory_channels=4, num_res_blocks=1, num_qualities=3)
    codec.eval().update(force=True)
    save_component(vae.eval(), folder, "tokenizer")
    save_component(codec, folder, "latent_codec")
    write_codec_json(folder, "latent", {"qualities": 3}, {"recipe": "tests/test_latent_budget.py (random weights, RMS tokenizer)"})
    return folder


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("budget_video")
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=9)):
        Image.fromarray(frame[:136, :152]).save(folder / f"im{i + 1}.png")
    return folder


def _tight_budget(codec: LatentCodec, latent_hw: tuple[int, int], encoding: bool = False) -> int:
    """A budget that leaves this process room for a 3-strip spilled decoding plan, not an untiled
    one (``encoding``: beside the encoder's smallest plan)."""
    room = estimate_memory(codec.tokenizer, latent_hw, DecodePlan(3, 1, True))
    assert room.total < estimate_memory(codec.tokenizer, latent_hw, DecodePlan()).total
    if encoding:
        frame_hw = (8 * latent_hw[0], 8 * latent_hw[1])
        room = BesideOther(room, choose_encode_plan(codec.tokenizer, frame_hw, 0)[1])
    return resident_bytes() + SLACK_BYTES + room.total


def test_a_budget_below_the_untiled_need_decodes_in_strips_to_the_same_frames(rms_codec_dir, video, tmp_path, decode_plans, monkeypatch):
    codec = LatentCodec(rms_codec_dir)
    recon: list[np.ndarray] = []
    codec.encode(video, tmp_path / "x.gvc", 1, on_recon=recon.append)  # no limit: untiled
    assert decode_plans[-1] == DecodePlan()
    codec.max_memory = _tight_budget(codec, (17, 19))
    decoded: list[np.ndarray] = []
    codec.decode(tmp_path / "x.gvc", decoded.append)
    assert decode_plans[-1].strips > 1
    assert np.array_equal(np.stack(decoded), np.stack(recon))

    # ... and an encoder under the tight budget, itself in strips, writes the same stream and
    # reconstructs what an unlimited decoder gives.
    tight: list[np.ndarray] = []
    codec.codec  # the encoder's model (built on first use) is loaded before the budget is set
    codec.max_memory = _tight_budget(codec, (17, 19), encoding=True)
    encode_plans = []
    real = tokenizer_io.StripEncoder
    monkeypatch.setattr(tokenizer_io, "StripEncoder", lambda vae, hw, plan: encode_plans.append(plan) or real(vae, hw, plan))
    codec.encode(video, tmp_path / "y.gvc", 1, on_recon=tight.append)
    assert decode_plans[-1].strips > 1 and encode_plans[-1].strips > 1
    assert (tmp_path / "y.gvc").read_bytes() == (tmp_path / "x.gvc").read_bytes()
    assert np.array_equal(np.stack(tight), np.stack(recon))


def test_a_budget_nothing_fits_is_refused_before_decoding(tiny_codec_dir, video, tmp_path):
    codec = LatentCodec(tiny_codec_dir)
    codec.encode(video, tmp_path / "x.gvc", 1)
    codec.max_memory = resident_bytes()  # nothing left
    frames: list[np.ndarray] = []
    with pytest.raises(OverBudget, match="raise --max-memory"):
        codec.decode(tmp_path / "x.gvc", frames.append)
    assert frames == []


def test_the_default_budget_warns_once_and_decodes_in_the_smallest_plan(tiny_codec_dir, video, tmp_path, capsys, monkeypatch):
    import gvc_train.codecs.memory_plan as memory_plan

    monkeypatch.setattr(memory_plan, "DEFAULT_HEADROOM", 0)  # as if this test process were a laptop's decoder
    codec = LatentCodec(tiny_codec_dir)
    recon: list[np.ndarray] = []
    codec.encode(video, tmp_path / "x.gvc", 1, on_recon=recon.append)
    codec.max_memory = DefaultBudget(resident_bytes())  # nobody chose it: a decode that worked still works
    for _ in range(2):
        frames: list[np.ndarray] = []
        report = codec.decode(tmp_path / "x.gvc", frames.append)
        assert np.array_equal(np.stack(frames), np.stack(recon))
    assert report.stats["plan"] == "1 strip(s), 1 frame(s) at once, cache in RAM"  # GroupNorm: its smallest
    assert capsys.readouterr().err.count("over the default memory budget") == 1


def test_the_cli_takes_max_memory_and_refuses_in_one_line(tiny_codec_dir, video, tmp_path):
    stream = tmp_path / "x.gvc"
    LatentCodec(tiny_codec_dir).encode(video, stream, 1)
    gvc = [sys.executable, "-m", "gvc_train.codecs.cli"]
    ok = subprocess.run([*gvc, "decode", str(stream), str(tmp_path / "out.y4m"), "--codec", str(tiny_codec_dir), "--max-memory", "4G"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    low = subprocess.run([*gvc, "decode", str(stream), str(tmp_path / "low.y4m"), "--codec", str(tiny_codec_dir), "--max-memory", "100M"], capture_output=True, text=True)
    assert low.returncode == 2 and low.stderr.count("\n") == 1 and "raise --max-memory" in low.stderr
    assert not (tmp_path / "low.y4m").exists()
    bad = subprocess.run([*gvc, "decode", str(stream), str(tmp_path / "bad.y4m"), "--codec", str(tiny_codec_dir), "--max-memory", "lots"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a memory size" in bad.stderr


def test_memory_sizes_parse_in_decimal_and_binary_units():
    assert parse_memory("1.5G") == 1_500_000_000 and parse_memory("2GiB") == 2 * 2**30
    assert parse_memory("800m") == 800_000_000 and parse_memory(4096) == 4096
    for bad in ("", "-1G", "1.5X", "0"):
        with pytest.raises(ValueError):
            parse_memory(bad)
