"""Training noise keyed by (seed, step, sample position in the global batch), not by the RNG.

Why: under DDP each rank draws from its own copy of the global RNG, so 2 ranks with 2 samples
each draw different noise than 1 process with 4 samples, and the runs diverge. Here every
sample's noise comes from its own generator, seeded by the run seed, the optimizer step, the
call site's order in the step and the sample's position ``rank * local_batch + i`` in the
global batch. A training step's result then depends on the global batch only, not on how it is
split over ranks, and it needs no RNG state to be resumed exactly.

Outside :func:`keyed_noise` (evaluation, tests, plain PyTorch loops) every function falls back
to the global RNG, so models behave exactly as before.

    with keyed_noise(seed=0, step=trainer.global_step, first_index=rank * batch_size):
        loss = model(x)          # the model's noise sites call uniform_like / normal / randint
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
from collections.abc import Iterator

import torch


@dataclasses.dataclass
class _Keys:
    seed: int
    step: int
    first_index: int
    site: int = 0  # call sites in this step, in call order (deterministic for a given model)

    def next_site(self) -> int:
        self.site += 1
        return self.site


_ACTIVE: contextvars.ContextVar[_Keys | None] = contextvars.ContextVar("gvc_keyed_noise", default=None)


@contextlib.contextmanager
def keyed_noise(seed: int, step: int, first_index: int) -> Iterator[None]:
    """Key every noise draw inside the block by sample position instead of the global RNG."""
    token = _ACTIVE.set(_Keys(int(seed), int(step), int(first_index)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    return _ACTIVE.get() is not None


def _seed(*parts: int) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _per_sample(shape: torch.Size, device: torch.device, dtype: torch.dtype, draw: str) -> torch.Tensor:
    keys = _ACTIVE.get()
    assert keys is not None
    site = keys.next_site()
    out = torch.empty(shape, device=device, dtype=dtype)
    generator = torch.Generator(device=device)
    for i in range(shape[0]):
        generator.manual_seed(_seed(keys.seed, keys.step, site, keys.first_index + i))
        if draw == "uniform":
            out[i] = torch.rand(shape[1:], generator=generator, device=device, dtype=dtype)
        else:
            out[i] = torch.randn(shape[1:], generator=generator, device=device, dtype=dtype)
    return out


def uniform_like(x: torch.Tensor, low: float = -0.5, high: float = 0.5) -> torch.Tensor:
    """U(low, high) noise shaped like ``x`` (dim 0 is the batch)."""
    if not active():
        return torch.empty_like(x).uniform_(low, high)
    return _per_sample(x.shape, x.device, x.dtype, "uniform") * (high - low) + low


def normal(shape: torch.Size, device: torch.device, dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) noise of ``shape`` (dim 0 is the batch); an explicit generator wins."""
    if generator is not None or not active():
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return _per_sample(torch.Size(shape), device, dtype, "normal")


def randint(high: int, batch: int, device: torch.device) -> torch.Tensor:
    """``batch`` integers in ``[0, high)``, one per sample."""
    if not active():
        return torch.randint(0, high, (batch,), device=device)
    u = _per_sample(torch.Size((batch,)), device, torch.float64, "uniform")
    return (u * high).long().clamp_(max=high - 1)
