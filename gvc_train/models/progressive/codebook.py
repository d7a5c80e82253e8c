"""The learned codebook of the multi-scale quantizer: nearest-code search, EMA or gradient
updates, dead-code restart, usage counted over every rank.

One codebook of ``size x dim`` vectors is shared by every scale (as in VAR). In training, after
each forward, :meth:`VectorCodebook.update` receives every residual vector the forward quantized
(all scales) and the code each one chose, and

* all-reduces the per-code counts (and, for the EMA kind, the per-code sums of vectors), so every
  rank sees the global usage and applies the same update;
* ``update="ema"``: moves each code to the running mean of the vectors assigned to it
  (``ema_count``, ``ema_sum``, decay ``decay``, Laplace-smoothed counts), the codebook being a
  buffer; ``update="gradient"``: the codebook is a parameter trained by the quantizer's codebook
  loss and nothing moves here;
* counts, per code, the consecutive training steps it went unused (``unused_steps``); a code
  unused for ``dead_code_window`` steps (0: never) is restarted at a random vector of the
  current forward. The dead set is the same on every rank (global counts); the replacement
  vectors are drawn on rank 0 and broadcast, so every rank restarts the same codes identically;
* on the first training forward (``initialized`` is False) restarts every code from the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.progressive.sync import all_reduce_sum_, broadcast_from_first_

SEARCH_ROWS = 8192  # rows of the distance matrix computed at once: bounds memory at large batches
EMA_EPS = 1e-5


class VectorCodebook(nn.Module):
    """``size`` code vectors of ``dim`` channels (see the module docstring)."""

    def __init__(self, size: int, dim: int, update: str, decay: float, dead_code_window: int) -> None:
        super().__init__()
        self.size, self.dim, self.update_kind = size, dim, update
        self.decay, self.dead_code_window = decay, dead_code_window
        # Replaced by data on the first training forward. Standard deviation dim ** -0.5, drawn
        # with uniform_ as nn.Conv2d does: on the meta device (the component loader's size check)
        # normal_ or an operator like `/` goes through torch._refs, which costs seconds of imports.
        init = torch.empty(size, dim).uniform_(-((3 / dim) ** 0.5), (3 / dim) ** 0.5)
        if update == "gradient":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(size))
            self.register_buffer("ema_sum", init.clone())
        self.register_buffer("unused_steps", torch.zeros(size, dtype=torch.int64))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def nearest(self, vectors_MD: torch.Tensor) -> torch.Tensor:
        """The index (int64, ``M``) of the nearest code (squared L2) to each row of ``vectors_MD``."""
        codes = self.codebook.detach().float()
        code_sq = codes.square().sum(1)
        out = torch.empty(vectors_MD.shape[0], dtype=torch.int64, device=vectors_MD.device)
        for start in range(0, vectors_MD.shape[0], SEARCH_ROWS):
            rows = vectors_MD[start : start + SEARCH_ROWS].float()
            # |r - e|^2 without the |r|^2 term, which does not change the argmin
            distance = torch.addmm(code_sq.unsqueeze(0), rows, codes.t(), beta=1.0, alpha=-2.0)
            out[start : start + SEARCH_ROWS] = distance.argmin(1)
        return out

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Code vectors ``idx.shape x dim`` (differentiable w.r.t. a gradient codebook)."""
        return F.embedding(idx, self.codebook)

    def expected(self, probs_V: torch.Tensor) -> torch.Tensor:
        """``probs_V @ codebook``: the expected code vector under per-token probabilities over
        the codes (last dim ``size``), ``... x dim``."""
        return probs_V @ self.codebook

    @torch.no_grad()
    def update(self, idx_M: torch.Tensor, vectors_MD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's bookkeeping (module docstring). ``idx_M``: the chosen codes,
        ``vectors_MD``: the vectors quantized. Returns the global per-code counts (float32,
        ``size``) and the indices of the codes restarted (int64)."""
        counts = torch.bincount(idx_M, minlength=self.size).float()
        sums = None
        if self.update_kind == "ema":  # one collective for the counts and the sums
            sums = torch.zeros(self.size, self.dim, device=vectors_MD.device)
            sums.index_add_(0, idx_M, vectors_MD.float())
            both = all_reduce_sum_(torch.cat([counts.unsqueeze(1), sums], 1))
            counts, sums = both[:, 0].contiguous(), both[:, 1:]
        else:
            all_reduce_sum_(counts)
        if sums is not None and bool(self.initialized):
            self._ema_step(counts, sums)
        self.unused_steps.copy_(torch.where(counts > 0, torch.zeros_like(self.unused_steps), self.unused_steps + 1))
        if not bool(self.initialized):
            dead = torch.ones(self.size, dtype=torch.bool, device=counts.device)
        elif self.dead_code_window > 0:
            dead = self.unused_steps >= self.dead_code_window
        else:
            dead = torch.zeros(self.size, dtype=torch.bool, device=counts.device)
        restarted = dead.nonzero().squeeze(1)
        if restarted.numel():
            self._restart(restarted, vectors_MD)
        self.initialized.fill_(True)
        return counts, restarted

    def _ema_step(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + EMA_EPS) / (total + self.size * EMA_EPS) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    def _restart(self, restarted: torch.Tensor, vectors_MD: torch.Tensor) -> None:
        """Codes ``restarted`` := random rows of rank 0's ``vectors_MD`` (broadcast to all)."""
        pick = torch.randint(0, vectors_MD.shape[0], (restarted.numel(),), device=vectors_MD.device)
        replacement = broadcast_from_first_(vectors_MD[pick].float().contiguous())
        self.codebook[restarted] = replacement.to(self.codebook.dtype)
        if self.update_kind == "ema":
            self.ema_count[restarted] = 1.0
            self.ema_sum[restarted] = replacement
        self.unused_steps[restarted] = 0
