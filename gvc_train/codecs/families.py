"""The family table: every codec family gvc_train can code with, one line each.

This is the one place outside a family's own files that names it. A line gives the family's
name (``codec.json``'s ``family``), the byte that identifies its streams in the container
header, the components its exported folder holds, its inference class (a
:class:`gvc_train.codecs.base.Codec`) and its stream-layout function for ``gvc info``. Both are
given as ``"module:attribute"`` strings and imported only when used, so reading this table (``gvc
info``, finding a codec by fingerprint) costs no torch import. Standard library only.

A plugin or a test adds a family with :func:`register_family`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any


@dataclasses.dataclass(frozen=True)
class FamilyEntry:
    name: str  # codec.json's "family"
    stream_id: int  # the container header's family byte (1..255), never reused
    components: tuple[str, ...]  # the component files of an exported folder, in build order
    codec: str  # "module:Class" of its Codec subclass (imports torch)
    layout: str  # "module:function(header, chunks) -> rows" for gvc info (standard library only)

    def codec_class(self) -> Any:
        return _resolve(self.codec)

    def describe_chunks(self) -> Any:
        return _resolve(self.layout)


FAMILIES: dict[str, FamilyEntry] = {}


def register_family(entry: FamilyEntry) -> FamilyEntry:
    """Add a family; its name and stream id must be new (a stream id is never reused)."""
    if not 1 <= entry.stream_id <= 255:
        raise ValueError(f"family {entry.name!r}: stream id {entry.stream_id} is outside 1..255")
    for other in FAMILIES.values():
        if other.name != entry.name and other.stream_id == entry.stream_id:
            raise ValueError(f"family {entry.name!r}: stream id {entry.stream_id} is {other.name!r}'s")
    if entry.name in FAMILIES and FAMILIES[entry.name] != entry:
        raise ValueError(f"family {entry.name!r} is registered already")
    FAMILIES[entry.name] = entry
    return entry


def unregister_family(name: str) -> None:
    """Remove a family added by :func:`register_family` (tests)."""
    FAMILIES.pop(name, None)


def family_by_stream_id(stream_id: int) -> FamilyEntry | None:
    return next((entry for entry in FAMILIES.values() if entry.stream_id == stream_id), None)


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


# fmt: off
# name, stream id, components, inference class, stream layout.
register_family(FamilyEntry("latent", 1, ("tokenizer", "latent_codec"), "gvc_train.codecs.latent:LatentCodec", "gvc_train.codecs.latent_stream:describe_chunks"))
register_family(FamilyEntry("progressive", 2, ("tokenizer", "quantizer", "context_model"), "gvc_train.codecs.progressive:ProgressiveCodec", "gvc_train.codecs.progressive_stream:describe_chunks"))
# The controlled-generation family: one model (tokenizer + keyframe latent codec + controlled
# transformer + coding settings), with a text encoder when it was trained with captions.
register_family(FamilyEntry("controlled", 3, ("tokenizer", "latent_codec", "transformer", "coding"), "gvc_train.codecs.controlled:ControlledCodec", "gvc_train.codecs.controlled_stream:describe_chunks"))
register_family(FamilyEntry("controlled_text", 5, ("tokenizer", "latent_codec", "transformer", "coding", "text_encoder"), "gvc_train.codecs.controlled_text:ControlledTextCodec", "gvc_train.codecs.controlled_stream:describe_chunks"))
# The zero-shot family: a pretrained generator steered by seeded codebooks (no training), with a
# latent codec for the frames it sends as images: the project's controlled transformer (its
# folder's parts, with or without a text encoder) or a diffusers Wan pipeline in a local folder.
register_family(FamilyEntry("zeroshot", 4, ("tokenizer", "latent_codec", "transformer", "coding", "zeroshot"), "gvc_train.codecs.zeroshot:ZeroShotCodec", "gvc_train.codecs.zeroshot_stream:describe_chunks"))
register_family(FamilyEntry("zeroshot_text", 6, ("tokenizer", "latent_codec", "transformer", "coding", "text_encoder", "zeroshot"), "gvc_train.codecs.zeroshot_text:ZeroShotTextCodec", "gvc_train.codecs.zeroshot_stream:describe_chunks"))
register_family(FamilyEntry("zeroshot_wan", 7, ("tokenizer", "latent_codec", "pipeline", "zeroshot"), "gvc_train.codecs.zeroshot_wan:ZeroShotWanCodec", "gvc_train.codecs.zeroshot_stream:describe_chunks"))
# The learned pixel-domain peer: compressai's Scale-Space Flow, one component, its rANS strings per frame.
register_family(FamilyEntry("ssf", 8, ("ssf",), "gvc_train.codecs.ssf:SSFCodec", "gvc_train.codecs.ssf_stream:describe_chunks"))
# fmt: on
