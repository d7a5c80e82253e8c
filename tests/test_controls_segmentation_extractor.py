"""The segmentation extractor (gvc_train/controls/segmentation.py): mediapipe's bundled selfie
model for real (in .venv-mediapipe) on carphone and on a flat frame, and a transformers model
loaded from a folder (a tiny random SegFormer made here) against transformers' own post-processing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gvc_train.controls.registry import LAYOUTS, build_extractor
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.frames import frames_to_tensor, tensor_to_frames

LABELS = 5


@pytest.fixture(scope="module")
def carphone_CThw() -> torch.Tensor:
    return frames_to_tensor(read_frames(sample_video("carphone_pristine.mp4"), count=3))[0]


@pytest.fixture(scope="module")
def tiny_segformer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(
        num_labels=LABELS, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2], decoder_hidden_size=16,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("segformer")
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_selfie_marks_the_person_in_carphone_and_nothing_in_a_flat_frame(carphone_CThw: torch.Tensor) -> None:
    assert "segmentation" in LAYOUTS
    extractor = build_extractor("segmentation")
    assert extractor.settings()["classes"] == 2
    labels_Thw = extractor.extract(carphone_CThw)
    assert labels_Thw.dtype == torch.uint8 and labels_Thw.shape == (3, 144, 176)
    assert set(labels_Thw.unique().tolist()) == {0, 1}
    person = labels_Thw.float().mean().item()
    assert 0.3 < person < 0.6  # the man fills about 43% of carphone
    # he sits in the middle and the top corners are car background
    assert labels_Thw[:, 100:, 60:120].float().mean() > 0.9
    assert labels_Thw[:, :20, :20].float().mean() < 0.1 and labels_Thw[:, :20, -20:].float().mean() < 0.1
    assert build_extractor("segmentation").extract(torch.full((3, 2, 144, 176), 0.5)).sum() == 0


def test_selfie_at_a_lower_resolution_keeps_the_person_fraction(carphone_CThw: torch.Tensor) -> None:
    full = build_extractor("segmentation").extract(carphone_CThw).float().mean()
    small_Thw = build_extractor("segmentation", size=[36, 44], selfie_model="landscape").extract(carphone_CThw)
    assert small_Thw.shape == (3, 36, 44)
    assert abs(small_Thw.float().mean() - full) < 0.05


def test_a_transformers_model_from_a_folder_gives_its_argmax_at_the_frame_size(
    tiny_segformer: Path, carphone_CThw: torch.Tensor
) -> None:
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    extractor = build_extractor("segmentation", source="transformers", model_path=str(tiny_segformer))
    settings = json.loads(json.dumps(extractor.settings()))
    assert settings["classes"] == LABELS and settings["model_path"] == str(tiny_segformer)
    labels_Thw = extractor.extract(carphone_CThw)
    assert labels_Thw.dtype == torch.uint8 and labels_Thw.shape == (3, 144, 176)
    assert int(labels_Thw.max()) < LABELS and len(labels_Thw.unique()) > 1  # a random model still varies
    # the same labels through transformers' own pipeline: processor, model, post-processing
    processor = AutoImageProcessor.from_pretrained(tiny_segformer)
    model = AutoModelForSemanticSegmentation.from_pretrained(tiny_segformer).eval()
    frames = list(tensor_to_frames(carphone_CThw))
    with torch.no_grad():
        outputs = model(**processor(images=frames, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(144, 176)] * len(frames))
    assert torch.equal(labels_Thw, torch.stack(expected).to(torch.uint8))
    # and at the extractor's own size
    small = build_extractor("segmentation", source="transformers", model_path=str(tiny_segformer), size=[18, 22])
    assert small.extract(carphone_CThw).shape == (3, 18, 22)


def test_wrong_settings_are_one_clear_error(tiny_segformer: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"the transformers source gives {LABELS}"):
        build_extractor("segmentation", source="transformers", model_path=str(tiny_segformer), classes=3)
    with pytest.raises(ValueError, match="not a transformers model folder"):
        build_extractor("segmentation", source="transformers", model_path=str(tmp_path))
    with pytest.raises(ValueError, match="model_path goes with"):
        build_extractor("segmentation", model_path=str(tiny_segformer))
    with pytest.raises(ValueError, match="source must be one of"):
        build_extractor("segmentation", source="ade20k")
