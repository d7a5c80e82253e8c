"""The Scale-Space Flow family under a memory budget (``--max-memory``): a budget below the
whole-frame need synthesises pixels in strips (models/ssf/ssf_strips.py), to the same frames as
an unlimited decode and as the encoder's reconstruction; the estimate bounds the measured peak."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gvc_train.codecs.memory_plan import SLACK_BYTES, DefaultBudget, OverBudget, resident_bytes
from gvc_train.codecs.ssf import SSFCodec
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.export import main as export_main
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY
from gvc_train.models import ScaleSpaceFlowCodec
from gvc_train.models.ssf.ssf_strips import StripPlan, estimate_memory, margin_rows, run_in_strips

REPO = Path(__file__).resolve().parents[1]
# Wide synthesis, narrow entropy models: the synthesis is what a budget has to cut.
WIDTHS = dict(mid_planes=48, planes=8, hyper_planes=8, num_levels=3)


@pytest.fixture(scope="module")
def ssf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ssf_budget")
    torch.manual_seed(0)
    model = ScaleSpaceFlowCodec(**WIDTHS, num_qualities=2)
    meta = {"components": {"ssf": {"class": "ScaleSpaceFlowCodec", "config": model.config, "state_prefix": "model."}}, "provenance": {"recipe": "test"}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CHECKPOINT_KEY: meta}, tmp / "ssf.ckpt")
    assert export_main([str(tmp / "ssf.ckpt"), "--out", str(tmp / "codec")]) == 0
    return tmp / "codec"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 carphone frames scaled to 240x200 (coded 256x256: 16 latent rows)."""
    folder = tmp_path_factory.mktemp("ssf_budget_video")
    for i, frame in enumerate(read_frames(sample_video("carphone_pristine.mp4"), count=3)):
        Image.fromarray(frame).resize((240, 200)).save(folder / f"im{i + 1}.png")
    return folder


def _tight_budget(codec: SSFCodec, encoding: bool = False) -> int:
    """A budget that leaves room for 4 synthesis strips, not for whole frames."""
    strips = estimate_memory(codec.model, (256, 256), StripPlan(4), encoding).total
    assert strips < estimate_memory(codec.model, (256, 256), StripPlan(), encoding).total
    return resident_bytes() + SLACK_BYTES + strips


def test_a_budget_below_the_whole_frame_need_decodes_in_strips_to_the_same_frames(ssf_dir, video, tmp_path):
    codec = SSFCodec(ssf_dir)
    recon: list[np.ndarray] = []
    codec.encode(video, tmp_path / "x.gvc", 1, on_recon=recon.append)  # no limit: whole frames
    assert codec.plan.strips == 1
    whole: list[np.ndarray] = []
    codec.decode(tmp_path / "x.gvc", whole.append)
    codec.max_memory = _tight_budget(codec)
    decoded: list[np.ndarray] = []
    report = codec.decode(tmp_path / "x.gvc", decoded.append)
    assert codec.plan.strips > 1 and report.stats["plan"] == f"{codec.plan.strips} strips"
    assert len(decoded) == 3 and np.array_equal(np.stack(decoded), np.stack(whole)) and np.array_equal(np.stack(decoded), np.stack(recon))

    # ... and an encoder under a tight budget writes the same stream and reconstruction.
    codec.max_memory = _tight_budget(codec, encoding=True)
    tight: list[np.ndarray] = []
    codec.encode(video, tmp_path / "y.gvc", 1, on_recon=tight.append)
    assert codec.plan.strips > 1
    assert (tmp_path / "y.gvc").read_bytes() == (tmp_path / "x.gvc").read_bytes()
    assert np.array_equal(np.stack(tight), np.stack(recon))


