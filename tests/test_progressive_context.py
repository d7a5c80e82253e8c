"""The progressive family's context model (models/progressive/context_model.py) and its token
probabilities (token_probs.py): block-causal mask, cached decoding = full pass, training, both
token kinds, export round trip, forged configs, missing-scale prediction, fixed-point frequencies."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gvc_train.components import ComponentError, build_component, load_component, save_component
from gvc_train.models.progressive import token_probs
from gvc_train.models.progressive.context_model import ProgressiveContextModel

SCALES = [[1, 1], [2, 2], [3, 3], [4, 4]]  # what a quantizer gives a 4 x 4 latent frame
OTHER_SIZE = [[1, 2], [2, 3], [4, 5], [6, 7]]  # the same model at another frame size and aspect
D = 4  # code_dim
V = 16  # codebook size
BITS = D  # a bitwise token has one bit per code channel
TINY = dict(num_scales=len(SCALES), code_dim=D, width=32, depth=2, heads=2, mlp_ratio=2.0, pos_grid=3, context_grid=2, past_frames=2)
KINDS = ["codebook", "bitwise"]


def make(kind: str, **overrides: object) -> ProgressiveContextModel:
    torch.manual_seed(0)
    return ProgressiveContextModel(**{**TINY, "kind": kind, "codebook_size": V, **overrides}).eval()


def random_tokens(kind: str, batch: int = 2, skew: bool = False, scales: list[list[int]] = SCALES) -> list[torch.Tensor]:
    """Token maps of every scale (map layout); ``skew``: a far-from-uniform distribution."""
    out = []
    for h, w in scales:
        if kind == "codebook":
            t = torch.randint(0, 3 if skew else V, (batch, h, w))
        else:
            t = (torch.rand(batch, BITS, h, w) < (0.1 if skew else 0.5)).long()
        out.append(t)
    return out


class ToyQuantizer:
    """VAR's next-scale inputs from token maps: embed scale k, upsample it to the finest size and
    accumulate; the input of scale k is the accumulation of scales < k resampled to scale k."""

    def __init__(self, kind: str, scales: list[list[int]] = SCALES) -> None:
        g = torch.Generator().manual_seed(1)
        self.kind = kind
        self.scales = scales
        self.codebook = torch.randn(V, D, generator=g)
        self.bit_proj = torch.randn(BITS, D, generator=g)
        self.finest = tuple(scales[-1])

    def embed(self, k: int, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "codebook":
            if tokens.is_floating_point():  # probabilities B x h x w x V: the expected code vector
                return (tokens.float() @ self.codebook).permute(0, 3, 1, 2)
            return self.codebook[tokens].permute(0, 3, 1, 2)
        signs = 2 * tokens.float() - 1  # bits or P(bit = 1): +-1 codes or their expectation
        return torch.einsum("bchw,cd->bdhw", signs, self.bit_proj)

    def accumulate(self, f: torch.Tensor | None, k: int, tokens: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.embed(k, tokens), size=self.finest, mode="bilinear", align_corners=False)
        return up if f is None else f + up

    def input_of(self, f: torch.Tensor | None, k: int, batch: int) -> torch.Tensor:
        if f is None:
            return torch.zeros(batch, D, *self.scales[k])
        return F.adaptive_avg_pool2d(f, tuple(self.scales[k]))

    def inputs(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The K next-scale inputs for the K token maps (the last map is never used)."""
        batch, f, out = tokens[0].shape[0], None, []
        for k in range(len(self.scales)):
            out.append(self.input_of(f, k, batch))
            f = self.accumulate(f, k, tokens[k])
        return out


