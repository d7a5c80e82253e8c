"""VideoDataModule: batch contract, sampling, rank/worker splitting, epoch length, skips;
and the shard data-module base that a new kind of shard subclasses."""

from __future__ import annotations

import dataclasses
import itertools
import random
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import pytest
import torch
import webdataset as wds

from gvc_train.data.clip_codec import ClipDecodeError, encode_clip
from gvc_train.data.datamodule import SkipStatsLogger, VideoDataModule
from gvc_train.data.pipeline import NoUsableSamples, Sample, SampleStep, caption_of
from gvc_train.data.sample_format import ClipMeta, sample_key
from gvc_train.data.shard_datamodule import ShardDataModule
from gvc_train.data.shard_split import expand_shards
from gvc_train.data.skip_stats import SkipSample, skip_reason
from gvc_train.data.transforms import ClipTooShort

H, W = 20, 24  # frame size of the synthetic clips
CLIP_LEN = 9  # frames per stored clip
T = 5  # frames per training clip (1 + 4k)
CROP = 16
NUM_SHARDS, PER_SHARD = 8, 3


def pattern(clip: int, n: int = CLIP_LEN, h: int = H, w: int = W) -> np.ndarray:
    """Frames whose every pixel says which clip, frame, row, column and channel it is."""
    t, y, x, c = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((clip * 37 + t * 11 + y * 3 + x * 5 + c * 50) % 256).astype(np.uint8)


def clip_sample(clip: int, frames: np.ndarray | None = None) -> dict:
    frames = pattern(clip) if frames is None else frames
    fmt, payload = encode_clip(frames)
    first = clip * 100
    meta = ClipMeta(f"src{clip}.mp4", first, frames.shape[0], 25.0, frames.shape[2], frames.shape[1])
    return {
        "__key__": sample_key(f"src{clip}", first),
        f"frames.{fmt}": payload,
        "json": meta.to_json(),
        "txt": f"clip {clip}".encode(),
    }


