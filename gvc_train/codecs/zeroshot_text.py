"""The zero-shot family on a controlled transformer trained with captions (its text encoder in the folder)."""

from __future__ import annotations

from gvc_train.codecs.zeroshot import ZeroShotCodec


class ZeroShotTextCodec(ZeroShotCodec):
    """:class:`ZeroShotCodec` whose generator takes a caption (``encode(caption=...)`` or the sidecar text file)."""

    family = "zeroshot_text"
