"""The project's controlled diffusion transformer as a :class:`~.generator.VideoGenerator`.

Built from the parts of a controlled codec folder (``codecs/controlled.py``): the causal tokenizer
(the flow's data is its latent times ``latent_scale``), the transformer, and the text encoder
where the model was trained with captions. Keyframes follow the family's convention
(``models/controlled/keyframe_latents.py``): a given frame's latent is the tokenizer's intra
latent of that frame alone, at latent frame 0 (role ``first``) and, for ``flf2v``, at the last
latent frame (the coding settings' ``end_role``). No control maps are sent: the model was trained
with modality dropout, so it is sampled with every control dropped (and the text dropped without
a caption, the keyframes without keyframes). Guidance other than 1 runs the pass with everything
dropped beside the conditional one.
"""

from __future__ import annotations

from typing import Any

import torch

from gvc_train.models.codebook.generator import MODES, VideoGenerator
from gvc_train.models.controlled.keyframe_latents import keyframe_conditions, keyframe_latents
from gvc_train.models.controlled.conditioning import KEYFRAMES, TEXT, modality_names, sampling_passes


class ControlledGenerator(VideoGenerator):
    """Tokenizer + controlled transformer (+ text encoder) as a generator (module docstring)."""

    modes = MODES

    def __init__(
        self, tokenizer: Any, transformer: Any, text_encoder: Any, latent_scale: float, end_role: str = "last", guidance_scale: float = 1.0
    ) -> None:
        self.tokenizer, self.model, self.text_encoder = tokenizer, transformer, text_encoder
        self.latent_scale, self.end_role, self.guidance_scale = float(latent_scale), end_role, float(guidance_scale)
        self.temporal_stride = tokenizer.temporal_stride
        self.spatial_stride = tokenizer.spatial_stride
        _, ph, pw = transformer.patch_size
        self.size_multiple = self.spatial_stride * max(ph, pw)
        self.latent_channels = tokenizer.latent_channels
        self.max_latent_frames = transformer.max_latent_frames
        self.names = modality_names(transformer, text_encoder is not None)

    @property
    def takes_text(self) -> bool:
        return self.text_encoder is not None

    def encode_video(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        # One latent frame at a time through the causal cache: the same latents, bit for bit, as a
        # whole-GOP encode (exact_kernels.py), with the activations of 4 frames, not the GOP's.
        return self.tokenizer.encode(video_BCTHW, chunk_frames=self.temporal_stride).mode().float() * self.latent_scale

    def sampling_bytes(self, latent_thw: tuple[int, int, int]) -> int | None:
        from gvc_train.models.controlled.transformer import sampling_bytes

        return sampling_bytes(self.model, latent_thw)

    def decode_latent(self, latent_BCThw: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.decode(latent_BCThw / self.latent_scale).clamp(0, 1)

    def conditions(
        self,
        mode: str,
        latent_shape: tuple[int, ...],
        caption: str | None = None,
        first_B3HW: torch.Tensor | None = None,
        last_B3HW: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r}: this generator does {list(self.modes)}")
        if (first_B3HW is None) != (mode == "t2v") or (last_B3HW is None) != (mode != "flf2v"):
            raise ValueError(f"mode {mode!r} takes {'no frame' if mode == 't2v' else 'the first frame' if mode == 'i2v' else 'the first and the last frame'}")
        T = latent_shape[2]
        keys = {}
        if first_B3HW is not None:
            keys[0] = ("first", keyframe_latents(self.tokenizer, first_B3HW[:, :, None], self.latent_scale)[:, :, 0])
        if last_B3HW is not None:
            if T < 2:
                raise ValueError("a first and a last frame need a clip of 2 latent frames at least")
            keys[T - 1] = (self.end_role, keyframe_latents(self.tokenizer, last_B3HW[:, :, None], self.latent_scale)[:, :, 0])
        conditions: dict[str, Any] = {**keyframe_conditions(keys, tuple(latent_shape)), "controls": {}}
        sent = {KEYFRAMES} if keys else set()
        if caption is not None:
            if self.text_encoder is None:
                raise ValueError("this model takes no caption (it has no text encoder)")
            text_BLE, mask_BL = self.text_encoder([caption])
            conditions.update(text_BLE=text_BLE, text_mask_BL=mask_BL)
            sent.add(TEXT)
        conditional, unconditional = sampling_passes(self.names, conditions, sent)
        return {"conditional": conditional, "unconditional": unconditional}

    def velocity(self, x_BCThw: torch.Tensor, t: float, conditions: Any) -> torch.Tensor:
        t_B = torch.full((x_BCThw.shape[0],), t, dtype=torch.float32, device=x_BCThw.device)
        v_c = self.model(x_BCThw, t_B, **conditions["conditional"]).float()
        if self.guidance_scale == 1.0:
            return v_c
        v_u = self.model(x_BCThw, t_B, **conditions["unconditional"]).float()
        return v_u + self.guidance_scale * (v_c - v_u)
