"""Measure lossless clip formats for the shards: bytes per frame and decode frames/s.

The training pipeline has to keep up with (>= 80 % of) a plain PyAV decode of the source mp4
(~360 fps for bikes 640x272 on the reference machine) while also cropping, flipping and
converting to tensors, so the lossless decode has to be well above that on one core. This
script codes the same clips in every candidate format, checks each one is bit-exact, and prints
a Markdown table (the one in ``data/README.md``).

    python benchmarks/clip_formats.py [--frames 16] [--repeats 5] [--only NAME,NAME]

Optional candidates (zstandard, lz4) are skipped with a note when the package is missing.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import av
import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the repository's gvc_train importable
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gvc_train.data.sample_videos import sample_video  # noqa: E402

Encode = Callable[[np.ndarray], list[bytes]]
Decode = Callable[[list[bytes], tuple[int, int, int]], np.ndarray]


@dataclass
class Candidate:
    name: str
    encode: Encode  # clip (T,H,W,3) -> list of byte strings (one per frame, or one per clip)
    decode: Decode  # (chunks, (T,H,W)) -> clip
    note: str = ""


def sample_clips(frames: int) -> dict[str, np.ndarray]:
    clips = {}
    for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"):
        with av.open(str(sample_video(name))) as container:
            stream = container.streams.video[0]
            out = []
            for index, frame in enumerate(container.decode(stream)):
                # Skip the first frames: the opening of bikes/bbb is a fade, not typical content.
                if index < 30:
                    continue
                out.append(frame.to_ndarray(format="rgb24"))
                if len(out) == frames:
                    break
        clips[name] = np.stack(out)
    return clips


def source_decode_fps(name: str, frames: int, repeats: int, threads: int = 0) -> float:
    """The baseline: PyAV decoding the source mp4 to rgb24 (threads=0: thread_type AUTO)."""
    path = str(sample_video(name))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with av.open(path) as container:
            stream = container.streams.video[0]
            if threads:
                stream.codec_context.thread_count = threads
            else:
                stream.thread_type = "AUTO"
            count = 0
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                count += 1
        best = min(best, (time.perf_counter() - start) / count)
    return 1.0 / best


# ---- per-frame image codecs -------------------------------------------------------------


def pil_candidate(name: str, fmt: str, **save_kwargs) -> Candidate:
    def encode(clip: np.ndarray) -> list[bytes]:
        out = []
        for frame in clip:
            buf = io.BytesIO()
            Image.fromarray(frame).save(buf, format=fmt, **save_kwargs)
            out.append(buf.getvalue())
        return out

    def decode(chunks: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(io.BytesIO(c)).convert("RGB")) for c in chunks])

    return Candidate(name, encode, decode)


def pyav_image_candidate(name: str, codec: str, pix_fmt: str, threads: int = 1) -> Candidate:
    """Intra-only codecs whose packets decode on their own (png, qoi): one packet per frame."""

    def encode(clip: np.ndarray) -> list[bytes]:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = clip.shape[2], clip.shape[1], pix_fmt
        ctx.time_base = Fraction(1, 25)
        out = []
        for frame in clip:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format=pix_fmt)
            out += [bytes(p) for p in ctx.encode(vf)]
        out += [bytes(p) for p in ctx.encode(None)]
        return out

    def decode(chunks: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
        frames = []
        for chunk in chunks:
            # A fresh context per packet: PyAV 18's png decoder reusing one context across
            # packets returned wrong pixels from the second frame on (the packets are fine).
            ctx = av.CodecContext.create(codec, "r")
            ctx.thread_count = threads
            for f in ctx.decode(av.Packet(chunk)):
                frames.append(f.to_ndarray(format="rgb24"))
        return np.stack(frames)

    return Candidate(name, encode, decode)


# ---- video codecs in a container ------------------------------------------------------------


def pyav_container_candidate(
    name: str, codec: str, pix_fmt: str, container: str, options: dict[str, str], threads: int = 1
) -> Candidate:
    def encode(clip: np.ndarray) -> list[bytes]:
        buf = io.BytesIO()
        with av.open(buf, "w", format=container) as out:
            stream = out.add_stream(codec, rate=25, options=options)
            stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], pix_fmt
            for frame in clip:
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                out.mux(stream.encode(vf))
            out.mux(stream.encode(None))
        return [buf.getvalue()]

    def decode(chunks: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
        with av.open(io.BytesIO(chunks[0]), "r", format=container) as inp:
            stream = inp.streams.video[0]
            stream.codec_context.thread_count = threads
            if threads != 1:
                stream.thread_type = "AUTO"
            return np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(stream)])

    return Candidate(name, encode, decode, note=f"threads={threads}")


# ---- raw pixels through a general-purpose compressor ---------------------------------------


def raw_candidate(name: str, compress: Callable[[bytes], bytes], decompress: Callable[[bytes, int], bytes],
                  transform: str = "none") -> Candidate:
    """Raw RGB bytes, optionally with a cheap reversible predictor, through a byte compressor.

    ``transform``: ``none``; ``tdelta`` (each frame minus the previous, mod 256: static areas
    become zeros); ``vdelta`` (each row minus the row above, mod 256, pixels interleaved).
    The inverses loop over frames or rows with one vectorised add each: a cumulative sum in
    numpy (``np.cumsum`` on uint8) is 5-10x slower.
    """

    def forward(clip: np.ndarray) -> np.ndarray:
        out = clip.copy()
        if transform == "tdelta":
            out[1:] -= clip[:-1]  # uint8 arithmetic wraps: reversible
        elif transform == "vdelta":
            out[:, 1:] -= clip[:, :-1]
        return out

    def inverse(data: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
        t, h, w = shape
        res = data.reshape(t, h, w, 3)
        if transform == "none":
            return res
        out = np.empty_like(res)
        if transform == "tdelta":
            out[0] = res[0]
            for i in range(1, t):
                np.add(out[i - 1], res[i], out=out[i])
        else:
            out[:, 0] = res[:, 0]
            for i in range(1, h):
                np.add(out[:, i - 1], res[:, i], out=out[:, i])
        return out

    def encode(clip: np.ndarray) -> list[bytes]:
        return [compress(np.ascontiguousarray(forward(clip)).tobytes())]

    def decode(chunks: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
        t, h, w = shape
        raw = decompress(chunks[0], t * h * w * 3)
        return inverse(np.frombuffer(raw, dtype=np.uint8), shape)

    return Candidate(name, encode, decode)


def candidates() -> tuple[list[Candidate], list[str]]:
    found: list[Candidate] = []
    missing: list[str] = []
    found += [
        pil_candidate("PNG (PIL, level 1)", "PNG", compress_level=1),
        pil_candidate("PNG (PIL, level 6)", "PNG", compress_level=6),
        pil_candidate("WebP lossless (PIL, method 0)", "WEBP", lossless=True, method=0, quality=0),
        pil_candidate("WebP lossless (PIL, method 4)", "WEBP", lossless=True, method=4),
        pyav_image_candidate("PNG (PyAV, default level)", "png", "rgb24"),
        pyav_image_candidate("QOI (PyAV)", "qoi", "rgb24"),
        pyav_container_candidate("FFV1 bgr0 in nut (PyAV)", "ffv1", "bgr0", "nut", {"level": "3"}),
        pyav_container_candidate("FFV1 bgr0 in nut, 16 slices, 2 threads", "ffv1", "bgr0", "nut",
                                 {"level": "3", "slices": "16"}, threads=2),
        pyav_container_candidate("UtVideo gbrp in nut (PyAV)", "utvideo", "gbrp", "nut", {}),
        pyav_container_candidate("MagicYUV gbrp in nut (PyAV)", "magicyuv", "gbrp", "nut", {}),
        raw_candidate("raw RGB + zlib 1", lambda b: zlib.compress(b, 1), lambda b, n: zlib.decompress(b)),
    ]
    try:
        import zstandard as zstd

        for level in (1, 3, 9):
            comp = zstd.ZstdCompressor(level=level)
            dec = zstd.ZstdDecompressor()
            found.append(raw_candidate(f"raw RGB + zstd {level}", comp.compress,
                                       lambda b, n, d=dec: d.decompress(b, max_output_size=n)))
        for transform in ("tdelta", "vdelta"):
            comp = zstd.ZstdCompressor(level=6)
            dec = zstd.ZstdDecompressor()
            found.append(raw_candidate(f"raw RGB {transform} + zstd 6", comp.compress,
                                       lambda b, n, d=dec: d.decompress(b, max_output_size=n),
                                       transform=transform))
    except ImportError:
        missing.append("zstandard")
    try:
        import lz4.frame

        found.append(raw_candidate("raw RGB + lz4", lz4.frame.compress, lambda b, n: lz4.frame.decompress(b)))
    except ImportError:
        missing.append("lz4")
    try:
        from gvc_train.data import clip_codec

        def enc(clip: np.ndarray) -> list[bytes]:
            fmt, payload = clip_codec.encode_clip(clip)
            return [fmt.encode(), payload]

        def dec(chunks: list[bytes], shape: tuple[int, int, int]) -> np.ndarray:
            return clip_codec.decode_clip(chunks[0].decode(), chunks[1])

        found.append(Candidate("rgbdz = planar, vdelta, R-G/B-G, zstd 6 (gvc_train clip_codec, chosen)", enc, dec))
    except ImportError:
        missing.append("gvc_train.data.clip_codec")
    return found, missing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="decode repeats; the best is kept")
    parser.add_argument("--only", default="", help="comma-separated substrings of candidate names")
    args = parser.parse_args(argv)

    clips = sample_clips(args.frames)
    found, missing = candidates()
    if args.only:
        keys = [k.strip().lower() for k in args.only.split(",")]
        found = [c for c in found if any(k in c.name.lower() for k in keys)]

    names = list(clips)
    header = "| format | " + " | ".join(
        f"{n.split('.')[0]} {c.shape[2]}x{c.shape[1]}: KB/frame (ratio), decode / encode fps" for n, c in clips.items()
    ) + " |"
    print(f"{args.frames} frames per clip, decode best of {args.repeats}, one thread unless noted\n")
    print(header)
    print("|---" * (len(names) + 1) + "|")
    for threads, label in ((0, "thread_type AUTO"), (1, "1 thread")):
        base = [f"{source_decode_fps(name, args.frames, args.repeats, threads):.0f} fps" for name in names]
        print(f"| source mp4 (whole file), PyAV rgb24, {label} | " + " | ".join(base) + " |")
    for cand in found:
        cells = []
        for name in names:
            clip = clips[name]
            t, h, w, _ = clip.shape
            start = time.perf_counter()
            chunks = cand.encode(clip)
            encode_fps = t / (time.perf_counter() - start)
            size = sum(len(c) for c in chunks)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = cand.decode(chunks, (t, h, w))
                best = min(best, time.perf_counter() - start)
            exact = out.shape == clip.shape and np.array_equal(out, clip)
            ratio = clip.nbytes / size
            cells.append(f"{size / t / 1024:.0f} ({ratio:.2f}x), {t / best:.0f} / {encode_fps:.0f}"
                         + ("" if exact else " NOT EXACT"))
        label = cand.name + (f" [{cand.note}]" if cand.note else "")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    if missing:
        print(f"\nskipped (not installed): {', '.join(missing)}")


if __name__ == "__main__":
    main()
