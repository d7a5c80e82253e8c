"""gvc_train.models: pure-torch modules (no Lightning), one subpackage per family.

    tokenizer/   causal video VAE, diffusers VAE wrapper, the latent distribution
    latent/      the latent codec (GLVC-style) and its parts
    controlled/  the controlled-generation family: the caption's text encoder, the rectified-flow
                 video transformer
    codebook/    zero-shot codebook coding: seeded codebooks, the flow sampler as an SDE, the
                 generators (the controlled transformer, diffusers Wan pipelines) it steers
    ssf/         the Scale-Space Flow peer: compressai's learned pixel-domain video codec
    losses/      discriminator, GAN losses, LPIPS
    registry.py  the component registry (imports nothing from gvc_train)
    fixed_point.py, sample_noise.py   shared by families

Nothing is imported until asked for: ``from gvc_train.models import CausalVAE`` imports the
tokenizer module alone, so importing one model never imports them all (and ``diffusers`` only
comes in when a DiffusersVAE is built). :data:`BUILTIN_COMPONENTS` is also where the component
loader finds the module of a registered name.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported name -> module that defines it. Components (registered under these names) first.
BUILTIN_COMPONENTS = {
    "CausalVAE": "gvc_train.models.tokenizer.causal_vae",
    "ControlledCodingSettings": "gvc_train.models.controlled.coding_settings",
    "ControlledVideoTransformer": "gvc_train.models.controlled.transformer",
    "DiffusersControlledTransformer": "gvc_train.models.controlled.diffusers_transformer",
    "DiffusersVAE": "gvc_train.models.tokenizer.diffusers_vae",
    "LatentVideoCodec": "gvc_train.models.latent.latent_codec",
    "MultiScaleQuantizer": "gvc_train.models.progressive.quantizer",
    "PatchDiscriminator3D": "gvc_train.models.losses.discriminator",
    "ProgressiveContextModel": "gvc_train.models.progressive.context_model",
    "ScaleSpaceFlowCodec": "gvc_train.models.ssf.ssf_codec",
    "TextEncoder": "gvc_train.models.controlled.text_encoder",
    "WanPipelineReference": "gvc_train.models.codebook.wan_reference",
    "ZeroShotSettings": "gvc_train.models.codebook.settings",
}
_OTHER_EXPORTS = {
    "DiagonalGaussian": "gvc_train.models.tokenizer.distributions",
    "LPIPS": "gvc_train.models.losses.lpips",
    "adaptive_gan_weight": "gvc_train.models.losses.gan_losses",
    "hinge_d_loss": "gvc_train.models.losses.gan_losses",
    "hinge_g_loss": "gvc_train.models.losses.gan_losses",
}
_EXPORTS = {**BUILTIN_COMPONENTS, **_OTHER_EXPORTS}
__all__ = sorted(_EXPORTS)


def import_component(name: str) -> Any:
    """The built-in component class registered as ``name`` (importing its module), or None."""
    if name not in BUILTIN_COMPONENTS:
        return None
    return getattr(importlib.import_module(BUILTIN_COMPONENTS[name]), name)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gvc_train.models' has no attribute {name!r}")
