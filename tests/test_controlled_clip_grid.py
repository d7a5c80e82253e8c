"""The controlled codec and frame sizes whose latent grid does not split into the transformer's
patches (a 40x32 clip is a 5x4 latent grid at stride 8: odd width under a 2x2 patch).

Before the check the encoder wrote such a stream without complaint (when not asked for its
reconstruction) and the decoder showed the first keyframe, then failed with the transformer's
ValueError at the first clip: now both refuse in one line before any output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gvc_train.codecs.base import open_codec
from gvc_train.coding.container import BitstreamError

from controlled_codec_fixtures import TRANSFORMER, write_codec_folder, write_moving_square_clip


def test_a_latent_grid_off_the_patch_is_refused_before_any_output(tmp_path: Path) -> None:
    codec = open_codec(write_codec_folder(tmp_path / "codec", "controlled", transformer={**TRANSFORMER, "patch_size": [1, 2, 2]}))
    clip = write_moving_square_clip(tmp_path / "clip", frames=5)
    stream = tmp_path / "clip.gvc"
    with pytest.raises(BitstreamError, match=r"5x4 latent grid, not a multiple of the transformer's 2x2 patch") as e:
        codec.encode(clip, stream, 0)
    assert "\n" not in str(e.value)
    assert not stream.exists() and list(tmp_path.glob("clip.gvc*")) == []
