"""TextEncoder: a transformers text encoder and its tokenizer from a local folder (tiny random
ones the tests build and save), hidden states and mask, and an export that needs no folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gvc_train.components import load_component, save_component
from gvc_train.models.controlled.text_encoder import TextEncoder

WORDS = "a man woman car phone talking in the bike riding road on street people".split()


def tiny_tokenizer_json() -> str:
    """A word-level tokenizer.json: <s> words </s>, <pad> = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return tokenizer.to_str()


def save_tiny_text_encoder(folder: Path, kind: str) -> Path:
    """A random one-layer CLIP text model or T5 encoder (width 16) and its tokenizer, saved as
    ``save_pretrained`` writes them."""
    from tokenizers import Tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.manual_seed(0)
    vocab = len(WORDS) + 4
    if kind == "clip":
        model = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    else:
        model = T5EncoderModel(T5Config(vocab_size=vocab, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=2))
    model.save_pretrained(folder)
    special = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()), **special).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["clip", "t5"])
def pretrained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return request.param, str(save_tiny_text_encoder(tmp_path_factory.mktemp(f"tiny_{request.param}"), request.param))


TEXTS = ["a man talking on the phone in a car", "people riding a bike"]


def test_hidden_states_and_mask_from_a_local_folder(pretrained: tuple[str, str]) -> None:
    kind, folder = pretrained
    encoder = TextEncoder(pretrained_path=folder, max_length=12).eval()
    assert encoder.class_name == ("CLIPTextModel" if kind == "clip" else "T5EncoderModel")
    with torch.no_grad():
        hidden_BLC, mask_BL = encoder(TEXTS)
    # <s> + 9 words + </s>: 11 tokens; the second text has 4 words + 2 and is padded
    assert hidden_BLC.shape == (2, 11, 16) and hidden_BLC.dtype == torch.float32 and torch.isfinite(hidden_BLC).all()
    assert mask_BL.dtype == torch.bool and mask_BL.sum(1).tolist() == [11, 6]
    with torch.no_grad():
        alone_BLC, _ = encoder(TEXTS[1:])
    assert torch.allclose(alone_BLC[0], hidden_BLC[1, :6], atol=1e-5)  # padding changes no real token


def test_truncation_and_max_length_padding(pretrained: tuple[str, str]) -> None:
    _, folder = pretrained
    encoder = TextEncoder(pretrained_path=folder, max_length=8, padding="max_length")
    ids_BL, mask_BL = encoder.tokenize(TEXTS)
    assert ids_BL.shape == (2, 8) and mask_BL.sum(1).tolist() == [8, 6]
    assert ids_BL[0, -1] == 2  # truncated, the end token kept


def test_export_loads_without_the_folder_and_ties_t5_again(pretrained: tuple[str, str], tmp_path: Path) -> None:
    kind, folder = pretrained
    encoder = TextEncoder(pretrained_path=folder, max_length=12).eval()
    assert encoder.config["pretrained_path"] is None and encoder.config["tokenizer_bytes"] == encoder.tokenizer_json.numel() > 0
    save_component(encoder, tmp_path / "export", "text_encoder")
    loaded = load_component(tmp_path / "export", "text_encoder").eval()
    with torch.no_grad():
        for got, expected in zip(loaded(TEXTS), encoder(TEXTS)):
            assert torch.equal(got, expected)
    if kind == "t5":  # stored once, tied again
        assert loaded.model.shared.weight is loaded.model.encoder.embed_tokens.weight


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json missing"):
        TextEncoder(pretrained_path=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one"):
        TextEncoder()
    with pytest.raises(ValueError, match="not a transformers model class"):
        TextEncoder(config={"model_type": "bert"}, class_name="os")
