"""The caption coder (exact for any Unicode, smaller than zlib on real-length captions, damage is
a BitstreamError) and the caption extractor (the shard's caption, else a local captioner: a tiny
random one that the tests build and save)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gvc_train.coding.container import BitstreamError
from gvc_train.coding.controls.caption import MAX_CAPTION_BYTES, CaptionCoder
from gvc_train.coding.controls.registry import build_coder
from gvc_train.controls.registry import build_extractor
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames
from gvc_train.frames import frames_to_tensor

# Not in the coder's corpus (caption_corpus.py): what its figures are measured on.
HELD_OUT = [
    "A man in a dark jacket talks on a mobile phone while riding in the passenger seat of a car.",
    "A group of cyclists in colorful jerseys race down a street lined with spectators.",
    "A cartoon bunny stands in a sunny forest clearing and watches a butterfly.",
    "A woman walks her dog along a sandy beach as the waves roll in.",
    "Close-up of a chef slicing tomatoes on a wooden cutting board.",
    "The video shows a busy train station with people hurrying to catch their trains.",
    "Two children build a sandcastle near the water.",
    "A white car drives through a city at night, its headlights reflecting on the wet road.",
    "An orange cat jumps onto a kitchen counter and knocks over a cup.",
    "A hiker climbs a steep rocky path toward the top of a mountain.",
    "Aerial footage of green rice fields and a small river.",
    "A man gives a presentation in front of a large screen in a conference room.",
    "a man talking on a cell phone in a car",
    "a group of people riding bicycles on a road",
]
UNICODE = [
    "",
    "x",
    "Ein Mann fährt Fahrrad auf einer Straße.",
    "一个男人在车里打电话。",
    "🚲🚲🚲 bikes! \u200d\u0301 tab\tnew\nline \x00 nul",
    "Ünïcødé — “quotes” and 𝔪𝔞𝔱𝔥",
]


@pytest.mark.parametrize("caption", HELD_OUT[:3] + UNICODE)
def test_round_trip_is_exact(caption: str) -> None:
    coder = build_coder("caption")
    assert isinstance(coder, CaptionCoder) and coder.settings() == {}
    assert coder.decode(coder.encode(caption)) == caption


def test_a_third_of_raw_and_of_zlib_on_held_out_captions() -> None:
    """Measured: ~21 bytes a caption against ~66 raw, ~66 zlib, ~29 raw deflate with the
    corpus as preset dictionary. Never more than raw + 1 byte whatever the text."""
    coder = CaptionCoder()
    coded = [len(coder.encode(c)) for c in HELD_OUT]
    raw = [len(c.encode()) for c in HELD_OUT]
    zipped = [len(zlib.compress(c.encode(), 9)) for c in HELD_OUT]
    assert sum(coded) < 0.4 * min(sum(raw), sum(zipped))
    assert all(len(coder.encode(c)) <= len(c.encode()) + 1 for c in UNICODE + HELD_OUT)


def test_the_model_is_frozen() -> None:
    """Mode 1's bytes never change: a decoder of any later version reads them. A new corpus or
    model is a new mode, not an edit (caption_corpus.py)."""
    assert CaptionCoder().encode(HELD_OUT[0]).hex() == "4ab72484286b627d9cdf700ac6268962dfaf5c3318"


def test_what_cannot_be_a_caption_is_a_value_error() -> None:
    coder = CaptionCoder()
    with pytest.raises(ValueError, match="str"):
        coder.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="UTF-8"):
        coder.encode("lone \ud800 surrogate")
    with pytest.raises(ValueError, match="at most"):
        coder.encode("a" * (MAX_CAPTION_BYTES + 1))


def test_damage_decodes_or_is_a_bitstream_error() -> None:
    coder = CaptionCoder()
    rng = np.random.default_rng(0)
    damaged: list[bytes] = [b"", b"\xf0", b"\x20" + bytes(8)]
    for caption in (HELD_OUT[0], UNICODE[3]):  # the model's mode and the raw mode
        data = coder.encode(caption)
        damaged += [data[:n] for n in range(len(data))]
        for _ in range(30):
            flipped = bytearray(data)
            flipped[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
            damaged.append(bytes(flipped))
    damaged += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8)) for n in rng.integers(1, 40, 30)]
    errors = 0
    for payload in damaged:
        try:
            assert isinstance(coder.decode(payload), str)
        except BitstreamError:
            errors += 1
    assert errors >= 0.9 * len(damaged)  # measured: all of them in the model mode, 97% in the raw one


# ---- the extractor --------------------------------------------------------------------------

TINY_WORDS = "a man woman car phone talking in the bike riding road on street people".split()


def save_tiny_captioner(folder: Path) -> Path:
    """A random ViT + GPT-2 VisionEncoderDecoderModel (32 x 32 input, width 16, one layer each),
    its word-level tokenizer and its image processor, saved as a checkpoint folder would be."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, PreTrainedTokenizerFast, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    from transformers import ViTConfig, ViTImageProcessor

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *TINY_WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    special = dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    encoder = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8)
    decoder = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    model.generation_config.suppress_tokens = [0, 1, 2, 3]  # random weights: words, not an empty caption
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tiny_captioner(tmp_path_factory.mktemp("tiny_captioner")))


def _clip(video: str, frames: int = 5) -> torch.Tensor:
    return frames_to_tensor(read_frames(sample_video(video), count=frames))[0]


def test_the_shards_caption_wins_and_needs_no_model() -> None:
    extractor = build_extractor("caption", model_path="/no/such/folder")  # never loaded
    clip = _clip("carphone_pristine.mp4", 3)
    assert extractor.extract(clip, caption="A man talks on the phone in a car.") == "A man talks on the phone in a car."
    with pytest.raises(ValueError, match="config.json missing"):
        extractor.extract(clip)  # no caption: now it needs the folder


@pytest.mark.parametrize("caption", [None, "", "  "])
def test_no_caption_and_no_captioner_is_one_clear_error(caption: str | None) -> None:
    with pytest.raises(ValueError, match="no caption and no captioner") as error:
        build_extractor("caption").extract(_clip("bikes.mp4", 1), caption=caption)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("video", ["carphone_pristine.mp4", "bikes.mp4"])
def test_a_local_captioner_captions_the_middle_frame_greedily(video: str, tiny_captioner: str) -> None:
    extractor = build_extractor("caption", model_path=tiny_captioner, max_new_tokens=6)
    assert json.loads(json.dumps(extractor.settings())) == {"model_path": tiny_captioner, "max_new_tokens": 6, "device": "cpu"}
    clip = _clip(video)
    caption = extractor.extract(clip)
    assert isinstance(caption, str) and caption
    assert set(caption.split()) <= set(TINY_WORDS) and len(caption.split()) <= 6  # its vocabulary, its budget
    other = clip.clone()
    other[:, [0, 1, 3, 4]] = torch.rand_like(other[:, [0, 1, 3, 4]])  # only the middle frame (2 of 5) is seen
    assert extractor.extract(other) == caption  # greedy: the same frame, the same caption
    assert CaptionCoder().decode(CaptionCoder().encode(caption)) == caption


def test_a_folder_that_is_not_a_captioner_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load the captioner") as error:
        build_extractor("caption", model_path=str(tmp_path)).extract(_clip("bikes.mp4", 1))
    assert "\n" not in str(error.value)
