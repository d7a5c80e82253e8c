"""A codec folder with any byte changed, a forged config, a wrong JSON type or a path out of the
folder is refused by the codec loading path before anything is built: one ComponentError, and
exit status 2 with one line from `gvc`.

The byte tests run on a copy of the reference codec (checkpoints/latent_tiny), mutating each
file in place and restoring it. Refusals come from checks on the files alone, so thousands of
cases take seconds; a spy fails the test if any module is built for real first.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from gvc_train.codecs import cli
from gvc_train.codecs.codec_folder import CodecFolderError, codec_fingerprint, load_codec_components, read_codec_json
from gvc_train.component_checks import sealed_json
from gvc_train.components import ComponentError, VerifiedComponent, component_fingerprint

from conftest import peak_rss_growth

REFERENCE = Path(__file__).resolve().parents[1] / "checkpoints" / "latent_tiny"
CODEC_FILES = ("codec.json", "tokenizer.json", "tokenizer.safetensors", "latent_codec.json", "latent_codec.safetensors")
JSON_FILES = ("codec.json", "tokenizer.json", "latent_codec.json")


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "codec"
    out.mkdir()
    for name in CODEC_FILES:
        shutil.copyfile(REFERENCE / name, out / name)
    return out


@pytest.fixture()
def nothing_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail if a component is built (its first real allocation) during the block."""

    def build(self: VerifiedComponent, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"component {self.name!r} was built: the folder passed every check")

    monkeypatch.setattr(VerifiedComponent, "build", build)
    yield


def _refused(folder: Path) -> str:
    """The one-line reason the codec loading path gives for ``folder``."""
    with pytest.raises(ComponentError) as err:
        load_codec_components(folder)
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_the_reference_copy_loads(folder: Path) -> None:
    meta, modules = load_codec_components(folder)
    assert set(modules) == {"tokenizer", "latent_codec"}
    assert meta["fingerprint"] == read_codec_json(REFERENCE)["fingerprint"]


def test_every_byte_of_every_json_file_changed_is_refused_before_building(folder: Path, nothing_built: None) -> None:
    cases, reasons, start = 0, set(), time.perf_counter()
    for name in JSON_FILES:
        path = folder / name
        original = path.read_bytes()
        with open(path, "r+b") as f:
            for i, byte in enumerate(original):
                for new in {byte ^ 0x01, 0x20} - {byte}:  # a flipped bit; a space (an edit that may keep the JSON)
                    f.seek(i)
                    f.write(bytes([new]))
                    f.flush()
                    try:
                        message = _refused(folder)
                    except pytest.fail.Exception:
                        raise AssertionError(f"{name}: byte {i} {byte:#04x} -> {new:#04x} was accepted") from None
                    reasons.add(message.split(" ", 1)[1][:40])
                    cases += 1
                f.seek(i)
                f.write(original[i : i + 1])
        assert path.read_bytes() == original
    elapsed = time.perf_counter() - start
    assert cases > 2 * sum((REFERENCE / n).stat().st_size for n in JSON_FILES) * 0.6
    assert elapsed < 60, f"{cases} cases took {elapsed:.1f} s: checks should fail before building"
    print(f"{cases} JSON byte edits refused in {elapsed:.1f} s; {len(reasons)} distinct reasons")


def _weight_positions(size: int, header_end: int, rng: random.Random, count: int) -> list[int]:
    """Every byte of the length prefix, a spread over the header, the rest over the data."""
    header = sorted(set(range(8)) | set(rng.sample(range(8, header_end), min(40, header_end - 8))) | {header_end - 1})
    data = sorted(set(rng.sample(range(header_end, size), count - len(header) - 1)) | {size - 1})
    return header + data


@pytest.mark.parametrize("name", ["tokenizer.safetensors", "latent_codec.safetensors"])
def test_a_sample_of_weight_bytes_changed_is_refused_before_building(folder: Path, nothing_built: None, name: str) -> None:
    path = folder / name
    original = path.read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    positions = _weight_positions(len(original), header_end, random.Random(name), 100)
    start = time.perf_counter()
    with open(path, "r+b") as f:
        for i in positions:
            f.seek(i)
            f.write(bytes([original[i] ^ 0x01]))
            f.flush()
            try:
                _refused(folder)
            except pytest.fail.Exception:
                raise AssertionError(f"{name}: byte {i} flipped was accepted") from None
            f.seek(i)
            f.write(original[i : i + 1])
    assert path.read_bytes() == original
    assert time.perf_counter() - start < 60


