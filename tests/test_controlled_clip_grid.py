"""The controlled codec and frame sizes whose latent grid at the tokenizer's stride does not split
into the transformer's patches (a 40x32 clip is a 5x4 latent grid at stride 8: odd width under a
2x2 patch; 1920x1080 is 240x135). Such frames are padded to multiples of stride x patch (edge
rows and columns repeated, as the tokenizer's stride padding is), keyframes and clips alike, and
cropped after decoding: the stream codes and decodes to the encoder's reconstruction. (They were
refused before, in one line.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gvc_train.codecs.base import open_codec
from gvc_train.codecs.controlled_clips import clip_multiple, padded_size

from controlled_codec_fixtures import TRANSFORMER, write_codec_folder, write_moving_square_clip


def test_a_latent_grid_off_the_patch_is_padded_to_whole_tokens_and_round_trips(tmp_path: Path) -> None:
    codec = open_codec(write_codec_folder(tmp_path / "codec", "controlled", transformer={**TRANSFORMER, "patch_size": [1, 2, 2]}))
    assert clip_multiple(codec.tokenizer, codec.transformer) == 16 and padded_size(40, 32, 16) == (48, 32)
    clip = write_moving_square_clip(tmp_path / "clip", frames=5)
    recon: list[np.ndarray] = []
    codec.encode(clip, tmp_path / "clip.gvc", 0, on_recon=recon.append)
    decoded: list[np.ndarray] = []
    codec.decode(tmp_path / "clip.gvc", decoded.append)
    assert len(decoded) == len(recon) == 5 and decoded[0].shape == (32, 40, 3)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, recon))
    assert codec.keyframe_coder(0, 40, 32).latent_hw == (4, 6)  # the keyframes sit on the clips' grid


def test_frame_sizes_already_on_whole_tokens_are_not_padded_further() -> None:
    # ceil(h / s) even is the same as padding to 2 s: streams of every size that coded before are unchanged
    for height in range(1, 200):
        if -(-height // 8) % 2 == 0:
            assert padded_size(8, height, 16)[1] == -(-height // 8) * 8
