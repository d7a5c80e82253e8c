"""ControlledVideoTransformer: the rectified-flow velocity model of the controlled family.

``forward(x_BCThw, t_B, ...) -> v_BCThw``: the velocity ``noise - x0`` at ``x_t = (1 - t) x0 + t
noise`` (the convention of ``gvc_train.models.flow.matching``: t = 0 is data, t = 1 pure noise;
the model takes ``t`` itself, not ``1000 t``), ``x`` a ``B x C x t x h x w`` tokenizer latent
(``C = latent_channels``), ``t_B`` float in [0, 1]. Conditions, every one optional:

* **keyframes**: ``key_BCThw`` (latents of the known frames at their latent-frame positions, zero
  elsewhere), ``key_mask_B1Thw`` (1 = known, 0 = to generate; float or bool) and ``key_roles_BT``
  (int64 index into :data:`KEY_ROLES` per latent frame: none / first / last / adaptive);
* **controls**: ``{name: map_BCThw}``, one float map per modality the model was built with
  (``controls`` in the config: name -> channels), on the grid ``control_encoder.py`` describes
  (video frames and size for the defaults ``control_frames_per_latent=4, control_scale=8``);
* **text**: ``text_BLE`` (``B x L x text_dim`` hidden states of ``TextEncoder``) and ``text_mask_BL``
  (bool, True on real tokens);
* **dropped**: ``{name: bool B}`` decided by the caller (``models/flow/modality_dropout.py`` in
  training, a fixed subset for classifier-free guidance at sampling): a dropped control is
  replaced by its learned null embedding, dropped text leaves only the null text token, dropped
  ``"keyframes"`` clears the keyframe input. A modality absent from ``controls`` (or text
  absent) counts as dropped for every sample, so any subset can be given at sampling.

**Architecture.** ``[x, key, key_mask]`` (``2C + 1`` channels) are 3D-patchified (``patch_size``
over t, h, w) into ``N`` tokens of ``width``; :class:`DiTBlock` s (space-time self-attention with 3D
RoPE, text cross-attention, MLP, adaLN-Zero on the timestep) map them; a final adaLN layer
(zero-initialised: a fresh model predicts zero) unpatchifies the velocity. The control pathway:
each modality's :class:`ControlEncoder` puts its map on the token grid; their sum is the context of
``control_depth`` :class:`ContextBlock` s whose zero-initialised hints are added to the main stream
before evenly spaced main blocks (VACE / ControlNet): an untrained pathway changes nothing.

**Role-aware embeddings.** Every conditioning input carries a learned embedding of what it is
and where it belongs: keyframe frames their role's embedding (:data:`KEY_ROLES`) plus a learned
embedding of their latent-frame index; each control modality its own role embedding plus a
learned embedding of the token frame; text a text-role embedding (text is clip-level: no frame).
So the same values under two roles condition differently.

**Precision and memory.** Works under ``torch.autocast(dtype=torch.bfloat16)`` (RoPE and the
timestep sinusoids stay float32; q/k are RMS-normalised); ``gradient_checkpointing`` (config or
attribute) recomputes each block in the backward pass, same outputs and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gvc_train.models.controlled.blocks import ContextBlock, DiTBlock, modulate
from gvc_train.models.controlled.conditioning import KEYFRAMES, TEXT, ConditionInputs, check_control_names
from gvc_train.models.controlled.control_encoder import ControlEncoder
from gvc_train.models.controlled.embeddings import KEY_ROLES, TimestepEmbedding, rope_3d
from gvc_train.models.registry import register_component

MAX_PARAMETERS = 1 << 32
# Floats a token holds per unit of the transformer's width at a velocity evaluation's peak, weights
# aside: 18-21 measured (the tiny recipe's transformer sampling 640x272 and 1280x720 clips of five
# latent frames, peak resident growth with a fixed mmap threshold); 24 leaves room.
SAMPLING_FLOATS_PER_WIDTH = 24


def sampling_bytes(transformer: nn.Module, latent_thw: tuple[int, int, int]) -> int:
    """What sampling a clip of ``latent_thw`` (latent frames, rows, columns) holds at its peak,
    beside the weights: tokens x width x :data:`SAMPLING_FLOATS_PER_WIDTH` float32s. Attention
    runs through ``scaled_dot_product_attention``, whose CPU and GPU kernels hold no tokens x
    tokens matrix, so the need grows with the tokens, not their square (time does)."""
    (t, h, w), (pt, ph, pw) = latent_thw, transformer.patch_size
    tokens = -(-t // pt) * -(-h // ph) * -(-w // pw)
    return tokens * int(transformer.width) * SAMPLING_FLOATS_PER_WIDTH * 4


def estimated_parameters(width: int, depth: int, control_depth: int, mlp_ratio: float) -> float:
    """About the parameter count: per block self- and cross-attention (8 D^2), adaLN (6 D^2) and
    the MLP (2 mlp_ratio D^2); a context block adds its hint (D^2)."""
    per_block = width * width * (14 + 2 * mlp_ratio)
    return (depth + control_depth) * per_block + control_depth * width * width


@register_component("ControlledVideoTransformer")
class ControlledVideoTransformer(ConditionInputs, nn.Module):
    """Rectified-flow velocity model over tokenizer latents with keyframe, control and text
    conditioning (module docstring).

    ``latent_channels``: C of the tokenizer's latent. ``patch_size``: (t, h, w) of a token.
    ``width``, ``depth``, ``heads``, ``mlp_ratio``: the main transformer. ``text_dim``: the text
    encoder's hidden size. ``controls``: modality name -> channels of its map (empty: no control
    pathway). ``control_depth``: context blocks. ``control_hidden``: channels of the light
    control encoders. ``control_frames_per_latent``, ``control_scale``: the control maps' frame
    grouping and spatial factor over the latent grid. ``max_latent_frames``: size of the learned
    frame-position tables. A CPU test size: ``width=32, depth=2, heads=2, control_depth=1``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {
        "blocks": ("blocks",),
        "context_blocks": ("context_blocks",),
        "control_encoders": ("control_encoders",),
        "output": ("final_ada", "final_out"),
    }

    config_bounds = {
        "latent_channels": (1, 256), "patch_size": (1, 8), "len(patch_size)": (3, 3), "width": (8, 8192),
        "depth": (1, 64), "heads": (1, 128), "mlp_ratio": (0.25, 8.0), "text_dim": (1, 16384),
        "control_depth": (0, 64), "control_hidden": (1, 1024), "control_frames_per_latent": (1, 16),
        "control_scale": {1, 2, 4, 8, 16}, "max_latent_frames": (1, 4096), "rope_theta": (1.0, 1e7),
        "gradient_checkpointing": {True, False},
    }  # fmt: skip

    def __init__(
        self,
        latent_channels: int = 16,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        width: int = 384,
        depth: int = 8,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        text_dim: int = 512,
        controls: dict[str, int] | None = None,
        control_depth: int = 4,
        control_hidden: int = 64,
        control_frames_per_latent: int = 4,
        control_scale: int = 8,
        max_latent_frames: int = 64,
        rope_theta: float = 10000.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        controls = dict(controls or {})
        check_control_names(controls)
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}")
        if control_depth > depth:
            raise ValueError(f"control_depth {control_depth} exceeds depth {depth} (one context block per main block at most)")
        estimate = estimated_parameters(width, depth, control_depth if controls else 0, mlp_ratio)
        if estimate > MAX_PARAMETERS:
            raise ValueError(f"about {estimate:.3g} parameters is more than {MAX_PARAMETERS}")
        self.latent_channels, self.width = latent_channels, width
        self.patch_size = tuple(int(p) for p in patch_size)
        self.heads, self.rope_theta, self.max_latent_frames = heads, rope_theta, max_latent_frames
        self.control_names = sorted(controls)  # sorted: the sum's order must not follow the JSON's
        self.gradient_checkpointing = gradient_checkpointing

        self.patch_embed = nn.Conv3d(2 * latent_channels + 1, width, kernel_size=self.patch_size, stride=self.patch_size)
        self.time_embed = TimestepEmbedding(width)
        # Role-aware embeddings (module docstring); small random, so roles differ from the start.
        self.key_role_embed = nn.Parameter(0.02 * torch.randn(len(KEY_ROLES), width))
        self.key_frame_embed = nn.Parameter(0.02 * torch.randn(max_latent_frames, width))
        self.text_proj = nn.Linear(text_dim, width)
        self.text_role = nn.Parameter(0.02 * torch.randn(width))
        self.text_null = nn.Parameter(0.02 * torch.randn(width))  # always attended: dropped text leaves it alone
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, width) for _ in range(depth))

        self.control_encoders = nn.ModuleDict(
            {
                name: ControlEncoder(int(channels), width, control_hidden, self.patch_size, control_frames_per_latent, control_scale)
                for name, channels in controls.items()
            }
        )
        self.control_role = nn.ParameterDict({name: nn.Parameter(0.02 * torch.randn(width)) for name in controls})
        self.control_null = nn.ParameterDict({name: nn.Parameter(0.02 * torch.randn(width)) for name in controls})
        self.control_frame_embed = nn.Parameter(0.02 * torch.randn(max_latent_frames, width)) if controls else None
        n_context = control_depth if controls else 0
        self.context_blocks = nn.ModuleList(ContextBlock(width, heads, mlp_ratio, width) for _ in range(n_context))
        # Context block j hints main block inject_at[j]: evenly spaced from the first.
        self.inject_at = [j * depth // n_context for j in range(n_context)] if n_context else []

        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(width, 2 * width)
        self.final_out = nn.Linear(width, math.prod(self.patch_size) * latent_channels)
        for zero in (self.final_ada, self.final_out):
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)

    # ---- conditioning -------------------------------------------------------------------------

    def _text(
        self, text_BLE: torch.Tensor | None, text_mask_BL: torch.Tensor | None, dropped_B: torch.Tensor | None, B: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens_B(1+L)D, mask_B(1+L))``: the null token, then the projected text with its role."""
        null_B1D = self.text_null.view(1, 1, -1).expand(B, 1, -1)
        if text_BLE is None:
            return null_B1D, torch.ones(B, 1, dtype=torch.bool, device=device)
        mask_BL = torch.ones(text_BLE.shape[:2], dtype=torch.bool, device=device) if text_mask_BL is None else text_mask_BL.bool()
        if dropped_B is not None:
            mask_BL = mask_BL & ~dropped_B[:, None]
        tokens_BLD = self.text_proj(text_BLE.to(self.text_proj.weight.dtype)) + self.text_role
        tokens = torch.cat([null_B1D.to(tokens_BLD.dtype), tokens_BLD], dim=1)
        return tokens, torch.cat([torch.ones(B, 1, dtype=torch.bool, device=device), mask_BL], dim=1)

    # ---- forward ------------------------------------------------------------------------------


    def forward(
        self,
        x_BCThw: torch.Tensor,
        t_B: torch.Tensor,
        key_BCThw: torch.Tensor | None = None,
        key_mask_B1Thw: torch.Tensor | None = None,
        key_roles_BT: torch.Tensor | None = None,
        controls: Mapping[str, torch.Tensor] | None = None,
        text_BLE: torch.Tensor | None = None,
        text_mask_BL: torch.Tensor | None = None,
        dropped: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The velocity ``v_BCThw`` (shape and dtype of ``x_BCThw``) at ``(x_t, t)`` (module docstring)."""
        controls, dropped, grid, t_B = self._forward_inputs(x_BCThw, t_B, controls, dropped)
        B, C, T, H, W = x_BCThw.shape

        inputs_BCThw, roles_BT = self._keyframe_input(x_BCThw, key_BCThw, key_mask_B1Thw, key_roles_BT, dropped.get(KEYFRAMES))
        tokens_BND = self.patch_embed(inputs_BCThw.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        tokens_BND = tokens_BND + self._keyframe_embedding(roles_BT, grid).to(tokens_BND.dtype)
        c_BD = self.time_embed(t_B)
        text_BLD, text_mask_BL = self._text(text_BLE, text_mask_BL, dropped.get(TEXT), B, x_BCThw.device)
        rope = rope_3d(grid, tokens_BND.shape[-1] // self.heads, self.rope_theta, x_BCThw.device)

        context_BND = self._control_context(controls, dropped, (T, H, W), grid, B) if self.context_blocks else None
        hint_for = dict(zip(self.inject_at, self.context_blocks))
        for i, block in enumerate(self.blocks):
            if i in hint_for:
                context_BND, hint_BND = self._run(hint_for[i], context_BND, tokens_BND, c_BD, rope, text_BLD, text_mask_BL)
                tokens_BND = tokens_BND + hint_BND
            tokens_BND = self._run(block, tokens_BND, c_BD, rope, text_BLD, text_mask_BL)

        shift_BD, scale_BD = self.final_ada(F.silu(c_BD)).chunk(2, dim=-1)
        patches_BNP = self.final_out(modulate(self.final_norm(tokens_BND), shift_BD, scale_BD))
        return self._unpatchify(patches_BNP, grid).to(x_BCThw.dtype)

    def _unpatchify(self, patches_BNP: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        B = patches_BNP.shape[0]
        (t, h, w), (pt, ph, pw), C = grid, self.patch_size, self.latent_channels
        x = patches_BNP.view(B, t, h, w, C, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(B, C, t * pt, h * ph, w * pw)

