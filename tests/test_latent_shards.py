"""Latent shards: gvc-shard --tokenizer writes the tokenizer's latents; LatentDataModule reads them.

A tiny CausalVAE (saved as an export folder) and a few carphone/bikes frames keep it fast.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import av
import numpy as np
import pytest
import torch

from gvc_train.components import save_component
from gvc_train.data.latent_datamodule import LatentDataModule
from gvc_train.data.latent_format import LatentMeta, TokenizerMismatch, resolve_fingerprint
from gvc_train.data.latent_shards import read_latent_index, write_latent_shards
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.shard_cli import main
from gvc_train.data.shard_writer import NothingWrittenError, write_shards
from gvc_train.models import CausalVAE

CARPHONE = str(sample_video("carphone_pristine.mp4"))  # 176 x 144
BIKES = str(sample_video("bikes.mp4"))  # 640 x 272
TINY = dict(base_channels=8, num_res_blocks=1, latent_channels=4, norm_groups=8, mid_attention=False)
QUIET = dict(progress=False, log=lambda line: None)


def make_tokenizer(folder: str, seed: int) -> CausalVAE:
    torch.manual_seed(seed)
    vae = CausalVAE(**TINY).eval()
    save_component(vae, folder, "tokenizer")
    return vae


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, CausalVAE]:
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    return folder, make_tokenizer(folder, seed=0)


@pytest.fixture(scope="module")
def latent_dir(tmp_path_factory: pytest.TempPathFactory, tok: tuple[str, CausalVAE]) -> str:
    """4 clips of 5 carphone frames, 64x64 centre crops, 2 shards."""
    out = str(tmp_path_factory.mktemp("latents"))
    write_latent_shards([CARPHONE], out, tokenizer=tok[0], clip_frames=5, max_frames_per_video=20, crop=64,
                        maxcount=2, workers=1, **QUIET)
    return out


def pyav_rgb(path: str, count: int) -> np.ndarray:
    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


def read_samples(out_dir: str) -> list[dict[str, bytes]]:
    index, _ = read_latent_index(out_dir)
    samples: list[dict[str, bytes]] = []
    for path in index.shard_paths(out_dir):
        with tarfile.open(path) as tar:
            for member in tar:
                key, field = member.name.split(".", 1)
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][field] = tar.extractfile(member).read()
    return samples


def stored_latent(sample: dict[str, bytes]) -> np.ndarray:
    meta = LatentMeta.from_json(sample["json"])
    return np.frombuffer(sample["latent.f16"], dtype="<f2").reshape(meta.latent_shape)


# ---- writing -------------------------------------------------------------------------------


def test_latents_are_the_tokenizers_posterior_mean(latent_dir: str, tok: tuple[str, CausalVAE]) -> None:
    folder, vae = tok
    index, info = read_latent_index(latent_dir)
    fingerprint = json.loads(open(os.path.join(folder, "tokenizer.json")).read())["fingerprint"]
    assert (index.frame_format, index.total_clips, len(index.shards)) == ("latent.f16", 4, 2)
    assert info["tokenizer_fingerprint"] == fingerprint and info["crop"] == [64, 64]
    assert (info["spatial_stride"], info["temporal_stride"], info["latent_channels"]) == (8, 4, 4)
    frames = pyav_rgb(CARPHONE, 20)[:, 40:104, 56:120]  # the centre 64x64 of 144x176
    samples = read_samples(latent_dir)
    assert [s["__key__"] for s in samples] == [f"carphone_pristine-{i:06d}" for i in (0, 5, 10, 15)]
    for i, sample in enumerate(samples):
        meta = LatentMeta.from_json(sample["json"])
        assert (meta.first_frame, meta.num_frames, meta.width, meta.height) == (5 * i, 5, 176, 144)
        assert (meta.crop_top, meta.crop_left, meta.crop_height, meta.crop_width) == (40, 56, 64, 64)
        assert meta.latent_shape == (4, 2, 8, 8) and meta.tokenizer_fingerprint == fingerprint
        x = torch.from_numpy(frames[5 * i : 5 * i + 5].copy()).permute(3, 0, 1, 2)[None].float() / 255
        with torch.no_grad():
            expected = vae.encode(x).mode()[0]
        got = torch.from_numpy(stored_latent(sample).astype(np.float32))
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)  # float16: 11 bits of mantissa


def test_workers_and_cli_give_the_same_bytes(tmp_path, tok: tuple[str, CausalVAE], capsys) -> None:
    folder, _ = tok
    inputs = [CARPHONE, BIKES]
    one = str(tmp_path / "w1")
    write_latent_shards(inputs, one, tokenizer=folder, clip_frames=5, max_frames_per_video=10, resize_short=72,
                        crop=(32, 48), maxcount=3, workers=1, **QUIET)
    two = str(tmp_path / "w2")
    rc = main([*inputs, "--out", two, "--tokenizer", folder, "--clip-frames", "5", "--max-frames-per-video", "10",
               "--resize-short", "72", "--crop", "32x48", "--maxcount", "3", "--workers", "2", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "wrote 4 clips (20 frames) from 2 inputs into 2 shards" in capsys.readouterr().out
    for name in sorted(os.listdir(one)):
        assert open(os.path.join(one, name), "rb").read() == open(os.path.join(two, name), "rb").read(), name


def test_default_crop_is_the_largest_multiple_of_the_stride(tmp_path, tok: tuple[str, CausalVAE]) -> None:
    out = str(tmp_path / "out")
    write_latent_shards([BIKES], out, tokenizer=tok[0], clip_frames=1, max_frames_per_video=1, resize_short=36, **QUIET)
    (sample,) = read_samples(out)
    meta = LatentMeta.from_json(sample["json"])  # bikes at short side 36: 84 x 36 -> 80 x 32
    assert (meta.width, meta.height, meta.crop_left, meta.crop_top, meta.crop_width, meta.crop_height) == (
        84, 36, 2, 2, 80, 32)
    assert meta.latent_shape == (4, 1, 4, 10)


def test_bad_options_are_refused_clearly(tmp_path, tok: tuple[str, CausalVAE], capsys) -> None:
    folder, _ = tok
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=r"clip_frames=6 must be 1 \+ 4k for the causal tokenizer \(e.g. 5 or 9\)"):
        write_latent_shards([CARPHONE], out, tokenizer=folder, clip_frames=6, **QUIET)
    with pytest.raises(ValueError, match="crop 60x60 must be a multiple of the tokenizer's stride 8"):
        write_latent_shards([CARPHONE], out, tokenizer=folder, clip_frames=5, crop=60, **QUIET)
    with pytest.raises(ValueError, match="tokenizer.json is missing"):
        write_latent_shards([CARPHONE], out, tokenizer=str(tmp_path), clip_frames=5, **QUIET)
    with pytest.raises(NothingWrittenError) as excinfo:  # a crop bigger than the frames: that input is skipped
        write_latent_shards([CARPHONE], out, tokenizer=folder, clip_frames=1, crop=256, max_frames_per_video=1, **QUIET)
    assert "smaller than the crop 256x256" in excinfo.value.index.skipped[0]["reason"]
    assert main([CARPHONE, "--out", out, "--tokenizer", folder, "--clip-frames", "8", "--no-progress"]) == 2
    assert "must be 1 + 4k" in capsys.readouterr().err


# ---- reading -------------------------------------------------------------------------------


def make_dm(shards: object, **kw: object) -> LatentDataModule:
    args: dict = dict(train_shards=shards, val_shards=shards, batch_size=2, num_workers=0, samples_per_epoch=6,
                      rank=0, world_size=1)
    args.update(kw)
    return LatentDataModule(**args)


def test_batches_window_crop_flip_and_val_is_the_stored_latent(latent_dir: str, tok: tuple[str, CausalVAE]) -> None:
    stored = {s["__key__"]: stored_latent(s).astype(np.float32) for s in read_samples(latent_dir)}
    dm = make_dm(latent_dir, latent_frames=1, crop_size=(4, 6), flip=True, tokenizer_fingerprint=tok[0])
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    flips = set()
    for batch in batches:
        latent = batch["latent"]
        assert latent.dtype == torch.float32 and latent.shape == (2, 4, 1, 4, 6) and latent.is_contiguous()
        for i, meta in enumerate(batch["meta"]):
            s, t, l = meta["latent_window_start"], meta["latent_crop_top"], meta["latent_crop_left"]
            expected = stored[batch["key"][i]][:, s : s + 1, t : t + 4, l : l + 6]
            if meta["flipped"]:
                expected = expected[..., ::-1]
            flips.add(meta["flipped"])
            np.testing.assert_array_equal(latent[i].numpy(), expected)
    assert flips == {True, False}
    val = list(dm.val_dataloader())
    again = list(dm.val_dataloader())
    assert [b["key"] for b in val] == [b["key"] for b in again] and sum(len(b["key"]) for b in val) == 4
    for batch in val:  # deterministic: the first latent frame, the centre crop, no flip
        assert batch["latent"].shape == (2, 4, 1, 4, 6)
        for i, key in enumerate(batch["key"]):
            np.testing.assert_array_equal(batch["latent"][i].numpy(), stored[key][:, :1, 2:6, 1:7])
    whole = [b for b in make_dm(latent_dir).val_dataloader()]  # no window, no crop: the stored latents
    for batch in whole:
        assert batch["latent"].shape == (2, 4, 2, 8, 8)
        for i, key in enumerate(batch["key"]):
            np.testing.assert_array_equal(batch["latent"][i].numpy(), stored[key])


def test_another_tokenizers_latents_and_frame_shards_are_refused(tmp_path, latent_dir: str) -> None:
    other = str(tmp_path / "other_tokenizer")
    make_tokenizer(other, seed=1)
    wrong = resolve_fingerprint(other)
    with pytest.raises(TokenizerMismatch, match="were made by tokenizer"):
        make_dm(latent_dir, tokenizer_fingerprint=other).setup("fit")
    # no index.json beside the shards: the first sample tells
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in os.listdir(latent_dir):
        if name.endswith(".tar"):
            shutil.copy(os.path.join(latent_dir, name), bare / name)
    with pytest.raises(TokenizerMismatch):
        make_dm(str(bare), tokenizer_fingerprint=wrong).setup("validate")
    # shards behind a pipe cannot be checked at setup: the first sample read refuses them
    dm = make_dm(f"pipe:cat {bare}/shard-000000.tar", tokenizer_fingerprint=wrong)
    dm.setup("validate")
    with pytest.raises(TokenizerMismatch, match="re-shard with gvc-shard --tokenizer"):
        next(iter(dm.val_dataloader()))
    frames = str(tmp_path / "frames")
    write_shards([CARPHONE], frames, clip_frames=5, max_frames_per_video=5, **QUIET)
    with pytest.raises(ValueError, match="are frame shards"):
        make_dm(frames).setup("validate")
    with pytest.raises(ValueError, match="neither a sha256 fingerprint"):
        make_dm(latent_dir, tokenizer_fingerprint="abc")


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_and_damaged_latent_are_skipped_and_counted(tmp_path, latent_dir: str, workers: int) -> None:
    good = read_samples(latent_dir)
    damaged = dict(good[0], __key__="damaged-000000")
    damaged["latent.f16"] = bytes([damaged["latent.f16"][0] ^ 0x55]) + damaged["latent.f16"][1:]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in (damaged, good[1]):
            for field in ("json", "latent.f16"):
                info = tarfile.TarInfo(f"{sample['__key__']}.{field}")
                info.size = len(sample[field])
                tar.addfile(info, io.BytesIO(sample[field]))
    (tmp_path / "mixed.tar").write_bytes(buf.getvalue())
    path = os.path.join(latent_dir, "shard-000001.tar")  # clips 10 and 15
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]  # carphone_pristine-000015.latent.f16
    cut = open(path, "rb").read()[: last.offset_data + last.size // 2]  # inside a member, as a network cut
    (tmp_path / "truncated.tar").write_bytes(cut)
    dm = make_dm([str(tmp_path / "mixed.tar"), str(tmp_path / "truncated.tar")], num_workers=workers)
    keys = [k for batch in dm.val_dataloader() for k in batch["key"]]
    assert "carphone_pristine-000005" in keys and "damaged-000000" not in keys
    assert set(keys) <= {"carphone_pristine-000005", "carphone_pristine-000010"}
    stats = dm.skip_stats()
    assert stats["decode_error"] == 1 and stats["tar_error"] >= 1 and stats["other"] == 0
