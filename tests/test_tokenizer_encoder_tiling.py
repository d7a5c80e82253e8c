"""Strip encoding (models/tokenizer/encoder_tiling.py): the same bits as an untiled encode, in the
memory its estimate promises."""

from __future__ import annotations

import pytest
import torch

from gvc_train.models.tokenizer.causal_layers import StreamContext
from gvc_train.models.tokenizer.encoder_tiling import EncodePlan, StripEncoder, choose_encode_plan, encoder_margins, estimate_encode_memory
from conftest import measure_in_child
from test_tokenizer_exact_kernels import _vae


def _steps(x: torch.Tensor) -> list[torch.Tensor]:
    """The frames as a stream encoder takes them: the first alone, then four at a time."""
    return [x[:, :, :1]] + [x[:, :, t : t + 4] for t in range(1, x.shape[2], 4)]


def _encode(vae, x: torch.Tensor, plan: EncodePlan, **kw) -> torch.Tensor:
    with torch.inference_mode(), StripEncoder(vae, tuple(x.shape[3:]), plan, **kw) as encoder:
        return torch.cat([encoder.step(chunk).mean for chunk in _steps(x)], dim=2)


@pytest.mark.parametrize(
    "plan",
    [EncodePlan(), EncodePlan(strips=3), EncodePlan(strips=4, frames_at_once=1), EncodePlan(strips=2, frames_at_once=1, spill=True), EncodePlan(strips=13)],
    ids=lambda p: p.describe(),
)
def test_strips_encode_to_the_bits_of_an_untiled_encode(plan, tmp_path):
    vae = _vae()  # with frame-wide attention in the middle block: the untiled tail's
    x = torch.rand(1, 3, 9, 104, 40, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        whole = vae.encode(x).mean
    assert torch.equal(_encode(vae, x, plan, spill_dir=tmp_path), whole)
    assert list(tmp_path.iterdir()) == []  # the spilled cache is gone after close


def test_margins_are_what_the_head_needs_and_no_less():
    """A change in one input row reaches latent rows as far as the margin allows for, and further
    than one latent row less would."""
    vae = _vae(attention=False)
    stages = vae.encoder.head_stages()
    need = encoder_margins(stages)
    assert need[0] == (15, 22) and all(n[0] % 2 == 0 for n, st in zip(need, stages) if st.downsample > 1)

    def head(x):
        ctx = StreamContext.whole()
        for stage in stages:
            x = stage.run(x, ctx)
        return x

    above = below = 0  # how far above or below an affected latent row's footprint a poked row lies
    with torch.inference_mode():
        x = torch.randn(1, 3, 1, 160, 16, generator=torch.Generator().manual_seed(7))
        base = head(x)
        for row in range(80, 88):  # every row of latent row 10's footprint
            poked = x.clone()
            poked[:, :, :, row] += 1.0
            rows = (head(poked) != base).any(dim=4).any(dim=2).any(dim=1)[0].nonzero().flatten()
            above = max([above] + [8 * int(r) - row for r in rows])
            below = max([below] + [row - (8 * int(r) + 7) for r in rows])
    assert (above, below) == need[0]


def test_a_groupnorm_tokenizer_is_not_tiled_but_encodes_frame_by_frame_exactly():
    vae = _vae(norm="group")
    with pytest.raises(ValueError, match="GroupNorm"):
        StripEncoder(vae, (16, 16), EncodePlan(strips=2))
    x = torch.rand(1, 3, 5, 24, 32, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        whole = vae.encode(x).mean
    assert torch.equal(_encode(vae, x, EncodePlan(frames_at_once=1)), whole)


def test_the_plan_shrinks_with_the_budget():
    vae = _vae(attention=False)
    hw = (1088, 1920)
    untiled = estimate_encode_memory(vae, hw, EncodePlan())
    plan, memory, fits = choose_encode_plan(vae, hw, untiled.total // 4)
    assert fits and plan.strips > 1 and memory.total <= untiled.total // 4
    plan, memory, fits = choose_encode_plan(vae, hw, 2**20)
    assert not fits and plan.strips > 1 and plan.spill


_MEASURE = """
import json, sys, torch
from gvc_train.models.tokenizer.causal_vae import CausalVAE
from gvc_train.models.tokenizer.encoder_tiling import EncodePlan, StripEncoder, estimate_encode_memory
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field))
torch.set_num_threads(1)
vae = CausalVAE(base_channels=8, channel_mults=(1, 2, 4, 4), num_res_blocks=1, latent_channels=4, norm='rms', mid_attention=False).eval()
strips, frames, spill = json.loads(sys.argv[1])
plan, hw = EncodePlan(strips, frames, spill), (320, 512)
base = rss('VmRSS')
with torch.inference_mode(), StripEncoder(vae, hw, plan) as e:
    for t in (1, 4, 4):
        e.step(torch.rand(1, 3, t, *hw)).mean
    print(json.dumps([rss('VmHWM') - base, estimate_encode_memory(vae, hw, plan).total]))
"""


@pytest.mark.parametrize("plan", [[1, None, False], [4, 1, True]], ids=["untiled", "strips-spilled"])
def test_the_memory_estimate_bounds_the_measured_peak(plan):
    measured, estimate = measure_in_child(_MEASURE, plan)
    assert measured <= estimate <= 2.5 * measured, (measured, estimate)
