"""Modality dropout: which conditions each training sample goes without.

Each modality is dropped independently with its own probability, and, independently of those,
every condition at once with ``all_p`` (the unconditional samples that classifier-free guidance
needs). A model trained so can then be sampled with any subset of its modalities.

The masks are ``dict[name -> bool B]`` (True = dropped), the same layout whether they come from
training (:class:`ModalityDropout`) or from sampling (:func:`drop_masks`, a fixed subset), so a
velocity model takes one ``dropped`` argument for both. How a model drops a condition (a learned
null embedding, zeros) is the model's business.

Draws go through :mod:`gvc_train.models.sample_noise`: one keyed-noise site per call, one row of
``len(probabilities) + 1`` uniforms per sample, so inside ``keyed_noise`` a sample's masks depend
on its position in the global batch only (a DDP split draws what one process draws).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from gvc_train.models import sample_noise


class ModalityDropout:
    """``ModalityDropout({"luma": 0.1, "flow": 0.2}, all_p=0.1)(batch) -> {"luma": bool B, ...}``.

    A sample's modality is dropped when its own draw falls under its probability or when the
    sample's all-conditions draw falls under ``all_p``; so ``P(dropped) = 1 - (1 - p)(1 - all_p)``.
    The modalities' order (the columns of the draw) is the dict's order: keep it fixed in a run.
    """

    def __init__(self, probabilities: Mapping[str, float], all_p: float = 0.0) -> None:
        for name, p in {**probabilities, "all conditions": all_p}.items():
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"dropout probability of {name!r} must be in [0, 1], got {p}")
        self.probabilities = {name: float(p) for name, p in probabilities.items()}
        self.all_p = float(all_p)

    @property
    def names(self) -> list[str]:
        return list(self.probabilities)

    def __call__(self, batch: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Masks ``dict[name -> bool B]``, True = dropped. One keyed-noise site."""
        u_BM = sample_noise.uniform_like(torch.empty(batch, len(self.probabilities) + 1, device=device), 0.0, 1.0)
        drop_all_B = u_BM[:, -1] < self.all_p
        return {name: (u_BM[:, m] < p) | drop_all_B for m, (name, p) in enumerate(self.probabilities.items())}

    def __repr__(self) -> str:
        return f"ModalityDropout({self.probabilities}, all_p={self.all_p})"


def drop_masks(
    names: Iterable[str], batch: int, dropped: Iterable[str] = (), device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Fixed masks for sampling: ``dict[name -> bool B]``, True for the names in ``dropped`` (all
    samples), False for the others. ``drop_masks(names, B, dropped=names)`` is the fully
    unconditional pass; ``dropped=[]`` the fully conditional one."""
    names = list(names)
    unknown = set(dropped) - set(names)
    if unknown:
        raise ValueError(f"cannot drop {sorted(unknown)}: the modalities are {names}")
    dropped = set(dropped)
    return {name: torch.full((batch,), name in dropped, dtype=torch.bool, device=device) for name in names}
