"""Shared fixtures: small shards made from the sample videos, once per test session."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from gvc_train.data.sample_videos import sample_video

# The CI machine has 2 cores: one intra-op thread per process keeps DataLoader workers and
# the main process from fighting, and makes timings in tests irrelevant to their outcome.
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def tiny_fit_args(recipe: str | Path, shards: dict[str, str]) -> list[str]:
    """``gvc-train fit`` arguments that run a recipe at test size on the tiny shards, on the CPU."""
    return [
        "fit",
        "--config",
        str(recipe),
        f"--data.init_args.train_shards={shards['train']}",
        f"--data.init_args.val_shards={shards['val']}",
        "--data.init_args.clip_frames=5",
        "--data.init_args.crop_size=32",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
        "--data.init_args.samples_per_epoch=4",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.precision=32-true",
        "--trainer.limit_val_batches=1",
    ]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Train shards (bikes + carphone heads, small) and held-out val shards (carphone tail)."""
    from gvc_train.data.shard_writer import write_shards

    root = tmp_path_factory.mktemp("tiny_shards")
    common = dict(clip_frames=9, maxcount=2, workers=1, progress=False, log=lambda line: None)
    write_shards([sample_video("bikes.mp4")], root / "train", resize_short=64, max_frames_per_video=36, prefix="train", **common)
    write_shards([sample_video("carphone_pristine.mp4")], root / "val", max_frames_per_video=18, prefix="val", **common)
    return {"train": str(root / "train" / "*.tar"), "val": str(root / "val" / "*.tar"), "root": str(root)}


from component_cases import TINY_WAN_CONFIG  # noqa: E402 - the component tester's tiny Wan VAE, one copy


@pytest.fixture(scope="session")
def wan_pretrained_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny AutoencoderKLWan saved with save_pretrained: stands in for downloaded weights."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_wan_pretrained")
    AutoencoderKLWan(**TINY_WAN_CONFIG).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_codec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported latent codec folder (codec.json + safetensors) with random tiny weights.

    For codec mechanics (bitstreams, CLI, errors), not quality: a 40x24 frame codes in ~10 ms.
    """
    from gvc_train.codecs.codec_folder import write_codec_json
    from gvc_train.components import save_component
    from gvc_train.models import CausalVAE, LatentVideoCodec

    folder = tmp_path_factory.mktemp("tiny_codec")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae = CausalVAE(
            latent_channels=4, base_channels=8, channel_mults=[1, 2, 2, 2], num_res_blocks=1, mid_attention=False, norm_groups=8
        )
        codec = LatentVideoCodec(
            latent_channels=4, channels=8, y_channels=4, z_channels=4, memory_channels=4, num_res_blocks=1, num_qualities=3
        )
    codec.eval().update(force=True)
    save_component(vae.eval(), folder, "tokenizer")
    save_component(codec, folder, "latent_codec")
    write_codec_json(folder, "latent", {"qualities": 3}, {"recipe": "tests/conftest.py tiny_codec_dir (random weights)"})
    return folder


def quiet_recipe(recipe: str | Path, out: Path, every_n_train_steps: int | None = None) -> Path:
    """A copy of ``recipe`` for subprocess tests: no progress bar or loggers, and (optionally) its
    periodic last.ckpt every ``every_n_train_steps``. Its other callbacks stay: under DDP they
    must not hang (the reconstruction logger once did). The copy is standalone: its base resolved."""
    from gvc_train.recipe_bases import load_recipe

    cfg = load_recipe(recipe)
    trainer = cfg["trainer"]
    trainer["logger"] = False
    keep = []
    for cb in trainer.get("callbacks", []):
        if cb["class_path"].endswith("TQDMProgressBar"):
            continue
        init = cb.get("init_args") or {}
        if every_n_train_steps is not None and init.get("every_n_train_steps"):
            init["every_n_train_steps"] = every_n_train_steps
        keep.append(cb)
    trainer["callbacks"] = keep
    trainer["enable_progress_bar"] = False
    out.write_text(yaml.safe_dump(cfg))
    return out


def synthetic_data_args(batch_size: int, samples_per_epoch: int = 16, frames: int = 5, size: int = 32) -> list[str]:
    """Replace a recipe's data by ``SyntheticVideoDataModule`` clips (no shards needed)."""
    init = "--data.init_args"
    return [
        "--data=gvc_train.data.synthetic.SyntheticVideoDataModule",
        f"{init}.clip_frames={frames}", f"{init}.height={size}", f"{init}.width={size}",
        f"{init}.batch_size={batch_size}", f"{init}.samples_per_epoch={samples_per_epoch}",
    ]  # fmt: skip


