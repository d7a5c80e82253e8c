"""Where a text codec's caption comes from (codecs/controlled.py ``_caption``): the ``caption``
option (``gvc encode --caption``), else the sidecar file beside the source (``seq/`` ->
``seq.txt``, as ``gvc-shard`` reads it), else the settings' captioner, else one error line that
names all three. Five frames of the tiny text codec (tests/controlled_codec_fixtures.py): one
generated clip; encoding without ``on_recon`` generates nothing, so each encode is quick."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gvc_train.codecs.base import open_codec
from gvc_train.codecs.cli import main

from controlled_codec_fixtures import write_codec_folder, write_moving_square_clip, write_text_codec_folder

FRAMES = 5


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_codec_folder(tmp_path_factory.mktemp("text_codec"))


@pytest.fixture(scope="module")
def text_codec(text_dir: Path):
    return open_codec(text_dir)


@pytest.fixture()
def clips(tmp_path: Path) -> tuple[Path, Path]:
    """The same frames twice: ``plain/`` without a caption, ``captioned/`` with ``captioned.txt`` beside it."""
    plain = write_moving_square_clip(tmp_path / "plain", frames=FRAMES)
    captioned = Path(shutil.copytree(plain, tmp_path / "captioned"))
    (tmp_path / "captioned.txt").write_text("people on bikes\n", encoding="utf-8")
    return plain, captioned


def _stream(codec, source: Path, out: Path, **options) -> bytes:
    codec.encode(source, out, 0, **options)
    return out.read_bytes()


def test_the_option_wins_over_the_sidecar_and_the_sidecar_is_used_without_it(text_codec, clips, tmp_path: Path) -> None:
    plain, captioned = clips
    from_sidecar = _stream(text_codec, captioned, tmp_path / "a.gvc")
    assert from_sidecar == _stream(text_codec, plain, tmp_path / "b.gvc", caption="people on bikes")
    from_option = _stream(text_codec, captioned, tmp_path / "c.gvc", caption="a man in car")
    assert from_option == _stream(text_codec, plain, tmp_path / "d.gvc", caption="a man in car")
    assert from_option != from_sidecar  # the caption is what differs


def test_no_caption_anywhere_is_one_line_naming_the_three_ways(text_codec, clips, tmp_path: Path) -> None:
    plain, _ = clips
    with pytest.raises(ValueError) as e:
        text_codec.encode(plain, tmp_path / "x.gvc", 0)
    message = str(e.value)
    assert "\n" not in message and "--caption" in message and str(tmp_path / "plain.txt") in message and "model_path" in message
    assert not (tmp_path / "x.gvc").exists()
    with pytest.raises(ValueError, match="non-empty"):
        text_codec.encode(plain, tmp_path / "x.gvc", 0, caption="  ")


def test_controls_without_the_caption_need_none(text_codec, clips, tmp_path: Path) -> None:
    plain, _ = clips
    report = text_codec.encode(plain, tmp_path / "luma.gvc", 0, controls="luma")
    assert report.frames == FRAMES


def test_the_settings_captioner_is_the_last_resort(clips, tmp_path: Path) -> None:
    captioner = tmp_path / "no_captioner"  # not a model folder: reaching it is what is tested
    folder = write_text_codec_folder(tmp_path / "with_captioner", control_settings={"caption": {"extractor": {"model_path": str(captioner)}}})
    plain, _ = clips
    with pytest.raises(ValueError, match=f"no captioner at {captioner}"):
        open_codec(folder).encode(plain, tmp_path / "x.gvc", 0)


def test_gvc_encode_caption_flag(text_dir: Path, text_codec, clips, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain, _ = clips
    out = tmp_path / "cli.gvc"
    assert main(["encode", str(plain), str(out), "--codec", str(text_dir), "--quality", "0", "--caption", "a man in car"]) == 0
    assert out.read_bytes() == _stream(text_codec, plain, tmp_path / "api.gvc", caption="a man in car")
    capsys.readouterr()
    assert main(["encode", str(plain), str(tmp_path / "none.gvc"), "--codec", str(text_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvc: error:") and "--caption" in err and "\n" not in err
    assert not (tmp_path / "none.gvc").exists()


def test_codecs_without_a_text_model_refuse_a_caption_in_one_line(tiny_codec_dir: Path, clips, tmp_path: Path, capsys) -> None:
    plain, _ = clips
    assert main(["encode", str(plain), str(tmp_path / "l.gvc"), "--codec", str(tiny_codec_dir), "--caption", "a man in car"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvc: error:") and "caption" in err and "\n" not in err, err
    mapped = open_codec(write_codec_folder(tmp_path / "maps_only", "controlled"))
    with pytest.raises(ValueError, match="takes no caption"):
        mapped.encode(plain, tmp_path / "m.gvc", 0, caption="a man in car")


def test_gvc_eval_finds_each_videos_sidecar(text_dir: Path, clips, tmp_path: Path, capsys) -> None:
    from gvc_train import gvc_cli

    plain, captioned = clips
    argv = ["eval", "--codec", str(text_dir), "--anchors", "", "--frames", str(FRAMES), "--no-progress", "--control-subsets", "caption;luma"]
    assert gvc_cli.main([*argv, "--video", str(captioned), "--out", str(tmp_path / "r")]) == 0
    [table] = json.loads((tmp_path / "r" / "report.json").read_text())["ablation"]
    assert [set(r["parts"]) - {"keyframes", "other"} for r in table["rows"]] == [{"control caption"}, {"control luma"}]
    assert gvc_cli.main([*argv, "--video", str(plain), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "plain.txt" in err and "\n" not in err