def write_shard(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    for s in range(NUM_SHARDS):
        write_shard(root / f"shard-{s:06d}.tar", [clip_sample(s * PER_SHARD + i) for i in range(PER_SHARD)])
    return root


ALL_KEYS = {sample_key(f"src{c}", c * 100) for c in range(NUM_SHARDS * PER_SHARD)}


def make_dm(shards: object, **kw: object) -> VideoDataModule:
    args: dict = dict(
        train_shards=shards, val_shards=shards, clip_frames=T, crop_size=CROP, batch_size=2,
        num_workers=0, samples_per_epoch=12, shuffle_buffer=4, rank=0, world_size=1,
    )
    args.update(kw)
    return VideoDataModule(**args)


def keys_by_stream(loader: object, rank: int) -> dict[tuple[int, int], list[str]]:
    seen: dict[tuple[int, int], list[str]] = {}
    for batch in loader:
        seen.setdefault((rank, batch["worker"]), []).extend(batch["key"])
    return seen


# ---------------------------------------------------------------------------- shard specs


def test_glob_brace_directory_and_pipe_specs(shard_dir: Path) -> None:
    all_tars = sorted(str(p) for p in shard_dir.glob("*.tar"))
    assert expand_shards(str(shard_dir / "*.tar")) == all_tars
    assert expand_shards(str(shard_dir)) == all_tars
    assert expand_shards(str(shard_dir / "shard-{000001..000003}.tar")) == all_tars[1:4]
    assert expand_shards([all_tars[0], str(shard_dir / "shard-00000[0-1].tar")]) == all_tars[:2]  # deduplicated
    assert expand_shards("pipe:cat /x/s-{0..1}.tar") == ["pipe:cat /x/s-0.tar", "pipe:cat /x/s-1.tar"]
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        expand_shards(str(shard_dir / "nope-*.tar"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_shards(str(shard_dir / "shard-{000007..000008}.tar"))


def test_pipe_shards_are_read(shard_dir: Path) -> None:
    spec = f"pipe:cat {shard_dir}/shard-{{000000..000001}}.tar"
    dm = make_dm(spec, val_batch_size=3)
    keys = [k for batch in dm.val_dataloader() for k in batch["key"]]
    assert sorted(keys) == sorted(sample_key(f"src{c}", c * 100) for c in range(2 * PER_SHARD))


# ---------------------------------------------------------------------------- batches


def test_batch_contract_and_sampled_pixels(shard_dir: Path) -> None:
    dm = make_dm(str(shard_dir / "*.tar"), batch_size=3, samples_per_epoch=9, crop_size=(12, CROP), frame_stride=2)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    flips = set()
    for batch in batches:
        video = batch["video"]
        assert video.dtype == torch.float32 and video.shape == (3, 3, T, 12, CROP) and video.is_contiguous()
        assert 0.0 <= video.min() and video.max() <= 1.0
        assert len(batch["key"]) == len(batch["meta"]) == len(batch["caption"]) == 3
        for i, meta in enumerate(batch["meta"]):
            clip = meta["first_frame"] // 100
            assert batch["key"][i] == sample_key(f"src{clip}", meta["first_frame"])
            assert batch["caption"][i] == f"clip {clip}"
            top, left, start = meta["crop_top"], meta["crop_left"], meta["window_start"]
            expected = pattern(clip)[start : start + (T - 1) * 2 + 1 : 2, top : top + 12, left : left + CROP]
            if meta["flipped"]:
                expected = expected[:, :, ::-1]
            flips.add(meta["flipped"])
            got = (video[i] * 255).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()
            np.testing.assert_array_equal(got, expected)
    assert flips == {True, False}  # 9 clips: both flip outcomes (seeded, so not flaky)


def test_val_is_deterministic_centre_crop_first_window(shard_dir: Path) -> None:
    dm = make_dm(str(shard_dir), val_batch_size=5)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert [b["key"] for b in first] == [b["key"] for b in second]
    assert sum(len(b["key"]) for b in first) == NUM_SHARDS * PER_SHARD  # last batch kept partial
    for a, b in zip(first, second):
        assert torch.equal(a["video"], b["video"])
        for meta in a["meta"]:
            assert (meta["window_start"], meta["crop_top"], meta["crop_left"], meta["flipped"]) == (0, 2, 4, False)


def test_train_epochs_differ_and_seed_reproduces(shard_dir: Path) -> None:
    dm = make_dm(str(shard_dir), samples_per_epoch=8)
    loader = dm.train_dataloader()
    epoch0, epoch1 = [b["key"] for b in loader], [b["key"] for b in loader]
    assert epoch0 != epoch1
    again = [b["key"] for b in make_dm(str(shard_dir), samples_per_epoch=8).train_dataloader()]
    assert again == epoch0


# ---------------------------------------------------------------------------- splitting


@pytest.mark.timeout(90)
def test_two_ranks_two_workers_partition_the_shards(shard_dir: Path) -> None:
    """Each (rank, worker) stream sees its own clips; together they see each clip once."""
    spec = str(shard_dir / "*.tar")
    total = NUM_SHARDS * PER_SHARD
    for kind in ("val", "train"):
        streams: dict[tuple[int, int], list[str]] = {}
        for rank in (0, 1):
            dm = make_dm(spec, rank=rank, world_size=2, num_workers=2, resampled=False,
                         samples_per_epoch=total, batch_size=3, val_batch_size=3)
            loader = dm.val_dataloader() if kind == "val" else dm.train_dataloader()
            streams.update(keys_by_stream(loader, rank))
        assert len(streams) == 4, kind
        for a, b in itertools.combinations(streams.values(), 2):
            assert not set(a) & set(b), kind
        every = [k for keys in streams.values() for k in keys]
        assert len(every) == total and set(every) == ALL_KEYS, kind


@pytest.mark.timeout(60)
def test_fewer_shards_than_streams(shard_dir: Path) -> None:
    three = [str(shard_dir / f"shard-{s:06d}.tar") for s in range(3)]
    dm = make_dm(three, rank=0, world_size=2, num_workers=2, resampled=False, samples_per_epoch=12)
    with pytest.raises(ValueError, match="3 shards cannot be split over 2 ranks x 2 workers"):
        dm.setup("fit")
    # validation reads each shard once: idle workers are fine, and nothing hangs
    seen = []
    for rank in (0, 1):
        dm = make_dm(three, rank=rank, world_size=2, num_workers=2, val_batch_size=2)
        seen += [k for batch in dm.val_dataloader() for k in batch["key"]]
    assert sorted(seen) == sorted(sample_key(f"src{c}", c * 100) for c in range(3 * PER_SHARD))
    # resampled training does not split shards, so it works too
    dm = make_dm(three, rank=1, world_size=2, num_workers=2, samples_per_epoch=12)
    assert len(list(dm.train_dataloader())) == 2


@pytest.mark.timeout(90)
def test_epoch_length_is_equal_on_every_rank(shard_dir: Path) -> None:
    # 50 samples / (2 ranks x 2 workers x batch 3) -> 4 batches per stream, 8 per rank
    lengths = []
    for rank in (0, 1):
        dm = make_dm(str(shard_dir), rank=rank, world_size=2, num_workers=2, samples_per_epoch=50, batch_size=3)
        dm.setup("fit")
        loader = dm.train_dataloader()
        lengths.append((len(loader), len(list(loader))))
    assert lengths == [(8, 8), (8, 8)]


def test_setup_refuses_bad_configs(shard_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"clip_frames=16 must be 1 \+ 4k"):
        make_dm(str(shard_dir), clip_frames=16)
    assert make_dm(str(shard_dir), clip_frames=6, latent_time_stride=None).clip_frames == 6
    with pytest.raises(ValueError, match="set samples_per_epoch"):
        make_dm(str(shard_dir), samples_per_epoch=None).setup("fit")
    with pytest.raises(ValueError, match="DDP would hang"):
        make_dm(str(shard_dir), samples_per_epoch=None, resampled=False, world_size=2).setup("fit")
    with pytest.raises(ValueError, match="less than one batch"):
        make_dm(str(shard_dir), samples_per_epoch=3, world_size=2, num_workers=2).setup("fit")


# ---------------------------------------------------------------------------- damaged data


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, shard_dir: Path) -> list[str]:
    """A shard with one sample of each kind of damage, a truncated shard, and a good shard."""
    root = tmp_path_factory.mktemp("damaged")
    bad_frames = clip_sample(100)
    frames_key = next(k for k in bad_frames if k.startswith("frames."))
    bad_frames[frames_key] = b"\x00not a clip" + bad_frames[frames_key][:7]
    bad_json = clip_sample(101)
    bad_json["json"] = b"{not json"
    short = clip_sample(102, pattern(102, n=T - 1))
    mixed = write_shard(root / "mixed.tar", [clip_sample(103), bad_frames, bad_json, short, clip_sample(104)])
    whole = (shard_dir / "shard-000001.tar").read_bytes()
    truncated = root / "truncated.tar"
    truncated.write_bytes(whole[: len(whole) // 2 + 700])  # cut inside a member, as a network cut would
    return [mixed, str(truncated), str(shard_dir / "shard-000002.tar")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_damage_is_skipped_and_counted(damaged: list[str], workers: int) -> None:
    dm = make_dm(damaged, num_workers=workers, val_batch_size=2)
    keys = []
    for batch in dm.val_dataloader():
        assert batch["video"].shape[1:] == (3, T, CROP, CROP) and batch["video"].amax() > 0
        keys += batch["key"]
    good_from_truncated = {sample_key(f"src{c}", c * 100) for c in range(3, 6)}
    expected_whole = {sample_key(f"src{c}", c * 100) for c in (103, 104, 6, 7, 8)}
    assert expected_whole <= set(keys) <= expected_whole | good_from_truncated
    assert len(keys) == len(set(keys))
    stats = dm.skip_stats()
    assert (stats["decode_error"], stats["too_short"], stats["other"]) == (1, 1, 0)
    assert stats["tar_error"] >= 1
    # the truncated shard's cut sample may also be counted, as lacking its json or its frames
    assert 1 <= stats["bad_meta"] <= 2 and stats["missing_frames"] <= 1
    assert len(good_from_truncated - set(keys)) >= 1  # its unreadable tail is lost, not invented
    assert stats == dm.skip_stats("val") and stats["total"] == sum(v for k, v in stats.items() if k != "total")


@pytest.mark.timeout(30)
def test_endless_stream_of_damage_stops_with_an_error(damaged: list[str]) -> None:
    dm = make_dm(damaged[:1], num_workers=0, max_consecutive_skips=50, crop_size=64)  # every clip too small
    with pytest.raises(NoUsableSamples, match="in a row were skipped"):
        next(iter(dm.train_dataloader()))


# ---------------------------------------------------------------------------- with a Trainer


class _TinyModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.shapes: list[tuple[int, ...]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.shapes.append(tuple(batch["video"].shape))
        return (batch["video"] * self.scale).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_mean", batch["video"].mean(), batch_size=len(batch["key"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.timeout(90)
def test_fit_with_trainer_logs_skips(shard_dir: Path, damaged: list[str]) -> None:
    dm = VideoDataModule(
        train_shards=str(shard_dir), val_shards=damaged, clip_frames=T, crop_size=CROP, batch_size=2,
        num_workers=0, samples_per_epoch=6,
    )
    module = _TinyModule()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[SkipStatsLogger()],
    )
    trainer.fit(module, datamodule=dm)
    assert module.shapes == [(2, 3, T, CROP, CROP)] * 6  # 3 batches per epoch, 2 epochs
    assert trainer.callback_metrics["data/val_skipped_decode_error"] == 2  # one per validation pass
    assert dm.skip_stats("train")["total"] == 0


# ---------------------------------------------------------------------------- a new kind of shard


@dataclasses.dataclass(frozen=True)
class CaptionLengthStep(SampleStep):
    """Toy per-sample step: a caption's length; shorter captions are skipped as too short."""

    min_length: int
    batch_field: ClassVar[str] = "length"

    def decode(self, sample: dict[str, Any], rng: random.Random | None) -> Sample:
        text = caption_of(sample)
        if len(text) < self.min_length:
            raise SkipSample("too_short", f"caption {text!r}")
        return Sample(str(sample["__key__"]), np.array([len(text)], dtype=np.float32), {}, text)

    def stack(self, windows: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(windows))


class CaptionLengthDataModule(ShardDataModule):
    """A whole data module for another kind of shard: its argument, its step and its check."""

    def __init__(self, min_length: int = 1, **shared: Any) -> None:
        super().__init__(**shared)
        self.min_length = min_length
        self.checked: list[str] = []

    def sample_step(self, train: bool) -> CaptionLengthStep:
        return CaptionLengthStep(self.min_length)

    def check_shards(self, split: str, urls: list[str]) -> None:
        self.checked.append(split)


def test_a_new_shard_data_module_is_a_small_subclass(shard_dir: Path) -> None:
    """Splitting, epoch length, skip counting and exact resume come from the base."""
    dm = CaptionLengthDataModule(
        min_length=7, train_shards=str(shard_dir), val_shards=str(shard_dir), batch_size=2, num_workers=0,
        samples_per_epoch=8, resampled=False, rank=0, world_size=1,
    )  # fmt: skip
    assert dm.hparams["min_length"] == 7 and dm.hparams["batch_size"] == 2
    dm.setup("fit")
    dm.setup("fit")
    assert dm.checked == ["train", "val"]  # once per split
    val = list(dm.val_dataloader())
    keys = [k for b in val for k in b["key"]]
    assert sorted(keys) == sorted(sample_key(f"src{c}", c * 100) for c in range(10, NUM_SHARDS * PER_SHARD))
    assert all(b["length"].dtype == torch.float32 and (b["length"] == 7).all() for b in val)
    assert dm.skip_stats("val")["too_short"] == 10  # "clip 0" ... "clip 9"
    whole = [b["key"] for b in dm.train_dataloader()]
    assert len(whole) == len(dm.train_dataloader()) == 4
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 0, "batches": 1})
    assert [b["key"] for b in resumed] == whole[1:]


def test_skip_reason_maps_each_error_once() -> None:
    assert skip_reason(SkipSample("bad_meta", "x")) == "bad_meta"
    assert skip_reason(ClipDecodeError("x")) == "decode_error"
    assert skip_reason(ClipTooShort("x")) == "too_short"
    assert skip_reason(KeyError("x")) == "other"
    with pytest.raises(ValueError, match="unknown skip reason"):
        SkipSample("no_such_reason", "x")
