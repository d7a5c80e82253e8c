"""Strip decoding (models/tokenizer/tiling.py): the same bits as an untiled decode, in the memory
its estimate promises."""

from __future__ import annotations

import pytest
import torch

from gvc_train.models.tokenizer.causal_vae import CausalVAE
from conftest import measure_in_child
from test_tokenizer_exact_kernels import _vae
from gvc_train.models.tokenizer.tiling import DecodePlan, StripDecoder, estimate_memory, margins, tileable



def _decode(vae: CausalVAE, z: torch.Tensor, plan: DecodePlan, **kw) -> torch.Tensor:
    with torch.inference_mode(), StripDecoder(vae, tuple(z.shape[3:]), plan, **kw) as decoder:
        return torch.cat([decoder.step(z[:, :, i : i + 1]) for i in range(z.shape[2])], dim=2)


@pytest.mark.parametrize(
    "plan",
    [DecodePlan(), DecodePlan(strips=3), DecodePlan(strips=5, frames_at_once=1), DecodePlan(strips=2, frames_at_once=1, spill=True), DecodePlan(strips=29)],
    ids=lambda p: p.describe(),
)
def test_strips_decode_to_the_bits_of_an_untiled_decode(plan, tmp_path):
    vae = _vae()
    z = torch.randn(1, 4, 4, 29, 12, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        untiled = vae.decode(z)
    assert torch.equal(_decode(vae, z, plan, spill_dir=tmp_path), untiled)
    assert list(tmp_path.iterdir()) == []  # the spilled cache is gone after close


def test_margins_are_what_the_tail_needs_and_no_less():
    """A change in one row of the head's output reaches as far in the output as the margin
    allows for, and further than one latent row less would."""
    from gvc_train.models.tokenizer.causal_layers import StreamContext

    vae = _vae(attention=False)
    stages = vae.decoder.tail_stages()
    need = margins(stages)[0]
    assert need == 5

    def tail(h):
        ctx = StreamContext.whole()
        for stage in stages:
            h = stage.run(h, ctx)
        return h

    with torch.inference_mode():
        h = vae.decoder.forward_head(torch.randn(1, 4, 1, 24, 6, generator=torch.Generator().manual_seed(4)), StreamContext.whole())
        poked = h.clone()
        poked[:, :, :, 12] += 1.0
        rows = (tail(poked) != tail(h)).any(dim=4).any(dim=2).any(dim=1)[0].nonzero().flatten()
    reach = max(8 * 12 - int(rows.min()), int(rows.max()) - (8 * 12 + 7))
    assert 8 * (need - 1) < reach <= 8 * need


def test_a_groupnorm_tokenizer_is_not_tiled_but_steps_frame_by_frame_exactly(tmp_path):
    vae = _vae(norm="group")
    assert not tileable(vae) and tileable(_vae())
    with pytest.raises(ValueError, match="GroupNorm"):
        StripDecoder(vae, (8, 8), DecodePlan(strips=2))
    z = torch.randn(1, 4, 3, 8, 10, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        untiled = vae.decode(z)
    assert torch.equal(_decode(vae, z, DecodePlan(frames_at_once=1, spill=True), spill_dir=tmp_path), untiled)


_MEASURE = """
import json, sys, torch
from gvc_train.models.tokenizer.causal_vae import CausalVAE
from gvc_train.models.tokenizer.tiling import DecodePlan, StripDecoder, estimate_memory
from gvc_train.frames import tensor_to_frames
def rss(field):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field))
torch.set_num_threads(1)
vae = CausalVAE(base_channels=8, channel_mults=(1, 2, 4, 4), num_res_blocks=1, latent_channels=4, norm='rms', mid_attention=False).eval()
strips, frames, spill = json.loads(sys.argv[1])
plan, hw = DecodePlan(strips, frames, spill), (40, 64)
z = torch.randn(1, 4, 3, *hw)
base = rss('VmRSS')
with torch.inference_mode(), StripDecoder(vae, hw, plan) as d:
    for i in range(3):
        frames_THWC = tensor_to_frames(d.step(z[:, :, i:i + 1])[0])
    print(json.dumps([rss('VmHWM') - base, estimate_memory(vae, hw, plan).total]))
"""


@pytest.mark.parametrize("plan", [[1, None, False], [4, 1, True]], ids=["untiled", "strips-spilled"])
def test_the_memory_estimate_bounds_the_measured_peak(plan):
    measured, estimate = measure_in_child(_MEASURE, plan)
    # An upper bound (a budget relies on it) that is not wildly loose (a loose one wastes speed).
    assert measured <= estimate <= 2.5 * measured, (measured, estimate)


def test_the_estimate_shrinks_with_strips_and_spilling():
    vae = _vae(attention=False)
    untiled = estimate_memory(vae, (135, 240), DecodePlan())
    strips = estimate_memory(vae, (135, 240), DecodePlan(strips=8, frames_at_once=1))
    spilled = estimate_memory(vae, (135, 240), DecodePlan(strips=8, frames_at_once=1, spill=True))
    assert spilled.total < strips.total < untiled.total
    assert spilled.cache < strips.cache / 4
