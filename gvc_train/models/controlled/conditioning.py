"""What the controlled family's velocity models share: the names of the non-control conditions,
the modalities a sampler drops and its conditional / unconditional passes, the check of a
``controls`` config, and the preparation of the conditioning inputs (keyframe
input and role/frame embedding, the control context) as a mixin, so that
``ControlledVideoTransformer`` and ``DiffusersControlledTransformer`` condition identically
without one component module importing the other.

:class:`ConditionInputs` reads these attributes of its model: ``patch_size``,
``max_latent_frames``, ``key_role_embed`` (roles x D), ``key_frame_embed`` (frames x D),
``control_names``, ``control_encoders``, ``control_role``, ``control_null``,
``control_frame_embed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from gvc_train.models.controlled.embeddings import KEY_ROLE_NONE, KEY_ROLES
from gvc_train.models.flow.modality_dropout import drop_masks

# Names of conditions that are not control modalities (keys of ``dropped`` too).
TEXT, KEYFRAMES = "text", "keyframes"


def modality_names(model: Any, text: bool) -> list[str]:
    """The modalities a sampler can tell ``model`` are dropped, as the training stage's dropout names them."""
    return [*model.control_names, KEYFRAMES, *([TEXT] if text else [])]


def sampling_passes(names: list[str], conditions: dict[str, Any], sent: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(conditional, unconditional)`` inputs of one clip: ``conditions`` with every modality in
    ``names`` that is not ``sent`` marked dropped, and with all of them dropped (for guidance)."""
    conditional = {**conditions, "dropped": drop_masks(names, 1, dropped=[m for m in names if m not in sent])}
    return conditional, {**conditions, "dropped": drop_masks(names, 1, dropped=names)}


def check_control_names(controls: Mapping[str, Any]) -> None:
    """``controls`` (modality name -> channels of its map): short identifiers, bounded channels."""
    for name, channels in controls.items():
        if not (isinstance(name, str) and name.isidentifier() and len(name) <= 64) or name in (TEXT, KEYFRAMES):
            raise ValueError(f"control modality name {name!r}: a short identifier other than {TEXT!r} and {KEYFRAMES!r}")
        if not 1 <= int(channels) <= 1024:
            raise ValueError(f"control {name!r}: channels must be in [1, 1024], got {channels}")


class ConditionInputs:
    """The conditioning inputs of a controlled velocity model (module docstring)."""

    def _forward_inputs(
        self, x_BCThw: torch.Tensor, t_B: torch.Tensor, controls: Mapping[str, torch.Tensor] | None, dropped: Mapping[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[int, int, int], torch.Tensor]:
        """``forward``'s checks, shared by the models: ``(controls, dropped as bool, token grid,
        t_B of the batch)``; an unknown condition or a latent of another width is a ValueError."""
        controls, dropped = dict(controls or {}), {k: v.bool() for k, v in (dropped or {}).items()}
        unknown = sorted(set(controls) - set(self.control_names)) + sorted(set(dropped) - {*self.control_names, TEXT, KEYFRAMES})
        if unknown:
            raise ValueError(f"unknown condition(s) {unknown}; this model knows controls {self.control_names}, {TEXT!r}, {KEYFRAMES!r}")
        B, C = x_BCThw.shape[:2]
        if C != self.latent_channels:
            raise ValueError(f"the latent has {C} channels, the model {self.latent_channels}")
        return controls, dropped, self._token_grid(x_BCThw), t_B.expand(B) if t_B.ndim == 0 else t_B

    def _run(self, block: torch.nn.Module, *args: Any) -> Any:
        """``block(*args)``, recomputed in the backward pass under gradient checkpointing."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _token_grid(self, x_BCThw: torch.Tensor) -> tuple[int, int, int]:
        grid = []
        for size, patch, axis in zip(x_BCThw.shape[2:], self.patch_size, "thw"):
            if size % patch:
                raise ValueError(f"latent {axis} = {size} is not a multiple of the patch size {patch} (patch_size {self.patch_size})")
            grid.append(size // patch)
        if x_BCThw.shape[2] > self.max_latent_frames:
            raise ValueError(f"{x_BCThw.shape[2]} latent frames exceed max_latent_frames {self.max_latent_frames}")
        return grid[0], grid[1], grid[2]

    def _keyframe_input(
        self, x_BCThw: torch.Tensor, key_BCThw: torch.Tensor | None, key_mask_B1Thw: torch.Tensor | None,
        key_roles_BT: torch.Tensor | None, dropped_B: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``([x, key, key_mask] B x (2C + 1) x T x h x w, roles_BT)``, absent or dropped keyframes cleared."""
        B, C, T = x_BCThw.shape[:3]
        key = torch.zeros_like(x_BCThw) if key_BCThw is None else key_BCThw.to(x_BCThw.dtype)
        mask = torch.zeros_like(x_BCThw[:, :1]) if key_mask_B1Thw is None else key_mask_B1Thw.to(x_BCThw.dtype)
        roles = torch.full((B, T), KEY_ROLE_NONE, dtype=torch.long, device=x_BCThw.device) if key_roles_BT is None else key_roles_BT.long()
        if key.shape != x_BCThw.shape or mask.shape != (B, 1, *x_BCThw.shape[2:]) or roles.shape != (B, T):
            raise ValueError(
                f"keyframes {tuple(key.shape)}, mask {tuple(mask.shape)}, roles {tuple(roles.shape)} do not fit the latent {tuple(x_BCThw.shape)}"
            )
        if roles.numel() and (roles.min() < 0 or roles.max() >= len(KEY_ROLES)):
            raise ValueError(f"keyframe roles must index {KEY_ROLES}")
        if dropped_B is not None:
            keep = ~dropped_B
            key, mask = key * keep.view(B, 1, 1, 1, 1), mask * keep.view(B, 1, 1, 1, 1)
            roles = torch.where(keep[:, None], roles, KEY_ROLE_NONE)
        return torch.cat([x_BCThw, key, mask], dim=1), roles

    def _keyframe_embedding(self, roles_BT: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``B x N x D``: each latent frame's role embedding, plus its frame's embedding where a
        keyframe is, averaged over a token's frames and spread over its frame's tokens."""
        B, T = roles_BT.shape
        known_BT1 = (roles_BT != KEY_ROLE_NONE).unsqueeze(-1).to(self.key_frame_embed.dtype)
        per_frame_BTD = self.key_role_embed[roles_BT] + known_BT1 * self.key_frame_embed[:T]
        per_token_frame_BtD = per_frame_BTD.view(B, grid[0], self.patch_size[0], -1).mean(dim=2)
        return per_token_frame_BtD.repeat_interleave(grid[1] * grid[2], dim=1)

    def _control_context(
        self, controls: Mapping[str, torch.Tensor], dropped: Mapping[str, torch.Tensor], latent_thw: tuple[int, int, int],
        grid: tuple[int, int, int], B: int,
    ) -> torch.Tensor:  # fmt: skip
        """``B x N x D``: the sum over modalities of (encoded map + role) or the null embedding."""
        N = math.prod(grid)
        frame_BND = self.control_frame_embed[: grid[0]].repeat_interleave(grid[1] * grid[2], dim=0).expand(B, N, -1)
        context_BND = frame_BND
        for name in self.control_names:  # sorted: a fixed order of summation
            null_BND = self.control_null[name].view(1, 1, -1).expand(B, N, -1)
            if name not in controls:
                context_BND = context_BND + null_BND
                continue
            encoded_BND = self.control_encoders[name](controls[name], latent_thw) + self.control_role[name]
            dropped_B = dropped.get(name)
            if dropped_B is not None:
                encoded_BND = torch.where(dropped_B.view(B, 1, 1), null_BND.to(encoded_BND.dtype), encoded_BND)
            context_BND = context_BND + encoded_BND
        return context_BND
