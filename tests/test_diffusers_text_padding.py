"""DiffusersControlledTransformer and text padding: Wan's cross-attention has no padding mask, so
zeroed padding beside real tokens changes the output; a training batch pads captions to its
longest and the codec encodes one caption unpadded, so the stage requires a text encoder that
pads to one fixed length."""

from __future__ import annotations

import pytest
import torch

from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
from gvc_train.models import CausalVAE, TextEncoder
from gvc_train.models.controlled.diffusers_transformer import DiffusersControlledTransformer

from component_cases import TINY_CLIP_TEXT
from progressive_fixtures import TOKENIZER
from test_diffusers_controlled_transformer import EXTRAS, TINY_WAN, _inputs


def _text_encoder(padding: str) -> TextEncoder:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "a", "car"])}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return TextEncoder(config=TINY_CLIP_TEXT, class_name="CLIPTextModel", tokenizer_text=tokenizer.to_str(), max_length=16, padding=padding)


def test_padding_beside_real_tokens_changes_wans_output() -> None:
    torch.manual_seed(1)
    model = DiffusersControlledTransformer(config=TINY_WAN, **EXTRAS).eval()
    inputs = {k: v[:1] if isinstance(v, torch.Tensor) else {n: c[:1] for n, c in v.items()} for k, v in _inputs().items()}
    unpadded = {**inputs, "text_BLE": inputs["text_BLE"][:, :3], "text_mask_BL": inputs["text_mask_BL"][:, :3]}  # 3 real tokens
    with torch.no_grad():
        assert not torch.allclose(model(**unpadded), model(**inputs), atol=1e-4)  # the same 3 tokens and 2 of padding


def test_the_stage_refuses_a_text_encoder_that_pads_to_the_batch() -> None:
    def stage(padding: str) -> ControlledDiffusionModule:
        transformer = DiffusersControlledTransformer(config=TINY_WAN, **EXTRAS)
        return ControlledDiffusionModule(transformer, tokenizer=CausalVAE(**TOKENIZER), text_encoder=_text_encoder(padding))

    with pytest.raises(ValueError, match=r"attends to text padding .* padding: max_length .* not 'longest'"):
        stage("longest")
    assert stage("max_length").text_encoder.padding == "max_length"
