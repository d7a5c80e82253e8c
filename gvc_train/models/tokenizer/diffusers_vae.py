"""DiffusersVAE: a diffusers video VAE (Wan-VAE by default) behind the CausalVAE API.

Built from a diffusers constructor config, or loaded from a LOCAL diffusers folder
(``config.json`` + weights; never the Hub). Either way its exported component config holds the
diffusers config itself, not the folder path, so ``load_component`` rebuilds the architecture
anywhere and the component's safetensors fill in the weights.

Streaming: no ``encode_chunk`` / ``decode_chunk`` here. The wrapped Wan model does its own causal
chunk caching inside ``encode`` (first frame, then 4 frames at a time) and ``decode`` (one latent
frame at a time), so activation memory is already bounded in T; the input and output videos
themselves stay whole. For large frames use ``self.vae.enable_tiling()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gvc_train.models.registry import register_component
from gvc_train.models.tokenizer.distributions import DiagonalGaussian
from gvc_train.models.tokenizer.video_vae_base import VideoVAEBase


def _diffusers_vae_class(class_name: str) -> type[nn.Module]:
    # Only diffusers' own KL autoencoders: the name in a component file can never reach an
    # arbitrary import.
    import diffusers

    cls = getattr(diffusers, class_name, None) if class_name.startswith("AutoencoderKL") else None
    if cls is None:
        known = sorted(n for n in dir(diffusers) if n.startswith("AutoencoderKL"))
        raise ValueError(f"{class_name!r} is not a diffusers AutoencoderKL class; this diffusers has {known}")
    return cls


def _plain_config(vae: nn.Module) -> dict[str, Any]:
    """The diffusers constructor config as plain JSON (private ``_`` keys dropped)."""
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    return json.loads(json.dumps(config))


def _infer_strides(vae: nn.Module) -> tuple[int, int]:
    """(spatial, temporal) stride of a diffusers video VAE, from its architecture config."""
    cfg = vae.config
    if "temperal_downsample" in cfg:  # Wan: one spatial 2x per flag, time 2x where True
        spatial = 2 ** len(cfg["temperal_downsample"]) * (cfg.get("patch_size") or 1)
        return spatial, 2 ** sum(bool(t) for t in cfg["temperal_downsample"])
    spatial = getattr(vae, "spatial_compression_ratio", None) or cfg.get("spatial_compression_ratio")
    if spatial is None and "block_out_channels" in cfg:
        spatial = 2 ** (len(cfg["block_out_channels"]) - 1)
    temporal = getattr(vae, "temporal_compression_ratio", None) or cfg.get("temporal_compression_ratio")
    if spatial is None or temporal is None:
        raise ValueError(f"cannot tell the strides of {type(vae).__name__} from its config")
    return int(spatial), int(temporal)


@register_component("DiffusersVAE")
class DiffusersVAE(VideoVAEBase, nn.Module):
    """Wrap ``diffusers.<class_name>``; give exactly one of ``config`` or ``pretrained_path``.

    ``pretrained_path``: a local folder saved by diffusers' ``save_pretrained`` (``subfolder``
    e.g. ``"vae"`` for a pipeline folder); loaded with ``local_files_only=True``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {"encoder": ("vae.encoder", "vae.quant_conv"), "decoder": ("vae.decoder", "vae.post_quant_conv")}

    # What a loaded config may hold (checked by gvc_train.components before building): an
    # exported component holds the diffusers config itself, never a path to read from; the
    # nested config's numbers are bounded (latents' statistics are signed floats).
    config_bounds = {
        "pretrained_path": {None}, "subfolder": {None}, "config.num_res_blocks": (0, 16),
        "config.latents_mean": (-1e4, 1e4), "config.latents_std": (0.0, 1e4),
    }  # fmt: skip

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        class_name: str = "AutoencoderKLWan",
        subfolder: str | None = None,
    ) -> None:
        super().__init__()
        if (config is None) == (pretrained_path is None):
            raise ValueError("DiffusersVAE needs exactly one of config (a diffusers config dict) or pretrained_path")
        cls = _diffusers_vae_class(class_name)
        if pretrained_path is not None:
            folder = Path(pretrained_path) / (subfolder or "")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"no diffusers model at {folder} (config.json missing); give a local folder")
            # from_pretrained returns the model in eval mode; a module starts in train mode and
            # its owner (a Trainer, an inference loader) decides, so fine-tuning trains for real.
            self.vae = cls.from_pretrained(str(pretrained_path), subfolder=subfolder, local_files_only=True).train()
        else:
            self.vae = cls.from_config(dict(config))
        self._spatial_stride, self._temporal_stride = _infer_strides(self.vae)
        self._latent_channels = int(self.vae.config.get("z_dim") or self.vae.config.get("latent_channels"))

    # register_component stores the constructor arguments in ``config`` after __init__; this
    # property rewrites them so the exported config is the diffusers config itself (rebuildable
    # without the original folder) rather than a path.
    @property
    def config(self) -> dict[str, Any]:
        return self._export_config

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        exported = dict(value)
        exported.update(config=_plain_config(self.vae), pretrained_path=None, subfolder=None)
        self._export_config = exported

    @property
    def last_layer_weight(self) -> torch.Tensor:
        """Weight of the decoder's output conv (``decoder.conv_out``), for the adaptive GAN weight."""
        named = [(n, p) for n, p in self.vae.named_parameters() if n.startswith("decoder.conv_out") and n.endswith("weight")]
        if not named:
            raise AttributeError(f"{type(self.vae).__name__} has no decoder.conv_out weight")
        return named[-1][1]

    def encode(self, x_BCThw: torch.Tensor, chunk_frames: int | None = None) -> DiagonalGaussian:
        """Video in [0, 1] -> posterior (the wrapped ``latent_dist``'s mean and logvar).

        ``chunk_frames`` is accepted for API parity and only validated: the wrapped model
        already encodes in causal chunks internally.
        """
        self.check_video_shape(x_BCThw)
        if chunk_frames is not None and (chunk_frames < 1 or chunk_frames % self._temporal_stride):
            raise ValueError(f"chunk_frames must be a positive multiple of {self._temporal_stride}, got {chunk_frames}")
        dist = self.vae.encode(x_BCThw * 2.0 - 1.0).latent_dist
        return DiagonalGaussian(dist.mean, dist.logvar)

    def decode(self, z_BCthw: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Latent -> video in [0, 1]. Note: diffusers' Wan decoder clamps its output to [-1, 1],
        so unlike CausalVAE the result is clamped (no gradient through saturated pixels)."""
        if z_BCthw.dim() != 5 or z_BCthw.shape[1] != self._latent_channels:
            raise ValueError(f"expected latent B x {self._latent_channels} x t x h x w, got {tuple(z_BCthw.shape)}")
        return (self.vae.decode(z_BCthw).sample + 1.0) * 0.5

