"""Which strategies a stage that keeps an EMA copy of its model can train under.

The controlled diffusion stage keeps ``ema_transformer`` (a deep copy of ``transformer``) and
updates it parameter by parameter (``ema.lerp_(param)`` over the two ``parameters()`` lists).
Under FSDP both copies are flattened into one sharded parameter, and outside the forward pass
(where the update runs: after the backward has resharded them) each original parameter is a view
of this rank's shard: the transformer's shard and the EMA's shard cover different parameters.
Measured with torch's FSDP on 2 gloo ranks (``use_orig_params=True``, as Lightning sets it): rank
0 held the transformer's parameters whole and the EMA's as empty views, rank 1 the reverse, and
the update failed with a size mismatch; with other sizes the views could line up and mix
unrelated slices silently. DDP keeps whole replicas on every rank: the update is right there.
"""

from __future__ import annotations

from typing import Any


def refuse_sharded_ema(trainer: Any, stage_name: str) -> None:
    """Raise ValueError (one line) when ``trainer`` shards parameters (FSDP)."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        raise ValueError(
            f"{stage_name} keeps an EMA copy of its model updated parameter by parameter, which FSDP "
            "shards apart from the model: train it with DDP (recipes/cluster/ddp.yaml), not FSDP"
        )
