"""WanPipelineReference: a diffusers Wan pipeline folder named by a zero-shot codec, a config-only component.

The local folder of a diffusers Wan pipeline (``path``) and its
``identity`` (``wan_generator.pipeline_identity``): the codec is the folder plus the weights
found there, which are not copied (tens of GB); a folder whose identity differs is refused. With
the guidance scale and negative prompt, the transformer's ``dtype`` and the ``device`` it runs
on: encoder and decoder must compute the same trajectory, so these are the codec's, not a run's.
``device="auto"`` runs on CUDA where there is one: a stream then decodes on the same kind of
device only (the trajectory check refuses another); name the device to make that explicit.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gvc_train.models.registry import register_component


@register_component("WanPipelineReference")
class WanPipelineReference(nn.Module):
    """Where a diffusers Wan pipeline lives and which one it is (module docstring). No weights."""

    config_bounds = {"guidance_scale": (0.0, 100.0), "dtype": {"float32", "bfloat16"}, "device": {"auto", "cpu", "cuda"}}

    def __init__(
        self, path: str = "", identity: str = "", guidance_scale: float = 5.0, negative_prompt: str = "", dtype: str = "float32", device: str = "auto"
    ) -> None:
        super().__init__()
        if not path or len(identity) != 64:
            raise ValueError("a Wan pipeline reference needs the folder's path and its 64-hex-digit identity")
        self.path, self.identity = str(path), identity
        self.guidance_scale, self.negative_prompt = float(guidance_scale), negative_prompt
        self.dtype, self.device = dtype, device  # the transformer's and text encoder's dtype; auto: cuda where there is one

    def forward(self, *args: Any) -> None:  # pragma: no cover
        raise RuntimeError("WanPipelineReference names a pipeline folder; it is not called")
