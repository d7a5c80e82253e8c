"""Clip transforms: temporal window, spatial crop, flip, and the uint8 -> float tensor step.

Everything works on the decoded clip as a ``T x H x W x 3`` uint8 numpy array and only takes
views (slicing) until the very end, so the one copy made is of the cropped window and the
float conversion touches only the pixels that go into the batch.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch


class ClipTooShort(ValueError):
    """The clip has fewer frames than the temporal window needs."""


class ClipTooSmall(ValueError):
    """The clip's frames are smaller than the crop."""


def crop_box(height: int, width: int, crop: tuple[int, int] | None, stride: int = 1) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centre crop of a ``height x width`` frame: ``crop``, or without
    one the largest multiple of ``stride`` that fits. The shard-time crop of frame and latent
    shards (``gvc-shard --crop``); a frame smaller than the crop is a ClipTooSmall."""
    ch, cw = crop if crop is not None else (height // stride * stride, width // stride * stride)
    if ch < stride or cw < stride:
        raise ClipTooSmall(f"frames of {height}x{width} are smaller than the tokenizer's stride {stride}")
    if ch > height or cw > width:
        raise ClipTooSmall(f"frames of {height}x{width} are smaller than the crop {ch}x{cw}")
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def window_span(clip_frames: int, frame_stride: int) -> int:
    """Source frames covered by ``clip_frames`` frames taken every ``frame_stride`` frames.

    The last frame is at offset ``(T - 1) * stride``, so the span is that plus one (not T*stride:
    a clip of exactly ``(T - 1) * stride + 1`` frames is long enough).
    """
    return (clip_frames - 1) * frame_stride + 1


def as_hw(size: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``128`` -> ``(128, 128)``; ``(h, w)`` stays; ``None`` means the full frame."""
    if size is None:
        return None
    if isinstance(size, int):
        h = w = size
    else:
        if len(size) != 2:
            raise ValueError(f"crop_size must be an int or (height, width), got {size!r}")
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"crop_size must be positive, got {size!r}")
    return h, w


@dataclasses.dataclass(frozen=True)
class Window:
    """Where the sampled clip came from inside the decoded clip (reported in the batch meta)."""

    start: int  # index of the first sampled frame inside the decoded clip
    top: int
    left: int
    height: int
    width: int
    flipped: bool


@dataclasses.dataclass(frozen=True)
class ClipSampler:
    """Picks T frames at a stride, a crop and a flip; random when ``rng`` is given, else fixed.

    Random (training): a start uniform over every valid position, a crop uniform over the frame,
    the same crop for every frame of the clip, a horizontal flip with probability one half.
    Fixed (validation/test): the first window, the centre crop, no flip, so two passes over the
    same shards give equal tensors.
    """

    clip_frames: int
    frame_stride: int = 1
    crop_size: tuple[int, int] | None = None  # None: full frame
    flip: bool = False

    def __post_init__(self) -> None:
        if self.clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {self.clip_frames}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")

    @property
    def span(self) -> int:
        return window_span(self.clip_frames, self.frame_stride)

    def choose(self, num_frames: int, height: int, width: int, rng: random.Random | None) -> Window:
        if num_frames < self.span:
            raise ClipTooShort(
                f"clip has {num_frames} frames, {self.clip_frames} frames at stride "
                f"{self.frame_stride} need {self.span}"
            )
        ch, cw = self.crop_size if self.crop_size is not None else (height, width)
        if height < ch or width < cw:
            raise ClipTooSmall(f"frames are {height}x{width}, smaller than the {ch}x{cw} crop")
        if rng is None:
            return Window(0, (height - ch) // 2, (width - cw) // 2, ch, cw, False)
        return Window(
            start=rng.randint(0, num_frames - self.span),
            top=rng.randint(0, height - ch),
            left=rng.randint(0, width - cw),
            height=ch,
            width=cw,
            flipped=self.flip and rng.random() < 0.5,
        )

    def __call__(self, frames: np.ndarray, rng: random.Random | None) -> tuple[np.ndarray, Window]:
        """``T' x H x W x 3`` uint8 -> (contiguous ``3 x T x h x w`` uint8 window, the window used).

        Any strides are fine: ``decode_clip`` returns a channel-last *view* of a planar buffer,
        so taking the window channel-first reads whole rows and the one copy made here is of
        the sampled, cropped pixels only (the decoded clip can be freed right after). The
        result stays uint8; :func:`to_video_batch` converts it straight into the batch tensor.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected T x H x W x 3 uint8 frames, got {frames.dtype} {frames.shape}")
        win = self.choose(frames.shape[0], frames.shape[1], frames.shape[2], rng)
        view = frames[
            win.start : win.start + self.span : self.frame_stride,
            win.top : win.top + win.height,
            win.left : win.left + win.width,
        ]
        if win.flipped:
            view = view[:, :, ::-1]
        return np.ascontiguousarray(view.transpose(3, 0, 1, 2)), win


def to_video_batch(windows: list[np.ndarray]) -> torch.Tensor:
    """Equal-shape ``3 x T x H x W`` uint8 windows -> ``B x 3 x T x H x W`` float32 in [0, 1].

    Each window is converted by one division written straight into its slot of the batch:
    no per-sample float tensor, no ``torch.stack``. ``x / 255`` in float32 is correctly
    rounded, so 255 maps to exactly 1.0 and the values equal ``torch``'s ``x.float() / 255``.
    """
    if not windows:
        raise ValueError("cannot make a batch of no clips")
    out = empty_float_batch((len(windows), *windows[0].shape))
    dst = out.numpy()
    for i, win in enumerate(windows):
        np.divide(win, np.float32(255.0), out=dst[i], dtype=np.float32)
    return out


def empty_float_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised float32 CPU tensor, allocated by numpy.

    numpy asks for transparent huge pages on big arrays: a fresh 17 x 272 x 640 float clip then
    costs a few ms of page faults instead of ~20 ms with torch's allocator. In a DataLoader
    worker this also beat allocating the batch in shared memory up front (as
    ``default_collate`` does) by 10-15 % (benchmarks/bench_data.py, DataLoader column): writing
    the division into huge pages and letting the pickler copy to shared memory is cheaper.
    """
    return torch.from_numpy(np.empty(shape, dtype=np.float32))


def to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """One ``T x H x W x 3`` uint8 clip (any strides) -> ``3 x T x H x W`` float32 in [0, 1]."""
    return to_video_batch([np.ascontiguousarray(frames.transpose(3, 0, 1, 2))])[0]
