"""The streaming-tokenizer contract: what a codec needs from the tokenizer it is paired with.

A codec codes a video of any length chunk by chunk, so its tokenizer must encode and decode
through a carried state (bounded memory, the same latents as one whole-video pass), and say its
geometry. :class:`StreamingTokenizer` declares exactly the members the codecs and their training
stages call; :func:`require_streaming_tokenizer` checks a module against it once, at start-up
(a training stage's constructor, ``gvc-export``, a codec folder's loader), so that a tokenizer
without them is refused in one line there, not with an AttributeError in the middle of
``gvc encode``.

``CausalVAE`` implements it. ``DiffusersVAE`` does not: the wrapped diffusers model caches its
chunks inside one ``encode``/``decode`` call and cannot carry a state from one call to the next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from gvc_train.models.tokenizer.distributions import DiagonalGaussian


@runtime_checkable
class StreamingTokenizer(Protocol):
    """A video tokenizer a codec can stream through.

    Video is ``B x 3 x T x H x W`` float32 in [0, 1]; the latent is
    ``B x latent_channels x t x H/spatial_stride x W/spatial_stride``, causal in time:
    ``T = 1 + temporal_stride * k`` frames give ``1 + k`` latent frames. A stream's state is an
    opaque object the tokenizer makes (``init_*_state``) and returns anew with each chunk; the
    caller only carries it.

    A class declares the contract by listing it last among its bases (after ``nn.Module``,
    whose ``__init__`` does not chain on to a Protocol's), e.g.
    ``class CausalVAE(VideoVAEBase, nn.Module, StreamingTokenizer)``.
    """

    @property
    def spatial_stride(self) -> int: ...

    @property
    def temporal_stride(self) -> int: ...

    @property
    def latent_channels(self) -> int: ...

    def encode(self, x_BCThw: torch.Tensor, chunk_frames: int | None = None) -> DiagonalGaussian:
        """Whole video -> posterior over its latent."""
        ...

    def decode(self, z_BCthw: torch.Tensor, chunk_latents: int | None = None) -> torch.Tensor:
        """Whole latent -> video (not clamped)."""
        ...

    def init_encoder_state(self) -> Any:
        """The state before a stream's first frame."""
        ...

    def init_decoder_state(self) -> Any:
        """The state before a stream's first latent frame."""
        ...

    def encode_chunk(self, x_BCThw: torch.Tensor, state: Any) -> tuple[DiagonalGaussian, Any]:
        """The next frames of a stream (first chunk ``1 + temporal_stride * m`` frames, later
        chunks multiples of ``temporal_stride``) -> their posterior and the next state."""
        ...

    def decode_chunk(self, z_BCthw: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """The next latent frames of a stream -> their frames and the next state."""
        ...


STREAMING_MEMBERS: tuple[str, ...] = (
    "spatial_stride", "temporal_stride", "latent_channels",
    "encode", "decode", "init_encoder_state", "init_decoder_state", "encode_chunk", "decode_chunk",
)  # fmt: skip
_PROPERTIES = ("spatial_stride", "temporal_stride", "latent_channels")


class NotAStreamingTokenizer(TypeError, ValueError):
    """A module paired with a codec lacks part of :class:`StreamingTokenizer`.

    Both a TypeError (the wrong kind of module) and a ValueError (a bad argument: what the
    training and export CLIs report in one line)."""


def missing_streaming_members(module: object) -> list[str]:
    """The members of :class:`StreamingTokenizer` that ``module`` lacks, in declaration order.

    A stride or channel count is missing unless it is a positive int; a method, when it is not
    callable or is only the protocol's own stub (a class that lists the protocol among its bases
    but never implements the method)."""
    missing = []
    for name in STREAMING_MEMBERS:
        try:
            value = getattr(module, name)
        except AttributeError:  # absent, or a property that failed
            missing.append(name)
            continue
        if name in _PROPERTIES:
            present = isinstance(value, int) and not isinstance(value, bool) and value > 0
        else:
            present = callable(value) and getattr(type(module), name, None) is not getattr(StreamingTokenizer, name)
        if not present:
            missing.append(name)
    return missing


def require_streaming_tokenizer(module: object, who: str) -> None:
    """Raise :class:`NotAStreamingTokenizer` (one line, naming what is missing) unless
    ``module`` implements :class:`StreamingTokenizer`. ``who`` starts the message: the stage,
    folder or command that needs the tokenizer (e.g. ``"the latent-codec stage"``)."""
    missing = missing_streaming_members(module)
    if missing:
        raise NotAStreamingTokenizer(
            f"{who}: the tokenizer {type(module).__name__} is not a streaming tokenizer (it lacks "
            f"{', '.join(missing)}); a codec needs chunked encode/decode, see "
            "gvc_train.models.tokenizer.streaming.StreamingTokenizer (CausalVAE implements it)"
        )
