"""A stream written by an earlier gvc_train must keep decoding to the same latents.

``tests/fixtures/latent_tiny_carphone13_q2.gvc`` was made with ``checkpoints/latent_tiny`` at
stream version 2 (its JSON beside it says how). Restructuring the codecs (issue 12) or touching
the fixed-point decoder must not change a single entropy-decoded symbol, scale index or latent
(exact on every machine), nor the pixels beyond the tokenizer decoder's float noise.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from gvc_train.codecs.latent import LatentCodec
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.video_io import read_frames

from conftest import REPO, numpy_psnr

FIXTURE = REPO / "tests" / "fixtures" / "latent_tiny_carphone13_q2.json"


def test_an_old_stream_decodes_to_the_same_latents() -> None:
    meta = json.loads(FIXTURE.read_text())
    codec = LatentCodec(REPO / meta["codec"])
    digest, frames = hashlib.sha256(), []

    def on_latent(symbols, indexes, latent) -> None:  # noqa: ANN001 - integer tensors
        for t in (symbols, indexes, latent):
            digest.update(np.ascontiguousarray(t.cpu().numpy()).tobytes())

    report = codec.decode(FIXTURE.with_name(meta["stream"]), frames.append, on_latent=on_latent)
    assert (report.frames, report.quality, report.file_bytes) == (meta["frames"], meta["quality"], meta["bytes"])
    assert digest.hexdigest() == meta["latent_sha256"], "the decoder's latents changed: old streams no longer decode the same"
    source = read_frames(sample_video(meta["source"]), count=meta["frames"])
    assert numpy_psnr(np.stack(frames), source) == pytest.approx(meta["psnr"], abs=0.01)
