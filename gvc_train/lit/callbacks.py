"""Training callbacks shared by the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from gvc_train.frames import tensor_to_frames


def write_mp4(frames_THWC: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """Write uint8 RGB frames as a near-lossless H.264 mp4 (sizes padded to even for yuv420p)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, _ = frames_THWC.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames_THWC = np.pad(frames_THWC, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height = w + pad_w, h + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        for frame in frames_THWC:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def side_by_side_uint8(x_CThw: torch.Tensor, recon_CThw: torch.Tensor) -> np.ndarray:
    """Source left, reconstruction right, as uint8 ``T x H x 2W x 3``."""
    return tensor_to_frames(torch.cat([x_CThw, recon_CThw], dim=-1))


class ReconstructionVideoLogger(L.Callback):
    """Log the first validation clip beside its reconstruction as a video.

    The mp4 is written under the logger's directory (``reconstructions/step_N.mp4``) for every
    logger, and also sent to Weights & Biases when a WandbLogger is attached. The validation
    step must return a dict with ``recon`` (the reconstruction of ``batch["video"]``), or the
    stage has a ``validation_videos(batch, max_clips) -> (source, shown)`` method (a generative
    stage: both ``B x 3 x T x H x W`` in [0, 1]); it is called on rank zero only, once per
    validation, and its videos go to ``samples/step_N.mp4`` and ``val/samples``.
    """

    def __init__(self, max_clips: int = 2, fps: float = 8.0) -> None:
        self.max_clips = max_clips
        self.fps = fps

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking:
            return
        hook = getattr(pl_module, "validation_videos", None)
        if hook is None and (not isinstance(outputs, dict) or "recon" not in outputs):
            return
        # Every rank asks: Trainer.log_dir broadcasts rank 0's folder under DDP, so a rank that
        # skipped it would leave rank 0 waiting there while it waits in the next collective.
        log_dir = trainer.log_dir or trainer.default_root_dir
        if not trainer.is_global_zero:
            return
        if hook is not None:
            x_BCThw, recon_BCThw = hook(batch, self.max_clips)
            folder, key = "samples", "val/samples"
        else:
            x_BCThw, recon_BCThw = batch["video"], outputs["recon"]
            folder, key = "reconstructions", "val/reconstruction"
        n = min(self.max_clips, x_BCThw.shape[0])
        frames = np.concatenate([side_by_side_uint8(x_BCThw[i], recon_BCThw[i]) for i in range(n)], axis=1)
        path = write_mp4(frames, Path(log_dir) / folder / f"step_{trainer.global_step:07d}.mp4", fps=self.fps)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({key: wandb.Video(str(path), format="mp4"), "trainer/global_step": trainer.global_step})
