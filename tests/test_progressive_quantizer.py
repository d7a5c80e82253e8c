"""MultiScaleQuantizer (models/progressive/quantizer.py): exact reconstruction from the tokens,
error falling scale by scale, scale dropout's rate, the EMA codebook and dead-code restart, the
codebook usage shared by 2 gloo ranks, config bounds, export round trip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from gvc_train.components import ComponentError, build_component, load_component, save_component
from gvc_train.models.progressive.quantizer import MultiScaleQuantizer
from gvc_train.models.progressive.scales import scale_shapes

SCALES = [0.25, 0.5, 0.75, 1.0]
KINDS = [("codebook", "ema"), ("codebook", "gradient"), ("bitwise", "ema"), ("bitwise", "gradient")]


def tiny(kind: str = "codebook", update: str = "ema", **overrides) -> MultiScaleQuantizer:
    config = dict(latent_channels=4, code_dim=4, codebook_size=32, scales=SCALES, kind=kind, codebook_update=update, refine_groups=2)
    return MultiScaleQuantizer(**{**config, **overrides})


def smooth_latents(n: int, h: int = 12, w: int = 16, channels: int = 4) -> torch.Tensor:
    """Low-frequency latent frames with a little fine detail: every scale has something to code."""
    coarse = torch.randn(n, channels, 3, 4)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) + 0.1 * torch.randn(n, channels, h, w)


def train(q: MultiScaleQuantizer, steps: int, n: int = 8, lr: float = 0.05) -> None:
    """A few plain gradient steps (by hand: torch.optim's first step costs seconds of imports)."""
    q.train()
    for _ in range(steps):
        z = smooth_latents(n)
        out = q(z)
        q.zero_grad()
        ((out.reconstruction - z).square().mean() + out.loss).backward()
        with torch.no_grad():
            for p in q.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
    q.eval()


@pytest.mark.parametrize("kind,update", KINDS)
def test_eval_reconstruction_is_exactly_the_tokens_decoded(kind: str, update: str) -> None:
    torch.manual_seed(0)
    q = tiny(kind, update)
    train(q, 3)
    state = {k: v.clone() for k, v in q.state_dict().items()}
    z = smooth_latents(6).view(2, 3, 4, 12, 16).transpose(1, 2)  # B x C x t x h x w
    out = q(z)
    tokens = q.encode_tokens(z)
    assert out.reconstruction.shape == z.shape
    assert all(torch.equal(a, b) for a, b in zip(out.tokens, tokens))
    for k, (t, (h, w)) in enumerate(zip(tokens, scale_shapes(SCALES, 12, 16))):
        assert t.dtype == torch.int64 and t.shape[0] == 6 and t.shape[-2:] == (h, w)
        assert t.shape == ((6, h, w) if kind == "codebook" else (6, 4, h, w))
        assert int(t.min()) >= 0 and int(t.max()) < (32 if kind == "codebook" else 2)
    decoded = q.tokens_to_latent(tokens)  # N x C x h x w, frames sample-major
    assert torch.equal(decoded, out.reconstruction.transpose(1, 2).reshape(6, 4, 12, 16))
    # t folded into the batch, sample-major: the same tokens as the frames given one by one
    assert all(torch.equal(a, b) for a, b in zip(tokens, q.encode_tokens(z.transpose(1, 2).reshape(6, 4, 12, 16))))
    assert out.kept_scales.tolist() == [4] * 6
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items()), "eval changed the quantizer's state"


