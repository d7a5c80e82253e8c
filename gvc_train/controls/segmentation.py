"""The ``segmentation`` control: a label per pixel, from one of two sources.

- ``"selfie"`` (the default, offline): mediapipe's bundled selfie segmentation, person vs
  background, run in mediapipe's own venv (:mod:`gvc_train.controls.mediapipe_client`).
- ``"transformers"``: any ``AutoModelForSemanticSegmentation`` checkpoint in a local folder
  (``model_path``, e.g. a SegFormer the user has; with its ``preprocessor_config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gvc_train.controls import mediapipe_client
from gvc_train.controls.registry import ControlExtractor, register_extractor
from gvc_train.frames import tensor_to_frames

SOURCES = ("selfie", "transformers")
SELFIE_MODELS = {"general": 0, "landscape": 1}  # mediapipe's model_selection: 256x256, 144x256 input
MODEL_BATCH = 8  # frames per forward of a transformers model


@register_extractor("segmentation")
class SegmentationExtractor(ControlExtractor):
    """A label map per frame.

    Output (``LAYOUTS["segmentation"]``): ``torch.uint8 T x h x w``, labels ``0 .. classes - 1``;
    ``h x w`` is ``size`` (default the frame's). ``"selfie"``: 0 background, 1 person (the
    person probability, resized to ``h x w``, above ``threshold``), ``classes`` = 2.
    ``"transformers"``: the argmax of the model's logits resized (bilinear) to ``h x w``,
    ``classes`` = the model's ``num_labels``; it runs on the clip's device.

    Settings: ``source``, ``model_path`` (a folder; "transformers" only), ``threshold`` and
    ``selfie_model`` ("general" or the faster "landscape"; "selfie" only), ``size`` ([h, w] or
    None), ``classes`` (None: the source's; a number that differs from it is an error).
    """

    def __init__(
        self,
        source: str = "selfie",
        model_path: str | None = None,
        threshold: float = 0.5,
        selfie_model: str = "general",
        size: list[int] | None = None,
        classes: int | None = None,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if (source == "transformers") != (model_path is not None):
            raise ValueError('model_path goes with source="transformers", and only with it')
        if selfie_model not in SELFIE_MODELS:
            raise ValueError(f"selfie_model must be one of {', '.join(SELFIE_MODELS)}, got {selfie_model!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be [h, w] of positive ints or None, got {size}")
        source_classes = 2 if source == "selfie" else _num_labels(Path(model_path))
        if classes is not None and classes != source_classes:
            raise ValueError(f"classes={classes}, but the {source} source gives {source_classes}")
        if source_classes > 256:
            raise ValueError(f"{source_classes} classes do not fit the uint8 label layout")
        self.source = source
        self.model_path = None if model_path is None else str(model_path)
        self.threshold = float(threshold)
        self.selfie_model = selfie_model
        self.size = None if size is None else [int(s) for s in size]
        self.classes = source_classes
        self._model: Any = None  # the transformers model and processor, loaded on first use

    def extract(self, clip_CThw: torch.Tensor, caption: str | None = None) -> torch.Tensor:
        """The clip's label maps (``3 x T x H x W`` float32 in [0, 1] -> ``uint8 T x h x w``)."""
        size = tuple(self.size) if self.size else tuple(clip_CThw.shape[-2:])
        if self.source == "selfie":
            return self._selfie(clip_CThw, size)
        return self._transformers(clip_CThw, size)

    def _selfie(self, clip_CThw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        settings = {"model_selection": SELFIE_MODELS[self.selfie_model]}
        (person_THW,) = mediapipe_client.run("selfie", settings, tensor_to_frames(clip_CThw))
        person_T1hw = _resize(torch.from_numpy(person_THW.copy())[:, None], size)
        return (person_T1hw[:, 0] > self.threshold).to(torch.uint8)

    @torch.no_grad()
    def _transformers(self, clip_CThw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        model, processor = self._loaded(clip_CThw.device)
        frames_THWC = tensor_to_frames(clip_CThw)
        labels = []
        for start in range(0, len(frames_THWC), MODEL_BATCH):
            batch = list(frames_THWC[start : start + MODEL_BATCH])
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(clip_CThw.device)
            logits_BKhw = model(pixel_values=pixels.to(model.dtype)).logits.float()
            labels.append(_resize(logits_BKhw, size).argmax(dim=1).to(torch.uint8).cpu())
        return torch.cat(labels)

    def _loaded(self, device: torch.device) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

            folder = _model_folder(Path(self.model_path))
            try:
                processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
            except OSError as e:
                raise ValueError(f"{folder} has no image processor (preprocessor_config.json): {e}".splitlines()[0]) from None
            model = AutoModelForSemanticSegmentation.from_pretrained(folder, local_files_only=True).eval()
            self._model = (model, processor)
        model, processor = self._model
        return model.to(device), processor

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_model": None}  # a copy (a data worker) loads its own


def _resize(x_BChw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x_BChw.shape[-2:]) == tuple(size):
        return x_BChw
    return F.interpolate(x_BChw, size=size, mode="bilinear", align_corners=False, antialias=True)


def _model_folder(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise ValueError(f"model_path {path} is not a transformers model folder (no config.json)")
    return path


def _num_labels(path: Path) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(_model_folder(path), local_files_only=True).num_labels
