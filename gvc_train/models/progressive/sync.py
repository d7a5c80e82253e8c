"""The collectives the quantizer needs so that every rank keeps the same codebook.

Each is a no-op in a single process (no process group, or a group of one), so the quantizer
calls them unconditionally in training.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """A process group of more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every rank, in place (returned for chaining)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_first_(t: torch.Tensor) -> torch.Tensor:
    """``t`` replaced by rank 0's copy, in place (returned for chaining)."""
    if is_distributed():
        dist.broadcast(t, src=0)
    return t
