"""DiffusersControlledTransformer: a diffusers Wan video transformer with our conditioning added.

A drop-in for :class:`~gvc_train.models.controlled.transformer.ControlledVideoTransformer` (same
``forward`` and the attributes the stage and codec read: ``latent_channels``, ``patch_size``,
``control_names``, ``control_encoders[name].expected_shape``, ``config["controls"]``,
``config["text_dim"]``, ``max_latent_frames``, ``gradient_checkpointing``), so a recipe's
``transformer:`` can name either. It wraps a ``diffusers.WanTransformer3DModel`` (text-to-video
Wan 2.1 / 2.2 geometry) loaded from a LOCAL folder (``pretrained_path``, ``subfolder`` e.g.
``"transformer"`` of a pipeline folder; offline, never the Hub) or built from a diffusers config.
As for ``DiffusersVAE``, the exported component config holds the diffusers config itself, not the
folder, so an export loads from its JSON and safetensors alone.

**Conventions.** Ours: ``x_t = (1 - t) x0 + t noise``, ``t`` in [0, 1], the model predicts
``v = noise - x0``. Wan (diffusers' ``FlowMatchEulerDiscreteScheduler``): ``x = sigma noise +
(1 - sigma) x0`` at ``timestep = 1000 sigma``, and its step ``x += (sigma_next - sigma) v``
makes ``v = dx / dsigma = noise - x0``: the same velocity. So the wrapped model gets
``timestep = 1000 t`` and its output is returned as is.

**What is added**, every extra starting at zero so that without conditions a fresh wrapper is
exactly the pretrained model (tested):

* keyframes: ``[key, key_mask]`` (``C + 1`` channels) go through ``key_patch_embed``, a 3D patch
  convolution with zero weights whose tokens are added to Wan's own ``patch_embedding`` of ``x``:
  the same function as widening Wan's patch embedding to ``[x, key, mask]`` with zero extra input
  channels, while the wrapped module stays a stock Wan model (its weights keep diffusers' names);
* role-aware embeddings as ControlledVideoTransformer's (keyframe role + latent-frame tables;
  each control's role, null and token-frame embeddings), here zero-initialised (the keyframe
  tables: nothing is added to an unconditioned input) or inside the zero-gated pathway;
* the control pathway, VACE / ControlNet style: each modality's :class:`ControlEncoder` puts its
  map on Wan's token grid, their sum is the context of ``control_depth`` context blocks, each a
  copy of the Wan block it feeds (ControlNet's trainable copy: the pretrained weights, not random
  ones) over ``context + hidden``, whose hint goes through a zero-initialised linear and is added
  to the stream before that block.

**Text** goes through Wan's own path: its ``text_embedder`` and every block's cross-attention,
``text_BLE`` of the Wan config's ``text_dim`` (umT5-XXL's 4096 for the released models). Wan has
no cross-attention mask: its pipeline zeroes the prompt's padding (to 512 tokens), so here
masked tokens are zeroed, and dropped or absent text is all zeros (one zero token when absent;
attention over zero tokens alone does not depend on their count). Zero text is what Wan saw
as padding, so it is its nearest "no text". Beside real tokens the zeroed padding still takes
attention weight, so a caption's effect depends on how far it is padded: the text encoder must
pad to one fixed length (``padding="max_length"``; ``max_length=512`` is the pretrained model's
own behaviour), else a training batch (padded to its longest caption) and the codec (one
caption, unpadded) condition differently; the stage refuses it (``text_padding_masked``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gvc_train.models.controlled.conditioning import KEYFRAMES, TEXT, ConditionInputs, check_control_names
from gvc_train.models.controlled.control_encoder import ControlEncoder
from gvc_train.models.controlled.embeddings import KEY_ROLES
from gvc_train.models.registry import register_component

WAN_CLASS = "WanTransformer3DModel"
MAX_PARAMETERS = 1 << 36  # Wan 2.1 14B fits; a config is bounded before anything is built


def _plain_config(wan: nn.Module) -> dict[str, Any]:
    """The diffusers constructor config as plain JSON (private ``_`` keys dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(wan.config).items() if not k.startswith("_")}))


