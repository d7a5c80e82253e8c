"""What the controlled family's encoder and decoder share: keyframes coded alone, and clips generated.

**Keyframes** (:class:`KeyframeCoder`): a keyframe's latent is the tokenizer's encoding of that
frame alone (``models/controlled/keyframe_latents.py``: the convention the model was trained
with), coded by the latent codec at the stream's keyframe quality from a fresh state (intra,
one latent frame: the latent family's frame coding, model check included). The decoded latent
is what conditions the model (times ``latent_scale``) and, decoded alone by the tokenizer, what
the decoder shows at that frame.

**Clips** (:class:`ClipGenerator`): a clip runs from one keyframe to the next, both included
(``L`` frames). ``L`` not of the form ``1 + ts (n - 1)`` is padded at its end by repeating the
closing keyframe: its controls are padded to match (:func:`pad_control`: the last frame's
luma, edges, segmentation or pose repeated, zero flow between the repeated frames), and the
padded frames are dropped after decoding. The model sees the keyframes at latent frames 0
(role ``first``) and ``n - 1`` (the stream's end role), the controls as maps on the grid its
control encoders expect (as the training stage builds them), and modalities the stream does not
carry as dropped (it was trained with modality dropout). Sampling starts from noise drawn by a
``torch.Generator`` seeded from (stream seed, clip index); classifier-free guidance runs against
every modality dropped when the guidance scale is not 1. The generated latent is decoded by the
tokenizer and the clip's first and last frames are replaced by the decoded keyframes.

The encoder's ``on_recon`` and the decoder run these same calls on the same tensors (the
controls as decoded from their bytes), so they give the same frames.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.codecs.controlled_stream import MODEL_CHECK_BYTES, padded_latent_frames
from gvc_train.codecs.tokenizer_io import decode_frames
from gvc_train.coding.container import BitstreamError
from gvc_train.coding.rans import SymbolDecoder, SymbolEncoder
from gvc_train.frames import frames_to_tensor
from gvc_train.models.controlled.control_maps import model_control_map
from gvc_train.models.controlled.keyframe_latents import keyframe_conditions, keyframe_latents
from gvc_train.models.controlled.transformer import KEYFRAMES, TEXT
from gvc_train.models.fixed_point import ModelCheck
from gvc_train.models.controlled.conditioning import modality_names, sampling_passes

CAPTION = "caption"  # the control that goes through the text pathway, not a map


@dataclasses.dataclass
class Keyframe:
    """A decoded keyframe: its frame index, its latent as the latent codec rebuilds it
    (``1 x C x h x w``, unscaled) and its pixels decoded alone (uint8 ``H x W x 3``)."""

    frame: int
    latent_1Chw: torch.Tensor
    pixels_HWC: np.ndarray


def padded_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """``(width, height)`` rounded up to multiples of ``multiple``."""
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


class KeyframeCoder:
    """Keyframes to the latent codec's bytes and back, for frames of ``width x height`` padded
    (edge rows and columns repeated) to multiples of ``multiple`` (default: the tokenizer's stride;
    the controlled family: stride x patch, so that the latent grid splits into the transformer's
    tokens)."""

    def __init__(
        self, tokenizer: Any, latent_codec: Any, tables: Any, net: Any, quality: int, width: int, height: int,
        max_memory: int | None = None, multiple: int | None = None,
    ) -> None:  # fmt: skip
        self.tokenizer, self.codec, self.tables, self.net, self.quality = tokenizer, latent_codec, tables, net, quality
        self.width, self.height, self.max_memory = width, height, max_memory
        s = tokenizer.spatial_stride
        self.padded_wh = padded_size(width, height, multiple or s)
        self.pad_hw = (self.padded_wh[1] - height, self.padded_wh[0] - width)
        self.latent_hw = (self.padded_wh[1] // s, self.padded_wh[0] // s)
        self.symbols = latent_codec.symbols_per_frame(*self.latent_hw)
        self.model_bits = 0.0

    def encode(self, frame: int, frame_HWC: np.ndarray) -> tuple[bytes, bytes, Keyframe]:
        """``(model check, rANS bytes, the decoder's keyframe)`` of video frame ``frame``."""
        x_BCTHW = frames_to_tensor(frame_HWC[None])
        if any(self.pad_hw):  # as the latent family pads: edge rows and columns repeated
            x_BCTHW = F.pad(x_BCTHW, (0, self.pad_hw[1], 0, self.pad_hw[0], 0, 0), mode="replicate")
        latent_1Chw = keyframe_latents(self.tokenizer, x_BCTHW)[:, :, 0]
        coder, check = SymbolEncoder(), ModelCheck()
        recon, _, bits = self.codec.compress_frame(latent_1Chw, self.net.init_state(), self.quality, coder, self.tables, self.net, check)
        self.model_bits += bits[0]
        rans = coder.flush()
        return check.take().to_bytes(MODEL_CHECK_BYTES, "big"), rans, self.keyframe(frame, recon)

    def decode(self, frame: int, expected_check: int, rans: bytes) -> Keyframe:
        """The keyframe back from its bytes; BitstreamError when the model check fails."""
        check = ModelCheck()
        decoder = SymbolDecoder(rans, self.symbols)
        latent, _ = self.codec.decompress_frame(self.net.init_state(), self.quality, self.latent_hw, decoder, self.tables, self.net, check)
        if check.take() != expected_check:
            raise BitstreamError(
                f"keyframe {frame}: this decoder's latent codec differs from the encoder's (the model check fails: "
                "another build of this codec, or a rewritten stream)"
            )
        return self.keyframe(frame, latent)

    def keyframe(self, frame: int, latent_1Chw: torch.Tensor) -> Keyframe:
        pixels_HWC = decode_frames(self.tokenizer, latent_1Chw[:, :, None], *self.padded_wh, self.max_memory)[0]
        pixels_HWC = np.ascontiguousarray(pixels_HWC[: self.height, : self.width])
        return Keyframe(frame, latent_1Chw, pixels_HWC)


def clip_multiple(tokenizer: Any, transformer: Any) -> int:
    """Frame sizes a clip is generated at are multiples of this: the tokenizer's stride times the
    transformer's spatial patch (a latent grid of whole tokens)."""
    _, ph, pw = transformer.patch_size
    return tokenizer.spatial_stride * math.lcm(int(ph), int(pw))


def pad_control(name: str, control: Any, frames: int, padded: int, where: str) -> Any:
    """``control`` of a clip of ``frames`` frames (its layout: ``controls/registry.LAYOUTS``),
    padded to ``padded`` frames as if the clip's last frame were repeated; BitstreamError when
    its length is not the clip's."""
    extra = padded - frames
    if name == CAPTION:
        if not isinstance(control, str):
            raise BitstreamError(f"{where}: a caption that is not text")
        return control
    if name == "pose":
        if not isinstance(control, list) or len(control) != frames:
            raise BitstreamError(f"{where}: pose of {len(control) if isinstance(control, list) else '?'} frames for a clip of {frames}")
        return control + [control[-1]] * extra
    if not isinstance(control, torch.Tensor) or control.dim() < 3:
        raise BitstreamError(f"{where}: not a per-frame control")
    if name == "flow":  # frames - 1 flows; a repeated frame does not move
        if control.shape[0] != frames - 1:
            raise BitstreamError(f"{where}: {control.shape[0]} flow fields for a clip of {frames} frames")
        return torch.cat([control, control.new_zeros(extra, *control.shape[1:])]) if extra else control
    if control.shape[0] != frames:
        raise BitstreamError(f"{where}: {control.shape[0]} frames of control for a clip of {frames}")
    return torch.cat([control, control[-1:].expand(extra, *control.shape[1:])]) if extra else control


def clip_seed(seed: int, clip: int) -> int:
    """The generator seed of clip ``clip`` in a stream of seed ``seed`` (63 bits; independent per clip)."""
    return int.from_bytes(hashlib.sha256(f"gvc-controlled/{seed}/{clip}".encode()).digest()[:8], "big") >> 1


@dataclasses.dataclass(frozen=True)
class Sampling:
    """A stream's sampling settings."""

    num_steps: int
    shift: float
    guidance_scale: float
    seed: int
    end_role: str


class ClipGenerator:
    """Generates a clip from its keyframes and controls (module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        transformer: Any,
        text_encoder: Any,
        latent_scale: float,
        sampling: Sampling,
        width: int,
        height: int,
        max_memory: int | None = None,
    ) -> None:
        self.tokenizer, self.model, self.text_encoder = tokenizer, transformer, text_encoder
        self.latent_scale, self.sampling, self.width, self.height = latent_scale, sampling, width, height
        self.max_memory = max_memory
        self.plan: str | None = None  # the tokenizer's decoding plan for the last clip (a report's stats)
        # Frames are padded to multiples of this (the keyframes by KeyframeCoder, the clips'
        # latents on the same grid), so that the latent grid splits into whole tokens: 1920x1080
        # is coded as 1920x1088 under a 2x2 patch at stride 8 (135 latent rows would not split).
        # The control maps are resized onto that grid as in training (a stretch of under 1%).
        self.padded_wh = padded_size(width, height, clip_multiple(tokenizer, transformer))
        # The modalities the model can be told are dropped, as the stage's dropout names them.
        self.names = modality_names(transformer, text_encoder is not None)

    def _note_plan(self, plan: str) -> None:
        self.plan = plan

    def control_maps(self, controls: dict[str, Any], latent_thw: tuple[int, int, int], clip: int) -> dict[str, torch.Tensor]:
        """The clip's (padded) map controls as ``1 x C x T x H x W`` maps on the grid the model expects."""
        maps = {}
        for name in self.model.control_names:
            if name not in controls:
                continue
            try:
                maps[name] = model_control_map(self.model, name, controls[name], latent_thw)[None]
            except (ValueError, RuntimeError, IndexError) as e:  # labels past the classes, joints that do not fit
                raise BitstreamError(f"control {name!r} of clip {clip} does not fit the model: {str(e).splitlines()[0]}") from None
        return maps

    def text(self, controls: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.text_encoder is None or CAPTION not in controls:
            return {}
        text_BLE, mask_BL = self.text_encoder([controls[CAPTION]])
        return {"text_BLE": text_BLE, "text_mask_BL": mask_BL}

    def generate(self, first: Keyframe, closing: Keyframe, controls: dict[str, Any], clip: int) -> np.ndarray:
        """The clip's frames, ``first.frame .. closing.frame`` (uint8 ``L x H x W x 3``)."""
        ts = self.tokenizer.temporal_stride
        frames = closing.frame - first.frame + 1
        n = padded_latent_frames(frames, ts)
        padded = 1 + ts * (n - 1)
        controls = {name: pad_control(name, c, frames, padded, f"control {name!r} of clip {clip}") for name, c in controls.items()}
        C, h, w = first.latent_1Chw.shape[1:]
        shape = (1, C, n, h, w)
        keys = {0: ("first", first.latent_1Chw * self.latent_scale), n - 1: (self.sampling.end_role, closing.latent_1Chw * self.latent_scale)}
        conditions: dict[str, Any] = {
            **keyframe_conditions(keys, shape),
            "controls": self.control_maps(controls, (n, h, w), clip),
            **self.text(controls),
        }
        sent = {*conditions["controls"], KEYFRAMES, *([TEXT] if "text_BLE" in conditions else [])}
        cond, uncond = sampling_passes(self.names, conditions, sent)
        # Imported here: diffusers (the scheduler) probes for training packages at import, and
        # importing codecs/ must not touch them (tests/test_house_rules.py).
        from gvc_train.models.flow.sampler import sample as flow_sample

        s = self.sampling
        generator = torch.Generator().manual_seed(clip_seed(s.seed, clip))
        latent = flow_sample(
            self.model, shape, cond, generator=generator, num_steps=s.num_steps, shift=s.shift,
            guidance_scale=s.guidance_scale, unconditional=uncond if s.guidance_scale != 1.0 else None,
        )  # fmt: skip
        out = decode_frames(self.tokenizer, latent / self.latent_scale, *self.padded_wh, self.max_memory, frames, self._note_plan)
        out = np.ascontiguousarray(out[:, : self.height, : self.width])
        out[0], out[-1] = first.pixels_HWC, closing.pixels_HWC
        return out
