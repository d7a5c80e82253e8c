"""Optimizer helpers shared by the training stages (manual optimization)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


def rd_lambdas(lambdas: Any, num_qualities: int) -> list[float]:
    """A rate-distortion stage's lambdas as floats, one per quality index, positive and strictly
    increasing; ValueError (one line) otherwise."""
    lambdas = [float(v) for v in lambdas]
    if len(lambdas) != num_qualities:
        raise ValueError(f"lambdas needs one value per quality index ({num_qualities}), got {len(lambdas)}")
    if lambdas[0] <= 0 or any(b <= a for a, b in zip(lambdas, lambdas[1:])):
        raise ValueError(f"lambdas must be positive and strictly increasing with the quality index, got {lambdas}")
    return lambdas


def is_aux_parameter(name: str) -> bool:
    """An entropy bottleneck's quantiles: trained by the aux loss in an optimizer of their own."""
    return name.endswith(".quantiles")


def entropy_model_optimizers(
    model: torch.nn.Module, lr: float, betas: Any, aux_lr: float, who: str
) -> list[torch.optim.Optimizer]:
    """``[main, aux]`` Adam optimizers of a compressai-style model: the main one over the
    parameters that train (a fine-tune freezes some), the aux one over the quantiles (frozen
    ones get no gradient and Adam skips them)."""
    named = list(model.named_parameters())
    main = [p for n, p in named if not is_aux_parameter(n) and p.requires_grad]
    aux = [p for n, p in named if is_aux_parameter(n)]
    if not aux:
        raise ValueError(f"{who}: the model has no entropy-bottleneck quantiles to train in the aux optimizer")
    return [torch.optim.Adam(main, lr=lr, betas=tuple(betas)), torch.optim.Adam(aux, lr=aux_lr)]


def step_uncounted(module: L.LightningModule, optimizer: Any) -> None:
    """Step a second optimizer (a discriminator's, the entropy model's aux) without advancing
    ``global_step``.

    Under manual optimization Lightning counts every ``LightningOptimizer.step()`` as a global
    step, so a batch with two optimizer steps would count twice and ``max_steps``, step-based
    schedules and checkpoint names would drift. Stepping through the strategy keeps precision
    plugins (AMP grad scaling) and distributed strategies in the loop.
    """
    module.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None, model=module)


def clip_grad_norm(module: L.LightningModule, optimizer: Any, max_norm: float | None) -> None:
    """Clip the gradient norm of ``optimizer``'s parameters, under any strategy (``max_norm``
    None or 0: no clipping, a stage's ``grad_clip=null``).

    FSDP shards gradients, so the norm must be computed by the root FSDP module
    (``FullyShardedDataParallel.clip_grad_norm_``); Lightning's ``clip_gradients`` refuses under
    FSDP for that reason. The root module clips every parameter that has a gradient, so the
    stages set other optimizers' gradients to None before a backward (see the tokenizer stage).
    """
    if not max_norm:
        return
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = module.trainer.strategy
    if isinstance(strategy, FSDPStrategy):
        strategy.model.clip_grad_norm_(max_norm)
        return
    module.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")


def weight_decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: matrices and convolution kernels (``*.weight`` of 2 or more
    dimensions) decay; biases, norms and learned embedding tables do not. Parameters that do not
    train (frozen by a fine-tune) are left out."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 and name.endswith(".weight") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
