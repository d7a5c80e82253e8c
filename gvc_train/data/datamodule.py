"""``VideoDataModule``: WebDataset clip shards -> batches of ``B x 3 x T x H x W`` float video.

A :class:`~gvc_train.data.shard_datamodule.ShardDataModule` (resampled shards or the explicit
rank/worker split, ``samples_per_epoch``, exact resume, skip counting, the equal epoch length on
every rank) whose per-sample step, :class:`VideoSampleStep`, decodes the losslessly coded
frames and cuts a T-frame window and a crop: random in training, the first window and the
centre crop for validation and test.

A batch is a dict::

    video    float32 B x 3 x T x H x W, RGB in [0, 1]   (the contract)
    key      list[str]    the sample keys ("{source}-{first_frame:06d}")
    meta     list[dict]   ClipMeta fields + window_start, frame_stride, crop_top, crop_left,
                          flipped, shard
    caption  list[str]    "" where the sample has none
    controls dict[str, ...] only with ``controls=[...]``: each requested control of the window,
                          decoded from the shard (layouts: :mod:`gvc_train.data.control_batch`:
                          luma/edges/segmentation B x T x h x w, flow B x (T-1) x 2 x h x w,
                          pose a list of B lists of T tensors P_t x J x 3, caption B str)
    skipped  dict[str, int]  skips in this batch's worker since its previous batch (already
                          added to ``skip_stats()``: do not add them again)
    worker   int          the DataLoader worker that made it
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, ClassVar

import numpy as np
import torch

from gvc_train.data.clip_codec import decode_clip
from gvc_train.data.control_batch import check_request, collate_controls, cut_controls, decode_controls
from gvc_train.data.pipeline import Sample, SampleStep, check_fits, make_sample, members, parse_meta
from gvc_train.data.sample_format import FRAMES_PREFIX, ClipMeta, frames_field
from gvc_train.data.shard_datamodule import ShardDataModule, ShardSpec, SkipStatsLogger, shared_args
from gvc_train.data.skip_stats import SkipSample
from gvc_train.data.transforms import ClipSampler, as_hw, to_video_batch

__all__ = ["ShardSpec", "SkipStatsLogger", "VideoDataModule", "VideoSampleStep"]  # SkipStatsLogger: recipes name it here


def _checked_meta(raw: bytes) -> ClipMeta:
    meta = ClipMeta.from_json(raw)
    for name in ("first_frame", "num_frames", "width", "height"):
        value = getattr(meta, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}={value!r} is not a non-negative integer")
    if not isinstance(meta.fps, (int, float)) or isinstance(meta.fps, bool):
        raise ValueError(f"fps={meta.fps!r} is not a number")
    return meta


@dataclasses.dataclass(frozen=True)
class VideoSampleStep(SampleStep):
    """A frame-shard sample -> a ``3 x T x h x w`` uint8 window chosen by ``sampler``.

    Length and size are checked from the metadata before the frames are decoded, so a clip that
    cannot be used costs no decode. ``controls``: the stored controls to decode too, cut to the
    same frames (:mod:`gvc_train.data.control_batch`); they are decoded before the frames, so a
    sample whose control is missing or damaged costs no frame decode either.
    """

    sampler: ClipSampler
    controls: tuple[str, ...] = ()
    batch_field: ClassVar[str] = "video"
    settings: ClassVar[str] = "clip_frames/frame_stride/crop_size"

    def decode(self, sample: dict[str, Any], rng: random.Random | None) -> Sample:
        sampler = self.sampler
        meta = parse_meta(sample, _checked_meta)
        field = frames_field(sample)
        if field is None:
            raise SkipSample("missing_frames", f"members {members(sample)}")
        check_fits(meta.num_frames, meta.height, meta.width, sampler.span, sampler.crop_size)
        controls = decode_controls(sample, self.controls, meta.num_frames)
        frames = decode_clip(field[len(FRAMES_PREFIX) :], sample[field])
        if frames.shape[:3] != (meta.num_frames, meta.height, meta.width):
            raise SkipSample("bad_meta", f"frames {frames.shape} disagree with {meta}")
        window, win = sampler(frames, rng)
        decoded = make_sample(
            sample, window, meta, window_start=win.start, frame_stride=sampler.frame_stride,
            crop_top=win.top, crop_left=win.left, flipped=win.flipped,
        )  # fmt: skip
        decoded.controls = cut_controls(controls, win.start, sampler.clip_frames, sampler.frame_stride)
        return decoded

    def stack(self, windows: list[np.ndarray]) -> torch.Tensor:
        """The batch contract: ``B x 3 x T x H x W`` float32 in [0, 1]."""
        return to_video_batch(windows)

    def collate(self, samples: list[Sample], skipped: dict[str, int], worker: int) -> dict[str, Any]:
        batch = super().collate(samples, skipped, worker)
        if self.controls:
            batch["controls"] = collate_controls([s.controls for s in samples])
        return batch


class VideoDataModule(ShardDataModule):
    """Clips from WebDataset shards written by ``gvc-shard``.

    Args:
        clip_frames: T, frames per clip. Must be ``1 + k * latent_time_stride``.
        frame_stride: take every n-th frame of the source clip.
        crop_size: ``int``, ``(height, width)`` or None for the full frame (then all clips of
            a batch must share one size).
        flip: random horizontal flips in training.
        controls: stored controls to decode into ``batch["controls"]`` (names of
            ``gvc-shard --controls``; layouts in :mod:`gvc_train.data.control_batch`), cut to the
            same frames as the video. Controls are whole-frame: with any, set ``crop_size=None``
            and ``flip=False`` (refused otherwise); flow needs ``frame_stride=1``. A sample whose
            requested control is missing or damaged is skipped and counted
            (``missing_control``, ``control_error``).
        latent_time_stride: the tokenizer's causal temporal stride that T must fit; None
            allows any ``T >= 1`` (leaving the check to the model).
        The others (shards, batch sizes, workers, epoch length, seed, ranks) as
        :class:`~gvc_train.data.shard_datamodule.ShardDataModule`.
    """

    def __init__(
        self,
        train_shards: ShardSpec = None,
        val_shards: ShardSpec = None,
        test_shards: ShardSpec = None,
        clip_frames: int = 17,
        frame_stride: int = 1,
        crop_size: int | tuple[int, int] | None = 128,
        batch_size: int = 4,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 64,
        resampled: bool = True,
        flip: bool = True,
        controls: list[str] | None = None,
        seed: int = 0,
        val_batch_size: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        latent_time_stride: int | None = 4,
        max_consecutive_skips: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if clip_frames < 1:
            raise ValueError(f"clip_frames must be >= 1, got {clip_frames}")
        if latent_time_stride is not None and (clip_frames - 1) % latent_time_stride != 0:
            raise ValueError(
                f"clip_frames={clip_frames} must be 1 + {latent_time_stride}k for the causal tokenizer "
                f"(e.g. {clip_frames - (clip_frames - 1) % latent_time_stride}); "
                "pass latent_time_stride=None to allow any T"
            )
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        requested = check_request(controls or (), as_hw(crop_size), flip, frame_stride)
        super().__init__(**shared_args(locals()))
        self.clip_frames = clip_frames
        self.frame_stride = frame_stride
        self.crop_size = as_hw(crop_size)
        self.flip = flip
        self.controls = requested

    def sample_step(self, train: bool) -> VideoSampleStep:
        sampler = ClipSampler(self.clip_frames, self.frame_stride, self.crop_size, flip=self.flip and train)
        return VideoSampleStep(sampler, self.controls)
