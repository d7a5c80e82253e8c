"""The Scale-Space Flow training stage: rate-distortion training of ``ScaleSpaceFlowCodec``, the
learned pixel-domain peer (compressai's video model at configurable widths).

Each clip of a ``VideoDataModule`` batch is one GOP (a keyframe, then ``T - 1`` inter frames, each
predicted from the previous reconstruction), coded at a quality index drawn per clip, with
compressai's video loss summed over the frames:

    loss = mean_b sum_t ( bpp_bt + lambda[q_b] * 255^2 * MSE_bt )

so one model learns every rate point of ``lambdas`` (one per quality index, increasing).

**Frame sizes.** The codec needs H and W multiples of 128. Crops should be (128, 256); a clip
that is not (a smaller crop, the validation clips' full frames) is padded by edge replication to
the next multiple, as the codec family pads. Distortion and PSNR are measured on the real pixels
only and bpp is the bits over the real pixels (the protocol: rate counts only what was asked for).
The padding wastes compute, not correctness: the tests' 32-pixel crops train at 128.

Optimization is manual, as the latent-codec stage: the entropy bottlenecks' ``quantiles`` train
in their own Adam on ``aux_loss()``, through ONE backward with the main loss (their gradients are
disjoint), the aux step bypasses Lightning's step counter, and a non-finite batch is skipped
whole. The hyperpriors run in float32 under ``bf16-mixed`` (the codec does that itself); the
full-resolution transforms follow autocast. What every stage shares is in
:class:`gvc_train.lit.stage.StageModule`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from gvc_train.eval.metrics import frame_psnr
from gvc_train.lit.finetune import FineTune
from gvc_train.lit.optim import clip_grad_norm, entropy_model_optimizers, rd_lambdas, step_uncounted
from gvc_train.lit.stage import EvalResult, StageModule
from gvc_train.lit.step_guard import step_noise
from gvc_train.models import sample_noise
from gvc_train.models.ssf.ssf_codec import FRAME_MULTIPLE, ScaleSpaceFlowCodec

# As the latent-codec stage: the hyperpriors stay float32 under bf16-mixed; not 16-mixed (manual
# optimization clips before the grad scaler unscales), nor *-true half precisions.
SUPPORTED_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed")
PIXEL_PEAK = 255.0  # compressai's loss scales the MSE of [0, 1] pixels by 255^2


def pad_to_multiple(video_BCThw: torch.Tensor, multiple: int = FRAME_MULTIPLE) -> torch.Tensor:
    """Edge-replicate the bottom and right of ``B x 3 x T x H x W`` up to multiples of ``multiple``."""
    h, w = video_BCThw.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return video_BCThw
    return F.pad(video_BCThw, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")


class SSFModule(StageModule):
    """Train a Scale-Space Flow video codec on pixel clips.

    Args:
        model: the ``ScaleSpaceFlowCodec`` to train.
        lambdas: one rate-distortion weight per quality index, strictly increasing
            (compressai's MSE ladder runs 0.0018 ... 0.0932 for its eight models).
        lr, betas, aux_lr, warmup_steps: Adam for the codec with linear warm-up; Adam at
            ``aux_lr`` for the quantiles.
        decay_steps, min_lr_ratio: with ``decay_steps > 0`` a cosine decay of the main lr to
            ``min_lr_ratio`` times it over that many steps.
        grad_clip: gradient-norm clip of the main optimizer's parameters (None: no clipping).
        max_consecutive_nonfinite: stop with an error after this many skipped batches in a row.
        finetune: start from an exported codec or component, freeze named parts
            (:mod:`gvc_train.lit.finetune`).
    """

    stage_name = "the Scale-Space Flow stage"
    exported_components = {"ssf": "model"}
    supported_precisions = SUPPORTED_PRECISIONS
    progress_bar_metrics = ("psnr", "bpp")

    def __init__(
        self,
        model: ScaleSpaceFlowCodec,
        lambdas: Sequence[float],
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
        if not isinstance(model, ScaleSpaceFlowCodec):
            raise TypeError(f"{self.stage_name} trains a ScaleSpaceFlowCodec, got {type(model).__name__}")
        lambdas = rd_lambdas(lambdas, model.num_qualities)
        self.save_hyperparameters(ignore=["model", "finetune"])
        self.hparams["lambdas"] = lambdas
        self.model = model
        self.apply_finetune(finetune)

    # ---- rate and distortion ------------------------------------------------------------
    def rate_distortion(self, video_BCThw: torch.Tensor, quality: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """Code ``video`` (``B x 3 x T x H x W`` in [0, 1], any H, W) at ``quality`` (an int or
        a ``B`` tensor). Returns per-sample ``bpp`` (bits over the real pixels of all T frames),
        ``mse_BT`` (per frame, real pixels), the scalar ``loss`` and ``recon`` (cropped, not
        clamped). Train or eval quantization follows the model's mode."""
        if video_BCThw.dim() != 5 or video_BCThw.shape[1] != 3:
            raise ValueError(f"{self.stage_name}: expected batch['video'] B x 3 x T x H x W, got {tuple(video_BCThw.shape)}")
        video = video_BCThw.float()
        b, _, t, h, w = video.shape
        out = self.model(pad_to_multiple(video), quality)
        recon = out["x_hat"][..., :h, :w]
        mse_BT = (recon - video).pow(2).mean(dim=(1, 3, 4))
        bpp_BT = out["bits"] / (h * w)
        lambdas = torch.tensor(self.hparams.lambdas, device=video.device)[quality]
        lambdas = lambdas.reshape(-1, 1) if isinstance(quality, torch.Tensor) else lambdas
        loss = (bpp_BT + lambdas * PIXEL_PEAK**2 * mse_BT).sum(dim=1).mean()
        return {"recon": recon, "bpp": bpp_BT.sum(dim=1) / t, "mse_BT": mse_BT, "loss": loss}

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        opt, aux_opt = self.optimizers()
        video = batch["video"]
        batch_size = video.shape[0]
        with step_noise(self, batch_size):  # the same qualities whatever the world size
            quality = sample_noise.randint(self.model.num_qualities, batch_size, video.device)
            terms = self.rate_distortion(video, quality)
        aux_loss = self.model.aux_loss()
        total = terms["loss"] + aux_loss
        if not self.nonfinite.ok(self, total, batch_size):
            return None

        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        clip_grad_norm(self, opt, self.hparams.grad_clip)  # the main parameters; quantiles unclipped (compressai)
        opt.step()
        step_uncounted(self, aux_opt)
        self.step_schedulers()

        with torch.no_grad():
            mse = terms["mse_BT"].mean()
            metrics = {
                "train/loss": terms["loss"].detach(),
                "train/bpp": terms["bpp"].detach().mean(),
                "train/mse": mse.detach(),
                "train/psnr": -10.0 * torch.log10(mse.detach().clamp_min(1e-10)),
                "train/aux_loss": aux_loss.detach(),
                "train/nonfinite_skipped": float(self.nonfinite.skipped),
            }
        self.log_dict(metrics, batch_size=batch_size)
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        return metrics["train/loss"]

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        """Code the batch at every quality index (eval mode: rounded quantization); bpp is the
        model's estimate of the coded size, PSNR the per-frame PSNR on the real pixels, averaged."""
        video = batch["video"].float()
        metrics: dict[str, torch.Tensor] = {}
        losses, psnrs, bpps = [], [], []
        outputs: dict[str, torch.Tensor] = {}
        for q in range(self.model.num_qualities):
            terms = self.rate_distortion(video, q)
            recon = terms["recon"].clamp(0, 1)
            psnr_q = frame_psnr(recon, video).mean()
            losses.append(terms["loss"])
            psnrs.append(psnr_q)
            bpps.append(terms["bpp"].mean())
            metrics[f"bpp_q{q}"], metrics[f"psnr_q{q}"] = bpps[-1], psnr_q
            if q == 0:
                outputs["recon"] = recon  # the lowest rate shows the artifacts best (ReconstructionVideoLogger)
        # Averages over the qualities: psnr picks the best checkpoint, loss is the objective.
        metrics["psnr"] = torch.stack(psnrs).mean()
        metrics["bpp"] = torch.stack(bpps).mean()
        metrics["loss"] = torch.stack(losses).mean()
        return EvalResult(metrics, batch_size=video.shape[0], outputs=outputs)

    # ---- optimizers ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt, aux_opt = entropy_model_optimizers(self.model, hp.lr, hp.betas, hp.aux_lr, self.stage_name)
        # the quantiles' aux optimizer needs no warm-up or decay
        return self.with_warmup([opt, aux_opt], hp.warmup_steps, scheduled=1, decay_steps=hp.decay_steps, min_lr_ratio=hp.min_lr_ratio)
