"""Nothing lost: every command, against a folder of existing files, with every output path its
parser accepts (the input itself, a symlink or hard link to it, its folder, ``.``, ``..``, an
existing folder, an existing file, a new name), with and without ``--overwrite``. No file that
existed before may change unless ``--overwrite`` was given and it was the named output; the
input never changes; no temporary is left behind; every refusal is one line and exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pytest
import torch

from gvc_train.safe_output import TEMP_MARK, OutputError, atomic_output, atomic_write_bytes, atomic_write_with, check_target

Capture = pytest.CaptureFixture[str]

# ---- the mechanism itself ---------------------------------------------------------------------


def test_check_target_refuses_the_input_in_every_disguise(tmp_path: Path) -> None:
    source = tmp_path / "in.mp4"
    source.write_bytes(b"video")
    (tmp_path / "link.mp4").symlink_to(source)
    os.link(source, tmp_path / "hard.mp4")
    for target in (source, tmp_path / "link.mp4", tmp_path / "hard.mp4", tmp_path / "." / "in.mp4", tmp_path / "x" / ".." / "in.mp4"):
        with pytest.raises(OutputError, match="is \\(or holds\\) the input"):
            check_target(target, inputs=[source], overwrite=True)
    with pytest.raises(OutputError, match="holds\\) the input"):  # a folder output that holds the input
        check_target(tmp_path, inputs=[source], overwrite=True, folder=True, owns=lambda p: True)


def test_check_target_existing_outputs(tmp_path: Path) -> None:
    (tmp_path / "old.gvc").write_bytes(b"x")
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        check_target(tmp_path / "old.gvc")
    assert check_target(tmp_path / "old.gvc", overwrite=True) == tmp_path / "old.gvc"
    with pytest.raises(OutputError, match="is a folder"):
        check_target(tmp_path, overwrite=True)
    frames = tmp_path / "frames"
    frames.mkdir()
    assert check_target(frames, folder=True) == frames  # empty: fine
    (frames / "frame_000001.png").write_bytes(b"")
    with pytest.raises(OutputError, match="not empty; pass --overwrite"):
        check_target(frames, folder=True, owns=lambda p: p.name.startswith("frame_"))
    check_target(frames, folder=True, overwrite=True, owns=lambda p: p.name.startswith("frame_"))
    (frames / "notes.txt").write_bytes(b"mine")
    with pytest.raises(OutputError, match="holds other files \\(notes.txt\\)"):  # never, not even with --overwrite
        check_target(frames, folder=True, overwrite=True, owns=lambda p: p.name.startswith("frame_"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="dangling"):
        check_target(tmp_path / "dangling", overwrite=True)


def test_atomic_output_removes_only_its_temporary_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("encoder failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    # a folder output replaces the earlier one whole, only once the new one is complete
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "frame_000001.png").write_bytes(b"old")
    (folder / "frame_000009.png").write_bytes(b"stale")
    with atomic_output(folder, overwrite=True, folder=True, owns=lambda p: p.name.startswith("frame_")) as tmp:
        (tmp / "frame_000001.png").write_bytes(b"new")
    assert sorted(p.name for p in folder.iterdir()) == ["frame_000001.png"]
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_atomic_write_replaces_whole_or_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "component.json"
    assert atomic_write_bytes(target, b"first") == target and target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"

    def half_then_fail(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # Ctrl-C in the middle of a streamed write

    with pytest.raises(KeyboardInterrupt):
        atomic_write_with(target, half_then_fail)
    assert target.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["component.json"]
    mine = tmp_path / "named.tmp"
    mine.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError):  # a given temporary name is created, never truncated
        atomic_write_with(target, lambda f: f.write(b"x"), temp=mine)
    assert mine.read_bytes() == b"a user's file" and target.read_bytes() == b"second"


def test_read_only_folder_is_one_clear_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes anywhere; a file where the parent folder should be fails the same check
        (tmp_path / "ro").write_bytes(b"")
        with pytest.raises(OutputError, match="is not a folder"):
            with atomic_output(tmp_path / "ro" / "x.gvc"):
                pass
        return
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(OutputError, match="cannot write in"):
        with atomic_output(ro / "x.gvc"):
            pass


# ---- every command against a folder of existing files ------------------------------------------


def _write_mp4(path: Path, frames: int = 9, size: tuple[int, int] = (32, 24)) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            frame = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def export_checkpoint_file(tiny_codec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gvc training checkpoint with the tiny codec's two components (what gvc-export reads)."""
    from gvc_train.components import load_component, read_component_meta
    from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY

    state, components = {}, {}
    for name in ("tokenizer", "latent_codec"):
        module = load_component(tiny_codec_dir, name)
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        components[name] = {"class": read_component_meta(tiny_codec_dir, name)["class"], "config": module.config, "state_prefix": f"{name}."}
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": state, CHECKPOINT_KEY: {"components": components, "provenance": {}}}, path)
    return path


