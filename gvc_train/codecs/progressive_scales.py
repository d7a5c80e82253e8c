"""One latent frame of the progressive family, scale by scale: the computation the encoder and
the decoder share, so that both get the same probabilities bit for bit.

For each scale k the context model's cached path (``start_frame`` / ``step``) gives the logits
of scale k from the next-scale input of k and the past frames' entries ``<= k``; they become
float64 probabilities and then integer frequencies (``token_probs.quantize_probs`` at
``categorical.PRECISION_BITS``); a callback codes the scale's true tokens under them (encoder)
or decodes the tokens (decoder). The code map of the tokens joins the frame's reconstruction,
and the next-scale input of k + 1 is that reconstruction area-downsampled to scale k + 1's size.
Both ends run exactly this loop on the same values in the same order, with the same shapes
(batch 1), so they agree bit for bit on one machine and thread count (the codec runs on one
intra-op thread: ``codecs/determinism.py``).

**Fill-in.** Scales a stream does not carry (``kept < K``) are predicted: ``"argmax"`` takes the
most probable tokens, ``"expectation"`` the expected code vectors under the predicted
probabilities (MultiScaleQuantizer.expected_code_map), ``"zero"`` leaves them out (the finer
scales contribute nothing). The frame's partial reconstructions, filled-in scales included,
become the past context of the next frame; its entries ``<= kept`` are the encoder's exactly,
and only those reach the scales the next frame decodes from the stream (the context model's
per-scale past: models/progressive/context_model.py).

**Two orders, one computation.** The encoder codes frame by frame (:meth:`ScalePyramid.frame`);
the decoder of a group goes scale-major (:meth:`ScalePyramid.group`: scale 1 of every frame of
the group, then scale 2, ...), the order of the group's one ANS stack. Each frame's scale k
needs only its own scales ``< k`` and the past frames' entries ``<= k``, which both orders have
by then, and each frame runs through its own cached steps: the same operations on the same
values, so the same probabilities bit for bit (tested through every codec round trip).

**Cost.** The reconstruction after scale k is the one after scale k - 1 plus scale k's
contribution (``MultiScaleQuantizer.extend_partials``): ``K`` refine steps a frame, the same
values bit for bit as ``partial_reconstructions`` of all the maps (which recomputing it after
every scale did, ``K (K + 1) / 2`` steps).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import torch

from gvc_train.coding.categorical import PRECISION_BITS
from gvc_train.models.progressive import token_probs
from gvc_train.models.progressive.scales import Shape, area_down

FILL_MODES = ("argmax", "expectation", "zero")
# code(k, logits, freqs) -> the tokens of scale k (0-based) in map layout: the encoder codes
# its true tokens under freqs and returns them; the decoder decodes them.
ScaleCode = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class _FrameState:
    """One frame of a group being coded scale-major: its cached steps, reconstructions after each
    scale (the next frames' past: a list that grows) and next-scale input."""

    def __init__(self, steps: object, first_input: torch.Tensor) -> None:
        self.steps, self.inp = steps, first_input
        self.partials: list[torch.Tensor] = []


class ScalePyramid:
    """The per-frame scale loop of one stream (encoder or decoder side): it keeps the past frames'
    partial reconstructions from one latent frame to the next.

    ``quantizer``: a MultiScaleQuantizer; ``context_model``: a ProgressiveContextModel (both
    in eval mode); ``latent_hw``: the latent frame's ``(h, w)``; ``fill``: a FILL_MODES entry.
    """

    def __init__(self, quantizer: torch.nn.Module, context_model: torch.nn.Module, latent_hw: Shape, fill: str) -> None:
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.q, self.cm, self.latent_hw, self.fill = quantizer, context_model, latent_hw, fill
        self.kind = context_model.kind
        self.num_scales = context_model.num_scales
        self.shapes = quantizer.scale_shapes(*latent_hw)
        self.past: collections.deque[list[torch.Tensor]] = collections.deque(maxlen=max(1, context_model.past_frames))

    def symbols_per_scale(self) -> list[int]:
        """Symbols the coder handles for one frame's scale k: ``l_k`` indexes, or ``l_k * D`` bits."""
        per_token = 1 if self.kind == "codebook" else self.cm.code_dim
        return [h * w * per_token for h, w in self.shapes]

    def frequencies(self, logits: torch.Tensor) -> torch.Tensor:
        """Integer frequencies of a scale's logits: ``1 x l x V`` (codebook) or ``1 x l x D x 2`` (bits)."""
        p = self.cm.probabilities(logits)
        if self.kind == "bitwise":
            p = token_probs.bit_distributions(p)
        return token_probs.quantize_probs(p, PRECISION_BITS)

    def frame(self, kept: int, code: ScaleCode) -> torch.Tensor:
        """Code (or decode) scales ``1..kept`` of the next latent frame through ``code``, fill in
        the rest; returns its latent ``1 x C x h x w`` (a group of one frame)."""
        return self.group(1, kept, code, lambda k: None)[0]

    def group(self, frames: int, kept: int, code: ScaleCode, end_scale: Callable[[int], None]) -> list[torch.Tensor]:
        """Decode scales ``1..kept`` of the next ``frames`` latent frames scale-major (``code``
        for each frame's scale k in turn, then ``end_scale(k)``), fill in the rest frame by
        frame; returns the latents ``1 x C x h x w``, the same as :meth:`frame` of each in turn
        (each frame runs through its own cached steps; module docstring)."""
        if not 1 <= kept <= self.num_scales:
            raise ValueError(f"kept scales must be in 1..{self.num_scales}, got {kept}")
        history = list(self.past)[::-1]  # oldest first; this group's frames join it, still growing
        states = []
        for _ in range(frames):
            recent = history[::-1][: self.past.maxlen]  # the most recent past frames, newest first
            past = recent if self.cm.past_frames and recent else None
            state = _FrameState(self.cm.start_frame(past, 1), torch.zeros(1, self.cm.code_dim, *self.shapes[0]))
            states.append(state)
            history.append(state.partials)
        for k in range(kept):
            for state in states:
                logits = state.steps.step(k, state.inp)
                self.q.extend_partials(state.partials, self.q.code_map(k, code(k, logits, self.frequencies(logits))), self.latent_hw)
                if k + 1 < self.num_scales:
                    state.inp = self._next_input(state.partials)
            end_scale(k)
        latents = []
        for state in states:  # in order: a frame's fill-in reads its predecessor's
            if kept < self.num_scales and self.fill != "zero":
                self._fill_in(state.steps, state.inp, state.partials)
            state.partials += [state.partials[-1]] * (self.num_scales - len(state.partials))
            self.past.appendleft(state.partials)
            latents.append(self.q.project_out(state.partials[-1]))
        return latents

    def _next_input(self, partials: list[torch.Tensor]) -> torch.Tensor:
        """The next-scale input of scale ``len(partials)``: the reconstruction so far, at its size."""
        return area_down(partials[-1], self.shapes[len(partials)])

    def _fill_in(self, steps: object, first_input: torch.Tensor, partials: list[torch.Tensor]) -> None:
        """Extend ``partials`` with the predicted scales (``fill``: argmax or expectation)."""
        expectation = self.fill == "expectation"

        def code_map(k: int, prediction: torch.Tensor) -> torch.Tensor:
            return self.q.expected_code_map(k, prediction) if expectation else self.q.code_map(k, prediction)

        def next_input(k: int, prediction: torch.Tensor) -> torch.Tensor:
            self.q.extend_partials(partials, code_map(k, prediction), self.latent_hw)
            return self._next_input(partials)

        predictions = steps.complete(first_input, next_input, "probabilities" if expectation else "argmax")
        self.q.extend_partials(partials, code_map(self.num_scales - 1, predictions[-1]), self.latent_hw)
