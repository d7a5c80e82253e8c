"""ProgressiveContextModel: the scale-wise autoregressive transformer of the progressive family.

A latent frame is a pyramid of token maps, scale 1 (coarsest, ``h_1 x w_1``) to scale K
(``h_K x w_K``), whose sizes the quantizer derives from the latent's size (MultiScaleQuantizer:
fractions of it), so the model takes each scale's size from its input and works at any frame
size: its only schedule setting is the number of scales K. The model predicts each scale's
tokens, the whole scale in one pass, from the coarser scales of the frame and from the past
decoded frames; those probabilities drive the entropy coder, and when a stream is cut they predict
the scales that were not sent.

**Inputs (VAR's teacher forcing).** The tokens of scale k are not fed in as such: the quantizer
turns the decoded scales ``< k`` into their accumulated reconstruction and resamples it to
``h_k x w_k``, the *next-scale input* of scale k (``B x code_dim x h_k x w_k``). Scale 1's input
is zeros (nothing decoded yet; MultiScaleQuantizer.next_scale_inputs gives scales 2..K): a
learned start embedding is added to it. Every token gets its scale's level embedding and a
position embedding: a learned ``pos_grid x pos_grid`` table per scale, resized (bilinear,
antialiased) to the scale's ``h_k x w_k``, so a position means the same place in the frame at
any frame size and aspect ratio.

**Past context, per scale.** A past frame is given as its K *partial reconstructions* (code
space, ``B x code_dim x H x W`` each, any size: MultiScaleQuantizer.partial_reconstructions of
its code maps): entry k is what its scales ``1 .. k`` reconstruct. Entry k of each of the
``past_frames`` past frames (most recent first) is average-pooled to ``context_grid x
context_grid`` tokens: the *past context of level k*, ``C = past_frames * context_grid^2``
tokens. A frame that does not exist yet (the first frames of a clip) is a learned "no past"
token instead, so the shapes never change.

**Aligned past** (``aligned_past``, on by default). The pooled context says what the past frame
looked like in the large; a token also gets, added to its embedding, the past frame *at its own
place*: entry k of each past frame area-resampled to ``h_k x w_k``, beside that entry minus entry
``k - 1`` (what the past frame's scale k itself added), projected to the width (zeros for a past
frame that does not exist). On carphone a fifth of the finest scale's tokens repeat the previous
frame's token at the same position; a 2 x 2 pooled context cannot see that, this can. It uses
past entries ``<= k`` only, so the block-causal argument below is unchanged.

The sequence interleaves the levels::

    [ past entry 1 | input of scale 1 | past entry 2 | input of scale 2 | ... | past entry K | input of scale K ]

Why per scale: a stream cut after scale K' gives the decoder the past frames' scales ``1 .. K'``
only, so their entries ``1 .. K'`` are exactly the encoder's, and the tokens of scales ``<= K'``
(the ones decoded from the stream) see nothing else of the past. Entries ``> K'`` are then the
decoder's own fill-in (the partial reconstructions of the predicted scales): they feed only the
scales ``> K'``, which the decoder predicts and never reads from the stream. The encoder never
sees a cut, so for those scales encoder and decoder probabilities differ, harmlessly: the
encoder's were used to code tokens that the cut stream no longer carries.

**Block-causal mask.** Level k is its past entry and its scale's positions; a position of level
k attends to every position of levels ``<= k``. Block k's own positions hold the reconstruction
of scales ``< k`` (VAR's mask ``d >= d^T``), so no output of scale k ever depends on a token of
scale k or finer, nor on a past entry finer than k: perturb the tokens of scale k (or past entry
k + 1) and the logits of scales ``<= k`` stay as they were (tested); in terms of the input maps,
the logits of scale k depend on the inputs and past entries of levels ``<= k`` only.

**Two paths, one computation.** ``forward`` runs every level in one pass under the mask
(training). :meth:`start_frame` then :meth:`ScaleSteps.step` run one level at a time (the past
entry k and the input of scale k) against the cached keys/values of the coarser levels (coding:
one pass per scale). They agree to float rounding (1e-5 in float32); the encoder and the decoder
must both use the cached path (:meth:`cached_logits` at the encoder) so that they compute the
probabilities with the same shapes and order, and quantize them with
:func:`token_probs.quantize_probs`. In float32 the cached path repeats itself exactly on one
machine at one thread count (the codecs run on one intra-op thread, codecs/determinism.py), but
MKL's GEMM can round differently with another thread count (see attention.py) or CPU kind:
bit-exact coding across CPUs needs a fixed-point port of :class:`ScaleSteps`, as the latent
family has.

Layouts: logits ``B x l_k x V`` (codebook) or ``B x l_k x D`` (bitwise: one bit per code channel,
``D = code_dim``), ``l_k = h_k * w_k`` row-major; token maps ``B x h_k x w_k`` int64 (codebook,
the quantizer's ``idx_Nhw``) or ``B x D x h_k x w_k`` in {0, 1} (bitwise, its ``bits_NDhw``). See
:mod:`token_probs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.progressive import token_probs
from gvc_train.models.progressive.attention import Block, KeyValue
from gvc_train.models.registry import register_component

# One past frame: its K partial reconstructions, coarse to fine (B x code_dim x H x W each).
PastFrame = Sequence[torch.Tensor]
# None (no past), one past frame, or past frames most recent first (None: before the clip).
Past = PastFrame | Sequence[PastFrame | None] | None
# next_input(k, prediction of scale k) -> next-scale input of scale k + 1 (0-based k); see complete()
NextInput = Callable[[int, torch.Tensor], torch.Tensor]
MAX_PARAMETERS = 1 << 31


@register_component("ProgressiveContextModel")
class ProgressiveContextModel(nn.Module):
    """Block-causal transformer over the token pyramid of one latent frame (module docstring).

    ``num_scales``: K, the quantizer's number of scales. ``code_dim``: D, channels of the
    next-scale inputs and of the past reconstructions (the quantizer's code space). ``kind``:
    ``"codebook"`` (categorical over ``codebook_size`` indexes) or ``"bitwise"`` (D Bernoulli per
    token, one per code channel; ``codebook_size`` is then unused). ``width``, ``depth``,
    ``heads``, ``mlp_ratio``: the transformer. ``pos_grid``: side of each scale's learned
    position table. ``context_grid``, ``past_frames``: the past context, ``past_frames *
    context_grid^2`` tokens per scale (``past_frames=0``: none). ``aligned_past``: add each past
    frame at the token's own place to its embedding (module docstring). ``dropout``: on attention
    weights and residual branches, in training only.
    A CPU test size is ``width=32, depth=2, heads=2, pos_grid=4``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {"blocks": ("blocks",), "inputs": ("input_proj", "context_proj", "aligned_proj"), "head": ("head_norm", "head")}

    # What a loaded config may hold (checked by gvc_train.components before building); the
    # constructor also bounds the parameter count.
    config_bounds = {
        "num_scales": (1, 32), "code_dim": (1, 1024), "kind": set(token_probs.KINDS), "codebook_size": (2, 1 << 16),
        "width": (8, 2048), "depth": (1, 48), "heads": (1, 64), "mlp_ratio": (0.25, 8.0), "pos_grid": (1, 64),
        "context_grid": (1, 16), "past_frames": (0, 8), "aligned_past": {True, False}, "dropout": (0.0, 0.9),
    }  # fmt: skip

    def __init__(
        self,
        num_scales: int = 7,
        code_dim: int = 16,
        kind: str = "codebook",
        codebook_size: int = 4096,
        width: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        pos_grid: int = 16,
        context_grid: int = 2,
        past_frames: int = 1,
        aligned_past: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kind == "bitwise" and code_dim > 64:
            raise ValueError(f"a bitwise token has at most 64 bits (code_dim), got {code_dim}")
        if kind not in token_probs.KINDS:
            raise ValueError(f"kind must be one of {token_probs.KINDS}, got {kind!r}")
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.kind = kind
        self.code_dim = code_dim
        self.num_scales = num_scales
        self.outputs = codebook_size if kind == "codebook" else code_dim
        self.level_context = past_frames * context_grid * context_grid  # past tokens of one level
        self.context_tokens = num_scales * self.level_context
        self.context_grid = context_grid
        self.past_frames = past_frames
        estimate = depth * width * width * (4 + 2 * mlp_ratio) + width * (num_scales * pos_grid**2 + self.outputs + code_dim)
        if estimate > MAX_PARAMETERS:
            raise ValueError(f"about {estimate:.3g} parameters is more than {MAX_PARAMETERS}")

        self.input_proj = nn.Linear(code_dim, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.level_embed = nn.Parameter(torch.zeros(num_scales, width))
        self.pos_embed = nn.Parameter(torch.zeros(num_scales, width, pos_grid, pos_grid))  # resized to each scale's size
        self.context_proj = nn.Linear(code_dim, width)
        self.context_pos = nn.Parameter(torch.zeros(num_scales, self.level_context, width))
        self.no_past = nn.Parameter(torch.zeros(past_frames, width))
        # each past frame at the token's place: its entry k and entry k minus entry k - 1
        self.aligned_proj = nn.Linear(2 * code_dim * past_frames, width) if aligned_past and past_frames else None
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.head_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.outputs)
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for p in (self.start, self.level_embed, self.pos_embed, self.context_pos, self.no_past):
            nn.init.trunc_normal_(p, std=0.02)
        for block in self.blocks:  # residual branches scaled down with depth (GPT-2, VAR)
            block.attn.proj.weight.data.div_((2 * depth) ** 0.5)
            block.mlp[-1].weight.data.div_((2 * depth) ** 0.5)
        self.head.weight.data.mul_(0.1)  # start near uniform: a first rate near log2(V) bits

    # ---- embeddings ---------------------------------------------------------------------------

    def context(self, past: Past, batch: int, frames: Sequence[PastFrame | None] | None = None) -> list[torch.Tensor]:
        """The past context of every level: K tensors ``B x C x width`` (``C = past_frames *
        context_grid^2``), entry k of every past frame, most recent first.

        ``past``: one past frame (a sequence of its K partial reconstructions ``B x code_dim x H
        x W``, coarse to fine), or a sequence of past frames, most recent first, at most
        ``past_frames`` (None: a frame before the start of the clip), or None.
        """
        frames = self.as_past_frames(past) if frames is None else frames
        return [self.context_of_level(k, frames, batch) for k in range(self.num_scales)]

    def context_of_level(self, k: int, frames: Sequence[PastFrame | None], batch: int) -> torch.Tensor:
        """The past context of level ``k`` (0-based), ``B x C x width``: entry k of each of the
        ``frames`` (as :meth:`as_past_frames` gives them) pooled, or the "no past" token. It reads
        entry k only, so a frame whose finer entries are not known yet will do (scale-major decoding)."""
        if not frames:
            return self.pos_embed.new_zeros(batch, 0, self.pos_embed.shape[1])
        cells = self.context_grid * self.context_grid
        parts = []
        for age, frame in enumerate(frames):
            if frame is None:
                parts.append(self.no_past[age].expand(batch, cells, -1))
                continue
            if len(frame) <= k:
                raise ValueError(f"past frame {age} has {len(frame)} partial reconstructions; scale {k + 1} needs entry {k + 1}")
            entry = frame[k]
            if entry.dim() != 4 or entry.shape[0] != batch or entry.shape[1] != self.code_dim:
                raise ValueError(f"past frame {age}, entry {k + 1}: expected {batch} x {self.code_dim} x H x W, got {tuple(entry.shape)}")
            pooled = F.adaptive_avg_pool2d(entry.float(), self.context_grid)  # B x D x g x g
            parts.append(self.context_proj(pooled.flatten(2).transpose(1, 2)))
        return torch.cat(parts, dim=1) + self.context_pos[k]

    def as_past_frames(self, past: Past, complete: bool = True) -> list[PastFrame | None]:
        """``past`` as exactly ``past_frames`` entries, each None or K tensors (``complete=False``:
        or fewer, still growing: the decoder of a scale-major stream adds entry k of a past frame
        before a later frame's scale k needs it; entries are then checked where they are read)."""
        if isinstance(past, torch.Tensor):
            raise ValueError(
                f"past is per scale: give a past frame as its {self.num_scales} partial reconstructions "
                "(MultiScaleQuantizer.partial_reconstructions), not one tensor"
            )
        if past is None:
            frames: list[PastFrame | None] = []
        elif len(past) and isinstance(past[0], torch.Tensor):
            frames = [past]  # one frame's entries
        else:
            frames = list(past)
        if len(frames) > self.past_frames and any(f is not None for f in frames[self.past_frames :]):
            raise ValueError(f"{len(frames)} past frames given; the model was built for {self.past_frames}")
        frames = (frames + [None] * self.past_frames)[: self.past_frames]
        for age, frame in enumerate(frames):
            if frame is not None and not complete and not isinstance(frame, torch.Tensor):
                continue
            if frame is not None and (isinstance(frame, torch.Tensor) or len(frame) != self.num_scales):
                got = "one tensor" if isinstance(frame, torch.Tensor) else f"{len(frame)} entries"
                raise ValueError(f"past frame {age}: expected its {self.num_scales} partial reconstructions (one per scale), got {got}")
            for k, entry in enumerate(frame or ()):
                if entry.dim() != 4 or entry.shape[1] != self.code_dim:
                    raise ValueError(f"past frame {age}, entry {k + 1}: expected B x {self.code_dim} x H x W, got {tuple(entry.shape)}")
        return frames

    def scale_tokens(self, k: int, input_BDhw: torch.Tensor, batch: int, frames: Sequence[PastFrame | None] = ()) -> torch.Tensor:
        """The embedded next-scale input ``B x D x h_k x w_k`` of scale ``k`` (0-based): ``B x
        l_k x width``. ``frames``: the past frames as :meth:`as_past_frames` gives them (for the
        aligned past; none: as if no past)."""
        if not 0 <= k < self.num_scales:
            raise ValueError(f"scale index {k} is not in [0, {self.num_scales})")
        if input_BDhw.dim() != 4 or input_BDhw.shape[0] != batch or input_BDhw.shape[1] != self.code_dim:
            raise ValueError(f"input of scale {k + 1}: expected {batch} x {self.code_dim} x h x w, got {tuple(input_BDhw.shape)}")
        h, w = input_BDhw.shape[-2:]
        x = input_BDhw.float().flatten(2).transpose(1, 2)
        tokens = self.input_proj(x) + self.level_embed[k] + self.positions(k, (h, w))
        if self.aligned_proj is not None and any(f is not None for f in frames):
            tokens = tokens + self.aligned_past(k, frames, (h, w), batch)
        return tokens + self.start if k == 0 else tokens

    def aligned_past(self, k: int, frames: Sequence[PastFrame | None], size: tuple[int, int], batch: int) -> torch.Tensor:
        """The past frames at scale ``k``'s places (module docstring), projected: ``B x l_k x width``."""
        features = []
        for frame in frames:
            if frame is None:
                features.append(self.start.new_zeros(batch, 2 * self.code_dim, *size))
                continue
            here = F.adaptive_avg_pool2d(frame[k].float(), size)
            coarser = F.adaptive_avg_pool2d(frame[k - 1].float(), size) if k else torch.zeros_like(here)
            features += [here, here - coarser]
        return self.aligned_proj(torch.cat(features, 1).flatten(2).transpose(1, 2))

    def positions(self, k: int, size: tuple[int, int]) -> torch.Tensor:
        """Scale ``k``'s position embeddings at ``size = (h, w)``: ``l x width`` (row-major)."""
        table = self.pos_embed[k]
        if tuple(table.shape[-2:]) != tuple(size):
            table = F.interpolate(table[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        return table.flatten(1).transpose(0, 1)

    def logits_of(self, hidden_BLC: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(hidden_BLC))

    def block_mask(self, lengths: Sequence[int]) -> torch.Tensor:
        """``N x N`` booleans over the interleaved sequence (past entry 1, scale 1, past entry 2,
        ...; ``lengths``: ``l_k`` of each scale): True where a query may attend (its own level and
        coarser ones)."""
        sizes = torch.tensor([n for length in lengths for n in (self.level_context, length)], device=self.start.device)
        levels = torch.arange(len(lengths), device=sizes.device).repeat_interleave(2)
        ids = torch.repeat_interleave(levels, sizes)
        return ids[None, :] <= ids[:, None]

    # ---- the full pass (training) -------------------------------------------------------------

    def forward(self, inputs_per_scale: Sequence[torch.Tensor], past: Past = None) -> list[torch.Tensor]:
        """Logits of every scale in one block-causal pass: a list of K tensors ``B x l_k x V``
        (codebook) or ``B x l_k x D`` (bitwise).

        ``inputs_per_scale``: the K next-scale inputs ``B x D x h_k x w_k`` (the first is zeros).
        ``past``: see :meth:`context`.
        """
        if len(inputs_per_scale) != self.num_scales:
            raise ValueError(f"expected the inputs of {self.num_scales} scales, got {len(inputs_per_scale)}")
        batch = inputs_per_scale[0].shape[0]
        frames = self.as_past_frames(past)
        context = self.context(past, batch, frames)  # checks the past's batch size too
        scales = [self.scale_tokens(k, inp, batch, frames) for k, inp in enumerate(inputs_per_scale)]
        lengths = [t.shape[1] for t in scales]
        x = torch.cat([part for level in zip(context, scales) for part in level], dim=1)
        mask = self.block_mask(lengths)
        for block in self.blocks:
            x, _ = block(x, mask)
        parts = x.split([n for length in lengths for n in (self.level_context, length)], dim=1)
        return [self.logits_of(part) for part in parts[1::2]]

    def rate_bits(self, logits_per_scale: Sequence[torch.Tensor], tokens_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the true tokens in bits, ``B x K`` (each frame's bits per scale): the
        rate an ideal coder reaches with these probabilities. Differentiable (the training loss).
        Tokens in map or flat layout (module docstring); as many scales as logits (a prefix of
        the pyramid is fine)."""
        if len(logits_per_scale) != len(tokens_per_scale):
            raise ValueError(f"{len(logits_per_scale)} scales of logits but {len(tokens_per_scale)} of tokens")
        return torch.stack([token_probs.token_bits(lg, tk, self.kind).sum(1) for lg, tk in zip(logits_per_scale, tokens_per_scale)], dim=1)

    # ---- the cached path (coding) -------------------------------------------------------------

    def start_frame(self, past: Past, batch: int) -> ScaleSteps:
        """Begin one frame of ``batch`` items with its past (see :meth:`context`). Then call
        ``step(k, input_k)`` for k = 0, 1, ... in order: step k runs the past entry k and the
        input of scale k against the cache. For coding: in eval mode (no dropout), under
        ``torch.no_grad()``."""
        return ScaleSteps(self, past, batch)

    def cached_logits(self, inputs_per_scale: Sequence[torch.Tensor], past: Past = None) -> list[torch.Tensor]:
        """What the encoder computes: the logits of every scale through the cached path, scale by
        scale, exactly as the decoder will (same shapes, same order)."""
        steps = self.start_frame(past, inputs_per_scale[0].shape[0])
        return [steps.step(k, inp) for k, inp in enumerate(inputs_per_scale)]

    # ---- probabilities ------------------------------------------------------------------------

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Float64 probabilities of the logits: softmax ``B x l x V`` (codebook) or P(bit = 1)
        ``B x l x D`` (bitwise). For the coder: :func:`token_probs.quantize_probs` (bitwise:
        of :func:`token_probs.bit_distributions`)."""
        return token_probs.probabilities(logits, self.kind)

    def most_probable(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The most probable tokens of a scale of ``size = (h, w)`` in map layout: ``B x h x w``
        int64 (argmax, lowest index on ties) or ``B x D x h x w`` int64 (1 where P(bit = 1) > 0.5)."""
        best = logits.argmax(-1) if self.kind == "codebook" else (logits > 0).to(torch.int64)
        return token_probs.map_layout(best, self.kind, size)

    def predict_missing_scales(
        self, inputs_known: Sequence[torch.Tensor], next_input: NextInput, past: Past = None, mode: str = "argmax"
    ) -> list[torch.Tensor]:
        """Scales ``k + 1 .. K`` of a frame whose scales ``1 .. k`` are known (a cut stream).

        ``inputs_known``: the next-scale inputs of scales ``1 .. k + 1`` (k + 1 maps; the last is
        what the known scales reconstruct, at scale k + 1's size). Runs the known scales through
        the cache, then :meth:`ScaleSteps.complete`; see there for ``next_input`` and ``mode``.
        """
        if not 1 <= len(inputs_known) <= self.num_scales:
            raise ValueError(f"give the inputs of 1 to {self.num_scales} scales, got {len(inputs_known)}")
        steps = self.start_frame(past, inputs_known[0].shape[0])
        for k, inp in enumerate(inputs_known[:-1]):
            steps.step(k, inp)
        return steps.complete(inputs_known[-1], next_input, mode)


class ScaleSteps:
    """One frame decoded scale by scale with a key/value cache (:meth:`ProgressiveContextModel.start_frame`).

    ``step(k, input_k)`` returns the logits of scale k and appends that level's keys/values (past
    entry k, then scale k's positions), so scale k attends to the past entries and scales ``<= k``
    exactly as in the full pass.
    """

    def __init__(self, model: ProgressiveContextModel, past: Past, batch: int) -> None:
        self.model = model
        self.batch = batch
        self.next_scale = 0
        # Read lazily: step k reads entries k (and k - 1) of the past frames only, so they may
        # still be growing (a scale-major decoder); the values are those of the full pass.
        self.frames = model.as_past_frames(past, complete=False)
        self.cache: list[KeyValue | None] = [None] * len(model.blocks)

    def step(self, k: int, input_BDhw: torch.Tensor) -> torch.Tensor:
        """Logits of scale ``k`` (0-based, in order), ``B x l_k x V`` or ``B x l_k x D``, from
        its next-scale input ``B x D x h_k x w_k``."""
        if k != self.next_scale:
            raise ValueError(f"scales are stepped in order: expected scale index {self.next_scale}, got {k}")
        context = self.model.context_of_level(k, self.frames, self.batch)
        x = torch.cat([context, self.model.scale_tokens(k, input_BDhw, self.batch, self.frames)], dim=1)
        for i, block in enumerate(self.model.blocks):
            x, self.cache[i] = block(x, None, self.cache[i], plain=True)  # own level and all cached: visible
        self.next_scale += 1
        return self.model.logits_of(x[:, self.model.level_context :])

    def complete(self, first_input: torch.Tensor, next_input: NextInput, mode: str = "argmax") -> list[torch.Tensor]:
        """Predict every scale not stepped yet, in order, each from the prediction of the one before.

        ``first_input``: the next-scale input of the first missing scale (what the decoded scales
        reconstruct). ``next_input(k, prediction_k)`` gives the next-scale input of scale k + 1
        (0-based k) from scale k's prediction; it is the quantizer's job (it keeps the running
        reconstruction) and is not called after the last scale.

        ``mode="argmax"``: predictions are the most probable tokens, map layout (see
        :meth:`ProgressiveContextModel.most_probable`). ``mode="probabilities"``: predictions are
        float64 probabilities in map layout, ``B x h x w x V`` (codebook) or ``B x D x h x w``
        (bitwise, P(bit = 1)); the expectation of the code vectors under them needs the
        quantizer's codebook, so ``next_input`` forms it (MultiScaleQuantizer.expected_code_map
        takes exactly these layouts). Returns the predictions of the missing scales.
        """
        if mode not in ("argmax", "probabilities"):
            raise ValueError(f"mode must be 'argmax' or 'probabilities', got {mode!r}")
        model, predictions, inp = self.model, [], first_input
        for k in range(self.next_scale, model.num_scales):
            size = (inp.shape[-2], inp.shape[-1])
            logits = self.step(k, inp)
            if mode == "argmax":
                pred = model.most_probable(logits, size)
            else:
                pred = token_probs.map_layout(model.probabilities(logits), model.kind, size)
            predictions.append(pred)
            if k + 1 < model.num_scales:
                inp = next_input(k, pred)
        return predictions

