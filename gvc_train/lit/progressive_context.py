"""Stage 2 of the progressive family: the context model on the token maps of a frozen quantizer.

The frozen tokenizer and quantizer of a stage-1 export (:mod:`gvc_train.lit.progressive_quantizer`)
turn each clip's latent (latent shards, or video encoded on the fly) into token pyramids, one per
latent frame, on the fly: quantizing is a small fraction of the transformer's step (measured in
the issue-13 report), so no token shards are needed. The clip's frames are coded in order: frame
``i`` is predicted from its own coarser scales and from the previous frame's past context *per
scale* (entry k: the previous frame's partial reconstruction from its scales ``1..k``, code space;
:meth:`ProgressiveContextModule.past_per_scale`), the first frame of a clip from no past at all.
With teacher forcing every frame's inputs are known, so the frames of a clip train in parallel in
two passes (first frames, then the others beside their predecessors' past).

The loss is the rate, in bits per video pixel::

    bpp_b = sum over the frames and scales of clip b of the tokens' cross-entropy in bits
            / the video pixels its latent stands for ((1 + ts (t - 1)) x (s h) x (s w))

logged as ``train/bpp`` with its share per scale (``train/bpp_scale{k}``, summing to it).
Validation and test also report, on the same tokens, the rates of simpler models of them (one
token histogram per scale, or per scale and bit channel for the bitwise kind), and the model's
bits over each (``rate_vs_*``, below 1 where the context model wins: the gain that is the point
of the family):

- ``bpp_uniform``: a uniform code (``log2 V`` bits a token, one bit a bit);
- ``bpp_unigram``: a per-scale unigram model fitted on the validation epoch's own tokens, the
  oracle: its table costs nothing and fits exactly the tokens it codes;
- ``bpp_unigram_train``: a per-scale unigram model whose table is the histogram of every training
  token so far (``train_histogram``, summed over ranks, kept in checkpoints), the baseline a real
  coder could ship, learnt from the data the context model learns from.

Exports ``{"tokenizer", "quantizer", "context_model"}``: the progressive codec folder's components.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gvc_train.components import load_component
from gvc_train.lit.finetune import FineTune
from gvc_train.lit.optim import clip_grad_norm, weight_decay_groups
from gvc_train.lit.progressive_quantizer import SUPPORTED_PRECISIONS, finite_on_every_rank
from gvc_train.lit.tokenizer_latents import clip_latent, video_pixels
from gvc_train.lit.stage import EvalResult, StageModule, load_streaming_tokenizer
from gvc_train.models.progressive.context_model import ProgressiveContextModel
from gvc_train.models.progressive.quantizer import MultiScaleQuantizer


class ProgressiveContextModule(StageModule):
    """Train a ``ProgressiveContextModel`` on a frozen ``MultiScaleQuantizer``'s tokens (module docstring).

    Args:
        context_model: the ``ProgressiveContextModel`` to train; its ``num_scales``, ``code_dim``,
            ``kind`` (and ``codebook_size``) must be the quantizer's.
        quantizer_path: a stage-1 ``gvc-export`` folder holding ``tokenizer`` and ``quantizer``.
        quantizer, tokenizer: instead of ``quantizer_path``, the two modules (tests).
        lr, betas, weight_decay, warmup_steps: AdamW with linear warm-up (no decay on
            embeddings, norms and biases).
        grad_clip: gradient-norm clip (None or 0: none).
        max_consecutive_nonfinite: stop with an error after this many skipped batches in a row.
        finetune: start from an exported codec or component, freeze or adapt named parts
            (:mod:`gvc_train.lit.finetune`).
    """

    stage_name = "the progressive context stage"
    exported_components = {"tokenizer": "tokenizer", "quantizer": "quantizer", "context_model": "context_model"}
    frozen_components = ("tokenizer", "quantizer")
    supported_precisions = SUPPORTED_PRECISIONS
    progress_bar_metrics = ("bpp",)

    def __init__(
        self,
        context_model: ProgressiveContextModel,
        quantizer_path: str | None = None,
        quantizer: MultiScaleQuantizer | None = None,
        tokenizer: nn.Module | None = None,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        grad_clip: float | None = 1.0,
        max_consecutive_nonfinite: int = 100,
        finetune: FineTune | None = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        if quantizer_path is not None and (quantizer is not None or tokenizer is not None):
            raise ValueError("give quantizer_path (a stage-1 gvc-export folder) or quantizer and tokenizer (modules), not both")
        if quantizer_path is not None:
            quantizer = load_component(quantizer_path, "quantizer")
            tokenizer = load_streaming_tokenizer(quantizer_path, None, self.stage_name)
        elif quantizer is None or tokenizer is None:
            raise ValueError("give quantizer_path (a stage-1 gvc-export folder) or both quantizer and tokenizer (modules)")
        else:
            tokenizer = load_streaming_tokenizer(None, tokenizer, self.stage_name)
        check_pairing(context_model, quantizer, tokenizer)
        self.save_hyperparameters(ignore=["context_model", "quantizer", "tokenizer", "finetune"])
        self.context_model = context_model
        self.quantizer = quantizer  # frozen_components: eval mode, no gradients
        self.tokenizer = tokenizer
        self.apply_finetune(finetune)
        self._tallies: dict[str, torch.Tensor] = {}
        # The training tokens' per-scale histogram (over every rank): the table of the unigram
        # baseline a real coder could ship (val/bpp_unigram_train). In checkpoints, so it resumes.
        columns = quantizer.code_dim + 1 if quantizer.kind == "bitwise" else quantizer.codebook.size
        self.register_buffer("train_histogram", torch.zeros(quantizer.num_scales, columns, dtype=torch.float64))

    # ---- tokens and the model's inputs (no gradients: the quantizer is frozen) ---------------
    @torch.no_grad()
    def token_pyramids(self, latent: torch.Tensor) -> dict[str, Any]:
        """Everything the context model sees of a clip batch ``B x C x t x h x w``, frames
        folded sample-major (frame i of clip b is ``b * t + i``): ``tokens`` (K maps), ``inputs``
        (K next-scale inputs, the first zeros) and ``past`` (K per-scale partial reconstructions
        of each frame itself, what the *next* frame sees as its past)."""
        q = self.quantizer
        h, w = latent.shape[-2:]
        with torch.autocast(device_type=latent.device.type, enabled=False):
            tokens = q.encode_tokens(latent)
            first_input = latent.new_zeros(tokens[0].shape[0], q.code_dim, *q.scale_shapes(h, w)[0])
            inputs = [first_input, *q.next_scale_inputs(tokens, (h, w))]
            past = self.past_per_scale(tokens, (h, w))
        return {"tokens": tokens, "inputs": inputs, "past": past}

    @torch.no_grad()
    def past_per_scale(self, tokens: list[torch.Tensor], latent_hw: tuple[int, int]) -> list[torch.Tensor]:
        """A frame's past context for the frame after it: its K partial reconstructions (code
        space, ``N x D x h x w``), entry k from its scales ``1..k``, so that a stream cut after
        scale k gives the decoder exactly entries ``1..k`` (the context model's convention)."""
        maps = [self.quantizer.code_map(k, t) for k, t in enumerate(tokens)]
        return self.quantizer.partial_reconstructions(maps, latent_hw)

    def clip_bits(self, latent: torch.Tensor, pyramids: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """The model's bits of every clip and scale, ``B x K`` float32 (differentiable), coding the
        frames in order: frame 0 without a past, frame i > 0 with frame i - 1's per-scale past.
        Also returns the token pyramids it coded."""
        b, t = latent.shape[0], latent.shape[2]
        pyr = self.token_pyramids(latent) if pyramids is None else pyramids
        frame = torch.arange(b * t, device=latent.device).view(b, t)
        first, rest = frame[:, 0], frame[:, 1:].reshape(-1)
        pick = lambda maps, idx: [m[idx] for m in maps]  # noqa: E731
        model = self.context_model
        bits = model.rate_bits(model(pick(pyr["inputs"], first), None), pick(pyr["tokens"], first)).float()
        if t > 1:
            logits = model(pick(pyr["inputs"], rest), pick(pyr["past"], rest - 1))
            later = model.rate_bits(logits, pick(pyr["tokens"], rest)).float()
            bits = bits + later.view(b, t - 1, -1).sum(1)
        return bits, pyr

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        opt = self.optimizers()
        latent, _ = clip_latent(self.tokenizer, batch)
        batch_size = latent.shape[0]
        if not finite_on_every_rank(self, latent):  # tokens of a non-finite latent mean nothing
            self.nonfinite.ok(self, latent.new_tensor(float("nan")), batch_size)
            return None
        bits, pyr = self.clip_bits(latent)
        bpp_per_scale = bits / video_pixels(self.tokenizer, latent)  # B x K
        loss = bpp_per_scale.sum(1).mean()
        if not self.nonfinite.ok(self, loss, batch_size):
            return None

        histogram = self.token_histogram(pyr["tokens"])
        self.train_histogram += self.trainer.strategy.reduce(histogram, reduce_op="sum") if self._trainer is not None else histogram
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip_grad_norm(self, opt, self.hparams.grad_clip)
        opt.step()
        self.step_schedulers()

        with torch.no_grad():
            metrics = {"train/bpp": loss.detach(), "train/nonfinite_skipped": float(self.nonfinite.skipped)}
            for k, value in enumerate(bpp_per_scale.detach().mean(0), start=1):
                metrics[f"train/bpp_scale{k}"] = value
        self.log_dict(metrics, batch_size=batch_size)
        self.log("bpp", metrics["train/bpp"], prog_bar=True, logger=False, batch_size=batch_size)
        return metrics["train/bpp"]

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        """The model's rate of the batch's tokens (eval mode), per scale and in all, beside a
        uniform code's; the histograms of the per-scale unigram model grow (see the epoch end)."""
        latent, _ = clip_latent(self.tokenizer, batch)
        bits, pyr = self.clip_bits(latent)
        pixels = video_pixels(self.tokenizer, latent)
        uniform = sum(self.uniform_bits(tokens) for tokens in pyr["tokens"])
        metrics: dict[str, torch.Tensor] = {
            "bpp": bits.sum(1).mean() / pixels,
            "bpp_uniform": torch.tensor(uniform / (pixels * latent.shape[0]), device=latent.device),
        }
        for k, value in enumerate(bits.mean(0) / pixels, start=1):
            metrics[f"bpp_scale{k}"] = value
        self._tally(pyr["tokens"], bits, pixels * latent.shape[0])
        return EvalResult(metrics, batch_size=latent.shape[0])

    def uniform_bits(self, tokens: torch.Tensor) -> float:
        """Bits of one scale's token map under a uniform code: ``log2 V`` a token (codebook),
        one a bit (bitwise: ``tokens`` holds D bits a position)."""
        if self.quantizer.kind == "bitwise":
            return float(tokens.numel())
        return tokens.numel() * math.log2(self.quantizer.codebook.size)

    def token_histogram(self, tokens: list[torch.Tensor]) -> torch.Tensor:
        """Per scale (rows), the count of each code (codebook: ``K x V``) or of ones per bit
        channel and, last, of tokens (bitwise: ``K x (D + 1)``); float64."""
        if self.quantizer.kind == "bitwise":
            ones = torch.stack([t.sum((0, 2, 3)) for t in tokens]).double()  # K x D
            totals = torch.tensor([float(t[:, 0].numel()) for t in tokens], device=ones.device, dtype=torch.float64)
            return torch.cat([ones, totals[:, None]], 1)
        size = self.quantizer.codebook.size
        return torch.stack([torch.bincount(t.reshape(-1), minlength=size) for t in tokens]).double()

    def _tally(self, tokens: list[torch.Tensor], bits: torch.Tensor, pixels: int) -> None:
        """Add a batch to the epoch's histograms, the model's bits and the pixels."""
        added = {
            "histogram": self.token_histogram(tokens),
            "model_bits": bits.detach().double().sum(0),
            "pixels": torch.tensor(float(pixels), device=bits.device, dtype=torch.float64),
        }
        for key, value in added.items():
            self._tallies[key] = self._tallies[key] + value if key in self._tallies else value

    def _unigram_bits(self, histogram: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Bits per scale (``K``) of the tokens counted in ``histogram`` coded with a per-scale
        unigram model whose frequencies are ``table`` (a histogram of the same layout) plus 1/2
        (Krichevsky-Trofimov: no token is impossible); ``table is histogram``: its own empirical
        entropy."""
        if self.quantizer.kind == "bitwise":
            ones, totals = histogram[:, :-1], histogram[:, -1:]
            t_ones, t_totals = table[:, :-1], table[:, -1:]
            smooth = 0.0 if table is histogram else 0.5
            p_one = (t_ones + smooth) / (t_totals + 2 * smooth).clamp_min(1e-12)
            return (_code_bits(ones, p_one) + _code_bits(totals - ones, 1 - p_one)).sum(1)
        if table is histogram:
            return _code_bits(histogram, histogram / histogram.sum(1, keepdim=True).clamp_min(1)).sum(1)
        return _code_bits(histogram, (table + 0.5) / (table + 0.5).sum(1, keepdim=True)).sum(1)

    def _unigram_metrics(self) -> dict[str, torch.Tensor]:
        """The epoch's per-scale unigram rates and the model's against them (summed over ranks)."""
        if not self._tallies:
            return {}
        reduce = self.trainer.strategy.reduce if self._trainer is not None else (lambda x, reduce_op: x)
        tally = {k: reduce(v, reduce_op="sum") for k, v in self._tallies.items()}
        histogram, pixels, model_bits = tally["histogram"], tally["pixels"], tally["model_bits"].sum()
        oracle = self._unigram_bits(histogram, histogram)
        trained = self._unigram_bits(histogram, self.train_histogram.to(histogram))
        metrics = {
            "bpp_unigram": oracle.sum() / pixels,
            "rate_vs_unigram": model_bits / oracle.sum(),
            "bpp_unigram_train": trained.sum() / pixels,
            "rate_vs_unigram_train": model_bits / trained.sum(),
        }
        for k, value in enumerate(oracle / pixels, start=1):
            metrics[f"bpp_unigram_scale{k}"] = value
        return {k: v.float() for k, v in metrics.items()}

    def _epoch_end(self, prefix: str) -> None:
        metrics = self._unigram_metrics()
        self._tallies = {}
        if metrics:
            self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self._tallies = {}

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._tallies = {}

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # ---- optimizers ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = weight_decay_groups(self.context_model, hp.weight_decay)  # no decay on biases, norms, embedding tables
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        return self.with_warmup([opt], hp.warmup_steps)


def _code_bits(counts: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``-c log2 p`` elementwise, 0 where nothing was counted (0 log 0 = 0)."""
    return -(counts * torch.where(counts > 0, p.clamp_min(1e-300).log2(), torch.zeros_like(p)))


def check_pairing(context_model: ProgressiveContextModel, quantizer: MultiScaleQuantizer, tokenizer: nn.Module) -> None:
    """ValueError unless the context model predicts this quantizer's tokens of this tokenizer's latent."""
    if tokenizer.latent_channels != quantizer.latent_channels:
        raise ValueError(f"the tokenizer has {tokenizer.latent_channels} latent channels, the quantizer takes {quantizer.latent_channels}")
    pairs = [("num_scales", context_model.num_scales, quantizer.num_scales), ("code_dim", context_model.code_dim, quantizer.code_dim),
             ("kind", context_model.kind, quantizer.kind)]  # fmt: skip
    if quantizer.kind == "codebook":
        pairs.append(("codebook_size", context_model.outputs, quantizer.codebook.size))
    wrong = [f"{name} {mine} (the quantizer's: {theirs})" for name, mine, theirs in pairs if mine != theirs]
    if wrong:
        raise ValueError(f"the context model does not fit the quantizer: {', '.join(wrong)}")
