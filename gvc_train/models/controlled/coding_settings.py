"""ControlledCodingSettings: what the controlled codec needs beside the weights, as a component.

A config-only module (no parameters): like diffusers' scheduler config beside its model, it
travels in the exported codec folder as ``coding.json`` (and an empty ``coding.safetensors``),
fingerprinted with the rest, so a codec folder is whole without the training run. The training
stage builds it from its own settings (``latent_scale`` is the stage's; the rest are the recipe's
defaults for encoding). What the encoder chose for a stream (keyframes, controls, steps, seed,
guidance) is written in the stream: these are only the defaults and the model's constants.

* ``latent_scale``: the flow's data is ``tokenizer latent * latent_scale`` (constant of the model).
* ``clip_latent_frames``: latent frames of the longest clip generated at once (a clip has
  ``1 + ts (t - 1)`` frames); clips are cut at keyframes and share them with their neighbours.
* ``keyframes``: the keyframe policy config (``gvc_train.controls.keyframes``:
  ``{"name": "fixed", "clip_frames": 17}`` or ``{"name": "adaptive", ...}``).
* ``end_role``: the role a clip's closing keyframe plays for the model: ``"last"`` (cvg: first
  and last keyframe of fixed clips) or ``"adaptive"`` (cgvc: keyframes the policy placed).
* ``controls``: the control modalities the encoder sends by default (the transformer's maps and
  ``"caption"`` for a text model); ``control_settings``: name -> ``{"extractor": {...},
  "coder": {...}}`` (as ``gvc-shard --control-settings``), defaults where absent.
* ``keyframe_quality``: the latent codec's quality index for keyframes.
* ``num_steps``, ``shift``, ``guidance_scale``, ``seed``: the sampler's defaults.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gvc_train.models.registry import register_component

END_ROLES = ("last", "adaptive")


@register_component("ControlledCodingSettings")
class ControlledCodingSettings(nn.Module):
    """The controlled codec's constants and encoding defaults (module docstring). No weights."""

    config_bounds = {
        "latent_scale": (1e-6, 1e6), "clip_latent_frames": (2, 1024), "end_role": set(END_ROLES),
        "keyframe_quality": (0, 255), "num_steps": (1, 1000), "shift": (1e-3, 1e3),
        "guidance_scale": (0.0, 100.0), "seed": (0, 2**63 - 1),
    }  # fmt: skip

    def __init__(
        self,
        latent_scale: float = 1.0,
        clip_latent_frames: int = 5,
        keyframes: dict[str, Any] | None = None,
        end_role: str = "last",
        controls: list[str] | None = None,
        control_settings: dict[str, Any] | None = None,
        keyframe_quality: int = 0,
        num_steps: int = 20,
        shift: float = 1.0,
        guidance_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if end_role not in END_ROLES:
            raise ValueError(f"end_role must be one of {END_ROLES}, got {end_role!r}")
        if clip_latent_frames < 2:
            raise ValueError(f"clip_latent_frames must be >= 2 (a first and a closing keyframe), got {clip_latent_frames}")
        self.latent_scale = float(latent_scale)
        self.clip_latent_frames = int(clip_latent_frames)
        self.keyframes = dict(keyframes or {"name": "fixed", "clip_frames": 17})
        self.end_role = end_role
        self.controls = list(controls or [])
        if len(set(self.controls)) != len(self.controls):
            raise ValueError(f"a control is named twice in {self.controls}")
        self.control_settings = dict(control_settings or {})
        self.keyframe_quality = int(keyframe_quality)
        self.num_steps = int(num_steps)
        self.shift = float(shift)
        self.guidance_scale = float(guidance_scale)
        self.seed = int(seed)

    def forward(self, *args: Any) -> None:  # pragma: no cover - a settings holder, never called
        raise RuntimeError("ControlledCodingSettings holds settings; it is not called")
