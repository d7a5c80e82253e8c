"""Controls in shards (``gvc-shard --controls``) and in batches (``VideoDataModule(controls=...)``).

A few frames of carphone and bikes; pose (and segmentation, once it has a coder) through the
mediapipe worker in one tiny case. The reference for every batch is the extractor + coder round
trip on the same frames, read from the source video.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch

from gvc_train.coding.controls.registry import BUILTIN_CODERS, build_coder
from gvc_train.controls.registry import LAYOUTS, build_extractor
from gvc_train.data.control_batch import TIME_AXIS
from gvc_train.data.datamodule import VideoDataModule
from gvc_train.data.sample_format import ShardIndex
from gvc_train.data.sample_videos import sample_video
from gvc_train.data.shard_cli import main
from gvc_train.data.shard_controls import control_specs
from gvc_train.data.shard_writer import write_shards
from gvc_train.data.video_io import read_frames
from gvc_train.frames import frames_to_tensor

CARPHONE = str(sample_video("carphone_pristine.mp4"))
BIKES = str(sample_video("bikes.mp4"))
CAPTION = "a man talks on a phone in a car"
CLIP = 5  # frames per stored clip


def captioned_carphone(folder: Path) -> str:
    """carphone with a caption beside it (a link to the video and its .txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "carphone.mp4"
    video.symlink_to(CARPHONE)
    (folder / "carphone.txt").write_text(CAPTION)
    return str(video)


def round_trip(name: str, spec: Any, frames: Any, caption: str | None = None) -> Any:
    """What the shard should give back: the extractor's control through its coder."""
    extractor = build_extractor(name, **spec.extractor)
    coder = build_coder(name, **spec.coder)
    return coder.decode(coder.encode(extractor.extract(frames_to_tensor(frames)[0], caption)))


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def members(shard: str) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def rewrite(shard: str, change: dict[str, bytes | None]) -> None:
    """The shard again with members replaced (bytes) or dropped (None), in the same order."""
    old = members(shard)
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in old.items():
            data = change.get(name, data)
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def loader(shards: str, controls: list[str], **kw: Any) -> tuple[VideoDataModule, list[dict[str, Any]]]:
    args: dict[str, Any] = dict(
        val_shards=shards, clip_frames=CLIP, crop_size=None, flip=False, controls=controls, batch_size=2,
        num_workers=0, latent_time_stride=None, rank=0, world_size=1,
    )  # fmt: skip
    args.update(kw)
    dm = VideoDataModule(**args)
    return dm, list(dm.val_dataloader())


@pytest.fixture(scope="module")
def carphone_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, tuple[Any, ...]]:
    """3 clips of 5 carphone frames with luma (at factor 8), edges, flow and caption."""
    root = tmp_path_factory.mktemp("control_shards")
    video = captioned_carphone(root / "in")
    specs = control_specs(["luma", "edges", "flow", "caption"], {"luma": {"extractor": {"factor": 8}}, "flow": {"coder": {"step": 0.25}}})
    out = str(root / "out")
    write_shards([video], out, clip_frames=CLIP, max_frames_per_video=3 * CLIP, maxcount=2, controls=specs, log=lambda _: None)
    return out, specs