@pytest.mark.parametrize("kind", ["codebook", "bitwise"])
def test_error_falls_as_scales_are_added(kind: str) -> None:
    torch.manual_seed(1)
    q = tiny(kind, dead_code_window=2)
    train(q, 12, n=16)
    z = smooth_latents(16)
    tokens = q.encode_tokens(z)
    with torch.no_grad():
        errors = [float((q.tokens_to_latent(tokens, k, latent_hw=(12, 16)) - z).square().mean()) for k in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * float(z.square().mean()), errors
    # a truncated stream names its latent size: the coarse tokens do not say it
    with pytest.raises(ValueError, match="latent_hw"):
        q.tokens_to_latent(tokens[:2])


@pytest.mark.parametrize("kind", ["codebook", "bitwise"])
def test_partials_extended_scale_by_scale_are_the_partial_reconstructions_bit_for_bit(kind: str) -> None:
    torch.manual_seed(2)
    q = tiny(kind)
    train(q, 2)
    z = smooth_latents(2)
    with torch.no_grad():
        maps = [q.code_map(k, t) for k, t in enumerate(q.encode_tokens(z))]
        maps[2] = maps[2] + 0.01 * torch.randn_like(maps[2])  # an expected code map: any values
        whole = q.partial_reconstructions(maps, (12, 16))
        partials: list[torch.Tensor] = []
        for code_map in maps:
            assert q.extend_partials(partials, code_map, (12, 16)) is partials[-1]
    assert len(partials) == len(whole) and all(torch.equal(a, b) for a, b in zip(partials, whole))
    with pytest.raises(ValueError, match="scale 1 is 6 x 8"):
        q.extend_partials(partials[:1], maps[0], (12, 16))
    with pytest.raises(ValueError, match="4 scales"):
        q.extend_partials(partials, maps[-1], (12, 16))


def test_scale_dropout_truncates_the_pyramid_at_rate_p_in_training_only() -> None:
    torch.manual_seed(2)
    # bitwise, gradient: this forward's values are the ones tokens_to_latent uses afterwards
    q = tiny("bitwise", "gradient", scale_dropout_p=0.3, scale_dropout_from=1)
    z = torch.randn(4000, 4, 4, 4)
    q.train()
    out = q(z)
    dropped = out.kept_scales == 1
    assert set(out.kept_scales.tolist()) == {1, 4}
    assert abs(float(dropped.float().mean()) - 0.3) < 0.03
    with torch.no_grad():
        coarse = q.tokens_to_latent(out.tokens, num_scales=1, latent_hw=(4, 4))
        full = q.tokens_to_latent(out.tokens)
    assert torch.allclose(out.reconstruction[dropped], coarse[dropped], atol=1e-6)
    assert torch.allclose(out.reconstruction[~dropped], full[~dropped], atol=1e-6)
    q.eval()
    assert (q(z).kept_scales == 4).all()
    assert MultiScaleQuantizer().config["scale_dropout_p"] == 0.2 and MultiScaleQuantizer().config["scale_dropout_from"] == 3


def test_ema_codebook_moves_toward_the_data_and_dead_codes_restart() -> None:
    torch.manual_seed(3)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    q = MultiScaleQuantizer(latent_channels=2, code_dim=2, codebook_size=5, scales=[1.0], refine_groups=0, ema_decay=0.7, dead_code_window=3)
    book = q.codebook
    with torch.no_grad():  # codes 0-3 half-way off their clusters, code 4 far from everything
        book.codebook.copy_(torch.cat([centers + 0.5, torch.tensor([[50.0, 50.0]])]))
        book.ema_sum.copy_(book.codebook)
        book.initialized.fill_(True)

    def batch() -> torch.Tensor:
        picks = centers[torch.randint(0, 4, (64,))] + 0.05 * torch.randn(64, 2)
        return picks.view(4, 4, 4, 2).permute(0, 3, 1, 2)  # 4 frames of 4 x 4 two-channel vectors

    q.train()
    restarts = []
    for _ in range(3):
        out = q(batch())
        restarts.append(out.stats.restarted.tolist())
    assert restarts == [[], [], [4]], "code 4, unused 3 steps in a row, restarts on the third"
    assert out.stats.counts[4] == 0 and out.stats.used_fraction == pytest.approx(0.8)
    distance_to_data = (book.codebook[4] - centers).norm(dim=1).min()
    assert distance_to_data < 0.3, "a restarted code is a vector of the current batch"
    off = (book.codebook[:4] - centers).norm(dim=1)
    assert (off < 0.1).all(), f"the codes stayed {off.tolist()} from their clusters (0.71 before training)"
    assert book.unused_steps[4] == 0


def _two_rank_worker(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same initial quantizer on both ranks
        q = tiny("codebook", "ema", codebook_size=16, dead_code_window=1, scales=[0.5, 1.0], refine_groups=1)
        torch.manual_seed(100 + rank)  # different data, and different global generators, per rank
        q.train()
        first = q(smooth_latents(2, 4, 4))  # initialization: every code restarted from rank 0's data
        after_init = q.codebook.codebook.clone()
        with torch.no_grad():
            q.codebook.codebook[3] = 100.0  # code 3 is never chosen: it must restart on both ranks
        z = smooth_latents(2, 4, 4)
        local = torch.bincount(torch.cat([t.reshape(-1) for t in q.encode_tokens(z)]), minlength=16)
        out = q(z)
        report = {
            "initial_restarts": first.stats.restarted.tolist(),
            "after_init": after_init.tolist(),
            "local_counts": local.tolist(),
            "global_counts": out.stats.counts.tolist(),
            "restarted": out.stats.restarted.tolist(),
            "codebook": q.codebook.codebook.tolist(),
            "ema_count": q.codebook.ema_count.tolist(),
        }
        Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_codebook_usage_and_restarts_are_the_same_on_two_gloo_ranks(tmp_path: Path) -> None:
    # forked, not spawned: a spawned child pays seconds for importing torch again
    ranks = mp.start_processes(_two_rank_worker, args=(str(tmp_path),), nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two gloo ranks did not finish in 120 s")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["initial_restarts"] == r1["initial_restarts"] == list(range(16))
    assert r0["after_init"] == r1["after_init"], "the initial codebook differs between ranks"
    assert r0["local_counts"] != r1["local_counts"], "the ranks saw the same data: the test proves nothing"
    summed = [a + b for a, b in zip(r0["local_counts"], r1["local_counts"])]
    assert r0["global_counts"] == r1["global_counts"] == summed
    assert r0["restarted"] == r1["restarted"] and 3 in r0["restarted"]
    assert r0["restarted"] == [i for i, c in enumerate(summed) if c == 0]
    assert r0["codebook"] == r1["codebook"] and r0["ema_count"] == r1["ema_count"]


@pytest.mark.parametrize(
    "change",
    [
        {"codebook_size": 1 << 30},
        {"code_dim": 100_000},
        {"scales": [0.01 * i for i in range(1, 101)]},
        {"scales": [0.5, 2.0]},
        {"kind": "scalar"},
        {"refine_groups": 1000},
        {"scales": [0.5, 0.25, 1.0]},  # in bounds, refused by the constructor
        {"kind": "bitwise", "code_dim": 100},
    ],
)
def test_a_forged_config_is_refused(change: dict) -> None:
    config = {**MultiScaleQuantizer(latent_channels=4, code_dim=4, codebook_size=8).config, **change}
    with pytest.raises(ComponentError):
        build_component("MultiScaleQuantizer", config)


@pytest.mark.parametrize("kind,update", [("codebook", "ema"), ("bitwise", "gradient")])
def test_export_round_trip_gives_identical_outputs(kind: str, update: str, tmp_path: Path) -> None:
    torch.manual_seed(4)
    q = tiny(kind, update)
    train(q, 2)
    save_component(q, tmp_path, "quantizer")
    loaded = load_component(tmp_path, "quantizer")
    assert type(loaded) is MultiScaleQuantizer and loaded.config == q.config
    z = smooth_latents(3)
    a, b = q(z), loaded.eval()(z)
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in q.state_dict().items())


def test_tokens_that_do_not_fit_are_refused() -> None:
    q = tiny()
    tokens = q.encode_tokens(smooth_latents(1))
    with pytest.raises(ValueError, match="indexes"):
        q.tokens_to_latent([tokens[0] + 32, *tokens[1:]])
    with pytest.raises(ValueError, match="scale 1"):
        q.tokens_to_latent([tokens[0], tokens[2]], latent_hw=(12, 16))
    with pytest.raises(ValueError, match="latent frames"):
        q(torch.zeros(1, 3, 12, 16))
