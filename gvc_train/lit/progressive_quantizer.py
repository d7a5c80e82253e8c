"""Stage 1 of the progressive family: the multi-scale residual quantizer on a frozen tokenizer's latents.

A frozen, already trained video tokenizer gives each clip's latent (the posterior mean, from
latent shards, or computed on the fly from video batches); the clip's latent frames are folded
into a batch of frames (``MultiScaleQuantizer`` takes ``B x C x t x h x w``) and quantized into
a pyramid of residual token maps, coarse to fine. The loss is

    loss = latent MSE(z_hat, z) + quantizer loss (commitment + codebook [+ bitwise entropy])
           [+ pixel_weight x pixel MSE of the tokenizer decoder's output]

where ``z_hat`` is the straight-through reconstruction (with scale dropout, some frames keep only
their first scales: the decoding side learns a truncated pyramid). Training mode also updates the
codebook (EMA, dead-code restarts: usage all-reduced over ranks inside the quantizer).

Validation reports the latent reconstruction after every number of kept scales
(``psnr_latent_scales{k}``, k = 1..K, eval mode: no dropout), so the quality of every cut of a
stream is in the logs before any context model exists, beside the rate a uniform code of those
tokens would spend (``bpp_uniform_scales{k}``, the ceiling the context model of stage 2 lowers).

Exports ``{"tokenizer", "quantizer"}``: stage 2 (:mod:`gvc_train.lit.progressive_context`) reads
both from this stage's ``gvc-export`` folder. What every stage shares is in
:class:`gvc_train.lit.stage.StageModule` (with ``load_streaming_tokenizer``, the frozen
tokenizer every tokenizer-latent stage loads) and in :mod:`gvc_train.lit.tokenizer_latents`
(a batch's latent, the video pixels it stands for, the pixel loss through the frozen decoder).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gvc_train.eval.metrics import psnr
from gvc_train.lit.finetune import FineTune
from gvc_train.lit.optim import clip_grad_norm
from gvc_train.lit.stage import EvalResult, StageModule, load_streaming_tokenizer
from gvc_train.lit.tokenizer_latents import clip_latent, decoded_pixel_mse, target_pixels, video_pixels
from gvc_train.models.progressive.quantizer import MultiScaleQuantizer

# The quantizer runs in float32 inside whatever the autocast; *-true half or double precisions
# would cast its codebook buffers (and its float32 arithmetic would then mix dtypes).
SUPPORTED_PRECISIONS = ("32-true", "32", "bf16-mixed")


def finite_on_every_rank(module: StageModule, x: torch.Tensor) -> bool:
    """Whether ``x`` is finite on every rank (the same answer on all of them)."""
    finite = bool(torch.isfinite(x).all())
    if module._trainer is not None:
        finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
    return finite


def latent_psnr(mse: torch.Tensor) -> torch.Tensor:
    """The latent is roughly unit-scale: PSNR with peak 1, i.e. ``-10 log10(MSE)``."""
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


class ProgressiveQuantizerModule(StageModule):
    """Train a ``MultiScaleQuantizer`` on a frozen tokenizer's latents (module docstring).

    Args:
        quantizer: the ``MultiScaleQuantizer`` to train (its ``latent_channels`` the tokenizer's).
        tokenizer_path: a ``gvc-export`` folder with ``tokenizer.json`` + ``tokenizer.safetensors``.
        tokenizer: instead of ``tokenizer_path``, a registered streaming video VAE module (tests).
        pixel_weight: weight of the pixel MSE through the frozen decoder (against the batch's
            video, or the tokenizer's own decoding of the latent when the batch has none); 0
            skips the decoder in training (much cheaper).
        lr, betas, warmup_steps: Adam with linear warm-up over the quantizer's parameters
            (projections, refine convs, a gradient codebook or the bit magnitudes).
        grad_clip: gradient-norm clip (None or 0: none).
        max_consecutive_nonfinite: stop with an error after this many skipped batches in a row.
        finetune: start from an exported codec or component, freeze or adapt named parts
            (:mod:`gvc_train.lit.finetune`).
    """

    stage_name = "the progressive quantizer stage"
    exported_components = {"tokenizer": "tokenizer", "quantizer": "quantizer"}
    frozen_components = ("tokenizer",)
    supported_precisions = SUPPORTED_PRECISIONS
    progress_bar_metrics = ("psnr_latent",)

    def __init__(
        self,
        quantizer: MultiScaleQuantizer,
        tokenizer_path: str | None = None,
        tokenizer: nn.Module | None = None,
        pixel_weight: float = 0.0,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 0,
        grad_clip: float | None = 1.0,
        max_consecutive_nonfinite: int = 100,
        finetune: FineTune | None = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        tokenizer = load_streaming_tokenizer(tokenizer_path, tokenizer, self.stage_name)
        if tokenizer.latent_channels != quantizer.latent_channels:
            raise ValueError(
                f"the tokenizer has {tokenizer.latent_channels} latent channels, the quantizer takes {quantizer.latent_channels}"
            )
        if pixel_weight < 0:
            raise ValueError(f"pixel_weight must be >= 0, got {pixel_weight}")
        if not any(p.requires_grad for p in quantizer.parameters()):
            raise ValueError("the quantizer has no trainable parameters (EMA codebook, no projections, refine_groups=0)")
        self.save_hyperparameters(ignore=["quantizer", "tokenizer", "finetune"])
        self.quantizer = quantizer
        self.tokenizer = tokenizer  # frozen_components: eval mode, no gradients
        self.apply_finetune(finetune)

    # ---- the objective ------------------------------------------------------------------
    def objective(self, latent: torch.Tensor, pixel_target: torch.Tensor | None = None) -> dict[str, Any]:
        """Quantize ``latent`` (``B x C x t x h x w``) and measure it: ``out`` (the
        ``QuantizerOutput``), per-clip ``mse`` (latent), scalar ``loss``; with ``pixel_target``
        (video in [0, 1]) also ``video_recon`` (decoded, not clamped) and per-clip ``pixel_mse``.
        Training mode updates the codebook and applies scale dropout (the quantizer's mode)."""
        out = self.quantizer(latent)
        mse = (out.reconstruction - latent).pow(2).flatten(1).mean(dim=1)
        loss = mse.mean() + out.loss
        terms: dict[str, Any] = {"out": out, "mse": mse}
        if pixel_target is not None:
            video_recon, pixel_mse = decoded_pixel_mse(self.tokenizer, out.reconstruction, pixel_target)
            terms.update(video_recon=video_recon, pixel_mse=pixel_mse)
            if self.hparams.pixel_weight > 0:
                loss = loss + self.hparams.pixel_weight * pixel_mse.mean()
        terms["loss"] = loss
        return terms

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        opt = self.optimizers()
        latent, video = clip_latent(self.tokenizer, batch, self.stage_name)
        batch_size = latent.shape[0]
        # A non-finite latent would poison the EMA codebook inside the forward, before any loss
        # could be checked: skip such a batch first (on every rank, before the forward's
        # collectives), counted as a non-finite loss.
        if not finite_on_every_rank(self, latent):
            self.nonfinite.ok(self, latent.new_tensor(float("nan")), batch_size)
            return None
        target = target_pixels(self.tokenizer, latent, video) if self.hparams.pixel_weight > 0 else None
        terms = self.objective(latent, target)
        if not self.nonfinite.ok(self, terms["loss"], batch_size):
            return None

        opt.zero_grad(set_to_none=True)
        self.manual_backward(terms["loss"])
        clip_grad_norm(self, opt, self.hparams.grad_clip)
        opt.step()
        self.step_schedulers()

        with torch.no_grad():
            out, mse = terms["out"], terms["mse"].mean()
            metrics = {
                "train/loss": terms["loss"].detach(),
                "train/mse": mse,
                "train/psnr_latent": latent_psnr(mse),
                "train/commitment_loss": out.commitment_loss.detach(),
                "train/codebook_loss": out.codebook_loss.detach(),
                "train/perplexity": out.stats.perplexity.detach(),
                "train/used_fraction": out.stats.used_fraction.detach(),
                "train/restarted": float(out.stats.restarted.numel()),
                # frames whose reconstruction scale dropout truncated this step
                "train/dropped_fraction": (out.kept_scales < self.quantizer.num_scales).float().mean(),
                "train/nonfinite_skipped": float(self.nonfinite.skipped),
            }
            if self.quantizer.kind == "bitwise":
                metrics["train/entropy_loss"] = out.entropy_loss.detach()
            if "pixel_mse" in terms:
                metrics["train/pixel_mse"] = terms["pixel_mse"].detach().mean()
        self.log_dict(metrics, batch_size=batch_size)
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        return metrics["train/loss"]

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        """All scales (eval mode: no dropout, no codebook update), then the reconstruction
        after each number of kept scales k = 1..K and the rate of a uniform code of them."""
        latent, video = clip_latent(self.tokenizer, batch, self.stage_name)
        target = video if video is not None else (target_pixels(self.tokenizer, latent, None) if self.hparams.pixel_weight > 0 else None)
        terms = self.objective(latent, target)
        out, mse = terms["out"], terms["mse"].mean()
        metrics: dict[str, torch.Tensor] = {
            "loss": terms["loss"],
            "mse": mse,
            "psnr_latent": latent_psnr(mse),
            "perplexity": out.stats.perplexity,
            "used_fraction": out.stats.used_fraction,
        }
        for k, mse_k in enumerate(self.truncated_mse(latent, out.tokens), start=1):
            metrics[f"psnr_latent_scales{k}"] = latent_psnr(mse_k)
        pixels = video_pixels(self.tokenizer, latent) * latent.shape[0]
        bits = 0.0
        for k, tokens_k in enumerate(out.tokens, start=1):
            bits += tokens_k.numel() * self.uniform_bits_per_token()
            metrics[f"bpp_uniform_scales{k}"] = torch.tensor(bits / pixels, device=latent.device)
        outputs: dict[str, torch.Tensor] = {}
        if "pixel_mse" in terms:
            metrics["pixel_mse"] = terms["pixel_mse"].mean()
        if video is not None:
            recon_video = terms["video_recon"].float().clamp(0, 1)
            metrics["psnr"] = psnr(recon_video, video).mean()
            outputs["recon"] = recon_video  # ReconstructionVideoLogger
        return EvalResult(metrics, batch_size=latent.shape[0], outputs=outputs)

    def uniform_bits_per_token(self) -> float:
        """Bits of one token under a uniform code: ``log2 V`` (codebook), D (bitwise: D bits)."""
        q = self.quantizer
        return float(q.code_dim) if q.kind == "bitwise" else math.log2(q.codebook.size)

    @torch.no_grad()
    def truncated_mse(self, latent: torch.Tensor, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Latent MSE of the reconstruction from scales ``1..k``, for k = 1..K (the finer scales
        contribute nothing): what a stream cut after scale k decodes to without prediction."""
        q = self.quantizer
        b, c, t, h, w = latent.shape
        target = latent.transpose(1, 2).reshape(b * t, c, h, w)
        maps = [q.code_map(k, tok) for k, tok in enumerate(tokens)]
        with torch.autocast(device_type=latent.device.type, enabled=False):
            partial = q.partial_reconstructions(maps, (h, w))
            return [(q.project_out(f_hat) - target).pow(2).mean() for f_hat in partial]

    # ---- optimizers ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.quantizer.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas))
        return self.with_warmup([opt], hp.warmup_steps)
