"""Transformer blocks for the scale-wise context model, with an optional key/value cache.

A block runs either over a whole sequence under a boolean mask (training: every scale in one
pass) or over the tokens of one scale against the keys and values of everything before it (the
cache: decoding one scale at a time). Both compute the same attention over the same keys in the
same order, so the two paths agree to float rounding (tested in test_progressive_context.py).

The cached path computes attention as plain ``softmax(q k^T / sqrt(d)) v`` (matmuls and a row
softmax), not with ``scaled_dot_product_attention``, so that its arithmetic does not hang on which
fused kernel SDPA picks: measured with torch 2.14 on this CPU, SDPA's flash kernel gives other
float results with 1 and 2 threads for a one-token query (it splits the keys between threads).
That is not enough for thread-count-independent logits: MKL's sgemm itself differs between 1
and 2 threads for some small shapes (a Linear(8, 32) on 6 rows), so bit-exact coding across
thread counts and CPUs needs a fixed-point path, as the latent family has (fixed_point.py).
The full pass (training) keeps SDPA (fused kernels on GPUs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KeyValue = tuple[torch.Tensor, torch.Tensor]


class SelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values can be prefixed by cached ones."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self, x_BLC: torch.Tensor, mask_LS: torch.Tensor | None = None, cached: KeyValue | None = None, plain: bool = False
    ) -> tuple[torch.Tensor, KeyValue]:
        """Attention of ``x``'s tokens to ``cached`` keys/values followed by their own.

        Returns the output ``B x L x C`` and the keys/values including ``x``'s (the new cache).
        ``mask_LS``: ``L x S`` booleans over all ``S`` keys (cached first), or None for all.
        ``plain``: compute it with matmuls and a softmax (thread-count independent; no mask, no
        dropout), as the cached path does (module docstring).
        """
        b, length, width = x_BLC.shape
        q, k, v = self.qkv(x_BLC).view(b, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if cached is not None:
            k = torch.cat([cached[0], k], dim=2)
            v = torch.cat([cached[1], v], dim=2)
        if plain:
            if mask_LS is not None:
                raise ValueError("plain attention takes no mask: the cached path attends to every cached key")
            out = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1) @ v
        else:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LS, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, length, width)), (k, v)


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each as a residual branch."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, round(width * mlp_ratio))
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x_BLC: torch.Tensor, mask_LS: torch.Tensor | None = None, cached: KeyValue | None = None, plain: bool = False
    ) -> tuple[torch.Tensor, KeyValue]:
        """``(x + attn + mlp, keys/values)``; see :meth:`SelfAttention.forward`."""
        a, kv = self.attn(self.norm1(x_BLC), mask_LS, cached, plain)
        x_BLC = x_BLC + self.drop(a)
        x_BLC = x_BLC + self.drop(self.mlp(self.norm2(x_BLC)))
        return x_BLC, kv