def _forge_component(folder: Path, name: str, **config: Any) -> None:
    """What a careful forger does: edit the config, recompute the fingerprint and checksum of
    the component and of codec.json. Only the checks against the weights can refuse it."""
    path = folder / f"{name}.json"
    meta = json.loads(path.read_text())
    meta["config"].update(config)
    meta.pop("checksum")
    meta["fingerprint"] = component_fingerprint(meta["class"], meta["config"], meta["weights_sha256"])
    path.write_text(sealed_json(meta))
    prints = dict(json.loads((folder / "codec.json").read_text())["component_fingerprints"], **{name: meta["fingerprint"]})
    _forge_codec_json(folder, component_fingerprints=prints, fingerprint=codec_fingerprint("latent", prints))


def test_a_forged_huge_config_fails_fast_without_allocating(folder: Path, nothing_built: None) -> None:
    # 4096 base channels x mults up to 4: one conv alone would be 29 GB of float32
    _forge_component(folder, "tokenizer", base_channels=4096)
    from gvc_train.components import registered_components

    registered_components()  # the model modules' imports are not the refusal's cost
    start = time.perf_counter()
    with peak_rss_growth() as growth:  # this call's own peak (ru_maxrss would hide anything below the session's)
        message = _refused(folder)
    assert time.perf_counter() - start < 5
    assert growth.mb < 200, f"refusing the forged config peaked {growth.mb:.0f} MB above its start"
    assert "weights do not fit the config" in message, message


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("tokenizer", {"base_channels": 10**9}, r"'base_channels' = 1000000000 is out of bounds"),
        ("tokenizer", {"base_channels": "8"}, "'base_channels' must be an integer"),
        ("tokenizer", {"channel_mults": 4}, "'channel_mults' must be a list"),
        ("tokenizer", {"channel_mults": [1] * 40}, r"'channel_mults': 40 items, out of bounds"),
        ("tokenizer", {"temporal_downsample": [0, 1, 1]}, r"'temporal_downsample'\[0\] must be a boolean"),
        ("tokenizer", {"norm": "batch"}, "'norm' must be one of"),
        ("tokenizer", {"dropout": 2.0}, "out of bounds"),
        ("tokenizer", {"latent_channels": 17}, "weights do not fit the config"),
        ("tokenizer", {"num_res_blocks": 2}, "weights do not fit the config"),
        ("latent_codec", {"num_qualities": 0}, "out of bounds"),
        ("latent_codec", {"gain_range": [1.0]}, "out of bounds"),
        ("latent_codec", {"train_quantizer": None}, "must be one of"),
        ("latent_codec", {"channels": 33}, "weights do not fit the config"),
        ("latent_codec", {"unknown": 1}, "unknown argument"),
    ],
)
def test_forged_configs_are_refused_before_building(folder: Path, nothing_built: None, name: str, config: dict, message: str) -> None:
    _forge_component(folder, name, **config)
    assert pytest.raises(ComponentError, load_codec_components, folder).match(message)


def _forge_codec_json(folder: Path, **changes: Any) -> None:
    path = folder / "codec.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    meta.pop("checksum")
    path.write_text(sealed_json(meta))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"family": 5}, "'family' must be a string"),
        ({"family": "other"}, "unknown codec family"),
        ({"components": ["tokenizer.json"]}, "'components' must be an object"),
        ({"components": {"tokenizer": "../x.json", "latent_codec": "latent_codec.json"}}, "components are"),
        ({"component_fingerprints": {"tokenizer": "0" * 64}}, "component_fingerprints must give"),
        ({"component_fingerprints": None}, "'component_fingerprints' must be an object"),
        ({"fingerprint": "0" * 64}, "fingerprint does not match its components"),
        ({"fingerprint": 12}, "'fingerprint' must be a string"),
        ({"format_version": 1}, "format version 1"),
        ({"format_version": True}, "format_version"),
        ({"provenance": []}, "'provenance' must be an object"),
    ],
)
def test_malformed_codec_json_is_one_codec_folder_error(folder: Path, nothing_built: None, changes: dict, message: str) -> None:
    _forge_codec_json(folder, **changes)
    err = pytest.raises(CodecFolderError, load_codec_components, folder)
    assert err.match(message) and "\n" not in str(err.value)


