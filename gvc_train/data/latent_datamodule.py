"""``LatentDataModule``: latent shards (``gvc-shard --tokenizer``) -> batches of tokenizer latents.

A :class:`~gvc_train.data.shard_datamodule.ShardDataModule` (resampled shards or the explicit
rank/worker split, ``samples_per_epoch``, the shuffle buffer, exact resume, skip counting, the
equal epoch length on every rank), a sibling of
:class:`~gvc_train.data.datamodule.VideoDataModule`. Its per-sample step,
:class:`LatentSampleStep`, checks the float16 latent against its metadata and cuts a window of
``latent_frames`` latent frames and a ``crop_size`` crop in *latent* pixels from it (random in
training, the first window and the centre crop for validation and test); the batch is float32.

A batch is a dict::

    latent   float32 B x C x t x h x w     the tokenizer's posterior mean (the shards' float16)
    key      list[str]    the sample keys (the same as the frame shards' for the same clip)
    meta     list[dict]   LatentMeta fields (source, first_frame, num_frames, fps, width, height,
                          crop_*: the pixel crop encoded at shard time, latent_shape,
                          latent_crc32, tokenizer_fingerprint) + latent_window_start,
                          latent_crop_top, latent_crop_left, flipped, shard
    caption  list[str]    "" where the sample has none
    skipped  dict[str, int], worker int   as VideoDataModule's

**Tokenizer check.** With ``tokenizer_fingerprint`` set, latents made by another tokenizer are
refused, never skipped (mixing latent spaces silently would train on garbage): at setup, from
the ``index.json`` beside local shards (or, without one, the first sample of the first shard in
each folder), and again per sample while reading (``pipe:``/remote shards), where a mismatch
raises :class:`~gvc_train.data.latent_format.TokenizerMismatch` out of the loader.
Frame shards given to this module are refused at setup the same way.

Skip reasons are :data:`gvc_train.data.skip_stats.REASONS`; for latents ``missing_frames``
means no ``latent.f16`` member and ``decode_error`` a latent whose length or CRC32 does not
match its metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import tarfile
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from gvc_train.data.latent_format import (
    LATENT_FIELD,
    LatentMeta,
    TokenizerMismatch,
    decode_latent,
    index_latent_info,
    resolve_fingerprint,
)
from gvc_train.data.pipeline import Sample, SampleStep, check_fits, make_sample, members, parse_meta, where
from gvc_train.data.sample_format import INDEX_FILE, META_KEY
from gvc_train.data.shard_datamodule import ShardDataModule, ShardSpec, shared_args
from gvc_train.data.skip_stats import SkipSample
from gvc_train.data.transforms import ClipSampler, Window, as_hw, empty_float_batch


@dataclasses.dataclass(frozen=True)
class LatentSampler:
    """Picks ``latent_frames`` latent frames (None: all), a ``crop_size`` crop (None: all) and a
    horizontal flip; random when ``rng`` is given, else the first window and the centre crop.
    ``from_first_frame``: windows always start at latent frame 0 (the tokenizer's one-frame
    intra latent), as a real sequence does at inference; otherwise the start is uniform."""

    latent_frames: int | None = None
    crop_size: tuple[int, int] | None = None
    flip: bool = False
    from_first_frame: bool = False

    def __post_init__(self) -> None:
        if self.latent_frames is not None and self.latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {self.latent_frames}")

    def __call__(self, latent_Cthw: np.ndarray, rng: random.Random | None) -> tuple[np.ndarray, Window]:
        """``C x t x h x w`` -> (a contiguous copy of the window, the window used)."""
        _, t, h, w = latent_Cthw.shape
        frames = self.latent_frames or t
        win = ClipSampler(frames, 1, self.crop_size, self.flip).choose(t, h, w, rng)
        if self.from_first_frame:
            win = dataclasses.replace(win, start=0)
        view = latent_Cthw[:, win.start : win.start + frames, win.top : win.top + win.height,
                           win.left : win.left + win.width]
        if win.flipped:
            view = view[..., ::-1]
        return np.ascontiguousarray(view), win


@dataclasses.dataclass(frozen=True)
class LatentSampleStep(SampleStep):
    """A latent-shard sample -> a ``C x t x h x w`` float16 window chosen by ``sampler``.

    Raises :class:`TokenizerMismatch` (never skipped) for a latent of another tokenizer than
    ``tokenizer_fingerprint``.
    """

    sampler: LatentSampler
    tokenizer_fingerprint: str | None = None
    batch_field: ClassVar[str] = "latent"
    settings: ClassVar[str] = "latent_frames/crop_size"
    refused: ClassVar[tuple[type[Exception], ...]] = (TokenizerMismatch,)

    def decode(self, sample: dict[str, Any], rng: random.Random | None) -> Sample:
        sampler, fingerprint = self.sampler, self.tokenizer_fingerprint
        meta = parse_meta(sample, LatentMeta.from_json)
        if fingerprint is not None and meta.tokenizer_fingerprint != fingerprint:
            raise TokenizerMismatch(
                f"{where(sample)}: latent made by tokenizer {meta.tokenizer_fingerprint[:16]}..., this stage "
                f"expects {fingerprint[:16]}...; re-shard with gvc-shard --tokenizer <the stage's tokenizer>"
            )
        payload = sample.get(LATENT_FIELD)
        if payload is None:
            raise SkipSample("missing_frames", f"no {LATENT_FIELD}; members {members(sample)}")
        _, t, h, w = meta.latent_shape
        check_fits(t, h, w, sampler.latent_frames, sampler.crop_size, unit="latent ")
        window, win = sampler(decode_latent(payload, meta), rng)
        return make_sample(
            sample, window, meta, latent_window_start=win.start, latent_crop_top=win.top,
            latent_crop_left=win.left, flipped=win.flipped,
        )  # fmt: skip

    def stack(self, windows: list[np.ndarray]) -> torch.Tensor:
        """The float16 windows as one float32 ``B x C x t x h x w`` tensor (an exact conversion)."""
        out = empty_float_batch((len(windows), *windows[0].shape))
        dst = out.numpy()
        for i, window in enumerate(windows):
            dst[i] = window
        return out


# ---------------------------------------------------------------------------- the setup check


def _first_meta(url: str) -> dict[str, Any] | None:
    """The JSON of the first sample of a local tar, or None if it cannot be read."""
    try:
        with tarfile.open(url, mode="r|") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith("." + META_KEY):
                    data = tar.extractfile(member)
                    return json.loads(data.read()) if data is not None else None
    except (OSError, tarfile.TarError, ValueError):
        return None
    return None


def check_latent_shards(urls: Sequence[str], split: str, fingerprint: str | None) -> None:
    """Refuse, at setup, local shard folders that hold frame shards or another tokenizer's latents.

    Reads each folder's ``index.json`` (or the first sample of its first shard when there is
    none); remote and ``pipe:`` shards are left to the per-sample check.
    """
    first_per_dir: dict[str, str] = {}
    for url in urls:
        if os.path.isfile(url):
            first_per_dir.setdefault(os.path.dirname(os.path.abspath(url)), url)
    for folder, first in first_per_dir.items():
        index_path = os.path.join(folder, INDEX_FILE)
        found: str | None
        where = index_path
        try:
            with open(index_path, encoding="utf-8") as f:
                info = index_latent_info(json.load(f))
            if info is None:
                raise ValueError(f"{split} shards in {folder} are frame shards (index.json names no tokenizer)")
            found = info.get("tokenizer_fingerprint")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            meta = _first_meta(first)
            if meta is None:
                continue  # unreadable: the stream counts it as a tar_error
            if "tokenizer_fingerprint" not in meta:
                raise ValueError(f"{split} shards in {folder} are frame shards ({first} holds no latent)") from None
            found, where = meta["tokenizer_fingerprint"], first
        if fingerprint is not None and found != fingerprint:
            raise TokenizerMismatch(
                f"{split} latent shards ({where}) were made by tokenizer {str(found)[:16]}..., this stage expects "
                f"{fingerprint[:16]}...; re-shard with gvc-shard --tokenizer <the stage's tokenizer>"
            )


# ---------------------------------------------------------------------------- the module


class LatentDataModule(ShardDataModule):
    """Tokenizer latents from WebDataset shards written by ``gvc-shard --tokenizer``.

    Args:
        latent_frames: t, latent frames per clip (``1 + k`` latent frames stand for ``1 + 4k``
            video frames); None: all the stored ones.
        crop_size: crop in *latent* pixels (``int`` or ``(h, w)``; 8 = 64 video pixels);
            None: the whole stored latent (all clips of a batch must then share one size).
        flip: random horizontal flips in training. Off by default: the tokenizer's encoder is
            not mirror-equivariant, so a flipped latent is not the latent of the flipped video.
        from_first_frame: training windows start at latent frame 0 instead of anywhere.
        tokenizer_fingerprint: refuse latents of any other tokenizer: the sha256 fingerprint,
            or an exported tokenizer folder (its ``tokenizer.json``). None: no check.
        shuffle_buffer: raw samples held per training stream (latents are small: 256).
        The others (shards, batch sizes, workers, epoch length, seed, ranks) as
        :class:`~gvc_train.data.shard_datamodule.ShardDataModule`.
    """

    def __init__(
        self,
        train_shards: ShardSpec = None,
        val_shards: ShardSpec = None,
        test_shards: ShardSpec = None,
        latent_frames: int | None = None,
        crop_size: int | tuple[int, int] | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 256,
        resampled: bool = True,
        flip: bool = False,
        from_first_frame: bool = False,
        tokenizer_fingerprint: str | None = None,
        seed: int = 0,
        val_batch_size: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = False,
        max_consecutive_skips: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        LatentSampler(latent_frames)  # validates
        super().__init__(**shared_args(locals()))
        self.latent_frames = latent_frames
        self.crop_size = as_hw(crop_size)
        self.flip = flip
        self.from_first_frame = from_first_frame
        self.tokenizer_fingerprint = resolve_fingerprint(tokenizer_fingerprint) if tokenizer_fingerprint else None

    def sample_step(self, train: bool) -> LatentSampleStep:
        sampler = LatentSampler(self.latent_frames, self.crop_size, self.flip and train, self.from_first_frame)
        return LatentSampleStep(sampler, self.tokenizer_fingerprint)

    def check_shards(self, split: str, urls: list[str]) -> None:
        check_latent_shards(urls, split, self.tokenizer_fingerprint)
