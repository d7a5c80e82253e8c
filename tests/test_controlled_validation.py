"""The controlled diffusion stage's validation videos (lit/controlled_validation.py) through
ReconstructionVideoLogger: source | generated side by side, once per validation, rank zero only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from gvc_train.frames import tensor_to_frames
from gvc_train.lit import callbacks
from gvc_train.lit.callbacks import ReconstructionVideoLogger
from gvc_train.lit.controlled_diffusion import ControlledDiffusionModule
from gvc_train.lit.controlled_validation import validation_videos

from controlled_fixtures import controlled_clips, tiny_controlled_module
from progressive_fixtures import FRAMES, HEIGHT, WIDTH


class WithValidationVideos(ControlledDiffusionModule):
    """The stage with the hook ReconstructionVideoLogger looks for (the text proposed for
    lit/controlled_diffusion.py), and a marker file per call naming the rank that made it."""

    calls_dir: Path | None = None

    def validation_videos(self, batch: dict[str, Any], max_clips: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.calls_dir is not None:
            (self.calls_dir / f"rank{self.global_rank}_step{self.global_step}").touch()
        return validation_videos(self, batch, max_clips=max_clips, seed=self.hparams.val_seed)


def _module(calls_dir: Path | None = None) -> WithValidationVideos:
    module = tiny_controlled_module()
    module.__class__ = WithValidationVideos  # the same weights and settings, with the hook
    module.calls_dir = calls_dir
    return module


def _fit(module: L.LightningModule, root: Path, steps: int, devices: int = 1) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, val_check_interval=1, limit_val_batches=2,
        num_sanity_val_steps=1, default_root_dir=root, callbacks=[ReconstructionVideoLogger(max_clips=2)],
        strategy="ddp_fork_find_unused_parameters_true" if devices > 1 else "auto", use_distributed_sampler=False,
    )  # fmt: skip
    clips = controlled_clips(3)
    trainer.fit(module, DataLoader([clips] * steps, batch_size=None), DataLoader([clips, controlled_clips(3, seed=4)], batch_size=None))


def test_the_video_is_the_source_beside_the_seeded_generation_once_per_validation(tmp_path: Path, monkeypatch) -> None:
    written: list[tuple[np.ndarray, Path]] = []
    real_write = callbacks.write_mp4
    monkeypatch.setattr(callbacks, "write_mp4", lambda frames, path, fps: written.append((frames, Path(path))) or real_write(frames, path, fps))
    module = _module()
    _fit(module, tmp_path, steps=2)

    # two validations (after steps 1 and 2) of two batches each, and a sanity check: two videos
    assert [p.relative_to(tmp_path).as_posix() for _, p in written] == ["samples/step_0000001.mp4", "samples/step_0000002.mp4"]
    assert all(p.is_file() for _, p in written)
    frames = written[-1][0]
    assert frames.shape == (FRAMES, 2 * HEIGHT, 2 * WIDTH, 3) and frames.dtype == np.uint8  # 2 of the 3 clips, one above the other
    clips = controlled_clips(3)
    source, generated = validation_videos(module, clips, max_clips=2, seed=module.hparams.val_seed)
    assert source.shape == generated.shape == (2, 3, FRAMES, HEIGHT, WIDTH)
    assert 0 <= generated.min() and generated.max() <= 1
    for i in range(2):
        rows = slice(i * HEIGHT, (i + 1) * HEIGHT)
        assert np.array_equal(frames[:, rows, :WIDTH], tensor_to_frames(clips["video"][i])), "the left half is not the source"
        assert np.array_equal(frames[:, rows, WIDTH:], tensor_to_frames(generated[i])), "the right half is not the seeded generation"
    assert not np.array_equal(frames[:, :, :WIDTH], frames[:, :, WIDTH:])

    # a latent-only batch (latent shards: first keyframe only): the source is the tokenizer's decoding
    first_only = tiny_controlled_module(keyframes=["first"])
    latent = first_only.tokenizer.encode(clips["video"][:1]).mode()
    only_latent = {"latent": latent, "controls": {k: v[:1] for k, v in clips["controls"].items()}}
    source, generated = validation_videos(first_only, only_latent, max_clips=2, num_steps=2)
    with torch.no_grad():  # as validation decodes (inference kernels: exact_kernels.py)
        expected = first_only.tokenizer.decode(latent).clamp(0, 1)
    assert torch.allclose(source, expected) and generated.shape == source.shape


def test_only_rank_zero_generates_under_ddp(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    _fit(_module(calls), tmp_path, steps=2, devices=2)
    assert sorted(p.name for p in calls.iterdir()) == ["rank0_step1", "rank0_step2"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_0000001.mp4", "step_0000002.mp4"]