def test_a_component_of_another_codec_is_refused(folder: Path, nothing_built: None) -> None:
    meta = json.loads((folder / "codec.json").read_text())
    other = dict(meta["component_fingerprints"], tokenizer="1" * 64)
    _forge_codec_json(folder, component_fingerprints=other, fingerprint=codec_fingerprint("latent", other))
    assert "not the one codec.json was written for" in _refused(folder)


@pytest.mark.parametrize("weights", ["../latent_codec.safetensors", "/tmp/x.safetensors", "sub/x.safetensors", ".."])
def test_a_weights_name_out_of_the_folder_is_refused(folder: Path, nothing_built: None, weights: str) -> None:
    path = folder / "latent_codec.json"
    meta = json.loads(path.read_text())
    meta.update(weights=weights)
    meta.pop("checksum")
    path.write_text(sealed_json(meta))  # the fingerprint does not cover the name: its bytes are what count
    shutil.copyfile(folder / "latent_codec.safetensors", folder.parent / "latent_codec.safetensors")
    assert "not a plain file name inside the folder" in _refused(folder)


@pytest.mark.parametrize("name", ["codec.json", "tokenizer.json", "latent_codec.safetensors"])
def test_links_out_of_the_folder_are_refused(folder: Path, nothing_built: None, name: str) -> None:
    outside = folder.parent / f"outside_{name}"
    os.replace(folder / name, outside)
    os.symlink(outside, folder / name)  # the very same bytes, through a link that leads out
    assert "leads outside" in _refused(folder)


def test_a_link_to_a_file_inside_the_folder_is_fine(folder: Path) -> None:
    os.replace(folder / "tokenizer.safetensors", folder / "weights.bin")
    os.symlink("weights.bin", folder / "tokenizer.safetensors")
    load_codec_components(folder)


def test_missing_files_and_folders(folder: Path, tmp_path: Path) -> None:
    assert "no codec folder" in _refused(tmp_path / "nowhere")
    (folder / "latent_codec.safetensors").unlink()
    assert "missing" in _refused(folder)
    (folder / "tokenizer.json").unlink()
    assert "missing" in _refused(folder)
    (folder / "codec.json").unlink()
    assert "codec.json is missing" in _refused(folder)


# ---- the command line: exit status 2, one line ------------------------------------------------


@pytest.fixture()
def frames(tmp_path: Path) -> Path:
    """5 PNG frames, 48x32, cut from carphone."""
    from PIL import Image

    from gvc_train.data.sample_videos import sample_video
    from gvc_train.data.video_io import VideoReader

    out = tmp_path / "frames"
    out.mkdir()
    with VideoReader(sample_video("carphone_pristine.mp4")) as reader:
        for i, frame in enumerate(reader.frames(5)):
            Image.fromarray(frame[40:72, 60:108]).save(out / f"im{i + 1}.png")
    return out


def _gvc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_gvc_refuses_an_edited_codec_with_exit_2_and_one_line(
    folder: Path, frames: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "genuine.gvc"
    assert _gvc(capsys, "encode", str(frames), str(stream), "--codec", str(folder), "--quality", "1")[0] == 0
    tokenizer = folder / "tokenizer.json"
    original = tokenizer.read_text()
    # the case: one integer of the tokenizer's config changed by hand
    tokenizer.write_text(original.replace('"norm_groups": 8', '"norm_groups": 4'))
    for argv in (
        ("decode", str(stream), str(tmp_path / "out.y4m"), "--codec", str(folder)),
        ("encode", str(frames), str(tmp_path / "again.gvc"), "--codec", str(folder), "--quality", "1"),
    ):
        code, err = _gvc(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("gvc: error: ") and "edited after export" in err, err
    assert not (tmp_path / "out.y4m").exists() and not (tmp_path / "again.gvc").exists()
    tokenizer.write_text(original)
    _forge_component(folder, "tokenizer", base_channels=4096)  # a careful forger: refused all the same
    code, err = _gvc(capsys, "decode", str(stream), str(tmp_path / "out.y4m"), "--codec", str(folder))
    assert code == 2 and err.count("\n") == 1 and "weights do not fit the config" in err, err
    _forge_codec_json(folder, family=["latent"])
    code, err = _gvc(capsys, "encode", str(frames), str(tmp_path / "x.gvc"), "--codec", str(folder), "--quality", "1")
    assert code == 2 and err.count("\n") == 1 and "'family' must be a string" in err, err
