"""WanVideoGenerator: a diffusers Wan 2.1 pipeline from a LOCAL folder as a :class:`VideoGenerator`.

    generator = WanVideoGenerator.from_folder("/models/Wan2.1-T2V-1.3B-Diffusers", guidance_scale=5.0)

The folder is what ``save_pretrained`` writes (``model_index.json`` and one subfolder per part), e.g.
``Wan-AI/Wan2.1-T2V-1.3B-Diffusers`` downloaded elsewhere; it is never fetched from the Hub. Its
``model_index.json`` names the pipeline: ``WanPipeline`` (text-to-video: ``t2v``) or
``WanImageToVideoPipeline`` (``i2v`` for Wan2.1-I2V, ``flf2v`` through the pipeline's
``last_image`` for Wan2.1-FLF2V: :func:`pipeline_modes`).

Everything is the pipeline's own code where it has a method for it, so that following our
velocity with Euler steps is the pipeline's own sampling (tested on tiny random pipelines):
text through ``encode_prompt``'s ``_get_t5_prompt_embeds`` (padded to 512 tokens, as ``__call__``), the CLIP image tokens
through ``encode_image``, the i2v condition (4 mask channels + the VAE latent of the first frame,
zeros, and the last frame for flf2v) through ``prepare_latents``, keyframes through its
``video_processor``. Latents are normalised with the VAE config's ``latents_mean`` /
``latents_std`` exactly as ``prepare_latents`` normalises and ``__call__`` un-normalises.

**Conventions.** Wan's flow-matching schedulers use ``x = sigma noise + (1 - sigma) x0`` at
``timestep = 1000 sigma`` and step ``x += (sigma_next - sigma) v``, so the transformer's output
is ours (``v = noise - x0``, ``t = sigma``) as is; see ``models/controlled/diffusers_transformer.py``.

**Precision.** ``dtype`` is the text encoder's and transformer's (bfloat16 for the 14B models on a
GPU); the VAE and the CLIP image encoder stay float32, as diffusers' Wan examples load them. Guidance
is combined in float32 (the pipeline combines in the transformer's dtype: the same for float32).

Wan 2.2 folders (a second transformer with ``boundary_ratio``, or ``expand_timesteps``) are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gvc_train.models.codebook.generator import VideoGenerator

PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
MAX_TEXT_TOKENS = 512  # WanPipeline.__call__'s max_sequence_length (encode_prompt's own default is 226)
IDENTITY_CHUNK = 1 << 20


@dataclass
class WanConditions:
    """What :meth:`WanVideoGenerator.velocity` needs beside ``x`` and ``t`` for one clip."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None  # None without classifier-free guidance
    image_embeds: torch.Tensor | None = None  # CLIP tokens (Wan 2.1 I2V)
    condition_BCThw: torch.Tensor | None = None  # i2v / flf2v: mask + keyframe latent, concatenated to x