def test_a_budget_nothing_fits_is_refused_before_coding(ssf_dir, video, tmp_path, capsys, monkeypatch):
    import gvc_train.codecs.memory_plan as memory_plan

    monkeypatch.setattr(memory_plan, "DEFAULT_HEADROOM", 0)  # as if this test process were a laptop's decoder
    codec = SSFCodec(ssf_dir)
    codec.encode(video, tmp_path / "x.gvc", 0, max_frames=1)
    codec.max_memory = resident_bytes()  # nothing left
    frames: list[np.ndarray] = []
    with pytest.raises(OverBudget, match="raise --max-memory") as refused:
        codec.decode(tmp_path / "x.gvc", frames.append)
    assert frames == [] and "\n" not in str(refused.value)
    with pytest.raises(OverBudget, match="raise --max-memory"):
        codec.encode(video, tmp_path / "y.gvc", 0)
    assert not (tmp_path / "y.gvc").exists()
    # The default budget nobody chose only warns, and decodes in the smallest plan.
    codec.max_memory = DefaultBudget(resident_bytes())
    codec.decode(tmp_path / "x.gvc", frames.append)
    assert len(frames) == 1 and codec.plan.strips > 1 and "default memory budget" in capsys.readouterr().err


def test_strips_equal_whole_frames_and_margins_come_from_the_layers():
    """On one thread (the codec's deterministic mode), synthesis and analysis alike."""
    torch.manual_seed(1)
    model = ScaleSpaceFlowCodec(**WIDTHS).eval()
    assert margin_rows(model.img_decoder) == 2  # four 5x5 stride-2 deconvolutions: < 2 latent rows each side
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for transform in (model.img_decoder, model.motion_decoder, model.res_decoder, model.img_encoder, model.motion_encoder):
            scale = 1 if isinstance(transform[0], torch.nn.ConvTranspose2d) else 16
            x = torch.randn(1, transform[0].in_channels, 9 * scale, 5 * scale)
            with torch.inference_mode():
                whole = transform(x)
                for strips in (2, 3, 9):
                    assert torch.equal(run_in_strips(transform, x, strips), whole)
    finally:
        torch.set_num_threads(threads)


_MEASURE = """
import json, sys, torch
from gvc_train.models import ScaleSpaceFlowCodec
from gvc_train.models.ssf.ssf_strips import StripPlan, estimate_memory
from gvc_train.frames import tensor_to_frames
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field))
torch.set_num_threads(1)
torch.manual_seed(0)
model = ScaleSpaceFlowCodec(**json.loads(sys.argv[1])).eval()
model.update(force=True)
strings, strips = torch.load(sys.argv[2]), int(sys.argv[3])
model.pixel_strips = strips
base = rss('VmRSS')
with torch.inference_mode():
    key = model.decode_keyframe(strings['key'], strings['z_hw'], 0)
    frame = tensor_to_frames(key[:, :, None])
    inter = model.decode_inter(key, strings['inter'], {'motion': strings['z_hw'], 'residual': strings['z_hw']}, 0)
    frame = tensor_to_frames(inter[:, :, None])
print(json.dumps([rss('VmHWM') - base, estimate_memory(model, tuple(key.shape[-2:]), StripPlan(strips)).total]))
"""


@pytest.mark.parametrize("strips", [1, 4])
def test_the_memory_estimate_bounds_the_measured_peak(strips, tmp_path):
    torch.manual_seed(0)
    model = ScaleSpaceFlowCodec(**WIDTHS).eval()
    model.update(force=True)
    x0 = torch.rand(1, 3, 384, 512, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref, key = model.encode_keyframe(x0, 0)
        _, inter = model.encode_inter(x0.roll(3, dims=-1), ref, 0)
    torch.save({"key": key["strings"], "inter": inter["strings"], "z_hw": key["shape"]}, tmp_path / "strings.pt")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(WIDTHS), str(tmp_path / "strings.pt"), str(strips)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    measured, estimate = json.loads(out.stdout.strip().splitlines()[-1])
    # An upper bound (a budget relies on it) that is not wildly loose (a loose one wastes speed).
    assert measured <= estimate <= 2.5 * measured, (measured, estimate)
