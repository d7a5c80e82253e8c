"""MultiScaleQuantizer: one latent frame as a pyramid of residual token maps, coarse to fine
(VAR's multi-scale residual quantization), the first component of the progressive family.

For a latent frame ``z`` (``N x C x h x w``; a ``B x C x t x h x w`` latent is folded to
``N = B * t`` frames, sample-major: frame ``i`` of sample ``b`` is ``b * t + i``)::

    f     = project_in(z)                        1x1 conv C -> D (identity when C == D)
    f_hat = 0
    for k, (h_k, w_k) in enumerate(scales):
        r_k    = area_down(f - f_hat, (h_k, w_k))
        tok_k  = quantize(r_k)                   codebook index or D sign bits per position
        f_hat += refine_g(k)(bicubic_up(code_map(tok_k), (h, w)))
    z_hat = project_out(f_hat)                   1x1 conv D -> C

``scales`` are fractions of the latent size (see ``scales.py``), so any latent size works and the
last scale is the latent itself. The refine convs (VAR's phi, ``h (1 - a) + conv3x3(h) a``, the
conv initialised to the identity) are shared by ``refine_groups`` contiguous runs of scales.

**Kinds.** ``kind="codebook"``: one codebook of ``codebook_size`` vectors shared by every scale
(``codebook.py``: EMA or gradient updates, dead-code restart, usage all-reduced across ranks);
a token is an int64 index. ``kind="bitwise"``: each of the D code channels is a sign bit
(``bitwise.py``); a token map is ``N x D x h_k x w_k`` int64 bits; ``codebook_size`` is unused.

**Training.** The reconstruction is straight-through: its value is the quantized ``z_hat`` and
the gradient reaches ``f`` (hence ``project_in``) unchanged, and also the refine convs, the code
values and ``project_out`` through ``f_hat``. Losses, averaged over the scales' cumulative
reconstructions ``f_hat_k`` (as VAR): ``commitment_loss = beta * mse(f, sg(f_hat_k))`` pulls the
code side's input to its quantization; ``codebook_loss = mse(f_hat_k, sg(f))`` trains the refine
convs (both kinds) and the code values of a gradient codebook, and is every partial pyramid's own
reconstruction target; ``entropy_loss`` is the bitwise kind's optional BSQ regularizer
(``entropy_weight``). ``loss`` is their sum (entropy weighted).

**Scale dropout** (training only): each latent frame, with probability ``scale_dropout_p``,
keeps only its scales ``< scale_dropout_from`` in the reconstruction (the finer scales are still
quantized, counted and trained by the losses above): the decoding side learns to reconstruct
from a truncated pyramid. Per frame, one draw each from torch's global generator.

**Exactness.** In eval mode ``tokens_to_latent(encode_tokens(z))`` equals ``forward(z)``'s
reconstruction bit for bit: both go through :meth:`code_map` and :meth:`_contribution` with the
same shapes and the same summation order. Everything runs in float32 (autocast off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.progressive.bitwise import SignBits
from gvc_train.models.progressive.codebook import VectorCodebook
from gvc_train.models.progressive.scales import Shape, area_down, bicubic_up, check_schedule, refine_group, scale_shapes
from gvc_train.models.progressive.sync import all_reduce_sum_
from gvc_train.models.registry import register_component

DEFAULT_SCALES = (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 1.0)  # 18 x 22 -> 1x1, 2x3, 5x6, 7x8, 9x11, 14x17, 18x22
MAX_BITS = 64


@dataclass
class QuantizerStats:
    """Code usage of one forward, global over ranks in training (local in eval).

    ``counts``: codebook: tokens per code over all scales (float32, ``codebook_size``); bitwise:
    ones per bit channel (float32, ``D``). ``perplexity``: codebook: ``exp`` of the usage
    entropy (nats); bitwise: ``exp`` of the summed per-bit entropies (as if bits were
    independent). ``used_fraction``: codes used at least once, or bit channels that took both
    values. ``restarted``: int64 indices of the codes restarted by this step (codebook, training).
    """

    counts: torch.Tensor
    perplexity: torch.Tensor
    used_fraction: torch.Tensor
    restarted: torch.Tensor


@dataclass
class QuantizerOutput:
    """What :meth:`MultiScaleQuantizer.forward` returns.

    ``reconstruction``: the input's layout (``N x C x h x w`` or ``B x C x t x h x w``), float32.
    ``tokens``: one map per scale, coarse to fine, frames folded (``N = B * t``): codebook
    ``idx_Nhw`` int64 in ``[0, codebook_size)``; bitwise ``bits_NDhw`` int64 in {0, 1}.
    ``kept_scales``: int64 ``N``, the scales each frame's reconstruction kept (all of them unless
    scale dropout truncated it). Losses are float32 scalars; ``loss`` is the total.
    """

    reconstruction: torch.Tensor
    tokens: list[torch.Tensor]
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    entropy_loss: torch.Tensor
    loss: torch.Tensor
    stats: QuantizerStats
    kept_scales: torch.Tensor


class RefineConv(nn.Module):
    """VAR's phi: ``h (1 - ratio) + conv3x3(h) ratio``; the conv starts as the identity."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.dirac_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, h_NDhw: torch.Tensor) -> torch.Tensor:
        return h_NDhw * (1.0 - self.ratio) + self.conv(h_NDhw) * self.ratio


