"""Transformer blocks of the controlled video transformer.

:class:`DiTBlock`: space-time self-attention (3D RoPE), cross-attention to the text, MLP, each
behind adaLN-Zero modulation by the timestep embedding: the block's own shift, scale and gate
per branch from ``c_BD``; gates start at zero, so a fresh block is the identity (DiT).
Queries and keys are RMS-normalised per head (as SD3 / Wan), which keeps attention logits
bounded under bf16.

:class:`ContextBlock`: one block of the control pathway (VACE-style): a :class:`DiTBlock` over
the running control context plus the main stream's hidden state at its injection point, whose
hint for the main stream goes through a zero-initialised projection: an untrained pathway adds
exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.controlled.embeddings import apply_rope


def modulate(x_BND: torch.Tensor, shift_BD: torch.Tensor, scale_BD: torch.Tensor) -> torch.Tensor:
    return x_BND * (1 + scale_BD[:, None]) + shift_BD[:, None]


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None (then RoPE applies), else
    cross-attention to ``context_BLE`` under ``mask_BL`` (True = attend; every row needs one)."""

    def __init__(self, width: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim or width, 2 * width)
        self.q_norm = nn.RMSNorm(width // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(width // heads, eps=1e-6)
        self.out = nn.Linear(width, width)

    def forward(
        self,
        x_BND: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context_BLE: torch.Tensor | None = None,
        mask_BL: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, N, D = x_BND.shape
        source = x_BND if context_BLE is None else context_BLE
        q = self.q(x_BND).view(B, N, self.heads, -1).transpose(1, 2)
        k, v = self.kv(source).view(B, source.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        # RMS norms in float32 (their weights are; under autocast q and k are bf16).
        q_BHNd, k_BHLd = self.q_norm(q.float()).to(q.dtype), self.k_norm(k.float()).to(k.dtype)
        if rope is not None:
            q_BHNd, k_BHLd = apply_rope(q_BHNd, *rope), apply_rope(k_BHLd, *rope)
        attn_mask = None if mask_BL is None else mask_BL[:, None, None, :]
        out_BHNd = F.scaled_dot_product_attention(q_BHNd, k_BHLd.to(q_BHNd.dtype), v.to(q_BHNd.dtype), attn_mask=attn_mask)
        return self.out(out_BHNd.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, text cross-attention, MLP (module docstring)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, text_width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(width, heads)
        # Cross-attention is not modulated by t (PixArt / Wan): a plain pre-norm residual,
        # zero-initialised at its output so a fresh block still is the identity.
        self.norm_cross = nn.LayerNorm(width, eps=1e-6)
        self.cross_attn = Attention(width, heads, context_dim=text_width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)  # shift, scale, gate for attention and MLP
        for zero in (self.ada, self.cross_attn.out):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    def forward(
        self, x_BND: torch.Tensor, c_BD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], text_BLE: torch.Tensor, text_mask_BL: torch.Tensor
    ) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c_BD)).chunk(6, dim=-1)
        x_BND = x_BND + gate1[:, None] * self.self_attn(modulate(self.norm1(x_BND), shift1, scale1), rope=rope)
        x_BND = x_BND + self.cross_attn(self.norm_cross(x_BND), context_BLE=text_BLE, mask_BL=text_mask_BL)
        return x_BND + gate2[:, None] * self.mlp(modulate(self.norm2(x_BND), shift2, scale2))


class ContextBlock(nn.Module):
    """A control-pathway block: ``(context, hidden) -> (context', hint)``; the hint (zero at
    init) is added to the main stream's hidden state (module docstring)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, text_width: int) -> None:
        super().__init__()
        self.block = DiTBlock(width, heads, mlp_ratio, text_width)
        self.hint = nn.Linear(width, width)
        nn.init.zeros_(self.hint.weight)
        nn.init.zeros_(self.hint.bias)

    def forward(
        self,
        context_BND: torch.Tensor,
        hidden_BND: torch.Tensor,
        c_BD: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        text_BLE: torch.Tensor,
        text_mask_BL: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The context sees what the main stream holds here, so its hint can answer it.
        context_BND = self.block(context_BND + hidden_BND, c_BD, rope, text_BLE, text_mask_BL)
        return context_BND, self.hint(context_BND)