def test_shard_with_controls_reads_back_as_the_extractor_and_coder_round_trip(carphone_shards) -> None:
    out, specs = carphone_shards
    frames = read_frames(CARPHONE, count=3 * CLIP)
    dm, batches = loader(out, ["luma", "edges", "flow", "caption"])
    assert [len(b["key"]) for b in batches] == [2, 1]  # one batch per shard (maxcount 2)
    seen = 0
    for batch in batches:
        controls = batch["controls"]
        assert controls["luma"].shape == (len(batch["key"]), CLIP, 144 // 8, 176 // 8) and controls["luma"].dtype == torch.uint8
        assert controls["edges"].shape == (len(batch["key"]), CLIP, 144, 176) and controls["edges"].dtype == torch.bool
        assert controls["flow"].shape == (len(batch["key"]), CLIP - 1, 2, 144, 176) and controls["flow"].dtype == torch.float32
        assert controls["caption"] == [CAPTION] * len(batch["key"])
        for i, meta in enumerate(batch["meta"]):
            clip = frames[meta["first_frame"] : meta["first_frame"] + CLIP]
            for spec in specs:
                got = controls[spec.name][i]
                assert_same(got, round_trip(spec.name, spec, clip, CAPTION))
            seen += 1
    assert seen == 3 and dm.skip_stats()["total"] == 0


def test_sample_json_and_index_hold_every_setting_and_the_bytes(carphone_shards) -> None:
    out, specs = carphone_shards
    index = ShardIndex.load(out)
    raw_index = json.loads(Path(out, "index.json").read_text())
    assert raw_index["controls"] == {s.name: {"extractor": s.extractor, "coder": s.coder} for s in specs}
    assert raw_index["controls"]["luma"]["extractor"] == {"factor": 8}  # given
    assert raw_index["controls"]["flow"]["extractor"] == {"factor": 1, "preset": "medium"}  # defaults, spelled out
    assert raw_index["controls"]["flow"]["coder"]["step"] == 0.25
    found = members(index.shard_paths(out)[0])
    meta = json.loads(found["carphone-000000.json"])
    assert set(meta["controls"]) == {"luma", "edges", "flow", "caption"}
    for spec in specs:
        entry = meta["controls"][spec.name]
        assert (entry["extractor"], entry["coder"]) == (spec.extractor, spec.coder)
        assert entry["bytes"] == len(found[f"carphone-000000.ctrl.{spec.name}"]) > 0
    assert found["carphone-000000.txt"].decode() == CAPTION


def test_training_windows_cut_the_controls_with_the_frames(carphone_shards) -> None:
    out, specs = carphone_shards
    dm = VideoDataModule(
        train_shards=out, clip_frames=3, crop_size=None, flip=False, controls=["luma", "flow", "caption"],
        batch_size=3, num_workers=0, samples_per_epoch=6, latent_time_stride=None, rank=0, world_size=1, seed=3,
    )  # fmt: skip
    frames = read_frames(CARPHONE, count=3 * CLIP)
    luma, flow = (next(s for s in specs if s.name == name) for name in ("luma", "flow"))
    wholes = {
        first: {s.name: round_trip(s.name, s, frames[first : first + CLIP]) for s in (luma, flow)}
        for first in range(0, 3 * CLIP, CLIP)
    }
    starts = set()
    for batch in dm.train_dataloader():
        assert batch["controls"]["caption"] == [CAPTION] * 3
        for i, meta in enumerate(batch["meta"]):
            first, start = meta["first_frame"], meta["window_start"]
            starts.add(start)
            whole = wholes[first]
            assert torch.equal(batch["controls"]["luma"][i], whole["luma"][start : start + 3])
            assert torch.equal(batch["controls"]["flow"][i], whole["flow"][start : start + 2])
            assert torch.equal(batch["video"][i], frames_to_tensor(frames[first + start : first + start + 3])[0])
    assert len(starts) > 1  # random windows were drawn


def test_damaged_or_missing_controls_are_skipped_and_counted(carphone_shards, tmp_path: Path) -> None:
    out, _ = carphone_shards
    copy = tmp_path / "shards"
    copy.mkdir()
    for name in ShardIndex.load(out).shard_paths(out):
        (copy / os.path.basename(name)).write_bytes(Path(name).read_bytes())
    first = str(copy / "shard-000000.tar")
    luma = members(first)["carphone-000000.ctrl.luma"]
    damaged = luma[:20] + bytes([luma[20] ^ 0x5A]) + luma[21:]  # same length: the coder's check finds it
    rewrite(first, {"carphone-000000.ctrl.luma": damaged, "carphone-000005.ctrl.edges": None})
    # only the requested controls are read: the damage in luma costs nothing without it
    _, batches = loader(str(copy), ["caption"])
    assert sum(len(b["key"]) for b in batches) == 3
    dm, batches = loader(str(copy), ["luma", "edges"])
    assert [k for b in batches for k in b["key"]] == ["carphone-000010"]  # the rest of the shards still load
    stats = dm.skip_stats()
    assert (stats["control_error"], stats["missing_control"], stats["total"]) == (1, 1, 2)
    # a member cut short disagrees with the bytes the json records
    rewrite(first, {"carphone-000000.ctrl.luma": luma[:-3]})
    dm, _ = loader(str(copy), ["luma"])
    assert dm.skip_stats()["control_error"] == 1


def test_pose_through_the_mediapipe_worker(tmp_path: Path) -> None:
    names = ["pose"] + (["segmentation"] if "segmentation" in BUILTIN_CODERS else [])
    specs = control_specs(names)
    out = str(tmp_path / "out")
    write_shards([CARPHONE], out, clip_frames=3, max_frames_per_video=3, controls=specs, log=lambda _: None)
    _, (batch,) = loader(out, names, clip_frames=3)
    frames = read_frames(CARPHONE, count=3)
    pose = batch["controls"]["pose"]
    assert isinstance(pose, list) and len(pose) == 1 and len(pose[0]) == 3
    assert all(p.shape == (1, 33, 3) for p in pose[0])  # carphone has a person in every frame
    for spec in specs:
        got = batch["controls"][spec.name]
        assert_same(got[0], round_trip(spec.name, spec, frames))


def test_worker_processes_write_the_same_control_shards(tmp_path: Path) -> None:
    specs = control_specs(["luma", "edges", "flow"], {"flow": {"extractor": {"preset": "fast"}}})
    opts: dict[str, Any] = dict(clip_frames=3, max_frames_per_video=3, resize_short=72, controls=specs, log=lambda _: None)
    one = write_shards([CARPHONE, BIKES], str(tmp_path / "w1"), workers=1, **opts)
    two = write_shards([CARPHONE, BIKES], str(tmp_path / "w2"), workers=2, **opts)
    assert one == two
    for a, b in zip(one.shard_paths(tmp_path / "w1"), two.shard_paths(tmp_path / "w2")):
        assert Path(a).read_bytes() == Path(b).read_bytes()


# ---- refusals, each in one line ---------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_refuses_bad_controls_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    cases = {
        ("--controls", "luma,optical"): "unknown control 'optical'; known: caption, edges, flow, luma, pose, segmentation",
        ("--controls", "luma,luma"): "named twice",
        ("--controls", "luma", "--control-settings", '{"edges": {}}'): "settings given for control 'edges'",
        ("--controls", "luma", "--control-settings", '{"luma": {"extractor": {"factr": 2}}}'): "factr",
        ("--controls", "luma", "--control-settings", "{"): "--control-settings is not JSON",
        ("--control-settings", "{}"): "--control-settings needs --controls",
        ("--controls", "luma", "--tokenizer", str(tmp_path)): "not to latent shards",
    }
    for args, message in cases.items():
        code, err = run_cli(capsys, CARPHONE, "--out", out, *args)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (args, err)
    # caption with neither the input's own caption nor a captioner: refused before any work
    code, err = run_cli(capsys, CARPHONE, "--out", out, "--controls", "luma,caption")
    assert code == 2 and len(err.splitlines()) == 1 and "1 of 1 inputs have no caption" in err and "model_path" in err
    assert not os.path.exists(out)


