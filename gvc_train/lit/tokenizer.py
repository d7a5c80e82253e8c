"""The tokenizer training stage: a video VAE with L1, MS-SSIM, KL and optional LPIPS and GAN terms.

The stage trains whichever video VAE it is given (the project's ``CausalVAE`` or a diffusers
video VAE through ``DiffusersVAE``); both expose the same encode/decode/forward API.
Optimization is manual because the optional discriminator needs its own optimizer and step;
with ``discriminator=None`` it is a plain single-optimizer loop. What every stage shares
(precision policy, eval dispatch, warm-up, non-finite guard, export entry) is in
:class:`gvc_train.lit.stage.StageModule`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from gvc_train.eval.metrics import frame_psnr, ms_ssim, psnr
from gvc_train.lit.finetune import FineTune
from gvc_train.lit.optim import clip_grad_norm, step_uncounted
from gvc_train.lit.stage import EvalResult, StageModule
from gvc_train.lit.step_guard import step_noise
from gvc_train.models.losses.gan_losses import adaptive_gan_weight, hinge_d_loss, hinge_g_loss


class TokenizerModule(StageModule):
    """Train a video tokenizer (VAE).

    Args:
        vae: the video VAE (``gvc_train.models.CausalVAE`` or ``DiffusersVAE``).
        l1_weight, ms_ssim_weight: reconstruction terms; MS-SSIM is ``1 - ms_ssim``.
        kl_weight: weight of the KL term, itself the per-sample KL summed over the latent and
            divided by the number of input values, so the weight does not depend on clip size.
        lpips_weight, lpips_backbone: an LPIPS term, used only when the path to local backbone
            weights is given (nothing can be downloaded at run time).
        discriminator: an optional 3D patch discriminator; hinge loss, VQGAN's adaptive weight
            times ``gan_weight``, switched on at ``gan_start_step``.
        lr, disc_lr, betas, weight_decay, warmup_steps: AdamW with linear warm-up.
        decay_steps, min_lr_ratio: with ``decay_steps > 0`` a cosine decay of the lr to
            ``min_lr_ratio`` times it over that many steps (set it to ``trainer.max_steps``).
        grad_clip: clip the gradient norm of each optimizer's parameters (manual optimization
            means the Trainer's gradient_clip_val does not apply).
        finetune: start from an exported codec or component, freeze or adapt named parts
            (:mod:`gvc_train.lit.finetune`).
        max_consecutive_nonfinite: a batch with a non-finite loss is skipped (no step, counted
            in ``train/nonfinite_skipped``); this many in a row save a checkpoint and stop the
            run (see :mod:`gvc_train.lit.step_guard`).
    """

    stage_name = "the tokenizer stage"
    exported_components = {"tokenizer": "vae"}
    extra_parts = {"discriminator": ("discriminator",)}
    progress_bar_metrics = ("psnr", "ms_ssim", "l1")
    # supported_precisions: the base's (no fp16: the grad scaler would also update twice per GAN batch)

    def __init__(
        self,
        vae: nn.Module,
        l1_weight: float = 1.0,
        ms_ssim_weight: float = 0.2,
        kl_weight: float = 1e-6,
        lpips_weight: float = 0.0,
        lpips_backbone: str | None = None,
        discriminator: nn.Module | None = None,
        gan_weight: float = 0.1,
        gan_start_step: int = 2000,
        lr: float = 1e-4,
        disc_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        decay_steps: int = 0,
        min_lr_ratio: float = 0.05,
        grad_clip: float | None = 1.0,
        max_consecutive_nonfinite: int = 100,
        finetune: FineTune | None = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        self.save_hyperparameters(ignore=["vae", "discriminator", "finetune"])
        self.vae = vae
        self.discriminator = discriminator
        # Held in a list, not as a submodule: the frozen LPIPS network (tens of MB) is loaded from
        # the user's path each run and must not be copied into every checkpoint.
        self._lpips: list[nn.Module] = []
        if lpips_weight > 0:
            if not lpips_backbone:
                raise ValueError("lpips_weight > 0 needs lpips_backbone: a local path to backbone weights")
            from gvc_train.models.losses.lpips import LPIPS

            self._lpips.append(LPIPS(backbone_path=lpips_backbone).eval().requires_grad_(False))
        # its own count: a finite generator loss must not hide a discriminator that diverged
        self.nonfinite_d = self.add_nonfinite_guard("discriminator loss", "nonfinite_skipped_d")
        self.apply_finetune(finetune)
        if discriminator is not None and not self.trainable(discriminator.parameters()):
            raise ValueError("finetune leaves the discriminator nothing to train: train it too, or set discriminator: null")

    def check_trainer(self, trainer: L.Trainer) -> None:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters", False):
            if self.discriminator is not None:
                # Two backward passes a step, each leaving one sub-network without gradients.
                raise ValueError(
                    "training with a discriminator under DDP needs --trainer.strategy=ddp_find_unused_parameters_true"
                )

    # ---- losses -------------------------------------------------------------------------
    def _reconstruction_terms(self, x_BCThw: torch.Tensor) -> dict[str, torch.Tensor]:
        recon_BCThw, posterior = self.vae(x_BCThw)
        hp = self.hparams
        l1 = (recon_BCThw - x_BCThw).abs().mean()
        terms = {"recon": recon_BCThw, "l1": l1}
        nll = hp.l1_weight * l1
        if hp.ms_ssim_weight > 0:
            ssim = ms_ssim(recon_BCThw.clamp(0, 1), x_BCThw).mean()
            terms["ms_ssim"] = ssim
            nll = nll + hp.ms_ssim_weight * (1 - ssim)
        if self._lpips:
            lpips_net = self._lpips[0].to(x_BCThw.device)
            lp = lpips_net(recon_BCThw, x_BCThw).mean()
            terms["lpips"] = lp
            nll = nll + hp.lpips_weight * lp
        terms["nll"] = nll
        values_per_sample = x_BCThw[0].numel()
        terms["kl"] = posterior.kl().mean() / values_per_sample
        return terms

    def _gan_active(self) -> bool:
        return self.discriminator is not None and self.global_step >= self.hparams.gan_start_step

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x_BCThw = batch["video"]
        opts = self.optimizers()
        opt_g, opt_d = (opts if isinstance(opts, (list, tuple)) else (opts, None))

        with step_noise(self, x_BCThw.shape[0]):  # posterior samples: the same whatever the world size
            terms = self._reconstruction_terms(x_BCThw)
        loss = terms["nll"] + self.hparams.kl_weight * terms["kl"]
        gan_on = self._gan_active()
        d_stepped = False
        if gan_on:
            # The discriminator is frozen for the generator's backward: its gradients there
            # would be computed (and all-reduced under DDP) only to be thrown away.
            self.discriminator.requires_grad_(False)
            g_loss = hinge_g_loss(self.discriminator(terms["recon"]))
            weight = adaptive_gan_weight(terms["nll"], g_loss, self.vae.last_layer_weight, reduce_grad=self._mean_over_ranks())
            loss = loss + self.hparams.gan_weight * weight * g_loss
            self.log("train/g_loss", g_loss.detach())
            self.log("train/gan_adaptive_weight", weight)

        if not self.nonfinite.ok(self, loss, x_BCThw.shape[0]):
            return None
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip_grad_norm(self, opt_g, self.hparams.grad_clip)
        opt_g.step()
        # None, not zeros: the discriminator's clip below (under FSDP: over every parameter
        # with a gradient) must not see the generator's
        opt_g.zero_grad(set_to_none=True)

        if gan_on and opt_d is not None:
            self.discriminator.requires_grad_(True)
            logits_real = self.discriminator(x_BCThw)
            logits_fake = self.discriminator(terms["recon"].detach())
            d_loss = hinge_d_loss(logits_real, logits_fake)
            d_stepped = self.nonfinite_d.ok(self, d_loss, x_BCThw.shape[0])
            if d_stepped:
                opt_d.zero_grad(set_to_none=True)
                self.manual_backward(d_loss)
                clip_grad_norm(self, opt_d, self.hparams.grad_clip)
                step_uncounted(self, opt_d)
                opt_d.zero_grad(set_to_none=True)
            self.log("train/d_loss", d_loss.detach())
        # The discriminator's warm-up advances only with its steps.
        self.step_schedulers(True, gan_on and d_stepped)

        with torch.no_grad():
            train_psnr = psnr(terms["recon"].detach().clamp(0, 1), x_BCThw).mean()
        self.log_dict(
            {
                "train/loss": loss.detach(),
                "train/l1": terms["l1"].detach(),
                "train/kl": terms["kl"].detach(),
                "train/psnr": train_psnr,
                **{f"train/{k}": terms[k].detach() for k in ("ms_ssim", "lpips") if k in terms},
            },
            prog_bar=False,
            batch_size=x_BCThw.shape[0],
        )
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=x_BCThw.shape[0])
        return loss.detach()

    def _mean_over_ranks(self) -> Any:
        if self._trainer is None or self.trainer.world_size == 1:
            return None
        return lambda t: self.trainer.strategy.reduce(t, reduce_op="mean")

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        x_BCThw = batch["video"]
        posterior = self.vae.encode(x_BCThw)
        recon_BCThw = self.vae.decode(posterior.mode()).clamp(0, 1)
        metrics = {
            # per-frame PSNR averaged, as video-coding papers report it
            "psnr": frame_psnr(recon_BCThw, x_BCThw).mean(),
            "ms_ssim": ms_ssim(recon_BCThw, x_BCThw).mean(),
            "l1": (recon_BCThw - x_BCThw).abs().mean(),
        }
        return EvalResult(metrics, batch_size=x_BCThw.shape[0], outputs={"recon": recon_BCThw})

    # ---- optimizers ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt_g = torch.optim.AdamW(self.trainable(self.vae.parameters()), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        optimizers = [opt_g]
        if self.discriminator is not None:
            optimizers.append(
                torch.optim.AdamW(
                    self.trainable(self.discriminator.parameters()), lr=hp.lr if hp.disc_lr is None else hp.disc_lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
                )
            )
        return self.with_warmup(optimizers, hp.warmup_steps, decay_steps=hp.decay_steps, min_lr_ratio=hp.min_lr_ratio)
