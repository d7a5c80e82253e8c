"""GAN losses for tokenizer training: hinge losses and VQGAN's adaptive generator weight."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Geometric GAN / SAGAN, as in VQGAN): scalar."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: raise the discriminator's score of the fakes. Scalar."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    nll_loss: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
    reduce_grad: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """VQGAN's adaptive weight: ``|grad nll| / (|grad g_loss| + eps)`` at the decoder's last layer.

    It scales the GAN term so its gradient at the last layer is as large as the reconstruction
    term's, which keeps the adversarial loss from swamping (or vanishing next to) the
    reconstruction loss whatever their raw magnitudes.

    Needs the autograd graph: call it inside the training step, with gradients enabled, after
    the forward pass and before ``backward``, with both losses computed from outputs of the
    layer that owns ``last_layer_weight`` (e.g. ``CausalVAE.last_layer_weight``). It uses
    ``torch.autograd.grad(..., retain_graph=True)``, so the later backward still works. The
    returned weight is detached (a constant factor for this step) and clamped to
    ``[0, max_weight]``. Under FSDP, pass an unsharded parameter (or compute the weight
    without FSDP's flattening of that layer).

    ``reduce_grad`` (data-parallel training) averages each gradient over the ranks before the
    norms are taken, so the weight is the global batch's, as on one process: norms of per-rank
    gradients would give each rank its own weight and the replicas would drift apart.

    Raises ValueError if either loss has no graph to the weight (e.g. in validation, or under
    ``torch.no_grad``): the caller must then pick a weight itself (VQGAN uses 0).
    """
    if not torch.is_grad_enabled():
        raise ValueError("adaptive_gan_weight needs the autograd graph: it was called with gradients disabled")
    for name, loss in (("nll_loss", nll_loss), ("g_loss", g_loss)):
        if not loss.requires_grad:
            raise ValueError(f"adaptive_gan_weight: {name} has no autograd graph (call it inside the training step)")
    nll_grad = torch.autograd.grad(nll_loss, last_layer_weight, retain_graph=True, allow_unused=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True, allow_unused=True)[0]
    if nll_grad is None or g_grad is None:
        raise ValueError(
            "adaptive_gan_weight: a loss does not depend on last_layer_weight "
            "(pass the weight of the decoder layer that produced the reconstruction)"
        )
    if reduce_grad is not None:
        nll_grad, g_grad = reduce_grad(nll_grad), reduce_grad(g_grad)
    weight = nll_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