def test_data_module_refuses_what_it_cannot_serve_exactly() -> None:
    assert set(TIME_AXIS) == set(LAYOUTS)  # every control has its place in time
    common: dict[str, Any] = dict(val_shards="x", clip_frames=CLIP, latent_time_stride=None)
    with pytest.raises(ValueError, match="whole-frame"):
        VideoDataModule(controls=["luma"], crop_size=64, flip=False, **common)
    with pytest.raises(ValueError, match="whole-frame"):
        VideoDataModule(controls=["luma"], crop_size=None, flip=True, **common)
    with pytest.raises(ValueError, match="frame_stride 1"):
        VideoDataModule(controls=["flow"], crop_size=None, flip=False, frame_stride=2, **common)
    with pytest.raises(ValueError, match="unknown control 'depth'"):
        VideoDataModule(controls=["depth"], crop_size=None, flip=False, **common)
    assert VideoDataModule(crop_size=64, **common).controls == ()  # no controls: crops and flips as before


# ---- gvc-shard --crop: frames and controls of one size -------------------------------------


def test_cropped_frame_shards_have_the_crop_size_in_frames_controls_and_meta(tmp_path: Path) -> None:
    video = captioned_carphone(tmp_path / "in")  # 176x144
    specs = control_specs(["luma", "edges", "caption"], {"luma": {"extractor": {"factor": 8}}})
    out = str(tmp_path / "out")
    write_shards([video], out, clip_frames=CLIP, max_frames_per_video=CLIP, crop=(64, 96), controls=specs, log=lambda _: None)
    assert json.loads(Path(out, "index.json").read_text())["crop"] == [64, 96]
    dm, [batch] = loader(out, ["luma", "edges", "caption"])
    assert batch["video"].shape == (1, 3, CLIP, 64, 96)
    assert batch["controls"]["luma"].shape == (1, CLIP, 64 // 8, 96 // 8)
    assert batch["controls"]["edges"].shape == (1, CLIP, 64, 96)
    meta = batch["meta"][0]
    assert (meta["width"], meta["height"], list(meta["shard_crop"])) == (96, 64, [40, 40, 64, 96])  # centred in 144x176
    centre = read_frames(CARPHONE, count=CLIP)[:, 40:104, 40:136]
    assert torch.equal(batch["video"][0], frames_to_tensor(centre)[0])  # the frames are the centre crop ...
    for spec in specs:  # ... and the controls were extracted from it
        assert_same(batch["controls"][spec.name][0], round_trip(spec.name, spec, centre, CAPTION))


def test_a_crop_bigger_than_the_frames_skips_that_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")  # carphone is 176x144, bikes 640x272: only bikes fits 200x200
    code, _ = run_cli(capsys, CARPHONE, BIKES, "--out", out, "--crop", "200", "--clip-frames", "2",
                      "--max-frames-per-video", "2", "--controls", "luma", "--workers", "1", "--no-progress")  # fmt: skip
    assert code == 0
    index = ShardIndex.load(out)
    assert [s["source"] for s in index.sources] == [BIKES] and index.total_clips == 1
    assert index.skipped == [{"source": CARPHONE, "reason": "frames of 144x176 are smaller than the crop 200x200"}]


def test_decoded_controls_are_kept_by_their_bytes_within_the_budget(monkeypatch) -> None:
    import gvc_train.data.control_batch as control_batch

    monkeypatch.setattr(control_batch, "_decoded_cache", control_batch.OrderedDict())
    monkeypatch.setattr(control_batch, "_decoded_bytes", 0)
    calls = []

    class Coder:
        def decode(self, data: bytes):
            calls.append(data)
            return torch.zeros(len(data), dtype=torch.uint8)

    monkeypatch.setattr(control_batch, "_coder", lambda name, settings: Coder())
    monkeypatch.setattr(control_batch, "DECODED_CACHE_BYTES", 800)
    first = control_batch._decode_cached("luma", "{}", b"a" * 100)
    assert control_batch._decode_cached("luma", "{}", b"a" * 100) is first and len(calls) == 1  # a hit
    control_batch._decode_cached("luma", '{"x": 1}', b"a" * 100)  # other settings: another entry
    assert len(calls) == 2
    for i in range(8):
        control_batch._decode_cached("luma", "{}", bytes([i]) * 100)
    assert control_batch._decoded_bytes <= 800 and len(control_batch._decoded_cache) == 8  # oldest out
    control_batch._decode_cached("luma", "{}", b"b" * 101)  # over an eighth of the budget: never kept
    assert (("luma", "{}", b"b" * 101)) not in control_batch._decoded_cache
