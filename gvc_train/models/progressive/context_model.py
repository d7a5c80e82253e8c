"""ProgressiveContextModel: the scale-wise autoregressive transformer of the progressive family.

A latent frame is a pyramid of token maps, scale 1 (coarsest, ``h_1 x w_1``) to scale K
(``h_K x w_K``). The model predicts each scale's tokens, the whole scale in one pass, from the
coarser scales of the frame and from the past decoded frames; those probabilities drive the
entropy coder, and when a stream is cut they predict the scales that were not sent.

**Inputs (VAR's teacher forcing).** The tokens of scale k are not fed in as such: the quantizer
turns the decoded scales ``< k`` into their accumulated reconstruction and resamples it to
``h_k x w_k``, the *next-scale input* of scale k (``B x code_dim x h_k x w_k``). The sequence is

    [ past context (P tokens) | input of scale 1 | input of scale 2 | ... | input of scale K ]

and the output at position j of block k is the prediction of token j of scale k. Scale 1's input
is usually zeros (nothing decoded yet; ``None`` is taken as zeros): a learned start embedding is
added to it. The past context is each past frame's final reconstruction
(``B x code_dim x H x W``, any size), average-pooled to ``context_grid x context_grid`` tokens,
``past_frames`` frames, most recent first; a frame that does not exist yet (the first frames of a
clip) is a learned "no past" token instead, so the shapes never change.

**Block-causal mask.** Position j of block k attends to the past context and to every position
of blocks ``<= k``; the context attends only to itself. Block k's own positions hold the
reconstruction of scales ``< k`` (VAR's mask ``d >= d^T``), so no output of scale k ever depends
on a token of scale k or finer: perturb the tokens of scale k and the logits of scales ``<= k``
stay as they were (tested); in terms of the input maps, the logits of scale k depend on the inputs
of scales ``<= k`` only.

**Two paths, one computation.** ``forward`` runs every scale in one pass under the mask
(training). :meth:`start_frame` then :meth:`ScaleSteps.step` run one scale at a time against the
cached keys/values of the context and the coarser scales (coding: one pass per scale). They
agree to float rounding (1e-5 in float32); the encoder and the decoder must both use the cached
path (:meth:`cached_logits` at the encoder) so that they compute the probabilities with the same
shapes and order, and quantize them with :func:`token_probs.quantize_probs`. In float32 the
cached path repeats itself exactly on one machine at one thread count, but MKL's GEMM can round
differently with another thread count (see attention.py): bit-exact coding across thread counts
and CPUs needs a fixed-point port of :class:`ScaleSteps`, as the latent family has.

Layouts: logits ``B x l_k x V`` (codebook) or ``B x l_k x bits`` (bitwise), ``l_k = h_k * w_k``
row-major; token maps ``B x h_k x w_k`` int64 (codebook) or ``B x bits x h_k x w_k`` in {0, 1}
(bitwise). See :mod:`token_probs`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.progressive import token_probs
from gvc_train.models.progressive.attention import Block, KeyValue
from gvc_train.models.registry import register_component

Past = torch.Tensor | Sequence[torch.Tensor | None] | None
# next_input(k, prediction of scale k) -> next-scale input of scale k + 1 (0-based k); see complete()
NextInput = Callable[[int, torch.Tensor], torch.Tensor]
MAX_TOKENS = 16384  # context + every scale of one frame: the attention is over all of them
MAX_PARAMETERS = 1 << 31


@register_component("ProgressiveContextModel")
class ProgressiveContextModel(nn.Module):
    """Block-causal transformer over the token pyramid of one latent frame (module docstring).

    ``scales``: ``[[h_1, w_1], ..., [h_K, w_K]]``, coarse to fine (each side non-decreasing), the
    quantizer's schedule. ``code_dim``: channels of the next-scale inputs and of the past
    reconstructions. ``kind``: ``"codebook"`` (categorical over ``codebook_size`` indexes) or
    ``"bitwise"`` (``bits`` Bernoulli per token; the other size is then unused). ``width``,
    ``depth``, ``heads``, ``mlp_ratio``: the transformer. ``context_grid``, ``past_frames``: the
    past context, ``past_frames * context_grid^2`` tokens (``past_frames=0``: none). ``dropout``:
    on attention weights and residual branches, in training only.
    A CPU test size is ``width=32, depth=2, heads=2`` with scales up to 4x4.
    """

    # What a loaded config may hold (checked by gvc_train.components before building); the
    # constructor also bounds the token count and the parameter count.
    config_bounds = {
        "scales": (1, 128), "len(scales)": (1, 32), "code_dim": (1, 1024), "kind": set(token_probs.KINDS),
        "codebook_size": (2, 1 << 16), "bits": (1, 64), "width": (8, 2048), "depth": (1, 48), "heads": (1, 64),
        "mlp_ratio": (0.25, 8.0), "context_grid": (1, 16), "past_frames": (0, 8), "dropout": (0.0, 0.9),
    }  # fmt: skip

    def __init__(
        self,
        scales: Sequence[Sequence[int]] = ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)),
        code_dim: int = 16,
        kind: str = "codebook",
        codebook_size: int = 4096,
        bits: int = 16,
        width: int = 256,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        context_grid: int = 2,
        past_frames: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.scales = _check_scales(scales)
        if kind not in token_probs.KINDS:
            raise ValueError(f"kind must be one of {token_probs.KINDS}, got {kind!r}")
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.kind = kind
        self.code_dim = code_dim
        self.outputs = codebook_size if kind == "codebook" else bits
        self.lengths = [h * w for h, w in self.scales]
        self.context_tokens = past_frames * context_grid * context_grid
        self.context_grid = context_grid
        self.past_frames = past_frames
        total = self.context_tokens + sum(self.lengths)
        if total > MAX_TOKENS:
            raise ValueError(f"{total} tokens per frame (context and scales) is more than {MAX_TOKENS}")
        estimate = depth * width * width * (4 + 2 * mlp_ratio) + width * (total + self.outputs + code_dim)
        if estimate > MAX_PARAMETERS:
            raise ValueError(f"about {estimate:.3g} parameters is more than {MAX_PARAMETERS}")

        self.input_proj = nn.Linear(code_dim, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.level_embed = nn.Parameter(torch.zeros(len(self.scales), width))
        self.pos_embed = nn.Parameter(torch.zeros(sum(self.lengths), width))  # every scale's positions, concatenated
        self.context_proj = nn.Linear(code_dim, width)
        self.context_pos = nn.Parameter(torch.zeros(self.context_tokens, width))
        self.no_past = nn.Parameter(torch.zeros(past_frames, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.head_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, self.outputs)
        # Block id of every position (0: context, k: scale k), for the mask; not saved.
        ids = [0] * self.context_tokens + [k + 1 for k, n in enumerate(self.lengths) for _ in range(n)]
        self.register_buffer("block_ids", torch.tensor(ids, dtype=torch.int64), persistent=False)
        self.offsets = [sum(self.lengths[:k]) for k in range(len(self.lengths))]
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

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    def context(self, past: Past, batch: int) -> torch.Tensor:
        """The past-context tokens ``B x P x width`` (``P = past_frames * context_grid^2``).

        ``past``: the final reconstruction of the previous frame ``B x code_dim x H x W``, or a
        list of them (most recent first, at most ``past_frames``; None or a missing entry: a
        frame before the start of the clip), or None.
        """
        frames = [past] if isinstance(past, torch.Tensor) or past is None else list(past)
        if len(frames) > self.past_frames and any(f is not None for f in frames[self.past_frames :]):
            raise ValueError(f"{len(frames)} past frames given; the model was built for {self.past_frames}")
        frames = (frames + [None] * self.past_frames)[: self.past_frames]
        cells = self.context_grid * self.context_grid
        parts = []
        for age, frame in enumerate(frames):
            if frame is None:
                parts.append(self.no_past[age].expand(batch, cells, -1))
                continue
            if frame.dim() != 4 or frame.shape[0] != batch or frame.shape[1] != self.code_dim:
                raise ValueError(f"past frame {age}: expected {batch} x {self.code_dim} x H x W, got {tuple(frame.shape)}")
            pooled = F.adaptive_avg_pool2d(frame.float(), self.context_grid)  # B x D x g x g
            parts.append(self.context_proj(pooled.flatten(2).transpose(1, 2)))
        if not parts:
            return self.pos_embed.new_zeros(batch, 0, self.pos_embed.shape[1])
        return torch.cat(parts, dim=1) + self.context_pos

    def scale_tokens(self, k: int, input_BDhw: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The embedded next-scale input of scale ``k`` (0-based): ``B x l_k x width``."""
        h, w = self.scales[k]
        if input_BDhw is None:
            x = self.pos_embed.new_zeros(batch, h * w, self.code_dim)
        else:
            if tuple(input_BDhw.shape) != (batch, self.code_dim, h, w):
                raise ValueError(f"input of scale {k + 1}: expected {(batch, self.code_dim, h, w)}, got {tuple(input_BDhw.shape)}")
            x = input_BDhw.float().flatten(2).transpose(1, 2)
        tokens = self.input_proj(x) + self.level_embed[k] + self.pos_embed[self.offsets[k] : self.offsets[k] + h * w]
        return tokens + self.start if k == 0 else tokens

    def logits_of(self, hidden_BLC: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_norm(hidden_BLC))

    def block_mask(self) -> torch.Tensor:
        """``N x N`` booleans over context and scale positions: True where a query may attend."""
        return self.block_ids[None, :] <= self.block_ids[:, None]

    # ---- the full pass (training) -------------------------------------------------------------

    def forward(self, inputs_per_scale: Sequence[torch.Tensor | None], past: Past = None) -> list[torch.Tensor]:
        """Logits of every scale in one block-causal pass: a list of K tensors ``B x l_k x V``
        (codebook) or ``B x l_k x bits`` (bitwise).

        ``inputs_per_scale``: the K next-scale inputs ``B x code_dim x h_k x w_k`` (the first may
        be None: zeros). ``past``: see :meth:`context`.
        """
        batch = self._batch(inputs_per_scale, past)
        if len(inputs_per_scale) != self.num_scales:
            raise ValueError(f"expected the inputs of {self.num_scales} scales, got {len(inputs_per_scale)}")
        x = torch.cat([self.context(past, batch)] + [self.scale_tokens(k, inp, batch) for k, inp in enumerate(inputs_per_scale)], dim=1)
        mask = self.block_mask()
        for block in self.blocks:
            x, _ = block(x, mask)
        return list(self.logits_of(x[:, self.context_tokens :]).split(self.lengths, dim=1))

    def rate_bits(self, logits_per_scale: Sequence[torch.Tensor], tokens_per_scale: Sequence[torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the true tokens in bits, ``B x K`` (each frame's bits per scale): the
        rate an ideal coder reaches with these probabilities. Differentiable (the training loss).
        Tokens in map or flat layout (module docstring); as many scales as logits (a prefix of
        the pyramid is fine)."""
        if len(logits_per_scale) != len(tokens_per_scale):
            raise ValueError(f"{len(logits_per_scale)} scales of logits but {len(tokens_per_scale)} of tokens")
        return torch.stack([token_probs.token_bits(lg, tk, self.kind).sum(1) for lg, tk in zip(logits_per_scale, tokens_per_scale)], dim=1)

    # ---- the cached path (coding) -------------------------------------------------------------

    def start_frame(self, past: Past = None, batch: int | None = None) -> ScaleSteps:
        """Begin one frame: run the past context through the blocks and cache its keys/values.
        Then call ``step(k, input_k)`` for k = 0, 1, ... in order. ``batch`` is needed only when
        no past frame is given."""
        if batch is None:
            batch = self._batch([], past)
        return ScaleSteps(self, past, batch)

    def cached_logits(self, inputs_per_scale: Sequence[torch.Tensor | None], past: Past = None) -> list[torch.Tensor]:
        """What the encoder computes: the logits of every scale through the cached path, scale by
        scale, exactly as the decoder will (same shapes, same order)."""
        steps = self.start_frame(past, self._batch(inputs_per_scale, past))
        return [steps.step(k, inp) for k, inp in enumerate(inputs_per_scale)]

    # ---- probabilities ------------------------------------------------------------------------

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Float64 probabilities of the logits: softmax ``B x l x V`` (codebook) or P(bit = 1)
        ``B x l x bits`` (bitwise). For the coder: :func:`token_probs.quantize_probs` (bitwise:
        of :func:`token_probs.bit_distributions`)."""
        return token_probs.probabilities(logits, self.kind)

    def most_probable(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """The most probable tokens of scale ``k`` in map layout: ``B x h x w`` int64 (argmax,
        lowest index on ties) or ``B x bits x h x w`` int64 (1 where P(bit = 1) > 0.5)."""
        best = logits.argmax(-1) if self.kind == "codebook" else (logits > 0).to(torch.int64)
        return token_probs.map_layout(best, self.kind, self.scales[k])

    def predict_missing_scales(
        self, inputs_known: Sequence[torch.Tensor | None], next_input: NextInput, past: Past = None, mode: str = "argmax"
    ) -> list[torch.Tensor]:
        """Scales ``k + 1 .. K`` of a frame whose scales ``1 .. k`` are known (a cut stream).

        ``inputs_known``: the next-scale inputs of scales ``1 .. k + 1`` (k + 1 maps; the last is
        what the known scales reconstruct, at scale k + 1's size). Runs the known scales through
        the cache, then :meth:`ScaleSteps.complete`; see there for ``next_input`` and ``mode``.
        """
        if not 1 <= len(inputs_known) <= self.num_scales:
            raise ValueError(f"give the inputs of 1 to {self.num_scales} scales, got {len(inputs_known)}")
        steps = self.start_frame(past, self._batch(inputs_known, past))
        for k, inp in enumerate(inputs_known[:-1]):
            steps.step(k, inp)
        return steps.complete(inputs_known[-1], next_input, mode)

    def _batch(self, inputs: Sequence[torch.Tensor | None], past: Past) -> int:
        known = [t for t in inputs if t is not None]
        known += [past] if isinstance(past, torch.Tensor) else [t for t in (past or []) if t is not None]
        if not known:
            raise ValueError("cannot tell the batch size: every input and past frame is None")
        return known[0].shape[0]


class ScaleSteps:
    """One frame decoded scale by scale with a key/value cache (:meth:`ProgressiveContextModel.start_frame`).

    ``step(k, input_k)`` returns the logits of scale k and appends that scale's keys/values, so
    scale k attends to the context and scales ``< k`` exactly as in the full pass.
    """

    def __init__(self, model: ProgressiveContextModel, past: Past, batch: int) -> None:
        self.model = model
        self.batch = batch
        self.next_scale = 0
        x = model.context(past, batch)
        self.cache: list[KeyValue | None] = []
        for block in model.blocks:
            if x.shape[1] == 0:
                self.cache.append(None)
                continue
            x, kv = block(x, plain=True)  # the context attends to itself only: no mask needed
            self.cache.append(kv)

    def step(self, k: int, input_BDhw: torch.Tensor | None) -> torch.Tensor:
        """Logits of scale ``k`` (0-based, in order), ``B x l_k x V`` or ``B x l_k x bits``, from
        its next-scale input ``B x code_dim x h_k x w_k`` (None: zeros)."""
        if k != self.next_scale:
            raise ValueError(f"scales are stepped in order: expected scale index {self.next_scale}, got {k}")
        x = self.model.scale_tokens(k, input_BDhw, self.batch)
        for i, block in enumerate(self.model.blocks):
            x, self.cache[i] = block(x, None, self.cache[i], plain=True)  # own scale and all cached: visible
        self.next_scale += 1
        return self.model.logits_of(x)

    def complete(self, first_input: torch.Tensor | None, next_input: NextInput, mode: str = "argmax") -> list[torch.Tensor]:
        """Predict every scale not stepped yet, in order, each from the prediction of the one before.

        ``first_input``: the next-scale input of the first missing scale (what the decoded scales
        reconstruct). ``next_input(k, prediction_k)`` gives the next-scale input of scale k + 1
        (0-based k) from scale k's prediction; it is the quantizer's job (it keeps the running
        reconstruction) and is not called after the last scale.

        ``mode="argmax"``: predictions are the most probable tokens, map layout (see
        :meth:`ProgressiveContextModel.most_probable`). ``mode="probabilities"``: predictions are
        float64 probabilities in map layout, ``B x h x w x V`` (codebook) or ``B x bits x h x w``
        (bitwise, P(bit = 1)); the expectation of the code vectors under them needs the
        quantizer's codebook, so ``next_input`` forms it (codebook: ``probs @ codebook``;
        bitwise with +-1 codes: ``2 p - 1``). Returns the predictions of the missing scales.
        """
        if mode not in ("argmax", "probabilities"):
            raise ValueError(f"mode must be 'argmax' or 'probabilities', got {mode!r}")
        model, predictions, inp = self.model, [], first_input
        for k in range(self.next_scale, model.num_scales):
            logits = self.step(k, inp)
            if mode == "argmax":
                pred = model.most_probable(logits, k)
            else:
                pred = token_probs.map_layout(model.probabilities(logits), model.kind, model.scales[k])
            predictions.append(pred)
            if k + 1 < model.num_scales:
                inp = next_input(k, pred)
        return predictions


def _check_scales(scales: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    out = []
    for s in scales:
        if len(s) != 2 or not all(isinstance(v, int) and v >= 1 for v in s):
            raise ValueError(f"every scale is [h, w] with positive integers, got {list(s)}")
        out.append((int(s[0]), int(s[1])))
    if not out:
        raise ValueError("the schedule needs at least one scale")
    if any(b[0] < a[0] or b[1] < a[1] for a, b in zip(out, out[1:])):
        raise ValueError(f"scales must go coarse to fine (each side non-decreasing), got {out}")
    return out