class _Growth:
    mb: float = 0.0


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[_Growth]:
    """How far this process's resident memory peaked above its level at the start of the block, in MB
    (``.mb``, set on exit, exceptions included).

    Linux only: writing 5 to ``/proc/self/clear_refs`` resets the kernel's high-water mark (VmHWM)
    to the current RSS, so the peak read after the block is the block's own. ``ru_maxrss`` cannot be
    reset: it holds the session's all-time peak (across exec, even the parent's), so an allocation
    below any earlier peak would go unseen. Unlike tracemalloc this sees every allocator (torch's
    included) but only pages actually touched: memory reserved and never written costs nothing.
    """
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_mb("VmRSS")
    growth = _Growth()
    try:
        yield growth
    finally:
        growth.mb = _status_mb("VmHWM") - start


def bounded_decode(codec: Any, stream: Path, seconds: float, mb: float) -> tuple[list[Any], float]:
    """``codec.decode(stream)``'s frames and its time; whether it succeeds or raises, the call
    must end within ``seconds`` and its memory peak stay under ``mb`` above where it started
    (the fuzz tests' bound on what a damaged stream can cost)."""
    frames: list[Any] = []
    started = time.perf_counter()
    try:
        with peak_rss_growth() as memory:
            codec.decode(stream, frames.append)
    finally:
        elapsed = time.perf_counter() - started
        assert elapsed < seconds, f"{elapsed:.2f} s"
        assert memory.mb < mb, f"the decoder's memory peaked {memory.mb:.0f} MB above its start"
    return frames, elapsed


def _status_mb(field: str) -> float:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match, f"no {field} in /proc/self/status"
    return int(match.group(1)) / 1024


def numpy_psnr(recon_THWC: np.ndarray, source_THWC: np.ndarray) -> float:
    """RGB PSNR per frame, averaged (the cards' definition), in plain numpy: not gvc_train.eval.metrics."""
    mse = ((recon_THWC.astype(np.float64) - source_THWC.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / mse)))


def frames_ms_ssim(recon_THWC: np.ndarray, source_THWC: np.ndarray) -> float:
    """MS-SSIM of two uint8 ``T x H x W x 3`` clips, averaged over frames."""
    from gvc_train.eval.metrics import ms_ssim

    video = lambda a: torch.from_numpy(a).permute(3, 0, 1, 2)[None].float() / 255  # noqa: E731
    return float(ms_ssim(video(recon_THWC), video(source_THWC)).mean())


@pytest.fixture
def decode_plans(monkeypatch: pytest.MonkeyPatch) -> list:
    """The memory plans (models/tokenizer/tiling.DecodePlan) the tokenizer decoders of a test ran."""
    import gvc_train.codecs.tokenizer_io as tokenizer_io
    from gvc_train.models.tokenizer.tiling import DecodePlan

    seen: list = []
    real = tokenizer_io.StripDecoder

    def spy(vae, latent_hw, plan=DecodePlan(), **kw):
        seen.append(plan)
        return real(vae, latent_hw, plan, **kw)

    monkeypatch.setattr(tokenizer_io, "StripDecoder", spy)
    return seen


def measure_in_child(script: str, arg: Any) -> tuple[int, int]:
    """``script`` run with ``json.dumps(arg)`` in a fresh interpreter on one thread with glibc's
    mmap threshold fixed (the peak of live memory, the same every run); the last line it prints,
    ``[measured peak growth, estimate]`` in bytes."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script, json.dumps(arg)], capture_output=True, text=True, env=env, check=True)
    measured, estimate = json.loads(out.stdout.strip().splitlines()[-1])
    return measured, estimate