def pipeline_identity(path: str | Path) -> str:
    """A sha256 hex that names a pipeline folder's contents, cheap for tens of GB: over every
    file (sorted; paths with a part starting with "." skipped: download caches), its relative
    path, size and the sha256 of its first and last MiB. A byte changed in the middle of a file
    over 2 MiB is not seen; a different checkpoint, a truncated or replaced file is."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    outer = hashlib.sha256()
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):  # a download cache's links count as files
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        files += [Path(folder) / name for name in names if not name.startswith(".")]
    files.sort(key=lambda file: file.relative_to(root).as_posix())
    for file in files:
        size = file.stat().st_size
        with file.open("rb") as f:
            head = hashlib.sha256(f.read(IDENTITY_CHUNK)).hexdigest()
            f.seek(max(0, size - IDENTITY_CHUNK))
            tail = hashlib.sha256(f.read(IDENTITY_CHUNK)).hexdigest()
        outer.update(f"{file.relative_to(root).as_posix()}\0{size}\0{head}\0{tail}\n".encode())
    return outer.hexdigest()


def _pipeline_class(root: Path) -> str:
    index = root / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (ValueError, AttributeError):
        raise ValueError(f"{index} is not a diffusers model index") from None
    if name not in PIPELINES:
        raise ValueError(f"{root} holds a {name!r}, not a Wan 2.1 pipeline ({' or '.join(PIPELINES)})")
    return name


def pipeline_modes(pipe) -> tuple[str, ...]:
    """What a loaded pipeline can generate. WanImageToVideoPipeline's CLIP tokens decide: Wan 2.1
    I2V (``image_dim`` set, no ``pos_embed_seq_len``) embeds one image, and two crash in its
    ``WanImageEmbedding``; Wan 2.1 FLF2V (``pos_embed_seq_len`` = two images' tokens) folds the
    batch of two images into one sequence and cannot take one; without CLIP tokens both work."""
    if type(pipe).__name__ == "WanPipeline":
        return ("t2v",)
    config = pipe.transformer.config
    if config.get("image_dim") is None:
        return ("i2v", "flf2v")
    return ("flf2v",) if config.get("pos_embed_seq_len") is not None else ("i2v",)


class WanVideoGenerator(VideoGenerator):
    """A loaded Wan 2.1 diffusers pipeline (module docstring); build with :meth:`from_folder`."""

    max_latent_frames = None

    def __init__(self, pipe, guidance_scale: float = 5.0, negative_prompt: str = "") -> None:
        config = pipe.config
        if getattr(pipe, "transformer_2", None) is not None or config.get("boundary_ratio") is not None or config.get("expand_timesteps"):
            raise ValueError("a Wan 2.2 pipeline (transformer_2 / boundary_ratio / expand_timesteps) is not supported: give a Wan 2.1 folder")
        if pipe.transformer is None:
            raise ValueError("the pipeline has no transformer")
        self.pipe, self.modes = pipe, pipeline_modes(pipe)
        self.guidance_scale, self.negative_prompt = float(guidance_scale), negative_prompt
        vae_config, patch = pipe.vae.config, tuple(pipe.transformer.config.patch_size)
        self.temporal_stride, self.spatial_stride = int(pipe.vae_scale_factor_temporal), int(pipe.vae_scale_factor_spatial)
        self.patch_size = patch
        self.size_multiple = self.spatial_stride * max(patch[1], patch[2])
        self.latent_channels = int(vae_config.z_dim)
        # prepare_latents' and __call__'s tensors: latents_std holds 1 / std and is used as such.
        self._latents_mean = torch.tensor(vae_config.latents_mean).view(1, self.latent_channels, 1, 1, 1)
        self._latents_std = 1.0 / torch.tensor(vae_config.latents_std).view(1, self.latent_channels, 1, 1, 1)

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        guidance_scale: float = 5.0,
        negative_prompt: str = "",
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> WanVideoGenerator:
        """Load the Wan 2.1 pipeline saved in the local folder ``path`` (never the Hub)."""
        import diffusers

        root = Path(path)
        name = _pipeline_class(root)
        local = dict(local_files_only=True)
        parts = dict(vae=diffusers.AutoencoderKLWan.from_pretrained(root, subfolder="vae", dtype=torch.float32, **local))
        if name == "WanImageToVideoPipeline" and (root / "image_encoder").is_dir():
            from transformers import CLIPVisionModel

            parts["image_encoder"] = CLIPVisionModel.from_pretrained(root / "image_encoder", dtype=torch.float32, **local)
        pipe = getattr(diffusers, name).from_pretrained(root, dtype=dtype, **parts, **local).to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, guidance_scale, negative_prompt)

    @property
    def takes_text(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        """Where the trajectory's state lives (the pipeline's execution device)."""
        return self._device

    @property
    def _device(self) -> torch.device:
        return self.pipe._execution_device

    # ---- latents --------------------------------------------------------------------------------

    def _normalise(self, raw_BCThw: torch.Tensor) -> torch.Tensor:
        mean, inverse_std = self._latents_mean.to(raw_BCThw), self._latents_std.to(raw_BCThw)
        return (raw_BCThw - mean) * inverse_std

    @torch.no_grad()
    def encode_video(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        if video_BCTHW.dim() != 5 or video_BCTHW.shape[:2] != (1, 3):
            raise ValueError(f"video {tuple(video_BCTHW.shape)} is not 1 x 3 x T x H x W")
        frames, height, width = video_BCTHW.shape[2:]
        if (frames - 1) % self.temporal_stride or height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"video {frames}x{height}x{width}: frames must be 1 + {self.temporal_stride} k and sizes multiples of {self.size_multiple}")
        vae = self.pipe.vae
        pixels = (2.0 * video_BCTHW - 1.0).to(device=vae.device, dtype=vae.dtype)  # the VAE sees [-1, 1]
        raw_BCThw = vae.encode(pixels).latent_dist.mode()  # the posterior mean (retrieve_latents' "argmax")
        return self._normalise(raw_BCThw.float())

    @torch.no_grad()
    def decode_latent(self, latent_BCThw: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        latents = latent_BCThw.to(device=vae.device, dtype=vae.dtype)
        latents = latents / self._latents_std.to(latents) + self._latents_mean.to(latents)  # as WanPipeline.__call__
        video = vae.decode(latents, return_dict=False)[0]
        return (video.float() / 2 + 0.5).clamp(0, 1)  # the video processor's denormalisation

    # ---- conditions -----------------------------------------------------------------------------

    @torch.no_grad()
    def conditions(
        self,
        mode: str,
        latent_shape: tuple[int, ...],
        caption: str | None = None,
        first_B3HW: torch.Tensor | None = None,
        last_B3HW: torch.Tensor | None = None,
    ) -> WanConditions:
        if mode not in self.modes:
            raise ValueError(f"this Wan pipeline does modes {', '.join(self.modes)}, not {mode!r}")
        frames, height, width = self._pixel_size(latent_shape)
        pipe, device = self.pipe, self._device
        guided = self.guidance_scale != 1.0
        prompt_embeds = self._text(caption or "")
        negative_embeds = self._text(self.negative_prompt) if guided else None
        dtype = pipe.transformer.dtype
        conditions = WanConditions(prompt_embeds.to(dtype), None if negative_embeds is None else negative_embeds.to(dtype))
        if mode == "t2v":
            return conditions

        keys = [first_B3HW] + ([last_B3HW] if mode == "flf2v" else [])
        if mode == "flf2v" and latent_shape[2] < 2:
            raise ValueError(f"flf2v needs at least 2 latent frames (a first and a last frame), got {latent_shape[2]}")
        for name, key in zip(("first_B3HW", "last_B3HW"), keys):
            if key is None or key.shape != (1, 3, height, width):
                raise ValueError(f"{mode} needs {name} of 1 x 3 x {height} x {width}, got {None if key is None else tuple(key.shape)}")
        if pipe.transformer.config.image_dim is not None:  # Wan 2.1 I2V: CLIP tokens of both keyframes
            pictures = [to_pil(key) for key in keys]
            conditions.image_embeds = pipe.encode_image(pictures[0] if len(pictures) == 1 else pictures, device).to(dtype)
        # the pipeline's keyframe preprocessing ([0, 1] tensors to [-1, 1]) and its condition
        first = pipe.video_processor.preprocess(keys[0].float(), height=height, width=width).to(device, torch.float32)
        last = pipe.video_processor.preprocess(keys[1].float(), height=height, width=width).to(device, torch.float32) if len(keys) == 2 else None
        placeholder = torch.zeros(latent_shape, dtype=torch.float32, device=device)  # prepare_latents returns it as given
        _, condition = pipe.prepare_latents(first, 1, self.latent_channels, height, width, frames, torch.float32, device, None, placeholder, last)
        conditions.condition_BCThw = condition  # float32: __call__ concatenates it to the float32 latents, then casts
        return conditions

    def _text(self, text: str) -> torch.Tensor:
        """``encode_prompt``'s text path (its ``_get_t5_prompt_embeds``), WanPipeline's for both
        pipelines: WanImageToVideoPipeline's copy calls ``ftfy`` unguarded, an optional package
        WanPipeline skips when absent, so both kinds clean text the same way on every machine."""
        from diffusers import WanPipeline

        return WanPipeline._get_t5_prompt_embeds(self.pipe, prompt=text, max_sequence_length=MAX_TEXT_TOKENS, device=self._device)

    def _pixel_size(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        shape = tuple(int(s) for s in latent_shape)
        _, ph, pw = self.patch_size
        if len(shape) != 5 or shape[0] != 1 or shape[1] != self.latent_channels or shape[3] % ph or shape[4] % pw:
            raise ValueError(f"latent shape {shape} is not 1 x {self.latent_channels} x T x h x w with h, w multiples of {ph}, {pw}")
        return 1 + self.temporal_stride * (shape[2] - 1), shape[3] * self.spatial_stride, shape[4] * self.spatial_stride

    # ---- velocity -------------------------------------------------------------------------------

    @torch.no_grad()
    def velocity(self, x_BCThw: torch.Tensor, t: float, conditions: WanConditions) -> torch.Tensor:
        transformer = self.pipe.transformer
        dtype, device = transformer.dtype, self._device
        inputs = x_BCThw.to(device=device, dtype=torch.float32)
        if conditions.condition_BCThw is not None:
            inputs = torch.cat([inputs, conditions.condition_BCThw], dim=1)
        inputs = inputs.to(dtype)
        # the scheduler's timesteps: float32 sigma times 1000, in float32
        timestep = (torch.tensor([float(t)], dtype=torch.float32) * 1000).to(device).expand(x_BCThw.shape[0])

        def run(text: torch.Tensor) -> torch.Tensor:
            out = transformer(
                hidden_states=inputs, timestep=timestep, encoder_hidden_states=text,
                encoder_hidden_states_image=conditions.image_embeds, return_dict=False,
            )[0]  # fmt: skip
            return out.float()

        v = run(conditions.prompt_embeds)
        if self.guidance_scale != 1.0:
            if conditions.negative_prompt_embeds is None:
                raise ValueError("conditions were made without guidance; make them with this generator")
            v_uncond = run(conditions.negative_prompt_embeds)
            v = v_uncond + self.guidance_scale * (v - v_uncond)
        return v.to(x_BCThw.device)


def to_pil(image_B3HW: torch.Tensor):
    """A [0, 1] ``1 x 3 x H x W`` image as the 8-bit PIL image the CLIP processor is made for."""
    from PIL import Image

    pixels = (image_B3HW[0].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))
