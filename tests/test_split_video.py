"""``python -m gvc_train.data.split_video``: a video cut by frame range into PNG folders that hold
the pixels gvc-shard makes of the same frames, with ranges that never overlap."""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest

from gvc_train.data.clip_codec import decode_clip
from gvc_train.data.sample_format import ClipMeta, frames_field
from gvc_train.data.shard_writer import write_shards
from gvc_train.data.split_video import SPLITS_FILE, main, parse_range, split_video
from gvc_train.data.video_io import read_frames
from test_shards import read_samples

FRAMES, WIDTH, HEIGHT, FPS = 24, 96, 64, 10


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    """24 frames of 96x64 at 10 fps, coded 4:2:0 like real footage: a moving ramp and a block."""
    path = str(tmp_path_factory.mktemp("split") / "moving.mp4")
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for t in range(FRAMES):
            frame_HWC = np.stack([(x * 2 + t * 5) % 256, (y * 3) % 256, np.full_like(x, 40 + t * 8)], -1).astype(np.uint8)
            frame_HWC[10:30, 3 * t : 3 * t + 20] = 250
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame_HWC, format="rgb24")))
        container.mux(stream.encode())
    return path


def png_names(folder: str) -> list[str]:
    return sorted(os.listdir(folder))


def shard_frames(out: str) -> dict[int, np.ndarray]:
    """Every frame of every clip in a shard folder, by its frame number in its source (a PNG folder: from its first PNG)."""
    frames: dict[int, np.ndarray] = {}
    for sample in read_samples(out):
        field = frames_field(sample)
        clip_THWC = decode_clip(field.split(".", 1)[1], sample[field])
        start = ClipMeta.from_json(sample["json"]).first_frame
        frames.update({start + i: frame for i, frame in enumerate(clip_THWC)})
    return frames


def test_ranges_become_disjoint_png_folders_named_by_source_frame(video, tmp_path):
    out = tmp_path / "splits"
    ranges = [parse_range(t) for t in ("heldout=16:24", "train=0:12", "val=12:16")]
    split_video(video, ranges, out, resize_short=32)
    names = {r: png_names(str(out / r)) for r in ("train", "val", "heldout")}
    assert {r: len(n) for r, n in names.items()} == {"train": 12, "val": 4, "heldout": 8}
    assert names["heldout"][0] == "000016.png" and names["train"][-1] == "000011.png"
    all_names = [n for ns in names.values() for n in ns]
    assert len(set(all_names)) == len(all_names) == FRAMES  # no frame in two folders, none lost
    record = json.loads((out / SPLITS_FILE).read_text())
    assert record["ranges"] == {"train": [0, 12], "val": [12, 16], "heldout": [16, 24]}
    assert (record["width"], record["height"], record["fps"]) == (48, 32, FPS)
    assert sorted(os.listdir(out)) == sorted([SPLITS_FILE, "heldout", "train", "val"])  # no temporary left


def test_pixels_are_gvc_shards_resize_of_the_same_frames(video, tmp_path):
    out = tmp_path / "splits"
    split_video(video, [parse_range("train=0:12"), parse_range("heldout=12:24")], out, resize_short=32)
    write_shards([video], tmp_path / "v", clip_frames=4, resize_short=32, log=print)
    from_video = shard_frames(str(tmp_path / "v"))
    assert sorted(from_video) == list(range(FRAMES))
    held_THWC = read_frames(out / "heldout")
    assert held_THWC.shape == (12, 32, 48, 3)
    np.testing.assert_array_equal(held_THWC, np.stack([from_video[i] for i in range(12, 24)]))
    # and gvc-shard of a PNG folder (source pixels, 10 fps given) stores exactly those pixels
    index = write_shards([str(out / "train")], tmp_path / "t", clip_frames=4, overlap=2, png_fps=FPS, log=print)
    from_pngs = shard_frames(str(tmp_path / "t"))
    assert sorted(from_pngs) == list(range(12)) and index.sources[0]["fps"] == FPS
    for i, frame in from_pngs.items():
        np.testing.assert_array_equal(frame, from_video[i])


@pytest.mark.parametrize(
    "ranges, says",
    [
        (["a=0:10", "b=8:20"], "ranges a=0:10 and b=8:20 overlap (frames 8..9)"),
        (["a=0:10", "a=10:20"], "range name 'a' is given more than once"),
        (["a=5:5"], "STOP must be after START"),
        (["a=0-5"], "is not NAME=START:STOP"),
        (["a=0:10", "b=20:30"], "range b=20:30 ends past the video's 24 frames (0..23)"),
    ],
)
def test_bad_ranges_are_one_line_and_write_nothing(video, tmp_path, capsys, ranges, says):
    argv = [video, *[a for r in ranges for a in ("--range", r)], "--out", str(tmp_path / "out")]
    try:
        status = main(argv)
    except SystemExit as exc:  # argument errors exit through the parser
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