def _load_wan(pretrained_path: str, subfolder: str | None) -> nn.Module:
    from diffusers import WanTransformer3DModel

    folder = Path(pretrained_path) / (subfolder or "")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers model at {folder} (config.json missing); give a local folder")
    try:
        class_name = json.loads((folder / "config.json").read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise ValueError(f"{folder / 'config.json'} is not a diffusers config") from None
    if class_name != WAN_CLASS:
        raise ValueError(f"{folder} holds a {class_name!r}, not a {WAN_CLASS}")
    # from_pretrained returns eval mode; a module starts in train mode and its owner decides.
    return WanTransformer3DModel.from_pretrained(str(pretrained_path), subfolder=subfolder, local_files_only=True).train()


class WanContextBlock(nn.Module):
    """A control-pathway block: a copy of a Wan block over ``context + hidden``; its hint (a
    zero-initialised linear of the new context) is what the main stream adds."""

    def __init__(self, wan_block: nn.Module, width: int) -> None:
        super().__init__()
        self.block = copy.deepcopy(wan_block)
        self.hint = nn.Linear(width, width)
        nn.init.zeros_(self.hint.weight)
        nn.init.zeros_(self.hint.bias)

    def forward(
        self, context_BND: torch.Tensor, hidden_BND: torch.Tensor, text_BLD: torch.Tensor, timestep_proj: torch.Tensor, rope: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        context_BND = self.block(context_BND + hidden_BND, text_BLD, timestep_proj, rope)
        return context_BND, self.hint(context_BND)


@register_component("DiffusersControlledTransformer")
class DiffusersControlledTransformer(ConditionInputs, nn.Module):
    """A Wan transformer with keyframe, control and text conditioning (module docstring); give
    exactly one of ``config`` (a ``WanTransformer3DModel`` config dict) or ``pretrained_path``.
    Its conditioning inputs are prepared as ControlledVideoTransformer's (:class:`ConditionInputs`).

    ``text_dim``: optional check, must equal the Wan config's (the export writes it). The
    control arguments are ControlledVideoTransformer's; context block j is a copy of (and hints)
    main block ``j * num_layers // control_depth``.
    """

    # named parts for finetune.train / freeze (gvc_train.lit.finetune): part -> sub-modules
    parts = {"blocks": ("wan.blocks",), "context_blocks": ("context_blocks",), "control_encoders": ("control_encoders",)}

    # Wan's cross-attention takes no padding mask: zeroed padding tokens still take attention
    # weight when real tokens are present, so the output depends on the padded length. The stage
    # refuses a text encoder that does not pad to one fixed length (``padding="max_length"``).
    text_padding_masked = False

    config_bounds = {
        "pretrained_path": {None}, "subfolder": {None}, "text_dim": (1, 16384), "control_depth": (0, 64),
        "control_hidden": (1, 1024), "control_frames_per_latent": (1, 16), "control_scale": {1, 2, 4, 8, 16},
        "max_latent_frames": (1, 4096), "gradient_checkpointing": {True, False},
        "config.num_layers": (1, 64), "config.num_attention_heads": (1, 128), "config.attention_head_dim": (6, 512),
        "config.in_channels": (1, 256), "config.out_channels": (1, 256), "config.patch_size": (1, 8),
        "config.text_dim": (1, 16384), "config.ffn_dim": (1, 1 << 16), "config.freq_dim": (2, 4096),
        "config.rope_max_seq_len": (1, 1 << 16), "config.eps": (0.0, 1.0),
        # image-to-video Wan (CLIP image tokens in the cross-attention) is not this model
        "config.image_dim": {None}, "config.added_kv_proj_dim": {None}, "config.pos_embed_seq_len": {None},
    }  # fmt: skip

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        subfolder: str | None = None,
        text_dim: int | None = None,
        controls: dict[str, int] | None = None,
        control_depth: int = 4,
        control_hidden: int = 64,
        control_frames_per_latent: int = 4,
        control_scale: int = 8,
        max_latent_frames: int = 64,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if (config is None) == (pretrained_path is None):
            raise ValueError("DiffusersControlledTransformer needs exactly one of config (a WanTransformer3DModel config dict) or pretrained_path")
        controls = dict(controls or {})
        check_control_names(controls)
        if pretrained_path is not None:
            self.wan = _load_wan(pretrained_path, subfolder)
        else:
            _check_wan_config(config, control_depth if controls else 0)
            from diffusers import WanTransformer3DModel

            self.wan = WanTransformer3DModel.from_config(dict(config))
        wan_config = self.wan.config
        if wan_config.get("image_dim") is not None or wan_config.get("added_kv_proj_dim") is not None:
            raise ValueError("an image-to-video Wan (image_dim / added_kv_proj_dim) is not supported: give a text-to-video Wan")
        channels_in = int(wan_config["in_channels"])
        if int(wan_config.get("out_channels") or channels_in) != channels_in:
            raise ValueError(f"Wan's out_channels {wan_config['out_channels']} differ from its in_channels {channels_in}: not a latent velocity model")
        if text_dim is not None and int(text_dim) != int(wan_config["text_dim"]):
            raise ValueError(f"text_dim {text_dim} differs from the Wan model's text_dim {wan_config['text_dim']}")
        num_layers = len(self.wan.blocks)
        if control_depth > num_layers:
            raise ValueError(f"control_depth {control_depth} exceeds the Wan model's {num_layers} blocks")

        self.latent_channels, self.text_dim = channels_in, int(wan_config["text_dim"])
        self.patch_size = tuple(int(p) for p in wan_config["patch_size"])
        self.max_latent_frames = max_latent_frames
        self.control_names = sorted(controls)  # sorted: the sum's order must not follow the JSON's
        self.gradient_checkpointing = gradient_checkpointing
        width = self.width = self.wan.patch_embedding.out_channels

        self.key_patch_embed = nn.Conv3d(channels_in + 1, width, kernel_size=self.patch_size, stride=self.patch_size)
        self.key_role_embed = nn.Parameter(torch.zeros(len(KEY_ROLES), width))
        self.key_frame_embed = nn.Parameter(torch.zeros(max_latent_frames, width))
        for zero in (self.key_patch_embed.weight, self.key_patch_embed.bias):
            nn.init.zeros_(zero)

        self.control_encoders = nn.ModuleDict(
            {
                name: ControlEncoder(int(channels), width, control_hidden, self.patch_size, control_frames_per_latent, control_scale)
                for name, channels in controls.items()
            }
        )
        # Small random: behind the zero hints they change nothing at the start, and roles differ.
        self.control_role = nn.ParameterDict({name: nn.Parameter(0.02 * torch.randn(width)) for name in controls})
        self.control_null = nn.ParameterDict({name: nn.Parameter(0.02 * torch.randn(width)) for name in controls})
        self.control_frame_embed = nn.Parameter(0.02 * torch.randn(max_latent_frames, width)) if controls else None
        n_context = control_depth if controls else 0
        self.inject_at = [j * num_layers // n_context for j in range(n_context)] if n_context else []
        self.context_blocks = nn.ModuleList(WanContextBlock(self.wan.blocks[i], width) for i in self.inject_at)

    # register_component stores the constructor arguments in ``config`` after __init__; the
    # exported config is the diffusers config itself (rebuildable without the folder), and
    # ``text_dim`` is filled in (the stage checks the text encoder's width against it).
    @property
    def config(self) -> dict[str, Any]:
        return self._export_config

    @config.setter
    def config(self, value: dict[str, Any]) -> None:
        exported = dict(value)
        exported.update(config=_plain_config(self.wan), pretrained_path=None, subfolder=None, text_dim=self.text_dim)
        self._export_config = exported

    # ---- conditioning -------------------------------------------------------------------------

    def _text(self, text_BLE: torch.Tensor | None, text_mask_BL: torch.Tensor | None, dropped_B: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """``B x L x text_dim`` for Wan's text embedder: padding and dropped rows zeroed; one
        zero token when there is no text (module docstring)."""
        B = x.shape[0]
        if text_BLE is None:
            return x.new_zeros(B, 1, self.text_dim, dtype=torch.float32)
        if text_BLE.dim() != 3 or text_BLE.shape[0] != B or text_BLE.shape[2] != self.text_dim:
            raise ValueError(f"text {tuple(text_BLE.shape)} is not B x L x {self.text_dim} for a batch of {B}")
        keep_BL = torch.ones(text_BLE.shape[:2], dtype=torch.bool, device=x.device) if text_mask_BL is None else text_mask_BL.bool()
        if dropped_B is not None:
            keep_BL = keep_BL & ~dropped_B[:, None]
        return text_BLE * keep_BL.unsqueeze(-1).to(text_BLE.dtype)


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
        """The velocity ``noise - x0`` (shape and dtype of ``x_BCThw``); ControlledVideoTransformer's contract."""
        controls, dropped, grid, t_B = self._forward_inputs(x_BCThw, t_B, controls, dropped)
        B, C, T, H, W = x_BCThw.shape
        wan = self.wan

        inputs_BCThw, roles_BT = self._keyframe_input(x_BCThw, key_BCThw, key_mask_B1Thw, key_roles_BT, dropped.get(KEYFRAMES))
        dtype = wan.patch_embedding.weight.dtype
        rope = wan.rope(x_BCThw)
        tokens_BND = wan.patch_embedding(x_BCThw.to(dtype)).flatten(2).transpose(1, 2)
        known_BND = self.key_patch_embed(inputs_BCThw[:, C:].to(dtype)).flatten(2).transpose(1, 2)
        tokens_BND = (tokens_BND + known_BND + self._keyframe_embedding(roles_BT, grid).to(dtype)).contiguous()

        text = self._text(text_BLE, text_mask_BL, dropped.get(TEXT), x_BCThw)
        temb_BD, timestep_proj, text_BLD, _ = wan.condition_embedder(1000.0 * t_B.float(), text.to(dtype))
        timestep_proj = timestep_proj.unflatten(1, (6, -1))

        context_BND = self._control_context(controls, dropped, (T, H, W), grid, B).to(dtype) if self.context_blocks else None
        hint_for = dict(zip(self.inject_at, self.context_blocks))
        for i, block in enumerate(wan.blocks):
            if i in hint_for:
                context_BND, hint_BND = self._run(hint_for[i], context_BND, tokens_BND, text_BLD, timestep_proj, rope)
                tokens_BND = tokens_BND + hint_BND
            tokens_BND = self._run(block, tokens_BND, text_BLD, timestep_proj, rope)

        # Wan's output layer, as WanTransformer3DModel.forward.
        shift_BD, scale_BD = (wan.scale_shift_table + temb_BD.unsqueeze(1)).chunk(2, dim=1)
        tokens_BND = (wan.norm_out(tokens_BND.float()) * (1 + scale_BD) + shift_BD).type_as(tokens_BND)
        patches_BNP = wan.proj_out(tokens_BND)
        (t, h, w), (pt, ph, pw) = grid, self.patch_size
        x = patches_BNP.reshape(B, t, h, w, pt, ph, pw, C).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, C, t * pt, h * ph, w * pw).to(x_BCThw.dtype)


def _check_wan_config(config: Mapping[str, Any], control_depth: int) -> None:
    """Bound the model a config builds before building it (a loaded config is checked per key by
    ``config_bounds``; this is the product of its sizes)."""
    width = int(config.get("num_attention_heads", 40)) * int(config.get("attention_head_dim", 128))
    layers, ffn = int(config.get("num_layers", 40)), int(config.get("ffn_dim", 13824))
    estimate = (layers + control_depth) * (8 * width * width + 2 * width * ffn)
    if estimate > MAX_PARAMETERS:
        raise ValueError(f"about {estimate:.3g} parameters is more than {MAX_PARAMETERS}")