@register_component("MultiScaleQuantizer")
class MultiScaleQuantizer(nn.Module):
    """Multi-scale residual quantizer of tokenizer latent frames (module docstring).

    ``latent_channels``: C of the tokenizer latent. ``scales``: fractions of the latent size,
    ``0 < f_1 < ... < f_K = 1``. ``kind``: ``"codebook"`` or ``"bitwise"``. ``codebook_size``:
    V (codebook kind). ``code_dim``: D, the code channels (bits per token for the bitwise kind,
    at most 64). ``refine_groups``: shared refine convs (0: none), ``refine_ratio`` their mix.
    ``commitment_beta``: weight of the commitment loss. ``codebook_update``: ``"ema"`` or
    ``"gradient"`` (codebook vectors, or bit magnitudes), ``ema_decay`` its decay.
    ``dead_code_window``: training steps a code may go unused before it is restarted (0: never).
    ``entropy_weight``: the bitwise kind's entropy regularizer (0: off). ``scale_dropout_p``,
    ``scale_dropout_from``: scale dropout's probability and first dropped scale (0-based, at least
    1; from the number of scales on, nothing is dropped).
    A CPU test size: ``latent_channels=4, code_dim=4, codebook_size=32, scales=[0.25, 0.5, 1]``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {"refine": ("refine",), "projections": ("project_in", "project_out")}

    # What a loaded config may hold (checked by gvc_train.components before building).
    config_bounds = {
        "latent_channels": (1, 1024), "code_dim": (1, 512), "codebook_size": (2, 1 << 15),
        "scales": (1e-4, 1.0), "len(scales)": (1, 32), "kind": {"codebook", "bitwise"},
        "refine_groups": (0, 16), "refine_ratio": (0.0, 1.0), "commitment_beta": (0.0, 100.0),
        "codebook_update": {"ema", "gradient"}, "ema_decay": (0.0, 1.0), "dead_code_window": (0, 1 << 20),
        "entropy_weight": (0.0, 100.0), "scale_dropout_p": (0.0, 1.0), "scale_dropout_from": (1, 32),
    }  # fmt: skip

    def __init__(
        self,
        latent_channels: int = 16,
        scales: Sequence[float] = DEFAULT_SCALES,  # jsonargparse: a Sequence, so a YAML list round-trips
        kind: str = "codebook",
        codebook_size: int = 4096,
        code_dim: int = 16,
        refine_groups: int = 4,
        refine_ratio: float = 0.5,
        commitment_beta: float = 0.25,
        codebook_update: str = "ema",
        ema_decay: float = 0.99,
        dead_code_window: int = 100,
        entropy_weight: float = 0.0,
        scale_dropout_p: float = 0.2,
        scale_dropout_from: int = 3,
    ) -> None:
        super().__init__()
        self.fractions = check_schedule(scales)
        num_scales = len(self.fractions)
        if kind not in ("codebook", "bitwise"):
            raise ValueError(f"kind must be 'codebook' or 'bitwise', got {kind!r}")
        if codebook_update not in ("ema", "gradient"):
            raise ValueError(f"codebook_update must be 'ema' or 'gradient', got {codebook_update!r}")
        if kind == "bitwise" and code_dim > MAX_BITS:
            raise ValueError(f"a bitwise code has at most {MAX_BITS} bits (code_dim), got {code_dim}")
        if not 0 <= refine_groups <= num_scales:
            raise ValueError(f"refine_groups must be in [0, {num_scales}] (the number of scales), got {refine_groups}")
        if scale_dropout_from < 1:
            raise ValueError(f"scale_dropout_from must be at least 1 (the first scale is always kept), got {scale_dropout_from}")
        if not 0.0 <= scale_dropout_p <= 1.0 or not 0.0 < ema_decay < 1.0:
            raise ValueError(f"scale_dropout_p must be in [0, 1] and ema_decay in (0, 1), got {scale_dropout_p}, {ema_decay}")
        self.latent_channels, self.code_dim, self.kind = latent_channels, code_dim, kind
        self.commitment_beta, self.entropy_weight = commitment_beta, entropy_weight
        self.scale_dropout_p, self.scale_dropout_from = scale_dropout_p, scale_dropout_from
        same = latent_channels == code_dim
        self.project_in = nn.Identity() if same else nn.Conv2d(latent_channels, code_dim, 1)
        self.project_out = nn.Identity() if same else nn.Conv2d(code_dim, latent_channels, 1)
        self.refine = nn.ModuleList(RefineConv(code_dim, refine_ratio) for _ in range(refine_groups))
        if kind == "codebook":
            self.codebook = VectorCodebook(codebook_size, code_dim, codebook_update, ema_decay, dead_code_window)
        else:
            self.bits = SignBits(num_scales, code_dim, codebook_update, ema_decay)

    @property
    def num_scales(self) -> int:
        return len(self.fractions)

    def scale_shapes(self, h: int, w: int) -> list[Shape]:
        """``(h_k, w_k)`` of every scale's token map for an ``h x w`` latent frame."""
        return scale_shapes(self.fractions, h, w)

    # ---- the residual loop --------------------------------------------------------------

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize latent frames ``z`` (``N x C x h x w`` or ``B x C x t x h x w``, float);
        see :class:`QuantizerOutput`. Training mode updates the codebook (or the bit
        magnitudes) and applies scale dropout; eval mode changes nothing."""
        z_NChw, frames = self._fold(z)
        out = self._quantize(z_NChw, train=self.training)
        if frames is not None:
            n, c, h, w = out.reconstruction.shape
            out.reconstruction = out.reconstruction.view(n // frames, frames, c, h, w).transpose(1, 2).contiguous()
        return out

    @torch.no_grad()
    def encode_tokens(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The token maps of ``z`` (layouts as ``forward``'s, frames folded), as in eval mode
        whatever the module's mode: no update, no dropout, no gradient."""
        return self._quantize(self._fold(z)[0], train=False).tokens

    def _quantize(self, z_NChw: torch.Tensor, train: bool) -> QuantizerOutput:
        with torch.autocast(device_type=z_NChw.device.type, enabled=False):
            f = self.project_in(z_NChw.float())
            target = f.detach()
            n, _, h, w = f.shape
            shapes = self.scale_shapes(h, w)
            # the residual keeps f's gradient only where the bitwise entropy regularizer needs it
            regularize = train and self.kind == "bitwise" and self.entropy_weight > 0
            source = f if regularize else target
            zero = f.new_zeros(())
            f_hat, prefix = torch.zeros_like(target), None
            tokens, quantized, observed = [], [], []
            commitment, codebook_loss, entropy = zero, zero, zero
            for k, shape in enumerate(shapes):
                r = area_down(source - f_hat.detach(), shape)
                if self.kind == "bitwise":
                    if train:
                        observed.append(self.bits.observe(k, r.detach()))
                    tok = SignBits.to_bits(r.detach())
                    if regularize:
                        entropy = entropy + self.bits.entropy_penalty(k, r)
                else:
                    vectors = r.detach().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
                    tok = self.codebook.nearest(vectors).view(n, *shape)
                    quantized.append(vectors)
                tokens.append(tok)
                f_hat = f_hat + self._contribution(k, self.code_map(k, tok), (h, w))
                commitment = commitment + F.mse_loss(f, f_hat.detach())
                codebook_loss = codebook_loss + F.mse_loss(f_hat, target)
                if k == self.scale_dropout_from - 1:
                    prefix = f_hat
            commitment = commitment * (self.commitment_beta / len(shapes))
            codebook_loss = codebook_loss / len(shapes)
            entropy = entropy / len(shapes)
            stats = self._stats(tokens, quantized, observed, train)
            kept = torch.full((n,), len(shapes), dtype=torch.int64, device=f.device)
            if train and self.scale_dropout_p > 0 and self.scale_dropout_from < len(shapes):
                drop = torch.rand(n, device=f.device) < self.scale_dropout_p
                f_hat = torch.where(drop.view(n, 1, 1, 1), prefix, f_hat)
                kept = torch.where(drop, self.scale_dropout_from, kept)
            if train:
                f_hat = f_hat + (f - target)  # straight-through: the value of f_hat, the gradient of f as well
            reconstruction = self.project_out(f_hat)
        loss = commitment + codebook_loss + self.entropy_weight * entropy
        return QuantizerOutput(reconstruction, tokens, commitment, codebook_loss, entropy, loss, stats, kept)

    def _stats(self, tokens: list[torch.Tensor], quantized: list[torch.Tensor], observed: list[torch.Tensor], train: bool) -> QuantizerStats:
        """Usage; in training also the codebook's (or the bits') update of this step."""
        restarted = torch.zeros(0, dtype=torch.int64, device=tokens[0].device)
        if self.kind == "codebook":
            idx = torch.cat([t.reshape(-1) for t in tokens])
            if train:
                counts, restarted = self.codebook.update(idx, torch.cat(quantized))
            else:
                counts = torch.bincount(idx, minlength=self.codebook.size).float()
            p = counts / counts.sum().clamp_min(1)
            perplexity = torch.exp(-(p * p.clamp_min(1e-12).log()).sum())
            used = (counts > 0).float().mean()
            return QuantizerStats(counts, perplexity, used, restarted)
        ones = torch.stack([t.sum((0, 2, 3)) for t in tokens]).sum(0).float()
        total = torch.tensor([float(sum(t[:, 0].numel() for t in tokens))], device=ones.device)
        if train:
            self.bits.finish(observed)
            both = all_reduce_sum_(torch.cat([ones, total]))
            ones, total = both[:-1], both[-1:]
        p = (ones / total).clamp(1e-12, 1 - 1e-12)
        entropy_nats = -(p * p.log() + (1 - p) * (1 - p).log())
        used = ((ones > 0) & (ones < total)).float().mean()
        return QuantizerStats(ones, torch.exp(entropy_nats.sum()), used, restarted)

    # ---- from tokens back to the latent (the decoder side) ----------------------------------

    def code_map(self, scale: int, tokens: torch.Tensor) -> torch.Tensor:
        """The code values of one scale's token map, ``N x D x h_k x w_k`` float32: codebook
        ``idx_Nhw`` -> its code vectors; bitwise ``bits_NDhw`` -> ``(2b - 1) * m_scale``."""
        if self.kind == "bitwise":
            return self.bits.values(scale, tokens)
        return self.codebook.lookup(tokens).permute(0, 3, 1, 2).contiguous()

    def expected_code_map(self, scale: int, probs: torch.Tensor) -> torch.Tensor:
        """The expected code values under predicted probabilities, ``N x D x h_k x w_k``:
        codebook ``probs_NhwV`` (over the codes), bitwise ``p_NDhw`` (probability of bit 1).
        What the context model may put in place of a scale that was not sent."""
        if self.kind == "bitwise":
            return self.bits.values(scale, probs)
        return self.codebook.expected(probs.float()).permute(0, 3, 1, 2).contiguous()

    def code_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """Codebook kind: the code vectors of indexes ``idx`` (any shape), ``idx.shape x D``."""
        if self.kind != "codebook":
            raise ValueError("code_vectors is for the codebook kind; a bitwise quantizer maps bits with bits_to_values")
        return self.codebook.lookup(idx)

    def bits_to_values(self, scale: int, bits_NDhw: torch.Tensor) -> torch.Tensor:
        """Bitwise kind: bits (or bit probabilities) -> code values ``(2b - 1) * m_scale``."""
        if self.kind != "bitwise":
            raise ValueError("bits_to_values is for the bitwise kind; a codebook quantizer maps indexes with code_vectors")
        return self.bits.values(scale, bits_NDhw)

    @staticmethod
    def values_to_bits(values_NDhw: torch.Tensor) -> torch.Tensor:
        """Bitwise kind: code values (or residuals) -> their sign bits, int64 in {0, 1}."""
        return SignBits.to_bits(values_NDhw)

    def _contribution(self, scale: int, code_map_NDhw: torch.Tensor, latent_hw: Shape) -> torch.Tensor:
        """One scale's share of ``f_hat``: upsampled to the latent size, then refined."""
        h = bicubic_up(code_map_NDhw, latent_hw)
        if len(self.refine):
            h = self.refine[refine_group(scale, self.num_scales, len(self.refine))](h)
        return h

    def partial_reconstructions(self, code_maps: list[torch.Tensor], latent_hw: Shape) -> list[torch.Tensor]:
        """``f_hat`` after each given scale (code space, ``N x D x h x w``): the scales'
        code maps (from :meth:`code_map` or :meth:`expected_code_map`), coarse to fine."""
        self._check_shapes([m.shape[-2:] for m in code_maps], latent_hw)
        out: list[torch.Tensor] = []
        for code_map in code_maps:
            self._add_scale(out, code_map, latent_hw)
        return out

    def extend_partials(self, partials: list[torch.Tensor], code_map: torch.Tensor, latent_hw: Shape) -> torch.Tensor:
        """Append to ``partials`` (the :meth:`partial_reconstructions` of scales ``1..k``, in
        place) ``f_hat`` after the next scale, whose code map is ``code_map``; returns it. One
        scale at a time, the same values bit for bit as :meth:`partial_reconstructions` of all
        the maps (the same operations on the same tensors), without recomputing the coarser
        scales: what a coder that learns the scales one by one needs."""
        k = len(partials)
        want = self.scale_shapes(*latent_hw)
        if k >= len(want) or tuple(code_map.shape[-2:]) != want[k]:
            where = f"scale {k} is {want[k][0]} x {want[k][1]}" if k < len(want) else f"it has {len(want)} scales"
            raise ValueError(f"a {latent_hw[0]} x {latent_hw[1]} latent: {where}, got a map of {tuple(code_map.shape[-2:])} after {k} scales")
        return self._add_scale(partials, code_map, latent_hw)

    def _add_scale(self, partials: list[torch.Tensor], code_map: torch.Tensor, latent_hw: Shape) -> torch.Tensor:
        f_hat = partials[-1] if partials else code_map.new_zeros(code_map.shape[0], self.code_dim, *latent_hw)
        f_hat = f_hat + self._contribution(len(partials), code_map, latent_hw)
        partials.append(f_hat)
        return f_hat

    def next_scale_inputs(self, tokens: list[torch.Tensor], latent_hw: Shape | None = None) -> list[torch.Tensor]:
        """VAR's teacher-forcing inputs: for each given scale k with a finer scale k + 1, the
        code-space ``f_hat`` after scale k, area-downsampled to scale k + 1's shape
        (``N x D x h_{k+1} x w_{k+1}``). What the context model sees of the coarser scales."""
        latent_hw = self._latent_hw(tokens, latent_hw)
        shapes = self.scale_shapes(*latent_hw)
        maps = [self.code_map(k, t) for k, t in enumerate(tokens)]
        partial = self.partial_reconstructions(maps, latent_hw)
        return [area_down(f_hat, shapes[k + 1]) for k, f_hat in enumerate(partial) if k + 1 < len(shapes)]

    def code_maps_to_latent(self, code_maps: list[torch.Tensor], latent_hw: Shape) -> torch.Tensor:
        """The latent (``N x C x h x w``) from the code maps of the first ``len(code_maps)``
        scales; the finer scales contribute nothing."""
        return self.project_out(self.partial_reconstructions(code_maps, latent_hw)[-1])

    def tokens_to_latent(self, tokens: list[torch.Tensor], num_scales: int | None = None, latent_hw: Shape | None = None) -> torch.Tensor:
        """The latent (``N x C x h x w``, float32) from the first ``num_scales`` token maps
        (default: all given); the finer scales contribute nothing. ``latent_hw`` is needed
        unless every scale is given (the last map is then the latent's size). Token maps that
        do not fit the schedule, indexes out of the codebook or bits not in {0, 1} raise
        ValueError. Bit-exact with the eval ``forward`` when every scale is given."""
        num_scales = len(tokens) if num_scales is None else num_scales
        if not 1 <= num_scales <= len(tokens):
            raise ValueError(f"num_scales must be in [1, {len(tokens)}] (the token maps given), got {num_scales}")
        latent_hw = self._latent_hw(tokens, latent_hw)
        tokens = tokens[:num_scales]
        self._check_tokens(tokens)
        return self.code_maps_to_latent([self.code_map(k, t) for k, t in enumerate(tokens)], latent_hw)

    # ---- layouts and checks -------------------------------------------------------------------

    def _fold(self, z: torch.Tensor) -> tuple[torch.Tensor, int | None]:
        if z.ndim not in (4, 5) or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected latent frames N x {self.latent_channels} x h x w or B x {self.latent_channels} x t x h x w, got {tuple(z.shape)}")
        if z.ndim == 4:
            return z, None
        b, c, t, h, w = z.shape
        return z.transpose(1, 2).reshape(b * t, c, h, w), t

    def _latent_hw(self, tokens: list[torch.Tensor], latent_hw: Shape | None) -> Shape:
        if not tokens or len(tokens) > self.num_scales:
            raise ValueError(f"expected 1 to {self.num_scales} token maps, got {len(tokens)}")
        if latent_hw is None:
            if len(tokens) < self.num_scales:
                raise ValueError(f"{len(tokens)} of {self.num_scales} scales given: pass latent_hw, the latent frame's (h, w)")
            latent_hw = tuple(tokens[-1].shape[-2:])
        h, w = (int(v) for v in latent_hw)
        return h, w

    def _check_shapes(self, got: list[Sequence[int]], latent_hw: Shape) -> None:
        want = self.scale_shapes(*latent_hw)
        if not got or len(got) > len(want):
            raise ValueError(f"expected 1 to {len(want)} scales, got {len(got)}")
        for k, (g, s) in enumerate(zip(got, want)):
            if tuple(g) != s:
                raise ValueError(f"scale {k} of a {latent_hw[0]} x {latent_hw[1]} latent is {s[0]} x {s[1]}, got a map of {tuple(g)}")

    def _check_tokens(self, tokens: list[torch.Tensor]) -> None:
        n = tokens[0].shape[0] if tokens[0].ndim else -1
        for k, t in enumerate(tokens):
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.ndim < 3 or t.shape[0] != n:
                raise ValueError(f"scale {k}: token maps are integer tensors of {n} frames, got {t.dtype} {tuple(t.shape)}")
            if self.kind == "bitwise":
                ok = t.ndim == 4 and t.shape[1] == self.code_dim and bool(((t == 0) | (t == 1)).all())
                what = f"N x {self.code_dim} x h x w bits in {{0, 1}}"
            else:
                ok = t.ndim == 3 and (t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < self.codebook.size))
                what = f"N x h x w indexes in [0, {self.codebook.size})"
            if not ok:
                raise ValueError(f"scale {k}: expected {what}, got {t.dtype} {tuple(t.shape)}")
