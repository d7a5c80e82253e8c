"""A bounded cache of a frozen encoder's outputs, keyed by the input clip's content.

Stages that train on a frozen tokenizer's latents of ``video`` batches encode every clip on every
step; on a CPU that is most of a step (a 17 x 144 x 176 clip through latent_tiny's encoder takes
longer than the tiny controlled transformer's forward and backward). Small data sets repeat the
same clips every epoch, so :class:`ContentCache` keeps each clip's result under a hash of its
bytes (plus a tag naming the computation). A miss is computed for that clip alone (a batch of
one), so a clip's result never depends on what it was batched with or on what the cache held:
a resumed run, or a run split over more processes, sees the same tensors bit for bit. Whole-frame clips (stages with controls) repeat
exactly; random crops rarely hit, and the bound keeps memory fixed (least recently used out).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch


def clip_digest(tag: str, clip: torch.Tensor) -> bytes:
    """A digest of ``clip``'s dtype, shape and bytes, under ``tag``."""
    data = clip.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tag}|{data.dtype}|{tuple(data.shape)}".encode())
    h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.digest()


class ContentCache:
    """``cache(tag, fn, clips_B...)``: ``fn`` of the clips (batched over the first axis), each
    clip's result taken from the cache when its content was seen under ``tag``. ``fn`` must be a
    pure function of one clip (a frozen model in eval mode); ``max_entries`` 0 disables caching."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, tag: str, fn: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor) -> torch.Tensor:
        if self.max_entries == 0:
            return fn(clips)
        keys = [clip_digest(tag, clip) for clip in clips]
        missing = [i for i, key in enumerate(keys) if key not in self._entries]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            for i in missing:  # one at a time: the result is the clip's, whatever else is in the batch
                self._entries[keys[i]] = fn(clips[i : i + 1])[0].detach().cpu()
        for key in keys:
            self._entries.move_to_end(key)
        out = torch.stack([self._entries[key] for key in keys]).to(clips.device)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return out
