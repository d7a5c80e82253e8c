"""The zero-shot codec on tiny random diffusers Wan pipelines (t2v, i2v, flf2v), built here: each
codes to a file and back with the decoder's frames equal to the encoder's, at 1 and 2 threads,
and a pipeline folder whose files changed is refused when the codec opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gvc_train.codecs.base import describe_stream, open_codec
from gvc_train.codecs.codec_folder import CodecFolderError
from gvc_train.codecs.zeroshot_folder import make_zeroshot_codec
from gvc_train.data.sample_videos import sample_video
from gvc_train.models.codebook.tiny_wan import save_tiny_wan_pipeline

SETTINGS = {"codebook_size": 32, "atoms": [1, 2], "num_steps": 3, "ode_tail": 1, "gop_frames": 5}


@pytest.fixture(scope="module")
def codecs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zeroshot_wan")
    out = {}
    for kind in ("t2v", "i2v", "flf2v"):
        pipeline = save_tiny_wan_pipeline(root / f"{kind}_pipeline", kind, seed=1)
        out[kind] = root / f"{kind}_codec"
        make_zeroshot_codec(out[kind], wan=pipeline, keyframes="checkpoints/latent_tiny_v1", settings={**SETTINGS, "mode": kind}, wan_guidance_scale=2.0)
    return out


@pytest.mark.parametrize("kind", ["t2v", "i2v", "flf2v"])
def test_wan_codec_decodes_to_the_encoders_frames(codecs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    codec = open_codec(codecs[kind])
    assert codec.family == "zeroshot_wan" and codec.modes == [kind]
    stream = tmp_path / "s.gvc"
    recon: list[np.ndarray] = []
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        report = codec.encode(sample_video("carphone_pristine.mp4"), stream, 1, max_frames=9, on_recon=recon.append, caption="a man on the phone")
        torch.set_num_threads(1)
        decoded: list[np.ndarray] = []
        codec.decode(stream, decoded.append)
    finally:
        torch.set_num_threads(previous)
    assert report.frames == len(recon) == len(decoded) == 9 and recon[0].shape == (144, 176, 3)
    assert all(np.array_equal(a, b) for a, b in zip(recon, decoded))
    rows = describe_stream(stream)["chunks"]
    assert [r["caption"] for r in rows if r["type"] == "TEXT"] == ["a man on the phone"]
    assert [r["keyframe"] for r in rows if r["type"] == "FRAMES"] == {"t2v": [], "i2v": [0], "flf2v": [0, 4, 8]}[kind]


def test_a_mode_the_pipeline_cannot_do_is_refused(codecs: dict[str, Path], tmp_path: Path) -> None:
    codec = open_codec(codecs["t2v"])
    with pytest.raises(ValueError, match="codes \\['t2v'\\]"):
        codec.encode(sample_video("carphone_pristine.mp4"), tmp_path / "x.gvc", 0, max_frames=5, mode="i2v")


def test_a_changed_pipeline_folder_is_refused(codecs: dict[str, Path], tmp_path: Path) -> None:
    import json
    import shutil

    reference = json.loads((codecs["t2v"] / "pipeline.json").read_text())["config"]
    weights = next(Path(reference["path"], "transformer").glob("*.safetensors"))
    backup = tmp_path / "backup"
    shutil.copyfile(weights, backup)
    try:
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
        with pytest.raises(CodecFolderError, match="not the one this codec was made with"):
            open_codec(codecs["t2v"])
    finally:
        shutil.copyfile(backup, weights)
