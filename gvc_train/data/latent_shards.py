"""Latent shards: clips stored as the tokenizer's posterior mean, for the latent-codec stage.

``write_latent_shards(inputs, out_dir, tokenizer=DIR, crop=(h, w), ...)`` (``gvc-shard
--tokenizer DIR [--crop N]``) cuts videos into clips exactly as ``write_shards`` does, but each
sample stores ``tokenizer.encode(clip).mode()`` (``C x t x h x w``, float16) instead of the
frames; the layout is :mod:`gvc_train.data.latent_format`. The latents only, not the frames
too: the latent-codec stage trains in latent space, the frames of the same region would add
~4-6x the latent's bytes (``rgbdz``), and the pixels of any latent sample are in the frame
shards under the same key (the meta records the crop).

**The crop is fixed here.** A latent cannot be cropped back to pixels, so the spatial region
is chosen at shard time: frames are area-downscaled by ``resize_short`` (as for frame shards),
then centre-cropped to ``crop`` (each side a multiple of the tokenizer's spatial stride, 8), or
without ``crop`` to the largest multiple of the stride that fits. Training crops (and optionally flips) the
latent (in latent pixels) from there.

**Clips** must be ``1 + 4k`` frames for the causal tokenizer (``clip_frames``; checked against the
tokenizer's temporal stride before anything is read).

**Reproducible bytes.** Each worker process loads the tokenizer once and encodes one clip at a
time (batch 1) under ``torch.no_grad`` with one torch thread (also in this process when
``workers=1``), so a given input list gives byte-identical shards whatever the worker count;
use ``workers`` for parallelism. CPU only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from gvc_train.data.latent_format import (
    INDEX_LATENT_KEY,
    LATENT_FIELD,
    LATENT_FORMAT,
    LatentMeta,
    encode_latent,
    index_latent_info,
)
from gvc_train.data.sample_format import CAPTION_KEY, INDEX_FILE, META_KEY, ShardIndex, sample_key
from gvc_train.data.shard_writer import ShardOptions, Source, SourceReport, write_samples
from gvc_train.data.transforms import crop_box
from gvc_train.data.video_io import VideoReader, VideoReadError

TOKENIZER_NAME = "tokenizer"  # the component name gvc-export gives the tokenizer


@dataclasses.dataclass(frozen=True)
class LatentShardOptions(ShardOptions):
    tokenizer: str = ""  # a folder with tokenizer.json + tokenizer.safetensors (gvc-export)
    # crop (ShardOptions): None here means the largest multiple of the stride, not the whole frame
    tokenizer_fingerprint: str = ""  # set by write_latent_shards; workers check the weights they load

    def check(self) -> None:
        super().check()
        if not self.tokenizer:
            raise ValueError("latent shards need a tokenizer folder (--tokenizer DIR)")


@dataclasses.dataclass(frozen=True)
class LatentClip:
    key: str
    payload: bytes
    meta: LatentMeta
    caption: str | None

    def sample(self) -> dict[str, Any]:
        sample: dict[str, Any] = {"__key__": self.key, LATENT_FIELD: self.payload, META_KEY: self.meta.to_json()}
        if self.caption:
            sample[CAPTION_KEY] = self.caption.encode("utf-8")
        return sample


# ---- the tokenizer ---------------------------------------------------------------------------

_loaded: dict[tuple[Any, ...], tuple[torch.nn.Module, str]] = {}  # per process: workers load it once


def load_tokenizer(folder: str) -> tuple[torch.nn.Module, str]:
    """(the tokenizer of an exported folder in eval mode, its fingerprint), the weights checked
    against the fingerprint; cached per process (keyed by the files, so a rewritten export reloads)."""
    from gvc_train.components import load_component, read_component_meta

    meta = read_component_meta(folder, TOKENIZER_NAME)
    weights = os.stat(os.path.join(folder, meta["weights"]))
    key = (os.path.realpath(folder), meta["fingerprint"], weights.st_mtime_ns, weights.st_size)
    if key not in _loaded:
        _loaded.clear()  # one tokenizer at a time
        _loaded[key] = (load_component(folder, TOKENIZER_NAME).eval(), meta["fingerprint"])
    return _loaded[key]


def tokenizer_info(folder: str) -> dict[str, Any]:
    """What index.json records of the tokenizer (loads it once, so bad weights fail here, as a
    ValueError)."""
    from gvc_train.components import ComponentError, read_component_meta

    try:
        meta = read_component_meta(folder, TOKENIZER_NAME)
        tok, _ = load_tokenizer(folder)
    except (ComponentError, OSError) as exc:
        raise ValueError(f"tokenizer {folder}: {exc}") from None
    for attr in ("spatial_stride", "temporal_stride", "latent_channels", "encode"):
        if not hasattr(tok, attr):
            raise ValueError(f"{folder}: {meta['class']} is not a video tokenizer (no {attr})")
    return {
        "format": LATENT_FORMAT,
        "tokenizer_fingerprint": meta["fingerprint"],
        "tokenizer_class": meta["class"],
        "tokenizer_config": meta["config"],
        "tokenizer_dir": folder,
        "spatial_stride": int(tok.spatial_stride),
        "temporal_stride": int(tok.temporal_stride),
        "latent_channels": int(tok.latent_channels),
    }


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_clip_latent(tokenizer: torch.nn.Module, frames_THWC: np.ndarray) -> np.ndarray:
    """uint8 ``T x H x W x 3`` frames -> the posterior mean ``C x t x h x w`` (float32 numpy).

    The frames are converted as the training pipeline converts them (``x / 255`` in float32).
    """
    x = torch.from_numpy(np.ascontiguousarray(frames_THWC.transpose(3, 0, 1, 2))).unsqueeze(0)
    with torch.no_grad():
        return tokenizer.encode(x.float().div_(255.0)).mode()[0].float().numpy()


# ---- one source -> latent clips (runs in a worker) --------------------------------------------


def latent_source(source: Source, opts: LatentShardOptions) -> Iterator[LatentClip | SourceReport]:
    """Yield the latent clips of one source, then its report; never raises for bad input."""
    n, stride = opts.clip_frames, opts.clip_frames - opts.overlap
    clips = frames_read = 0
    info = None
    error: str | None = None
    with _one_thread():
        try:
            try:
                tokenizer, fingerprint = load_tokenizer(opts.tokenizer)
            except Exception as exc:
                raise RuntimeError(f"tokenizer {opts.tokenizer}: {exc}") from None
            if opts.tokenizer_fingerprint and fingerprint != opts.tokenizer_fingerprint:
                raise RuntimeError(f"tokenizer {opts.tokenizer} changed during the run (fingerprint {fingerprint[:12]})")
            with VideoReader(source.path, opts.resize_short, opts.png_fps) as reader:
                info = reader.info
                top, left, ch, cw = crop_box(info.height, info.width, opts.crop, tokenizer.spatial_stride)
                window: list[np.ndarray] = []
                first = 0
                for frame in reader.frames(opts.max_frames_per_video):
                    window.append(np.ascontiguousarray(frame[top : top + ch, left : left + cw]))
                    frames_read += 1
                    if len(window) < n:
                        continue
                    latent = encode_clip_latent(tokenizer, np.stack(window))
                    payload, crc = encode_latent(latent)
                    meta = LatentMeta(
                        source.name, first, n, info.fps, info.width, info.height, top, left, ch, cw,
                        tuple(int(d) for d in latent.shape), crc, fingerprint,
                    )
                    yield LatentClip(sample_key(source.stem, first), payload, meta, source.caption)
                    clips += 1
                    window = window[stride:]
                    first += stride
        except VideoReadError as exc:
            error = exc.reason
        except Exception as exc:  # a bad crop, a broken tokenizer, an odd library failure: report it
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if clips == 0 and error is None:
        error = f"only {frames_read} frames, fewer than clip_frames={n}"
    yield SourceReport(
        source.name, clips, clips * n, frames_read,
        info.width if info else None, info.height if info else None, info.fps if info else None,
        source.caption is not None, error,
    )


# ---- the whole run ------------------------------------------------------------------------------


def write_latent_shards(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    options: LatentShardOptions | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ShardIndex:
    """Shard ``inputs`` as tokenizer latents into ``out_dir``; returns the index (its ``latent``
    entry is in ``out_dir/index.json``, see :func:`read_latent_index`).

    Options as :func:`~gvc_train.data.shard_writer.write_shards`, plus ``tokenizer`` (a folder
    written by ``gvc-export``) and ``crop``. Raises ValueError for bad options, among them a
    ``clip_frames`` that is not ``1 + 4k`` or a crop that is not a multiple of the stride.
    """
    opts = dataclasses.replace(options or LatentShardOptions(), **overrides).with_crop_pair()
    opts.check()
    latent = tokenizer_info(os.fspath(opts.tokenizer))
    ts, s = latent["temporal_stride"], latent["spatial_stride"]
    if (opts.clip_frames - 1) % ts:
        fit = opts.clip_frames - (opts.clip_frames - 1) % ts
        raise ValueError(
            f"clip_frames={opts.clip_frames} must be 1 + {ts}k for the causal tokenizer (e.g. {fit} or {fit + ts})"
        )
    if opts.crop is not None and (opts.crop[0] % s or opts.crop[1] % s):
        raise ValueError(f"crop {opts.crop[0]}x{opts.crop[1]} must be a multiple of the tokenizer's stride {s}")
    opts = dataclasses.replace(opts, tokenizer_fingerprint=latent["tokenizer_fingerprint"])
    latent["crop"] = list(opts.crop) if opts.crop else None
    return write_samples(
        inputs, out_dir, opts, latent_source, progress=progress, log=log,
        frame_format=LATENT_FORMAT, index_extra={INDEX_LATENT_KEY: latent},
    )


def read_latent_index(shard_dir: str | os.PathLike) -> tuple[ShardIndex, dict[str, Any]]:
    """(the ShardIndex, its ``latent`` entry) of a latent shard directory; ValueError otherwise."""
    index = ShardIndex.load(shard_dir)
    with open(os.path.join(os.fspath(shard_dir), INDEX_FILE), encoding="utf-8") as f:
        info = index_latent_info(json.load(f))
    if info is None:
        raise ValueError(f"{shard_dir} holds frame shards, not latent shards (index.json has no tokenizer)")
    return index, info