@pytest.fixture(scope="module")
def seed_folder(tiny_codec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    _write_mp4(root / "in.mp4")
    from gvc_train.codecs.cli import main

    assert main(["encode", str(root / "in.mp4"), str(root / "in.gvc"), "--codec", str(tiny_codec_dir), "--quality", "0"]) == 0
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: its bytes' hash (a link: where it points)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


def _commands(codec: Path, ckpt: Path) -> dict[str, tuple[str, Callable[[str], list[str]]]]:
    """name -> (the input inside the work folder, argv for an output path)."""
    return {
        "gvc encode": ("in.mp4", lambda out: ["gvc", "encode", "in.mp4", out, "--codec", str(codec), "--quality", "1"]),
        "gvc decode": ("in.gvc", lambda out: ["gvc", "decode", "in.gvc", out, "--codec", str(codec)]),
        "gvc eval": ("in.mp4", lambda out: ["gvc", "eval", "--anchors", "x264", "--video", "in.mp4", "--frames", "5", "--ladder-points", "2", "--no-progress", "--out", out]),
        "gvc-shard": ("in.mp4", lambda out: ["gvc-shard", "in.mp4", "--out", out, "--clip-frames", "5", "--workers", "1", "--no-progress"]),
        "gvc-export": (str(ckpt), lambda out: ["gvc-export", str(ckpt), "--out", out]),
    }


_OUTPUTS = {
    "the input": "{input}",
    "a symlink to the input": "link",
    "a hard link to the input": "hard",
    "the input's folder (.)": ".",
    "the parent (..)": "..",
    "an existing folder of other files": "existing",
    "an existing empty folder": "empty",
    "an existing other file": "other{suffix}",
    "a new name": "new{suffix}",
}
_SUFFIX = {"gvc encode": ".gvc", "gvc decode": ".mp4", "gvc eval": "", "gvc-shard": "", "gvc-export": ""}


def _run(argv: list[str], capsys: Capture) -> tuple[int, str]:
    from gvc_train.gvc_cli import main as gvc_main
    from gvc_train.data.shard_cli import main as shard_main
    from gvc_train.export import main as export_main

    capsys.readouterr()
    entry = {"gvc": gvc_main, "gvc-shard": shard_main, "gvc-export": export_main}[argv[0]]
    code = entry(argv[1:])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "--overwrite"])
@pytest.mark.parametrize("command", list(_SUFFIX))
def test_no_command_changes_a_file_the_user_did_not_name(
    command: str, overwrite: bool, seed_folder: Path, tiny_codec_dir: Path, export_checkpoint_file: Path,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture,
) -> None:  # fmt: skip
    root = tmp_path / "root"
    work = root / "work"
    work.mkdir(parents=True)
    for name in ("in.mp4", "in.gvc"):
        (work / name).write_bytes((seed_folder / name).read_bytes())
    (root / "sibling.txt").write_text("the parent's own file")
    (work / "existing").mkdir()
    (work / "existing" / "notes.txt").write_text("keep me")
    (work / "empty").mkdir()
    input_name, argv_for = _commands(tiny_codec_dir, export_checkpoint_file)[command]
    suffix = _SUFFIX[command]
    (work / f"other{suffix or '.bin'}").write_bytes(b"an unrelated file")
    local_input = input_name if not os.path.isabs(input_name) else None
    if local_input:
        (work / f"link{Path(input_name).suffix}").symlink_to(input_name)
        os.link(work / input_name, work / f"hard{Path(input_name).suffix}")
    monkeypatch.chdir(work)
    input_before = (work / local_input).read_bytes() if local_input else export_checkpoint_file.read_bytes()
    codec_before = _snapshot(tiny_codec_dir)
    for label, pattern in _OUTPUTS.items():
        if label in ("the input", "a symlink to the input", "a hard link to the input") and not local_input:
            continue
        out = pattern.format(input=input_name, suffix=suffix or ".bin")
        if pattern in ("link", "hard"):
            out += Path(input_name).suffix
        before = _snapshot(root)
        code, err = _run(argv_for(out) + (["--overwrite"] if overwrite else []), capsys)
        after = _snapshot(root)
        what = f"{command} -> {out!r} ({label}{', --overwrite' if overwrite else ''})"
        assert code in (0, 2), (what, code, err)
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and "error" in err, (what, err)
        target = (work / out).resolve() if not (work / out).is_symlink() else work / out
        changed = [p for p, digest in before.items() if after.get(p) != digest]
        allowed = []
        if overwrite and code == 0:
            rel = os.path.relpath(target, root)
            allowed = [p for p in changed if p == rel or p.startswith(rel + os.sep)]
        assert sorted(changed) == sorted(allowed), (what, "changed files it was not asked to", sorted(set(changed) - set(allowed)))
        assert not [p for p in after if TEMP_MARK in p or p.endswith(".part")], (what, "left a temporary")
        now = (work / local_input).read_bytes() if local_input else export_checkpoint_file.read_bytes()
        assert now == input_before, f"{what}: the input changed"
        if label == "a new name" or (label == "an existing empty folder" and not suffix):
            assert code == 0, (what, err)  # the commands do work when the output is free
        if label == "an existing other file" and not overwrite:
            assert code == 2 and ("exists" in err or "not a folder" in err), (what, err)
        if label in ("the input", "a symlink to the input", "a hard link to the input", "the input's folder (.)"):
            assert code == 2 and ("input" in err or "holds other files" in err or "exists" in err), (what, err)
    assert _snapshot(tiny_codec_dir) == codec_before


