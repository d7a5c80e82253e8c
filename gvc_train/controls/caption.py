"""The ``caption`` extractor: the shard's caption, or a local image-to-text model's on the middle frame.

Output layout (``LAYOUTS["caption"]``): a ``str``, one caption for the whole clip.

A clip whose shard carries a caption keeps it, verbatim (a human or data-set caption beats
anything a small captioner says). Otherwise a captioner runs on the clip's middle frame: any
transformers image-to-text checkpoint in a LOCAL folder (``model_path``: a
``VisionEncoderDecoderModel`` such as ViT-GPT2, BLIP's ``BlipForConditionalGeneration``, ...;
with its image processor and tokenizer files beside it), loaded offline (``HF_HUB_OFFLINE``,
``local_files_only``: never the Hub), decoded greedily (one beam, no sampling: the same frame
gives the same caption) for at most ``max_new_tokens`` tokens. The model loads on the first
clip that needs it, once per extractor.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gvc_train.controls.registry import ControlExtractor, register_extractor


def middle_frame(clip_CThw: torch.Tensor) -> torch.Tensor:
    """The frame the captioner sees: ``H x W x 3`` uint8 (what image processors take) of frame ``T // 2``."""
    if clip_CThw.dim() != 4 or clip_CThw.shape[0] != 3 or clip_CThw.shape[1] < 1:
        raise ValueError(f"caption: expected a clip 3 x T x H x W, got {tuple(clip_CThw.shape)}")
    frame = clip_CThw[:, clip_CThw.shape[1] // 2].detach().float().cpu()
    return (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


class _Captioner:
    """A transformers image-to-text model with its image processor and tokenizer, from a local folder."""

    def __init__(self, folder: str, device: str) -> None:
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise ValueError(f"caption: no captioner at {folder} (config.json missing); give a local transformers image-to-text folder")
        os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: never the network
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        local = dict(local_files_only=True)
        try:
            self.processor = AutoImageProcessor.from_pretrained(folder, **local)
            self.tokenizer = AutoTokenizer.from_pretrained(folder, **local)
            self.model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, **local).to(device).eval()
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"caption: cannot load the captioner at {folder}: {first}") from None
        self.device = device

    @torch.no_grad()
    def __call__(self, image_HW3: torch.Tensor, max_new_tokens: int) -> str:
        pixels = self.processor(images=image_HW3.numpy(), return_tensors="pt").pixel_values.to(self.device)
        ids = self.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()


@register_extractor("caption")
class CaptionExtractor(ControlExtractor):
    """The shard's caption, else ``model_path``'s caption of the middle frame (module docstring).

    ``model_path``: a local transformers image-to-text folder, or None (then every clip must
    come with a caption); ``max_new_tokens``: the most tokens the captioner writes; ``device``:
    where it runs (``"cpu"``, ``"cuda"``...).
    """

    def __init__(self, model_path: str | None = None, max_new_tokens: int = 30, device: str = "cpu") -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model_path = None if model_path is None else str(model_path)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self._captioner: _Captioner | None = None

    def captioner(self) -> _Captioner:
        """The captioner, loaded on first use; ValueError in one line without one."""
        if self._captioner is None:
            if self.model_path is None:
                raise ValueError("caption: this clip has no caption and no captioner is set "
                                 "(give model_path, a local transformers image-to-text folder)")
            self._captioner = _Captioner(self.model_path, self.device)
        return self._captioner

    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> Any:
        """The clip's caption (``str``): ``caption`` when it has text, else the captioner's."""
        if caption is not None and caption.strip():
            return caption
        return self.captioner()(middle_frame(clip_CThw), self.max_new_tokens)