def assert_within(got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """Same shape, every value within ``atol`` (torch.testing.assert_close would import
    torch.distributed.tensor: seconds on a busy machine)."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    error = float((got.detach() - expected).abs().max()) if got.numel() else 0.0
    assert error <= atol, f"max error {error:.3g} > {atol:g}"


def past_entries(batch: int = 2, size: tuple[int, int] = (5, 7)) -> list[torch.Tensor]:
    """One past frame: its partial reconstructions after scales 1, 1..2, ..., 1..K."""
    return [torch.randn(batch, D, *size) for _ in SCALES]


def past_frames(batch: int = 2) -> list[list[torch.Tensor] | None]:
    return [past_entries(batch), None]  # the previous frame; the one before does not exist


# ---- the mask ---------------------------------------------------------------------------------


def test_block_mask_lets_each_level_see_its_past_entry_and_coarser_levels_only() -> None:
    model = make("codebook")
    lengths = [h * w for h, w in SCALES]
    mask, C = model.block_mask(lengths), model.level_context
    # the interleaved sequence: past entry 1, scale 1, past entry 2, scale 2, ...
    level = torch.tensor([k for k, n in enumerate(lengths) for _ in range(C + n)])
    is_past = torch.tensor([i < C for n in lengths for i in range(C + n)])
    assert C == 2 * 2 * 2 and model.context_tokens == C * len(SCALES) and mask.shape == (len(level),) * 2
    for q in range(len(level)):
        for s in range(len(level)):
            assert bool(mask[q, s]) == bool(level[s] <= level[q])
    # a position of scale k never sees a past entry finer than k
    scale_rows = ~is_past
    assert not (mask[scale_rows][:, is_past] & (level[is_past][None, :] > level[scale_rows][:, None])).any()


@pytest.mark.parametrize("kind", KINDS)
def test_changing_the_tokens_of_scale_k_moves_only_the_finer_scales(kind: str) -> None:
    model, quant = make(kind), ToyQuantizer(kind)
    torch.manual_seed(2)
    tokens, past = random_tokens(kind), past_frames()
    with torch.no_grad():
        base = model(quant.inputs(tokens), past)
        for k in range(len(SCALES)):
            changed = [t.clone() for t in tokens]
            changed[k] = (changed[k] + 1) % (V if kind == "codebook" else 2)
            out = model(quant.inputs(changed), past)
            for j in range(len(SCALES)):
                if j <= k:  # never its own scale or a finer one
                    assert torch.equal(out[j], base[j]), f"scale {j + 1} saw the tokens of scale {k + 1}"
                else:
                    assert not torch.allclose(out[j], base[j]), f"scale {j + 1} ignores the coarser scale {k + 1}"


def test_logits_of_scale_k_depend_on_the_inputs_of_scales_up_to_k_only() -> None:
    model = make("codebook")
    torch.manual_seed(3)
    inputs, past = [torch.randn(2, D, h, w) for h, w in SCALES], past_frames()
    with torch.no_grad():
        base = model(inputs, past)
        for k in range(len(SCALES)):
            moved = [x.clone() for x in inputs]
            moved[k] += 1.0
            out = model(moved, past)
            for j in range(len(SCALES)):
                assert torch.equal(out[j], base[j]) == (j < k), (j, k)


def test_past_entry_k_reaches_the_scales_from_k_on_only_and_a_missing_past_is_learned() -> None:
    """A stream cut after scale k gives the decoder the past frames' entries 1..k only: the
    logits of scales <= k must not depend on the finer entries."""
    model = make("codebook")
    torch.manual_seed(4)
    inputs = [torch.randn(2, D, h, w) for h, w in SCALES]
    entries = past_entries(size=(6, 6))
    with torch.no_grad():
        base = model(inputs, entries)
        for k in range(len(SCALES)):
            moved = [e.clone() for e in entries]
            moved[k] += 1.0
            out = model(inputs, moved)
            for j in range(len(SCALES)):
                assert torch.equal(out[j], base[j]) == (j < k), f"scale {j + 1} and past entry {k + 1}"
        other = model(inputs, past_entries(size=(6, 6)))
        assert all(not torch.allclose(x, y) for x, y in zip(base, other))
        none = model(inputs, None)
        assert all(torch.isfinite(x).all() for x in none)
        assert all(torch.equal(a, b) for a, b in zip(none, model(inputs, [None, None])))
        with pytest.raises(ValueError, match="past frames"):
            model(inputs, [entries] * 3)
        with pytest.raises(ValueError, match="partial reconstructions"):
            model(inputs, torch.randn(2, D, 6, 6))  # a bare tensor: the per-scale form is required
        with pytest.raises(ValueError, match="partial reconstructions"):
            model(inputs, entries[:2])


def test_the_aligned_past_shows_a_token_the_past_at_its_own_place() -> None:
    """Detail of the past frame that the pooled context averages away (a pattern of zero mean
    in every pooled cell) reaches the logits through the aligned past, and only through it."""
    torch.manual_seed(5)
    inputs = [torch.randn(2, D, h, w) for h, w in SCALES]
    entries = past_entries(size=(4, 4))
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2)  # zero mean in each 2 x 2 cell
    moved = [e + 3.0 * checker for e in entries]
    assert all(torch.allclose(F.adaptive_avg_pool2d(a, 2), F.adaptive_avg_pool2d(b, 2), atol=1e-6) for a, b in zip(entries, moved))
    with torch.no_grad():
        seeing, blind = make("codebook"), make("codebook", aligned_past=False)
        assert sum(p.numel() for p in seeing.parameters()) > sum(p.numel() for p in blind.parameters())
        finest = len(SCALES) - 1  # 4 x 4 tokens: the checkerboard survives the resampling
        assert not torch.allclose(seeing(inputs, entries)[finest], seeing(inputs, moved)[finest])
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(blind(inputs, entries), blind(inputs, moved)))


# ---- cached decoding --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("frames", "scales"), [(2, SCALES), (0, SCALES), (1, OTHER_SIZE)])
def test_cached_decoding_gives_the_full_pass_logits(kind: str, frames: int, scales: list[list[int]]) -> None:
    model, quant = make(kind, past_frames=frames), ToyQuantizer(kind, scales)
    torch.manual_seed(5)
    inputs = quant.inputs(random_tokens(kind, scales=scales))
    past = past_frames() if frames else None
    with torch.no_grad():
        full = model(inputs, past)
        steps = model.start_frame(past, batch=2)
        cached = [steps.step(k, x) for k, x in enumerate(inputs)]
        again = model.cached_logits(inputs, past)
    for k, (f, c, a) in enumerate(zip(full, cached, again)):
        assert c.shape == f.shape == (2, scales[k][0] * scales[k][1], V if kind == "codebook" else BITS)
        assert_within(c, f, 1e-5)
        assert torch.equal(a, c), "cached_logits is the same computation as the decoder's steps"


def test_scales_are_stepped_in_order_with_inputs_of_their_size() -> None:
    model = make("codebook")
    steps = model.start_frame(None, batch=1)
    with pytest.raises(ValueError, match="in order"):
        steps.step(1, torch.zeros(1, D, 2, 2))
    steps.step(0, torch.zeros(1, D, 1, 1))
    with pytest.raises(ValueError, match="expected"):
        steps.step(1, torch.zeros(2, D, 2, 2))


# ---- training and rate ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rate_bits_is_the_cross_entropy_in_bits_per_scale(kind: str) -> None:
    model, quant = make(kind), ToyQuantizer(kind)
    torch.manual_seed(6)
    tokens = random_tokens(kind)
    logits = model(quant.inputs(tokens), None)
    rate = model.rate_bits(logits, tokens)
    assert rate.shape == (2, len(SCALES))
    for k, (lg, tk) in enumerate(zip(logits, tokens)):
        p = model.probabilities(lg.detach())
        flat = token_probs.flat_tokens(tk, kind)
        if kind == "codebook":
            expected = -torch.log2(p.gather(-1, flat[..., None])).sum((1, 2))
        else:
            expected = -torch.log2(torch.where(flat == 1, p, 1 - p)).sum((1, 2))
        assert_within(rate[:, k].double(), expected, 1e-4)
    assert rate.sum().requires_grad


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_adam_steps_bring_the_rate_below_uniform(kind: str) -> None:
    model, quant = make(kind).train(), ToyQuantizer(kind)
    torch.manual_seed(7)
    tokens = random_tokens(kind, batch=4, skew=True)
    inputs, past = quant.inputs(tokens), past_entries(4, (4, 4))
    count = sum(h * w for h, w in SCALES) * 4
    uniform = count * (math.log2(V) if kind == "codebook" else BITS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(25):
        opt.zero_grad()
        loss = model.rate_bits(model(inputs, past), tokens).sum() / count
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(model.eval().rate_bits(model(inputs, past), tokens).sum())
    assert final < 0.7 * uniform, f"{final:.1f} bits, uniform {uniform:.1f}"


# ---- predicting missing scales ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("known", [0, 2])
def test_missing_scales_are_predicted_from_the_known_ones(kind: str, known: int) -> None:
    model, quant = make(kind), ToyQuantizer(kind)
    torch.manual_seed(8)
    tokens, past = random_tokens(kind), past_frames()
    f = None
    for k in range(known):
        f = quant.accumulate(f, k, tokens[k])
    inputs_known = quant.inputs(tokens)[:known] + [quant.input_of(f, known, 2)]
    calls: list[int] = []
    state = {"f": f}

    def next_input(k: int, pred: torch.Tensor) -> torch.Tensor:
        calls.append(k)
        state["f"] = quant.accumulate(state["f"], k, pred)
        return quant.input_of(state["f"], k + 1, 2)

    with torch.no_grad():
        preds = model.predict_missing_scales(inputs_known, next_input, past, mode="argmax")
        # The same tokens through the full pass: each prediction is the argmax of its logits.
        completed = tokens[:known] + preds
        logits = model(quant.inputs(completed), past)
    assert calls == list(range(known, len(SCALES) - 1))
    assert len(preds) == len(SCALES) - known
    for j, pred in enumerate(preds, start=known):
        h, w = SCALES[j]
        assert pred.shape == ((2, h, w) if kind == "codebook" else (2, BITS, h, w)) and pred.dtype == torch.int64
        assert torch.equal(pred, model.most_probable(logits[j], (h, w)))

    state["f"] = f
    with torch.no_grad():
        probs = model.predict_missing_scales(inputs_known, next_input, past, mode="probabilities")
    for j, p in enumerate(probs, start=known):
        h, w = SCALES[j]
        assert p.dtype == torch.float64 and ((p >= 0) & (p <= 1)).all()
        if kind == "codebook":
            assert p.shape == (2, h, w, V)
            assert_within(p.sum(-1), torch.ones(2, h, w, dtype=torch.float64), 1e-12)
        else:
            assert p.shape == (2, BITS, h, w)
    with pytest.raises(ValueError, match="mode"):
        model.predict_missing_scales(inputs_known, next_input, past, mode="sample")


# ---- export and forged configs ----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip_gives_identical_outputs(kind: str, tmp_path: Path) -> None:
    model = make(kind)
    torch.manual_seed(9)
    inputs, past = [torch.randn(1, D, h, w) for h, w in SCALES], past_frames(1)
    save_component(model, tmp_path, "context_model")
    loaded = load_component(tmp_path, "context_model")
    assert type(loaded) is ProgressiveContextModel and loaded.config == model.config
    with torch.no_grad():
        for a, b in zip(model(inputs, past), loaded(inputs, past)):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 1 << 20}, "out of bounds"),
        ({"codebook_size": 1 << 30}, "out of bounds"),
        ({"num_scales": 1000}, "out of bounds"),
        ({"pos_grid": 4096}, "out of bounds"),
        ({"past_frames": -1}, "out of bounds"),
        ({"kind": "gaussian"}, "must be one of"),
        ({"num_scales": "7"}, "must be an integer"),
        ({"depth": 48, "width": 2048, "mlp_ratio": 8.0}, "parameters"),
        ({"kind": "bitwise", "code_dim": 65}, "64 bits"),
        ({"width": 30, "heads": 4}, "multiple"),
    ],
)
def test_a_forged_config_is_refused_before_anything_is_built(change: dict[str, object], message: str) -> None:
    config = {**make("codebook").config, **change}
    with pytest.raises(ComponentError, match=message):
        build_component("ProgressiveContextModel", config)


# ---- fixed-point frequencies ------------------------------------------------------------------


def reference_frequencies(p: list[float], precision_bits: int) -> list[int]:
    """quantize_probs's rule in plain Python integers (the specification)."""
    a = [math.floor(Fraction(min(max(x, 0.0), 1.0)) * 2**token_probs.PROB_BITS) for x in p]
    if sum(a) == 0:
        a = [1] * len(a)
    spare = 2**precision_bits - len(p)
    base = [x * spare // sum(a) for x in a]
    rem = [x * spare % sum(a) for x in a]
    order = sorted(range(len(p)), key=lambda i: (-rem[i], i))
    extra = set(order[: spare - sum(base)])
    return [1 + b + (i in extra) for i, b in enumerate(base)]


def test_quantized_frequencies_are_exact_positive_and_a_pure_function_of_the_probabilities() -> None:
    torch.manual_seed(10)
    logits = torch.randn(6, 5, 300) * 4
    p = torch.softmax(logits.double(), dim=-1)
    for bits in (16, 20):
        freqs = token_probs.quantize_probs(p, bits)
        assert freqs.dtype == torch.int32 and freqs.shape == p.shape
        assert (freqs >= 1).all() and (freqs.sum(-1) == 2**bits).all()
        assert freqs.flatten(0, 1)[7].tolist() == reference_frequencies(p.flatten(0, 1)[7].tolist(), bits)
        # The same integers whatever the batch around a row, its memory layout or the thread count.
        assert torch.equal(token_probs.quantize_probs(p[2:3], bits), freqs[2:3])
        assert torch.equal(token_probs.quantize_probs(p.transpose(0, 1).contiguous(), bits), freqs.transpose(0, 1))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert torch.equal(token_probs.quantize_probs(p, bits), freqs)
        finally:
            torch.set_num_threads(threads)
    # A sharper distribution never gives a symbol less than 1; the most probable gets the most.
    sharp = torch.softmax(torch.tensor([[60.0, 0.0, -60.0, 0.0]]).double(), dim=-1)
    f = token_probs.quantize_probs(sharp, 8)
    assert f.tolist() == [[253, 1, 1, 1]] == [reference_frequencies(sharp[0].tolist(), 8)]


def test_quantized_frequencies_of_odd_inputs() -> None:
    q = token_probs.quantize_probs
    assert q(torch.zeros(1, 4), 4).tolist() == [[4, 4, 4, 4]], "an all-zero row becomes uniform"
    assert q(torch.tensor([[float("nan"), 1.0, -3.0]]), 4).tolist() == [[1, 14, 1]]
    assert q(torch.full((1, 3), 1 / 3), 4).tolist() == [[6, 5, 5]], "ties go to the lower index"
    assert q(torch.rand(2, 16), 4).tolist() == [[1] * 16] * 2, "V = 2^precision: every symbol 1"
    assert q(torch.tensor([[0.5, 0.5]], dtype=torch.float32), 30).sum().item() == 2**30
    bit = token_probs.bit_distributions(torch.tensor([0.0, 0.25, 1.0]))
    assert q(bit, 8).tolist() == [[255, 1], [192, 64], [1, 255]]
    with pytest.raises(ValueError, match="fit"):
        q(torch.rand(1, 17), 4)
    with pytest.raises(ValueError, match="precision_bits"):
        q(torch.rand(1, 2), 31)


def sorting_quantize_probs(p: torch.Tensor, precision_bits: int) -> torch.Tensor:
    """quantize_probs as it was first written (torch, a stable sort of every row), kept as the
    oracle of the vectorised one: streams coded with either must be the same bytes."""
    symbols, total = p.shape[-1], 1 << precision_bits
    p = torch.nan_to_num(p.detach().double(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
    a = torch.floor(p * float(1 << token_probs.PROB_BITS)).to(torch.int64)
    row_sum = a.sum(-1, keepdim=True)
    a = torch.where(row_sum == 0, torch.ones_like(a), a)
    row_sum = a.sum(-1, keepdim=True)
    spare = total - symbols
    scaled = a * spare
    base = torch.div(scaled, row_sum, rounding_mode="floor")
    remainder = scaled - base * row_sum
    missing = spare - base.sum(-1, keepdim=True)
    order = torch.sort(remainder, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(symbols).expand_as(order))
    return (1 + base + (rank < missing).to(torch.int64)).to(torch.int32)


def test_quantized_frequencies_equal_the_sorting_implementation_on_many_inputs() -> None:
    g = torch.Generator().manual_seed(13)
    for trial in range(240):
        symbols = int(torch.randint(1, 9 if trial % 3 == 0 else 600, (), generator=g))
        bits = int(torch.randint(max(1, (symbols - 1).bit_length()), token_probs.MAX_PRECISION_BITS + 1, (), generator=g))
        shape = (int(torch.randint(0, 4, (), generator=g)), int(torch.randint(1, 6, (), generator=g)), symbols)
        kind = trial % 6
        if kind == 0:  # model-like: peaked softmaxes
            p = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 6, dim=-1)
        elif kind == 1:  # unnormalised
            p = torch.rand(shape, generator=g, dtype=torch.float64)
        elif kind == 2:  # every remainder tied
            p = torch.full(shape, 1.0 / symbols, dtype=torch.float64)
        elif kind == 3:  # many ties and all-zero rows
            p = torch.randint(0, 3, shape, generator=g).double() / 8
        elif kind == 4:  # float32 input
            p = torch.softmax(torch.randn(shape, generator=g) * 3, dim=-1)
        else:  # NaN, infinities, negatives
            p = torch.randn(shape, generator=g, dtype=torch.float64)
            p[p > 1.5], p[p < -1.5], p[p.abs() < 0.05] = float("nan"), float("inf"), -float("inf")
        got = token_probs.quantize_probs(p, bits)
        assert got.dtype == torch.int32 and got.shape == p.shape
        assert torch.equal(got, sorting_quantize_probs(p, bits)), (trial, symbols, bits)
    # rows too large for one int64 key per entry take the stable-argsort path: the same integers
    p = torch.rand(2, 1 << 17, generator=g, dtype=torch.float64)
    assert torch.equal(token_probs.quantize_probs(p, 30), sorting_quantize_probs(p, 30))


def test_probabilities_of_the_cached_logits_quantize_for_a_coder() -> None:
    for kind in KINDS:
        model = make(kind)
        with torch.no_grad():
            logits = model.cached_logits([torch.zeros(1, D, 1, 1)] + [torch.randn(1, D, h, w) for h, w in SCALES[1:]], past_frames(1))
        p = model.probabilities(logits[-1])
        dists = p if kind == "codebook" else token_probs.bit_distributions(p)
        freqs = token_probs.quantize_probs(dists, 16)
        assert freqs.shape == ((1, 16, V) if kind == "codebook" else (1, 16, BITS, 2))
        assert (freqs.sum(-1) == 1 << 16).all()