def test_unknown_output_suffix_is_refused(seed_folder: Path, tiny_codec_dir: Path, tmp_path: Path, capsys: Capture) -> None:
    for name in ("out.webm", "out.avi"):
        code, err = _run(["gvc", "decode", str(seed_folder / "in.gvc"), str(tmp_path / name), "--codec", str(tiny_codec_dir)], capsys)
        assert code == 2 and "cannot write" in err and ".mp4" in err, err
    assert not list(tmp_path.iterdir())


def test_decode_into_a_folder_with_a_stream_never_deletes_it(seed_folder: Path, tiny_codec_dir: Path, tmp_path: Path, capsys: Capture) -> None:
    """The case that lost data: decoding to PNGs into the folder that holds the stream."""
    stream = tmp_path / "in.gvc"
    stream.write_bytes((seed_folder / "in.gvc").read_bytes())
    for args in ([], ["--overwrite"]):
        code, err = _run(["gvc", "decode", str(stream), str(tmp_path), "--codec", str(tiny_codec_dir), *args], capsys)
        assert code == 2 and "input" in err, err
    assert stream.read_bytes() == (seed_folder / "in.gvc").read_bytes()
    # a folder of earlier frames is replaced whole with --overwrite, refused without
    frames = tmp_path / "frames"
    assert _run(["gvc", "decode", str(stream), str(frames), "--codec", str(tiny_codec_dir)], capsys)[0] == 0
    (frames / "frame_000999.png").write_bytes(b"a stale frame from a longer video")
    code, err = _run(["gvc", "decode", str(stream), str(frames), "--codec", str(tiny_codec_dir)], capsys)
    assert code == 2 and "--overwrite" in err
    assert _run(["gvc", "decode", str(stream), str(frames), "--codec", str(tiny_codec_dir), "--overwrite"], capsys)[0] == 0
    assert len(list(frames.iterdir())) == 9 and not (frames / "frame_000999.png").exists()


def test_encode_picks_a_chunk_size_that_fits(tiny_codec_dir: Path, tmp_path: Path) -> None:
    from gvc_train.codecs.latent import LatentCodec

    codec = LatentCodec(tiny_codec_dir)
    assert codec.fitting_latents_per_chunk(176, 144) == 8
    assert codec.fitting_latents_per_chunk(1280, 720) == 4
    assert codec.fitting_latents_per_chunk(1920, 1080) == 2
    with pytest.raises(ValueError, match="scale the video down"):
        codec.fitting_latents_per_chunk(16384, 16384)
    video = tmp_path / "wide.mp4"
    _write_mp4(video, frames=5, size=(1280, 720))
    with pytest.raises(ValueError, match="--latents-per-chunk 4"):
        codec.encode(video, tmp_path / "x.gvc", 0, latents_per_chunk=8)
    report = codec.encode(video, tmp_path / "x.gvc", 0)  # the default fits
    assert report.frames == 5 and report.chunks == 1


