"""gvc_train.models: pure-torch modules (no Lightning).

Importing this package registers the exportable components (``@register_component``).
``diffusers`` is imported lazily, only when a DiffusersVAE is built.
"""

from gvc_train.models.causal_vae import CausalVAE
from gvc_train.models.diffusers_vae import DiffusersVAE
from gvc_train.models.discriminator import PatchDiscriminator3D
from gvc_train.models.distributions import DiagonalGaussian
from gvc_train.models.gan_losses import adaptive_gan_weight, hinge_d_loss, hinge_g_loss
from gvc_train.models.latent_codec import LatentVideoCodec
from gvc_train.models.lpips import LPIPS

__all__ = [
    "CausalVAE",
    "DiagonalGaussian",
    "DiffusersVAE",
    "LPIPS",
    "LatentVideoCodec",
    "PatchDiscriminator3D",
    "adaptive_gan_weight",
    "hinge_d_loss",
    "hinge_g_loss",
]
