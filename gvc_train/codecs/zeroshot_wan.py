"""The zero-shot family on a diffusers Wan 2.1 pipeline in a local folder.

The folder holds a reference to the pipeline (``WanPipelineReference``: its path and identity,
guidance, dtype, device), a latent codec of the project (tokenizer + latent codec) for the frames
the modes send as images, and the settings. The pipeline's folder is checked against the identity
when the codec opens (``pipeline_identity``: every file's size and its first and last MiB), so a
stream is never decoded with other weights than it was coded with. The modes are the pipeline's
(``pipeline_modes``): ``t2v`` for a text-to-video pipeline (each GOP coded on its own), ``i2v`` or
``flf2v`` for an image-to-video one.
"""

from __future__ import annotations

from typing import Any

import torch

from gvc_train.codecs.codec_folder import CodecFolderError
from gvc_train.codecs.zeroshot import ZeroShotCodec


class ZeroShotWanCodec(ZeroShotCodec):
    """:class:`ZeroShotCodec` whose generator is a local diffusers Wan pipeline (module docstring)."""

    family = "zeroshot_wan"

    def build_generator(self, modules: dict[str, Any]) -> Any:
        from gvc_train.models.codebook.wan_generator import WanVideoGenerator, pipeline_identity

        ref = modules["pipeline"]
        try:
            identity = pipeline_identity(ref.path)
        except (OSError, ValueError) as e:
            raise CodecFolderError(f"{self.folder}: its Wan pipeline folder {ref.path} cannot be read ({e})") from None
        if identity != ref.identity:
            raise CodecFolderError(f"{self.folder}: the Wan pipeline at {ref.path} is not the one this codec was made with (its files differ)")
        device = ("cuda" if torch.cuda.is_available() else "cpu") if ref.device == "auto" else ref.device
        try:
            return WanVideoGenerator.from_folder(ref.path, ref.guidance_scale, ref.negative_prompt, getattr(torch, ref.dtype), device)
        except ValueError as e:
            raise CodecFolderError(f"{self.folder}: {e}") from None
