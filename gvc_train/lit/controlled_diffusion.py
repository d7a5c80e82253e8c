"""The controlled family's training stage: a rectified flow over a frozen tokenizer's latents,
conditioned on keyframes, control maps and (optionally) text.

Each batch's clip latent ``x0`` (latent shards, or ``video`` encoded on the fly:
:func:`~gvc_train.lit.tokenizer_latents.clip_latent`, times ``latent_scale``) is the data of the
flow (``gvc_train.models.flow.matching``: ``x_t = (1 - t) x0 + t noise``, velocity ``noise - x0``).
The :class:`~gvc_train.models.controlled.transformer.ControlledVideoTransformer` sees:

- **keyframes**: the clean latent at the policy's latent frames (``keyframes``: ``"first"`` is
  latent frame 0 with role first, ``"last"`` the last with role last, an int ``i`` frame ``i``
  (negative from the end) with role adaptive; default first and last, as cvg);
- **controls**: ``batch["controls"][name]`` in its layout (``gvc_train/data/control_batch.py``)
  turned into the model's float maps by :func:`~gvc_train.models.controlled.control_maps.control_map`
  on the grid the model expects (latent size times ``control_scale``);
- **text**: the captions (``batch["controls"]["caption"]`` or ``batch["caption"]``) through a
  frozen ``text_encoder``, when one is given.

**Modality dropout** (:class:`~gvc_train.models.flow.modality_dropout.ModalityDropout`): every
modality has its drop probability (``dropout``, name -> p; unnamed ones ``default_dropout``) and
all of them drop at once with ``dropout_all_p`` (classifier-free guidance's unconditional samples).

**Loss**: the flow-matching MSE per sample, averaged over the latent positions the model must
generate: where keyframes are kept their own frames are given and do not count. Times and noise
are drawn through keyed noise (``step_noise``), so a DDP split draws what one process draws.
Logged per modality: ``train/dropped_{m}`` (share of the batch without it) and the loss on the
samples that kept it (``train/loss_kept_{m}``) and that dropped it (``train/loss_dropped_{m}``),
each only when the batch has such samples.

**EMA**: ``ema_transformer`` follows the trained weights (decay ``min(ema_decay, (1 + n) / (10 +
n))`` at optimizer step n: early steps follow faster); it is in checkpoints and it is what
``gvc-export`` writes as ``transformer`` (its state prefix is ``ema_transformer.``: no export-side
change). Validation runs the EMA model (``loss``) and the raw one (``loss_raw``) at fixed times
(``val_times``) with noise seeded by ``val_seed``: every validation sees the same draws.

**Random clip lengths** (``latent_frames_range``: ``gvc_train/lit/clip_lengths.py``): each
training batch keeps its first ``n`` latent frames (video and controls cut alike), ``n`` drawn
from the global step, since the codec generates clips cut at keyframes, often shorter.

**Export: a whole codec folder.** ``tokenizer``; ``latent_codec``, the keyframes' coder (frozen,
from a latent-family export whose tokenizer must be the stage's: ``latent_codec_path``);
``transformer`` (the EMA); ``coding``, a :class:`ControlledCodingSettings` of ``latent_scale`` and
the recipe's ``coding`` defaults; ``text_encoder`` when one is given. With a latent codec that is
the controlled family's folder (with the text encoder, controlled_text); without one (tests),
the components alone.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gvc_train.components import load_component, read_component_meta, save_component
from gvc_train.lit.clip_lengths import check_range, cut_batch, draw_latent_frames
from gvc_train.lit.controlled_validation import validation_videos
from gvc_train.lit.ema_strategy import refuse_sharded_ema
from gvc_train.lit.finetune import FineTune
from gvc_train.lit.latent_cache import ContentCache
from gvc_train.lit.optim import clip_grad_norm, weight_decay_groups
from gvc_train.lit.stage import EvalResult, StageModule, load_streaming_tokenizer
from gvc_train.lit.step_guard import step_noise
from gvc_train.lit.tokenizer_latents import clip_latent
from gvc_train.models import sample_noise
from gvc_train.models.controlled.coding_settings import ControlledCodingSettings
from gvc_train.models.controlled.control_maps import model_control_map
from gvc_train.models.controlled.keyframe_latents import keyframe_conditions, keyframe_latents, pixel_frame_of
from gvc_train.models.controlled.transformer import KEYFRAMES, TEXT, ControlledVideoTransformer
from gvc_train.models.flow.matching import TimeSampling, interpolate, target_velocity
from gvc_train.models.flow.modality_dropout import ModalityDropout, drop_masks
from gvc_train.models.flow.sampler import sample as flow_sample


class ControlledDiffusionModule(StageModule):
    """Train a ``ControlledVideoTransformer`` on a frozen tokenizer's latents (module docstring).

    Args:
        transformer: the velocity model; its ``latent_channels`` must be the tokenizer's.
        tokenizer_path, tokenizer: the frozen tokenizer, a ``gvc-export`` folder or a module.
        latent_codec_path, latent_codec: the frozen keyframe coder, a latent-family export folder
            (its tokenizer must be the stage's) or a module (tests); None: none exported.
        text_encoder: a frozen ``TextEncoder`` for the captions (None: no text); exported.
        coding: :class:`ControlledCodingSettings` arguments but ``latent_scale`` (the codec's
            defaults); ``controls`` defaults to every modality the stage conditions on.
        latent_frames_range: ``[lo, hi]``: train on clips of a random length (module docstring).
        latent_cache: clips (and keyframes) whose tokenizer latents are kept by content
            (:class:`~gvc_train.lit.latent_cache.ContentCache`): whole-frame clips repeat every
            epoch, and encoding them is most of a CPU step; 0 encodes every step.
        keyframes: the training keyframe policy ("first", "last", or latent-frame ints).
        dropout, default_dropout, dropout_all_p: modality dropout (names: the transformer's
            controls, ``"keyframes"``, ``"text"``).
        time_kind, time_mean, time_std, time_shift: :class:`TimeSampling` of training times.
        latent_scale: the latent is multiplied by it before the flow (about unit variance).
        ema_decay: decay of the exported EMA weights.
        val_times, val_seed: validation's fixed times and noise seed.
        lr, betas, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up.
        finetune: start the transformer from an export, freeze parts or train LoRA adapters
            (:mod:`gvc_train.lit.finetune`); the EMA starts from the loaded weights.
    """

    stage_name = "the controlled diffusion stage"
    # Every component it can export, in the family's order; an instance exports those it has
    # (``self.exported_components``, set in __init__: latent_codec and text_encoder are optional).
    all_components = {
        "tokenizer": "tokenizer", "latent_codec": "latent_codec", "transformer": "ema_transformer",
        "coding": "coding", "text_encoder": "text_encoder",
    }  # fmt: skip
    exported_components = {"tokenizer": "tokenizer", "transformer": "ema_transformer", "coding": "coding"}
    frozen_components = ("tokenizer", "latent_codec", "ema_transformer", "text_encoder")
    finetune_targets = {"transformer": "transformer"}  # trained here, exported as its EMA
    progress_bar_metrics = ("loss",)

    def __init__(
        self,
        transformer: ControlledVideoTransformer,
        tokenizer_path: str | None = None,
        tokenizer: nn.Module | None = None,
        latent_codec_path: str | None = None,
        latent_codec: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        coding: Mapping[str, Any] | None = None,
        latent_frames_range: Sequence[int] | None = None,
        latent_cache: int = 0,
        keyframes: Sequence[int | str] = ("first", "last"),
        dropout: Mapping[str, float] | None = None,
        default_dropout: float = 0.1,
        dropout_all_p: float = 0.1,
        time_kind: str = "logit_normal",
        time_mean: float = 0.0,
        time_std: float = 1.0,
        time_shift: float = 1.0,
        latent_scale: float = 1.0,
        ema_decay: float = 0.999,
        val_times: Sequence[float] = (0.25, 0.5, 0.75),
        val_seed: int = 0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        grad_clip: float | None = 1.0,
        max_consecutive_nonfinite: int = 100,
        finetune: FineTune | None = None,
    ) -> None:
        super().__init__(max_consecutive_nonfinite)
        tokenizer = load_streaming_tokenizer(tokenizer_path, tokenizer, self.stage_name)
        channels = getattr(tokenizer, "latent_channels", transformer.latent_channels)
        if channels != transformer.latent_channels:
            raise ValueError(f"the transformer takes {transformer.latent_channels} latent channels, the tokenizer gives {channels}")
        for key in keyframes:
            if not (isinstance(key, int) or key in ("first", "last")):
                raise ValueError(f"keyframe {key!r}: 'first', 'last' or a latent-frame index")
        same_frame = [0 if k == "first" else -1 if k == "last" else k for k in keyframes]
        if len(set(same_frame)) != len(same_frame):  # "first" is frame 0 and "last" frame -1: one role a frame
            raise ValueError(f"keyframes {list(keyframes)} name one latent frame twice")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        latent_codec = _keyframe_coder(latent_codec_path, latent_codec, tokenizer_path, tokenizer, self.stage_name)
        _check_text_encoder(text_encoder, transformer)
        self.clip_range = check_range(latent_frames_range, transformer.max_latent_frames)
        shortest = self.clip_range[0] if self.clip_range else None
        outside = [k for k in keyframes if isinstance(k, int) and shortest is not None and not -shortest <= k < shortest]
        if outside:  # else the first step that draws a short clip fails, hours in
            raise ValueError(f"keyframes {outside} are outside the shortest clip of latent_frames_range ({shortest} latent frames)")
        coding_settings = _coding_settings(coding, latent_scale, transformer, text_encoder is not None, keyframes)
        self.save_hyperparameters(ignore=["transformer", "tokenizer", "latent_codec", "text_encoder", "finetune"])
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.latent_codec = latent_codec
        self.text_encoder = text_encoder
        self.coding = coding_settings
        self.exported_components = {name: attr for name, attr in self.all_components.items() if getattr(self, attr, None) is not None}  # type: ignore[misc]
        # the parent's weights (and adapters) first: the EMA starts from the fine-tune's start
        self.apply_finetune(finetune)
        self.ema_transformer = copy.deepcopy(self.transformer)  # frozen_components: eval, no gradients
        self.latent_cache = ContentCache(latent_cache)  # a miss is computed per clip: bit-identical to a hit
        self.exported_components = {name: attr for name, attr in self.all_components.items() if getattr(self, attr) is not None}  # type: ignore[misc]
        if "transformer" in self._lora:  # the exported EMA copy carries the same adapters
            self._lora["ema_transformer"] = self._lora["transformer"]
        self.times = TimeSampling(time_kind, time_mean, time_std, time_shift)  # type: ignore[arg-type]
        # The dropout's columns in a fixed order: controls (sorted), keyframes, text.
        names = [*transformer.control_names, *([KEYFRAMES] if keyframes else []), *([TEXT] if text_encoder is not None else [])]
        dropout = dict(dropout or {})
        unknown = sorted(set(dropout) - set(names))
        if unknown:
            raise ValueError(f"dropout for {unknown}: this stage's modalities are {names}")
        self.dropout = ModalityDropout({n: dropout.get(n, default_dropout) for n in names}, dropout_all_p)

    # ---- conditions ---------------------------------------------------------------------
    def keyframe_conditions(self, batch: dict[str, Any], x0_BCThw: torch.Tensor) -> dict[str, torch.Tensor]:
        """``key_BCThw``, ``key_mask_B1Thw``, ``key_roles_BT`` of the policy's keyframes: each one
        the tokenizer's latent of its frame alone (``keyframe_latents.py``: what a decoder can
        compute from a decoded keyframe), at its latent frame."""
        T = x0_BCThw.shape[2]
        video = batch.get("video")
        roles: dict[int, str] = {}
        for key in self.hparams.keyframes:
            if isinstance(key, int) and not -T <= key < T:
                raise ValueError(f"{self.stage_name}: keyframe {key} is outside a clip of {T} latent frames")
            frame = 0 if key == "first" else T - 1 if key == "last" else int(key) % T
            if frame in roles:
                raise ValueError(f"{self.stage_name}: keyframes {list(self.hparams.keyframes)} fall twice on latent frame {frame} of a {T}-frame clip")
            roles[frame] = key if key in ("first", "last") else "adaptive"
        if video is None:
            if set(roles) - {0}:
                raise ValueError(f"{self.stage_name}: keyframes after the first need the batch's video (latent shards hold no frames)")
            return keyframe_conditions({0: (roles[0], x0_BCThw[:, :, 0])}, tuple(x0_BCThw.shape), x0_BCThw.device) if roles else {}
        stride = self.tokenizer.temporal_stride
        frames = sorted(roles)
        pixels = torch.tensor([pixel_frame_of(k, stride) for k in frames], device=video.device)
        scale = self.hparams.latent_scale
        encode = lambda frames: keyframe_latents(self.tokenizer, frames, scale)  # noqa: E731
        latents_BCKhw = self.latent_cache(f"keyframes x{scale}", encode, video.index_select(2, pixels))
        keys = {k: (roles[k], latents_BCKhw[:, :, i]) for i, k in enumerate(frames)}
        return keyframe_conditions(keys, tuple(x0_BCThw.shape), x0_BCThw.device)

    def control_maps(self, batch: dict[str, Any], x0_BCThw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch's controls the transformer knows, as ``B x C x T x H x W`` float maps."""
        controls = batch.get("controls") or {}
        model = self.transformer
        missing = [n for n in model.control_names if n not in controls]
        if missing:
            raise ValueError(f"{self.stage_name}: the batch has no control {missing} (VideoDataModule(controls=[...]))")
        maps = {}
        latent_thw = tuple(x0_BCThw.shape[2:])
        for name in model.control_names:
            maps[name] = torch.stack([model_control_map(model, name, clip, latent_thw) for clip in controls[name]]).to(x0_BCThw.device)
        return maps

    def text_conditions(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.text_encoder is None:
            return {}
        captions = (batch.get("controls") or {}).get("caption", batch.get("caption"))
        if captions is None:
            return {}
        with torch.no_grad():
            text_BLE, mask_BL = self.text_encoder(list(captions))
        return {"text_BLE": text_BLE, "text_mask_BL": mask_BL}

    def conditions(self, batch: dict[str, Any], x0_BCThw: torch.Tensor) -> dict[str, Any]:
        conditions: dict[str, Any] = self.keyframe_conditions(batch, x0_BCThw) if self.hparams.keyframes else {}
        conditions["controls"] = self.control_maps(batch, x0_BCThw)
        return {**conditions, **self.text_conditions(batch)}

    def clip_of_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The training batch cut to this step's random clip length (all of it without a range)."""
        if self.clip_range is None:
            return batch
        n = draw_latent_frames(self.global_step if self._trainer is not None else 0, *self.clip_range)
        return cut_batch(batch, n, self.tokenizer.temporal_stride)

    def latent(self, batch: dict[str, Any]) -> torch.Tensor:
        if "latent" not in batch and batch.get("video") is not None and self.latent_cache.max_entries:
            with torch.no_grad():
                latent = self.latent_cache("clip", lambda video: self.tokenizer.encode(video).mode().float(), batch["video"])
        else:
            latent, _ = clip_latent(self.tokenizer, batch, self.stage_name)
        return latent * self.hparams.latent_scale

    # ---- the loss -----------------------------------------------------------------------
    def loss_B(
        self, model: nn.Module, x0: torch.Tensor, conditions: dict[str, Any], dropped: dict[str, torch.Tensor], t_B: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample flow-matching MSE over the positions to generate (keyframes' excluded where
        kept). Draws the noise (one keyed-noise site)."""
        noise = sample_noise.normal(x0.shape, x0.device, x0.dtype)
        v = model(interpolate(x0, noise, t_B), t_B, **conditions, dropped=dropped)
        err = (v.float() - target_velocity(x0, noise).float()).square()
        weight = torch.ones_like(err[:, :1])
        if "key_mask_B1Thw" in conditions:
            kept_B = ~dropped.get(KEYFRAMES, torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device))
            # Only latent frame 0 is given exactly (its keyframe's intra latent *is* the clip's
            # frame 0); a later keyframe's latent frame also stands for the frames before it in
            # its group, which the model must generate: it stays in the loss.
            exact_B1Thw = torch.zeros_like(conditions["key_mask_B1Thw"].float())
            exact_B1Thw[:, :, :1] = conditions["key_mask_B1Thw"][:, :, :1].float()
            weight = 1 - exact_B1Thw * kept_B.view(-1, 1, 1, 1, 1)
        weight = weight.expand_as(err)
        return (err * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)

    # ---- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        opt = self.optimizers()
        batch = self.clip_of_step(batch)
        x0 = self.latent(batch)
        batch_size = x0.shape[0]
        conditions = self.conditions(batch, x0)
        with step_noise(self, batch_size):  # the same draws whatever the world size
            dropped = self.dropout(batch_size, x0.device)
            t_B = self.times.draw(batch_size, x0.device)
            loss_B = self.loss_B(self.transformer, x0, conditions, dropped, t_B)
        loss = loss_B.mean()
        if not self.nonfinite.ok(self, loss, batch_size):
            return None

        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip_grad_norm(self, opt, self.hparams.grad_clip)
        opt.step()
        self.step_schedulers()
        self.update_ema()

        with torch.no_grad():
            metrics = {"train/loss": loss.detach(), "train/nonfinite_skipped": float(self.nonfinite.skipped)}
            for name, dropped_B in dropped.items():
                metrics[f"train/dropped_{name}"] = dropped_B.float().mean()
                for part, mask in (("kept", ~dropped_B), ("dropped", dropped_B)):
                    if mask.any():
                        metrics[f"train/loss_{part}_{name}"] = loss_B.detach()[mask].mean()
        self.log_dict(metrics, batch_size=batch_size)
        self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=batch_size)
        return metrics["train/loss"]

    @torch.no_grad()
    def update_ema(self) -> None:
        n = self.global_step if self._trainer is not None else 0
        decay = min(self.hparams.ema_decay, (1 + n) / (10 + n))
        for ema, param in zip(self.ema_transformer.parameters(), self.transformer.parameters()):
            ema.lerp_(param.detach().to(ema.dtype), 1 - decay)
        for ema, buffer in zip(self.ema_transformer.buffers(), self.transformer.buffers()):
            ema.copy_(buffer)

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        """Loss of the EMA (``loss``) and raw (``loss_raw``) models at each fixed time, every
        condition kept, with noise seeded by ``val_seed``."""
        x0 = self.latent(batch)
        B = x0.shape[0]
        conditions = self.conditions(batch, x0)
        kept = drop_masks(self.dropout.names, B, device=x0.device)
        metrics: dict[str, torch.Tensor] = {}
        for label, model in (("", self.ema_transformer), ("_raw", self.transformer)):
            losses = []
            with sample_noise.keyed_noise(self.hparams.val_seed, 0, 0):  # the same noise for both models
                for t in self.hparams.val_times:
                    t_B = torch.full((B,), float(t), device=x0.device)
                    loss = self.loss_B(model, x0, conditions, kept, t_B).mean()
                    metrics[f"loss{label}_t{round(100 * float(t)):03d}"] = loss
                    losses.append(loss)
            metrics[f"loss{label}"] = torch.stack(losses).mean()
        return EvalResult(metrics, batch_size=B)

    @torch.no_grad()
    def sample(
        self, batch: dict[str, Any], num_steps: int = 20, guidance_scale: float = 1.0, seed: int = 0, shift: float | None = None
    ) -> torch.Tensor:
        """Videos (``B x 3 x T x H x W``) the EMA model generates for the batch's conditions:
        keyframes from its latent, its controls and captions; classifier-free guidance against
        every modality dropped."""
        x0 = self.latent(batch)
        B = x0.shape[0]
        conditions = self.conditions(batch, x0)
        names = self.dropout.names
        cond = {**conditions, "dropped": drop_masks(names, B, device=x0.device)}
        uncond = {**conditions, "dropped": drop_masks(names, B, dropped=names, device=x0.device)}
        generator = torch.Generator(device=x0.device).manual_seed(seed)
        latent = flow_sample(
            self.ema_transformer, x0.shape, cond, generator=generator, num_steps=num_steps,
            shift=self.hparams.time_shift if shift is None else shift, guidance_scale=guidance_scale,
            unconditional=uncond if guidance_scale != 1.0 else None, device=x0.device,
        )  # fmt: skip
        return self.tokenizer.decode(latent / self.hparams.latent_scale)

    def validation_videos(self, batch: dict[str, Any], max_clips: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source, generated) for ReconstructionVideoLogger: a seeded few-step EMA sample of the
        first clips' conditions (lit/controlled_validation.py)."""
        return validation_videos(self, batch, max_clips=max_clips, seed=self.hparams.val_seed)

    def check_trainer(self, trainer: Any) -> None:
        super().check_trainer(trainer)
        refuse_sharded_ema(trainer, self.stage_name)  # lit/ema_strategy.py: the EMA update is parameter by parameter

    # ---- optimizers ---------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = weight_decay_groups(self.transformer, hp.weight_decay)  # no decay on biases, norms, embedding tables
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        return self.with_warmup([opt], hp.warmup_steps)


# ---- construction helpers ---------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer_path: str | None, tokenizer: nn.Module) -> str:
    """The component fingerprint of the stage's tokenizer: its export's, or (a module) the one
    ``gvc-export`` would write for it."""
    if tokenizer_path is not None:
        return read_component_meta(tokenizer_path, "tokenizer")["fingerprint"]
    with tempfile.TemporaryDirectory() as folder:
        save_component(tokenizer, folder, "tokenizer")
        return read_component_meta(folder, "tokenizer")["fingerprint"]


def _keyframe_coder(
    latent_codec_path: str | None, latent_codec: nn.Module | None, tokenizer_path: str | None, tokenizer: nn.Module, who: str
) -> nn.Module | None:
    """The frozen latent codec that codes the keyframes: from a latent-family export made on this
    very tokenizer (fingerprints compared), or a module (tests), or None."""
    if latent_codec_path is not None and latent_codec is not None:
        raise ValueError("give at most one of latent_codec_path (a gvc-export folder) or latent_codec (a module)")
    if latent_codec_path is not None:
        theirs = read_component_meta(latent_codec_path, "tokenizer")["fingerprint"]
        if theirs != _tokenizer_fingerprint(tokenizer_path, tokenizer):
            raise ValueError(
                f"{who}: the latent codec at {latent_codec_path} was trained on another tokenizer "
                f"({theirs[:16]}...); its keyframes would not decode to this stage's latents"
            )
        latent_codec = load_component(latent_codec_path, "latent_codec")
    if latent_codec is not None:
        channels = getattr(latent_codec, "latent_channels", None)
        if channels is not None and channels != tokenizer.latent_channels:
            raise ValueError(f"{who}: the latent codec codes {channels} latent channels, the tokenizer makes {tokenizer.latent_channels}")
    return latent_codec


def _check_text_encoder(text_encoder: nn.Module | None, transformer: ControlledVideoTransformer) -> None:
    config = getattr(getattr(text_encoder, "model", None), "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    text_dim = transformer.config.get("text_dim") if isinstance(getattr(transformer, "config", None), dict) else None
    if width is not None and text_dim is not None and int(width) != int(text_dim):
        raise ValueError(f"the text encoder gives {width} channels, the transformer's text_dim is {text_dim}")
    padding = getattr(text_encoder, "padding", None)
    if text_encoder is not None and not getattr(transformer, "text_padding_masked", True) and padding not in (None, "max_length"):
        # the codec encodes one caption (no padding), training a batch padded to its longest
        raise ValueError(
            f"{type(transformer).__name__} attends to text padding (no mask), so a caption's effect depends on the "
            f"padded length: give the text encoder padding: max_length (Wan's pipeline pads to 512), not {padding!r}"
        )


def _coding_settings(
    coding: Mapping[str, Any] | None, latent_scale: float, transformer: ControlledVideoTransformer, has_text: bool, keyframes: Sequence[int | str]
) -> ControlledCodingSettings:
    """The exported ``coding`` component, checked against what this stage conditions on (its
    controls, and the role its closing keyframe is trained with: the codec gives every clip's
    closing keyframe ``end_role`` at the clip's last latent frame)."""
    coding = dict(coding or {})
    if "latent_scale" in coding:
        raise ValueError("coding.latent_scale is the stage's latent_scale; do not give it in coding")
    conditioned = [*transformer.control_names, *(["caption"] if has_text else [])]
    coding.setdefault("controls", conditioned)
    unknown = [c for c in coding["controls"] if c not in conditioned]
    if unknown:
        raise ValueError(f"coding.controls names {unknown}: this stage conditions on {conditioned}")
    try:
        settings = ControlledCodingSettings(latent_scale=latent_scale, **coding)
    except TypeError as e:  # an unknown setting
        raise ValueError(f"coding: {e}") from None
    closing = "last" if "last" in keyframes else "adaptive" if -1 in keyframes else None
    if closing is not None and settings.end_role != closing:
        raise ValueError(
            f"coding.end_role {settings.end_role!r}: this stage trains the closing keyframe (keyframes {list(keyframes)}) "
            f"with role {closing!r}, which the codec must give it"
        )
    if settings.clip_latent_frames > transformer.max_latent_frames:
        raise ValueError(f"coding.clip_latent_frames {settings.clip_latent_frames} exceeds the transformer's max_latent_frames {transformer.max_latent_frames}")
    return settings
