"""Keyframes coded in full by an exported codec, each alone, and their real bits counted.

The keyframes of a controlled-generation stream (``gvc_train.controls.keyframes`` chooses
them) are coded with any codec of the family table, through the codec-family interface only
(:func:`gvc_train.codecs.base.open_codec`): each keyframe is a one-frame video, so it decodes on
its own (for a tokenizer family, the first latent frame depends on the first frame alone:
DESIGN.md's contract). ``encode`` reads a video file or a PNG folder, so each keyframe is
written as a one-PNG folder (lossless: the codec sees exactly these pixels) in a temporary
directory; the codec's behaviour is unchanged.

This lives in ``codecs/`` (not ``controls/``) because it opens codecs: the import graph runs
``codecs -> controls`` for the family that will use both, never back.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from gvc_train.codecs.base import Codec, open_codec


class CodedKeyframe(NamedTuple):
    """One keyframe coded alone: its bitstream (a whole one-frame stream of the codec, header
    and container included: ``len(stream)`` is its real size) and the decoder's frame
    (uint8 ``H x W x 3``, exactly what decoding ``stream`` gives)."""

    stream: bytes
    frame: np.ndarray

    @property
    def num_bytes(self) -> int:
        return len(self.stream)


def code_keyframes(
    codec_folder: str | os.PathLike | Codec, frames: np.ndarray, indexes: Sequence[int], rate_point: int
) -> list[CodedKeyframe]:
    """Code ``frames[i]`` for each ``i`` in ``indexes`` (``frames``: uint8 ``T x H x W x 3``) as a
    one-frame video with the codec exported in ``codec_folder`` (or an open :class:`Codec`) at
    ``rate_point``; one :class:`CodedKeyframe` per index, in the order given."""
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3):
        raise ValueError(f"frames must be uint8 T x H x W x 3, got {getattr(frames, 'dtype', type(frames))} {getattr(frames, 'shape', '')}")
    bad = [i for i in indexes if not 0 <= i < frames.shape[0]]
    if bad:
        raise ValueError(f"keyframe indexes {bad} are outside the video's {frames.shape[0]} frames")
    codec = codec_folder if isinstance(codec_folder, Codec) else open_codec(codec_folder)
    coded = []
    with tempfile.TemporaryDirectory(prefix="gvc_keyframes_") as tmp:
        source, stream = Path(tmp) / "frame", Path(tmp) / "keyframe.gvc"
        source.mkdir()
        for index in indexes:
            Image.fromarray(frames[index]).save(source / "frame_000001.png", compress_level=1)
            decoded: list[np.ndarray] = []
            codec.encode(source, stream, rate_point, max_frames=1, on_recon=decoded.append)
            if len(decoded) != 1:
                raise RuntimeError(f"the codec gave {len(decoded)} frames for a one-frame video")
            coded.append(CodedKeyframe(stream.read_bytes(), np.array(decoded[0], dtype=np.uint8)))
    return coded
