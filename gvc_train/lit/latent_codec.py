"""The latent-codec training stage (GLVC family): rate-distortion training of ``LatentVideoCodec``.

A frozen, already trained video tokenizer maps each clip to its latent (the posterior mean); the
codec codes that latent frame by frame, unrolled over all ``t`` latent frames, with a quality
index drawn per clip, and minimises

    loss = mean_b(bpp_b) + mean_b(lambda[q_b] * D_b)
    bpp_b = the model's bits of clip b / the video pixels its latent stands for
            ((1 + ts (t - 1)) x (s h) x (s w), ts and s the tokenizer's temporal and spatial strides)
    D_b   = latent MSE (+ pixel_weight x pixel MSE of the tokenizer decoder's output)

so one model learns every rate point of ``lambdas`` (one per quality index, increasing).
Batches are ``VideoDataModule``'s (``video``: the latent is computed on the fly) or carry a
precomputed ``latent`` (``B x C x t x h x w``, the posterior mean from latent shards); a batch
with both uses the latent and keeps the video as the pixel target.

The tokenizer comes from a ``gvc-export`` folder (``tokenizer_path``) or, for tests, a module
(``tokenizer``). It is a submodule so that checkpoints and ``gvc-export`` carry it beside the
codec: an exported latent codec is useless without the exact tokenizer it was trained on.

Optimization is manual: the entropy bottleneck's ``quantiles`` train in their own Adam on
``codec.aux_loss()`` (compressai's life cycle). Both losses go through ONE backward: their
gradients are disjoint (training-mode quantization ignores the medians, and the aux loss
detaches the density's weights), and under DDP one backward in which every trainable parameter
gets its gradient needs no ``find_unused_parameters``. The aux step bypasses Lightning's step
counter, so ``global_step`` counts batches. A batch whose loss is not finite (on any rank) is
skipped whole: no step, not counted in ``global_step``, counted in ``train/nonfinite_skipped``.

The codec runs in float32 even under ``bf16-mixed``: likelihoods are products of CDF differences
that bf16's 8-bit mantissa cannot resolve, and the codec is small. The tokenizer keeps autocast.

The tokenizer must be a streaming tokenizer (``gvc_train.models.tokenizer.streaming``): the
exported codec encodes and decodes through its chunked API, so a tokenizer without it (a
``DiffusersVAE``) is refused when the stage is built, before any training.
What every stage shares is in :class:`gvc_train.lit.stage.StageModule`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from gvc_train.eval.metrics import psnr
from gvc_train.lit.finetune import FineTune
from gvc_train.lit.optim import clip_grad_norm, entropy_model_optimizers, rd_lambdas, step_uncounted
from gvc_train.lit.stage import EvalResult, StageModule, load_streaming_tokenizer
from gvc_train.lit.tokenizer_latents import clip_latent, decoded_pixel_mse, target_pixels, video_pixels
from gvc_train.lit.step_guard import step_noise
from gvc_train.models import sample_noise
from gvc_train.models.latent.latent_codec import LatentVideoCodec

# Lightning precisions under which the codec's parameters stay float32 (see the docstring).
# Not 16-mixed: manual optimization clips before the grad scaler unscales, and fp16 overflows in
# the rate terms; *-true half precisions would cast the entropy models.
SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")


class LatentCodecModule(StageModule):
    """Train a latent video codec on a frozen tokenizer's latents.

    Args:
        codec: the ``LatentVideoCodec`` to train.
        lambdas: one rate-distortion weight per quality index, strictly increasing (a higher
            index must mean a higher rate and quality, as the codec's gains assume).
        tokenizer_path: a ``gvc-export`` folder with ``tokenizer.json`` + ``tokenizer.safetensors``.
        tokenizer: instead of ``tokenizer_path``, a registered streaming video VAE module (tests).
        pixel_weight: weight of the pixel MSE (through the frozen decoder) inside D; 0 skips the
            decoder in training (much cheaper).
        lr, betas, aux_lr, warmup_steps: Adam for the codec with linear warm-up; Adam at
            ``aux_lr`` for the quantiles.
        decay_steps, min_lr_ratio: with ``decay_steps > 0`` a cosine decay of the main lr to
            ``min_lr_ratio`` times it over that many steps.
        grad_clip: gradient-norm clip of the main optimizer's parameters.
        finetune: start from an exported codec or component, freeze or adapt named parts
            (:mod:`gvc_train.lit.finetune`).
        max_consecutive_nonfinite: stop with an error after this many skipped batches in a row
            (training has diverged; skipping forever would spin without progress).
    """

    stage_name = "the latent-codec stage"
    exported_components = {"tokenizer": "tokenizer", "latent_codec": "codec"}
    # A submodule so that checkpoints and gvc-export carry it, but it never trains: the
    # exported codec needs the exact tokenizer it was trained on.
    frozen_components = ("tokenizer",)
    supported_precisions = SUPPORTED_PRECISIONS
    progress_bar_metrics = ("loss",)

    def __init__(
        self,
        codec: LatentVideoCodec,
        lambdas: Sequence[float],
        tokenizer_path: str | None = None,
        tokenizer: nn.Module | None = None,
        pixel_weight: float = 0.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        aux_lr: float = 1e-3,
        warmup_steps: int = 0,
        decay_steps: int = 0,
        min_lr_ratio: float = 0.05,
        grad_clip: float | None = 1.0,
        max_consecutive_nonfinite: int = 100,
        finetune: FineTune | None = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        tokenizer = load_streaming_tokenizer(tokenizer_path, tokenizer, self.stage_name)
        if tokenizer.latent_channels != codec.latent_channels:
            raise ValueError(
                f"the tokenizer has {tokenizer.latent_channels} latent channels, the codec codes {codec.latent_channels}"
            )
        lambdas = rd_lambdas(lambdas, codec.num_qualities)
        if pixel_weight < 0:
            raise ValueError(f"pixel_weight must be >= 0, got {pixel_weight}")
        self.save_hyperparameters(ignore=["codec", "tokenizer", "finetune"])
        self.hparams["lambdas"] = lambdas
        self.codec = codec
        self.tokenizer = tokenizer  # frozen_components: eval mode, no gradients
        self.apply_finetune(finetune)

    # ---- rate and distortion ------------------------------------------------------------
    def pixels_per_clip(self, latent: torch.Tensor) -> int:
        """Video pixels (frames x height x width) a ``B x C x t x h x w`` latent stands for."""
        return video_pixels(self.tokenizer, latent)

    def _lambda(self, quality: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        lambdas = torch.tensor(self.hparams.lambdas, device=like.device, dtype=torch.float32)
        return lambdas[quality]

    def rate_distortion(
        self,
        latent: torch.Tensor,
        quality: int | torch.Tensor,
        pixel_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Code ``latent`` at ``quality`` (an int or a ``B`` tensor) and measure it.

        Returns per-sample ``bpp``, ``mse`` (latent), ``distortion`` and the scalar ``loss``,
        plus ``recon`` (latent); with ``pixel_target`` (video in [0, 1]) also ``video_recon``
        (decoded, not clamped) and ``pixel_mse``. Train or eval quantization follows the
        codec's mode.
        """
        # float32 entropy models whatever the trainer's autocast (see the module docstring).
        with torch.autocast(device_type=latent.device.type, enabled=False):
            out = self.codec(latent.float(), quality=quality)
        recon = out["recon"]
        bpp = out["bits"].sum(dim=1) / self.pixels_per_clip(latent)
        mse = (recon - latent).pow(2).flatten(1).mean(dim=1)
        terms = {"recon": recon, "bpp": bpp, "mse": mse}
        distortion = mse
        if pixel_target is not None:
            video_recon, pixel_mse = decoded_pixel_mse(self.tokenizer, recon, pixel_target)
            terms.update(video_recon=video_recon, pixel_mse=pixel_mse)
            if self.hparams.pixel_weight > 0:
                distortion = distortion + self.hparams.pixel_weight * pixel_mse
        terms["distortion"] = distortion
        terms["loss"] = bpp.mean() + (self._lambda(quality, latent) * distortion).mean()
        return terms

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        opt, aux_opt = self.optimizers()
        latent, video = clip_latent(self.tokenizer, batch, self.stage_name)
        batch_size = latent.shape[0]
        with step_noise(self, batch_size):  # the same noise and qualities whatever the world size
            quality = sample_noise.randint(self.codec.num_qualities, batch_size, latent.device)
            target = target_pixels(self.tokenizer, latent, video) if self.hparams.pixel_weight > 0 else None
            terms = self.rate_distortion(latent, quality, target)
        with torch.autocast(device_type=latent.device.type, enabled=False):
            aux_loss = self.codec.aux_loss()
        total = terms["loss"] + aux_loss
        if not self.nonfinite.ok(self, total, batch_size):
            return None

        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        # The main parameters only: the quantiles' gradient is the aux loss's, not clipped
        # (compressai's reference loop does the same).
        # (under FSDP the root module's clip also covers the quantiles: harmless)
        clip_grad_norm(self, opt, self.hparams.grad_clip)
        opt.step()
        step_uncounted(self, aux_opt)
        self.step_schedulers()

        with torch.no_grad():
            mse = terms["mse"].mean()
            metrics = {
                "train/loss": terms["loss"].detach(),
                "train/bpp": terms["bpp"].detach().mean(),
                "train/mse": mse,
                # The latent is roughly unit-scale: PSNR with peak 1, i.e. -10 log10(MSE).
                "train/psnr_latent": -10.0 * torch.log10(mse.clamp_min(1e-10)),
                "train/aux_loss": aux_loss.detach(),
                "train/nonfinite_skipped": float(self.nonfinite.skipped),
            }
            if "pixel_mse" in terms:
                metrics["train/pixel_mse"] = terms["pixel_mse"].detach().mean()
        self.log_dict(metrics, batch_size=batch_size)
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        return metrics["train/loss"]

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        """Code the batch at every quality index with rounded quantization (eval mode)."""
        latent, video = clip_latent(self.tokenizer, batch, self.stage_name)
        target = video if video is not None else (target_pixels(self.tokenizer, latent, None) if self.hparams.pixel_weight > 0 else None)
        metrics: dict[str, torch.Tensor] = {}
        losses = []
        outputs: dict[str, torch.Tensor] = {}
        for q in range(self.codec.num_qualities):
            terms = self.rate_distortion(latent, q, target)
            losses.append(terms["loss"])
            metrics[f"bpp_q{q}"] = terms["bpp"].mean()
            metrics[f"psnr_latent_q{q}"] = -10.0 * torch.log10(terms["mse"].mean().clamp_min(1e-10))
            if video is not None:
                recon_video = terms["video_recon"].float().clamp(0, 1)
                metrics[f"psnr_q{q}"] = psnr(recon_video, video).mean()
                if q == 0:
                    # The lowest rate shows the codec's artifacts best (ReconstructionVideoLogger).
                    outputs["recon"] = recon_video
        # The monitorable scalar (ModelCheckpoint): the training objective, averaged over qualities.
        metrics["loss"] = torch.stack(losses).mean()
        return EvalResult(metrics, batch_size=latent.shape[0], outputs=outputs)

    # ---- optimizers and checkpoints -----------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt, aux_opt = entropy_model_optimizers(self.codec, hp.lr, hp.betas, hp.aux_lr, self.stage_name)
        # the quantiles' aux optimizer needs no warm-up
        return self.with_warmup([opt, aux_opt], hp.warmup_steps, scheduled=1, decay_steps=hp.decay_steps, min_lr_ratio=hp.min_lr_ratio)
