"""A zero-shot reference codec's rate-distortion figures and card, in one command.

    python -m gvc_train.eval.zeroshot_reference --codec checkpoints/zeroshot_tiny --frames 96

writes into the codec's folder

* ``rd.json``: on the held-out clip (``carphone_pristine.mp4``, its first ``--frames`` frames) the
  codec at every rate point (atoms per step) in every mode (one curve each: ``t2v``, ``i2v``,
  ``flf2v``), with the real file's bits, the atoms' bits as coded and as packed at ``log2 K + 1``
  bits an atom, PSNR / MS-SSIM / VMAF (as ``eval.controlled_reference`` measures them), encode and
  decode seconds a frame, and the peak resident memory of each encode and decode (``VmHWM`` after
  resetting it: the whole process, imports and models included); beside them ``--beside``'s points
  (default ``checkpoints/latent_tiny_v1``, the same tokenizer) and the x264 / x265 anchors;
* ``<video>.i2v.q0.gvc``: the stream of the lowest i2v point, kept so that a later build can
  decode what this one wrote (``tests/test_reference_zeroshot.py``);
* ``CARD.md``: rendered from it (``--card-only`` re-renders it).

Rates are true bits per pixel: file bits / (frames x height x width). The published zero-shot
figures (GVC) divided by 3 channels as well and gave kbps at 16 fps: ``published_bpp = bpp / 3``,
``kbps = bits / (frames / 16) / 1000``; the card lists both for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gvc_train.eval.controlled_reference import ANCHORS, BESIDE, anchor_points, caption_for, measure

KEPT = ("i2v", 0)  # the point whose stream stays in the folder


def kept_stream(video: str | Path) -> str:
    return f"{Path(video).stem}.{KEPT[0]}.q{KEPT[1]}.gvc"
from gvc_train.strict_json import write_json


def _reset_peak() -> None:
    try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def zeroshot_point(codec: Any, name: str, mode: str, video: Path, frames: int, quality: int, source: np.ndarray, stream: Path, caption: str | None) -> dict[str, Any]:
    """One rate point of one mode: encode into ``stream``, decode, measure."""
    options = {"mode": mode, **({"caption": caption} if caption and codec.generator.takes_text else {})}
    _reset_peak()
    enc = codec.encode(video, stream, quality, max_frames=frames, **options)
    encode_peak = _peak_mb()
    stats = enc.stats
    decoded: list[np.ndarray] = []
    _reset_peak()
    dec = codec.decode(stream, decoded.append)
    decode_peak = _peak_mb()
    pixels = enc.frames * enc.width * enc.height
    return {
        "codec": f"{name}:{mode}", "mode": mode, "quality": quality, "atoms": codec.settings.atoms[quality], "bytes": enc.file_bytes,
        "bpp": enc.bpp, "published_bpp": enc.bpp / 3, "kbps_at_16fps": enc.file_bytes * 8 / (enc.frames / 16) / 1000,
        "atom_bits_coded": stats["atom_bits_information"], "atom_bits_packed": stats["atom_bits_packed"], "atom_groups": stats["groups"],
        "atom_bpp": stats["atom_bits_information"] / pixels,
        "encode_s_per_frame": enc.seconds / enc.frames, "decode_s_per_frame": dec.seconds / dec.frames,
        "encode_peak_mb": encode_peak, "decode_peak_mb": decode_peak, **measure(np.stack(decoded), source),
    }  # fmt: skip


def measure_reference(codec_dir: str | Path, video: str | Path, frames: int, modes: list[str] | None = None, beside: str | Path | None = BESIDE,
                      anchors: tuple[str, ...] = ANCHORS, log: Any = print) -> dict[str, Any]:  # fmt: skip
    """The contents of ``rd.json`` (module docstring)."""
    from gvc_train.codecs.base import open_codec
    from gvc_train.data.video_io import probe, read_frames
    from gvc_train.eval.controlled_reference import coded_point

    codec, video, name = open_codec(codec_dir), Path(video), Path(codec_dir).name
    if not hasattr(codec, "modes"):
        raise ValueError(f"{codec_dir}: a {codec.family} codec is not a zero-shot one")
    source = read_frames(video, count=frames)
    caption = caption_for(video)
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes or codec.modes:
            for q in range(codec.num_rate_points):
                log(f"{name} {mode} atoms {codec.settings.atoms[q]}")
                points.append(zeroshot_point(codec, name, mode, video, frames, q, source, Path(tmp) / "s.gvc", caption))
                if (mode, q) == KEPT:
                    shutil.copyfile(Path(tmp) / "s.gvc", Path(codec_dir) / kept_stream(video))
        if beside is not None:
            other = open_codec(beside)
            for q in range(other.num_rate_points):
                log(f"{Path(beside).name} quality {q}")
                points.append(coded_point(Path(beside).name, other, video, frames, q, source, Path(tmp) / "beside.gvc"))
    if anchors:
        log(f"anchors {', '.join(anchors)}")
        points += anchor_points(source, probe(video).fps or 30.0, anchors)
    s = codec.settings
    return {
        "video": video.name, "frames": int(source.shape[0]), "width": int(source.shape[2]), "height": int(source.shape[1]),
        "codec": name, "family": codec.family, "caption": caption if codec.generator.takes_text else None, "threads": 1,
        "settings": {k: getattr(s, k) for k in ("codebook_size", "atoms", "num_steps", "ode_tail", "shift", "g_scale", "g_power",
                                                "gop_frames", "tail_frames", "tail_atoms_factor", "keyframe_quality", "guidance_scale", "seed")},
        "made_from": codec.meta.get("provenance", {}).get("made_from"), "points": points,
    }  # fmt: skip


def card_markdown(rd: dict[str, Any]) -> str:
    """CARD.md from ``rd.json``."""
    s = rd["settings"]
    lines = [
        f"# {rd['codec']}: zero-shot codebook coding ({rd['family']})",
        "",
        f"No training: the pretrained generator of `{rd['made_from']}` steered by seeded codebooks (`gvc-zeroshot --model "
        f"{rd['made_from']}`). K = {s['codebook_size']} atoms a step and latent frame, {s['num_steps']} steps of which the last "
        f"{s['ode_tail']} deterministic, shift {s['shift']}, g(t) = {s['g_scale']} t^{s['g_power']}, GOPs of {s['gop_frames']} frames "
        f"sharing their boundary frame, i2v's last {s['tail_frames']} latent frames with {s['tail_atoms_factor']}x the atoms, keyframes "
        f"at the latent codec's quality {s['keyframe_quality']}, guidance {s['guidance_scale']}, seed {s['seed']}.",
        "",
        f"Held-out `{rd['video']}`, {rd['frames']} frames of {rd['width']}x{rd['height']}; one thread (the determinism switch). "
        "bpp: file bits / (frames x height x width); `published bpp` = bpp / 3 (the zero-shot papers' convention, which also "
        "divides by 3 channels); kbps as if at 16 fps (theirs). Atom bits: as coded (the set of atoms a step is one combinatorial "
        "rank) / packed at log2 K + 1 bits an atom (the published count). Peak MB: the process's resident peak during the call.",
        "",
        "| codec | mode | atoms | bytes | bpp | published bpp | kbps@16 | atom kbit coded / packed | PSNR | MS-SSIM | VMAF | encode s/frame | decode s/frame | peak MB enc / dec |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in rd["points"]:
        vmaf = f"{p['vmaf']:.2f}" if "vmaf" in p else "-"
        if "mode" in p:
            lines.append(
                f"| {rd['codec']} | {p['mode']} | {p['atoms']} | {p['bytes']:,} | {p['bpp']:.4f} | {p['published_bpp']:.4f} | {p['kbps_at_16fps']:.1f} | "
                f"{p['atom_bits_coded'] / 1000:.1f} / {p['atom_bits_packed'] / 1000:.1f} | {p['psnr']:.2f} | {p['ms_ssim']:.3f} | {vmaf} | "
                f"{p['encode_s_per_frame']:.2f} | {p['decode_s_per_frame']:.3f} | {p['encode_peak_mb']:.0f} / {p['decode_peak_mb']:.0f} |"
            )
        else:
            what = f"q{p['quality']}" if "quality" in p else f"crf {p['crf']}"
            times = f"{p['encode_s_per_frame']:.3f} | {p['decode_s_per_frame']:.3f}" if "encode_s_per_frame" in p else "- | -"
            lines.append(f"| {p['codec']} | {what} | | {p['bytes']:,} | {p['bpp']:.4f} | {p['bpp'] / 3:.4f} | | | {p['psnr']:.2f} | {p['ms_ssim']:.3f} | {vmaf} | {times} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from gvc_train.data.sample_videos import HELD_OUT, sample_video
    import json

    parser = argparse.ArgumentParser(prog="gvc_train.eval.zeroshot_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--codec", required=True, help="a zero-shot codec folder; rd.json and CARD.md go into it")
    parser.add_argument("--video", default=None, help=f"default: the held-out {HELD_OUT}")
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--modes", default="", help="comma-separated (default: every mode the codec has)")
    parser.add_argument("--beside", default=str(BESIDE), help="a codec measured beside it ('' for none)")
    parser.add_argument("--anchors", default=",".join(ANCHORS), help="comma-separated, or '' for none")
    parser.add_argument("--card-only", action="store_true", help="re-render CARD.md from the folder's rd.json")
    args = parser.parse_args(argv)
    folder = Path(args.codec)
    if not (folder / "codec.json").is_file():
        parser.error(f"--codec: no codec.json in {folder}")
    if not args.card_only:
        started = time.perf_counter()
        try:
            rd = measure_reference(folder, args.video or str(sample_video(HELD_OUT)), args.frames, [m for m in args.modes.split(",") if m] or None,
                                   args.beside or None, tuple(a for a in args.anchors.split(",") if a))  # fmt: skip
        except ValueError as e:
            print(f"gvc_train.eval.zeroshot_reference: {e}", file=sys.stderr)
            return 2
        write_json(folder / "rd.json", rd, indent=2)
        print(f"rd.json in {folder} ({time.perf_counter() - started:.0f} s)")
    (folder / "CARD.md").write_text(card_markdown(json.loads((folder / "rd.json").read_text())))
    print(f"card: {folder / 'CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