def _default_sigint() -> None:
    # A test run started in the background by a non-interactive shell (``cmd &``) inherits SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler in the child: Ctrl-C is
    # what the test sends, so the child gets the default disposition a terminal would give it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _gvc_process(*args: str, **kw: object) -> subprocess.Popen[str]:
    script = Path(sys.executable).with_name("gvc")
    return subprocess.Popen(  # type: ignore[call-overload]
        [str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_decode_keeps_the_frames_and_says_where(sig: int, seed_folder: Path, tiny_codec_dir: Path, tmp_path: Path) -> None:
    """Decoding a long stream, stopped by a signal: no temporary left, the frames decoded so far
    under a name that says partial, and that name on stderr."""
    long_video, stream = tmp_path / "long.mp4", tmp_path / "long.gvc"
    _write_mp4(long_video, frames=401, size=(64, 48))
    from gvc_train.codecs.cli import main

    assert main(["encode", str(long_video), str(stream), "--codec", str(tiny_codec_dir), "--latents-per-chunk", "1"]) == 0
    out = tmp_path / "out"
    proc = _gvc_process("decode", str(stream), str(out), "--codec", str(tiny_codec_dir))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until frames are being written
        temps = [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]
        if temps and len(list(temps[0].iterdir())) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the decode finished before the signal: make the stream longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name], "a temporary was left"
    assert not out.exists(), "a partial decode took the complete output's name"
    kept = tmp_path / "out.partial"
    assert kept.is_dir() and 5 <= len(list(kept.iterdir())) < 401
    assert err.strip().splitlines() == [err.strip()] and str(kept) in err, err


def test_gvc_answers_help_version_and_argument_errors_without_the_model_stack() -> None:
    """``--help``, ``--version``, ``info`` and argument errors import neither torch nor numpy."""
    probe = (
        "import sys; from gvc_train.gvc_cli import main\n"
        "for argv in (['--version'], ['encode', '--help'], ['encode', 'a', 'b', '--codec', 'c', '--frames', '0'], ['info', sys.argv[1]]):\n"
        "    main(argv)\n"
        "heavy = [m for m in ('torch', 'numpy', 'av', 'compressai') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, "/nonexistent.gvc"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "gvc: error: argument --frames: must be at least 1, got 0" in proc.stderr
    assert "no bitstream at /nonexistent.gvc" in proc.stderr


def test_gvc_info_reads_only_what_it_prints(seed_folder: Path, tmp_path: Path) -> None:
    """A 1.5 GB file that is not a stream costs its first bytes, not 1.5 GB of memory; a real
    stream is walked chunk by chunk."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # sparse: no disk, but reading it whole would take 1.5 GB
        f.truncate(1536 << 20)
    # VmHWM, the peak of this process image: ru_maxrss would carry pytest's peak over the exec
    probe = (
        "import re, sys; from gvc_train.codecs.cli import main\n"
        "codes = [main(['info', a]) for a in sys.argv[1:]]\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print(codes, hwm)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(big), str(seed_folder / "in.gvc")], capture_output=True, text=True, timeout=60)
    codes, maxrss_kb = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert codes == "[2, 0]", proc.stderr
    assert "not a gvc bitstream" in proc.stderr
    assert int(maxrss_kb) < 100_000, f"gvc info peaked at {int(maxrss_kb) // 1024} MB"


def test_gvc_encode_quality_default_and_range(seed_folder: Path, tiny_codec_dir: Path, tmp_path: Path, capsys: Capture) -> None:
    """No --quality: the middle of the codec's range (qualities // 2); out of range: one line naming it."""
    from gvc_train.codecs.cli import build_parser, main

    qualities = json.loads((tiny_codec_dir / "codec.json").read_text())["qualities"]
    assert main(["encode", str(seed_folder / "in.mp4"), str(tmp_path / "a.gvc"), "--codec", str(tiny_codec_dir)]) == 0
    assert f"quality {qualities // 2}," in capsys.readouterr().out
    code, err = _run(["gvc", "encode", str(seed_folder / "in.mp4"), str(tmp_path / "b.gvc"), "--codec", str(tiny_codec_dir), "--quality", str(qualities)], capsys)
    assert code == 2 and f"outside this codec's 0..{qualities - 1}" in err, err
    assert not (tmp_path / "b.gvc").exists()
    encode_help = build_parser()._subparsers._group_actions[0].choices["encode"].format_help()  # type: ignore[union-attr]
    assert "qualities // 2" in encode_help and "0 to the codec's" in " ".join(encode_help.split())


def test_keep_aside_moves_an_earlier_run_to_a_free_name_and_loses_nothing(tmp_path: Path) -> None:
    from gvc_train.safe_output import keep_aside

    run = tmp_path / "run"
    assert keep_aside(run) is None  # nothing there: nothing moved
    for n in (1, 2):
        run.mkdir()
        (run / "last.ckpt").write_text(str(n))
        kept = keep_aside(run)
        assert not run.exists() and (kept / "last.ckpt").read_text() == str(n)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-earlier", "run-earlier-2"]
