"""The Scale-Space Flow peer (family ``ssf``) at inference: a video file to a bitstream and back.

The learned pixel-domain baseline beside the generative families: compressai's Scale-Space Flow
(``models/ssf/ssf_codec.py``), one component ``ssf``, coded frame by frame. Each frame is padded
by edge replication to a multiple of the model's ``frame_multiple`` (128); frame ``i`` is a
keyframe when ``i`` is 0 or a multiple of the intra period (codec.json's ``intra_period``, 32 by
default after the learned-video-coding protocol; -1: the first frame only), the others are inter
frames coded against the encoder's own decoded previous frame, exactly the decoder's reference.
The quality index (a rate point) is the model's: one per stream. Layout: ``ssf_stream.py``.

Memory is one frame and its reference, whatever the video's length: frames are read, coded and
written one at a time, and decoded frames go to the caller's sink one at a time. Within a frame,
``max_memory`` (bytes the whole process may hold; None: no limit; ``gvc --max-memory``) picks how
many horizontal strips the pixel-resolution transforms (synthesis, the encoder's analysis, the
scale-space blur) run in (models/ssf/ssf_strips.py): the fewest whose estimate fits, every count
giving the same bits on one thread (the deterministic default; with more threads only whole
frames are offered), so the encoder and the decoder may run under different budgets;
:class:`OverBudget` in one line, before anything is written, when none fits. The hyperpriors,
the entropy coding and the warp stay whole-frame.

**Exactness.** The strings are compressai's own rANS. Scale indexes come from float networks
(``hyper_decoder_scale``): decoding is bit-exact on the same machine and build, whatever the
caller's thread count (``deterministic``: one intra-op thread), but not promised across CPU kinds
(no fixed-point scale path, unlike the latent family). Each FRAMES chunk carries a model check, a
CRC32 of the frame's index, the quality and every symbol and scale index the entropy coder
coded; the decoder computes the same over what it decoded and stops with one BitstreamError at
the first frame that differs (another build's arithmetic, other weights, a rewritten stream)
instead of returning garbage. The decoder hands compressai's rANS decoder each string padded with
zeros (``coding/rans.py``'s bound), so a forged string decodes to garbage, never past its buffer.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib
from array import array
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyModel

from gvc_train.codecs.base import Codec, CodingReport, FrameCallback
from gvc_train.codecs.codec_folder import CodecFolderError
from gvc_train.codecs.determinism import inference_mode
from gvc_train.codecs.memory_plan import ENV_VAR, DefaultBudget, OverBudget, budget_left, describe_bytes
from gvc_train.codecs.ssf_stream import INTER_STRINGS, KEYFRAME_STRINGS, StreamConfig, describe_chunks, frame_payload, parse_frame_payload  # noqa: F401 (re-exported)
from gvc_train.codecs.stream_layout import read_config_chunk
from gvc_train.codecs.tokenizer_io import assemble_stream, stream_body, stream_header
from gvc_train.coding.container import BitstreamError, Chunk, ChunkType, StreamHeader, chunk_bytes, fingerprint_prefix, iter_chunks, read_header
from gvc_train.data.video_io import VideoReader
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.models.ssf.ssf_strips import StripPlan, choose_plan

DEFAULT_INTRA_PERIOD = 32  # the protocol's (DESIGN.md, Evaluation)
# Padded pixels of one frame the codec codes at most: 8K (7680x4320, padded to 7680x4352), a
# bound of the format (a forged 16384x16384 header is refused unread; the encoder refuses what
# the decoder would). What fits in memory is the budget's call (``max_memory``), not this one's.
MAX_FRAME_PIXELS = 8192 * 4352
_WARNED: set[tuple[int, int]] = set()  # frame sizes warned about the default budget, once a process
# Zero bytes after a string for the rANS decoder (coding/rans.py's bound): 8 a symbol, 16 a string byte.
_PAD_FIXED, _PAD_PER_SYMBOL, _PAD_PER_BYTE = 256, 8, 16


class _ModelCheck:
    """CRC32 over what the entropy coder coded (encoder) or decoded (decoder) for one frame:
    every call's scale indexes and symbols, in order, after a seed of the frame index and quality."""

    def __init__(self) -> None:
        self.side: str | None = None  # "encode" or "decode": the calls that count
        self.value = 0

    def start(self, side: str, index: int, quality: int) -> None:
        self.side, self.value = side, zlib.crc32(struct.pack("<QI", index, quality))

    def add(self, side: str, indexes: list[int], symbols: list[int]) -> None:
        if side == self.side:
            self.value = zlib.crc32(array("i", symbols).tobytes(), zlib.crc32(array("i", indexes).tobytes(), self.value))


class _CheckedCoder:
    """Stands in for an entropy model's compressai coder: the same calls, seen by the model check,
    and every string to decode padded with zeros (a forged one never reads past its buffer)."""

    def __init__(self, coder: Any, check: _ModelCheck) -> None:
        self.coder, self.check, self.name = coder, check, coder.name

    def encode_with_indexes(self, symbols: list[int], indexes: list[int], *tables: Any) -> bytes:
        self.check.add("encode", indexes, symbols)
        return self.coder.encode_with_indexes(symbols, indexes, *tables)

    def decode_with_indexes(self, string: bytes, indexes: list[int], *tables: Any) -> list[int]:
        pad = _PAD_FIXED + _PAD_PER_SYMBOL * len(indexes) + _PAD_PER_BYTE * len(string)
        symbols = self.coder.decode_with_indexes(bytes(string) + bytes(pad), indexes, *tables)
        self.check.add("decode", indexes, symbols)
        return symbols


class SSFCodec(Codec):
    """An exported Scale-Space Flow folder (one component, ``ssf``), ready to encode and decode.

    ``deterministic`` (the default) runs the networks on one intra-op thread, so the streams
    and frames are the same whatever the caller's thread settings (``codecs/determinism.py``).
    """

    family = "ssf"
    takes_intra_period = True  # gvc eval codes it at the anchors' --intra-period

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        modules = self._load_folder(folder, deterministic)
        self.model = modules["ssf"].eval()
        period = self.meta.get("intra_period", DEFAULT_INTRA_PERIOD)
        if not (isinstance(period, int) and not isinstance(period, bool) and (period == -1 or period >= 1)):
            raise CodecFolderError(f"{folder}: codec.json's intra_period must be -1 (first frame only) or >= 1, got {period!r}")
        self.intra_period = period  # what gvc eval reports beside the points
        self.max_frame_pixels = MAX_FRAME_PIXELS
        self.plan = StripPlan()
        self.check = _ModelCheck()
        for module in self.model.modules():
            if isinstance(module, EntropyModel):
                module.entropy_coder = _CheckedCoder(module.entropy_coder, self.check)

    @property
    def num_rate_points(self) -> int:
        return self.model.num_qualities

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        model = modules["ssf"]
        if getattr(model, "frame_multiple", None) != 128 or not callable(getattr(model, "encode_inter", None)):
            raise ValueError(f"{where}: component 'ssf' is not a Scale-Space Flow codec with frames in multiples of 128")
        if not model.tables_ready():
            raise ValueError(f"{where}: the Scale-Space Flow codec's entropy tables are not built (update(force=True) before export)")

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        return {
            "quality_direction": "a higher quality index gives more bits and a better reconstruction",
            "entropy_coder": "compressai rANS, one string per latent (z, y) and frame; CDF tables from update() in the safetensors",
            "qualities": modules["ssf"].num_qualities,
            "intra_period": DEFAULT_INTRA_PERIOD,
            "pad_multiple": modules["ssf"].frame_multiple,
        }

    # ---- geometry -----------------------------------------------------------------------------

    def padded_size(self, width: int, height: int) -> tuple[int, int]:
        """``(padded height, padded width)``: the frame as coded (multiples of the frame multiple)."""
        m = self.model.frame_multiple
        return height + -height % m, width + -width % m

    def _fits(self, width: int, height: int) -> bool:
        h, w = self.padded_size(width, height)
        return h * w <= self.max_frame_pixels

    def _over_limit(self, width: int, height: int) -> str:
        h, w = self.padded_size(width, height)
        return f"{width}x{height} frames (coded {w}x{h}) are over this codec's {self.max_frame_pixels}-pixel frame limit"

    def _symbols_per_frame(self, width: int, height: int) -> int:
        """Symbols an inter frame codes at most (two latents, each y and z): bounds a FRAMES chunk."""
        h, w = self.padded_size(width, height)
        m = self.model.frame_multiple  # z's stride; y's is 16
        y = self.model.planes * (h // 16) * (w // 16)
        z = self.model.motion_hyperprior.entropy_bottleneck.channels * (h // m) * (w // m)
        return 2 * (y + z)

    def _plan_synthesis(self, width: int, height: int, action: str) -> StripPlan:
        """The fewest synthesis strips whose estimate fits what ``max_memory`` leaves (whole
        frames with no budget), set on the model; OverBudget in one line when none fits."""
        if self.max_memory is None:
            plan = StripPlan()
        else:
            left = budget_left(self.max_memory)
            plan, need, fits = choose_plan(self.model, self.padded_size(width, height), left, encoding=action == "encoding")
            if not fits and isinstance(self.max_memory, DefaultBudget):  # nobody chose it: warn, run the smallest plan
                if (width, height) not in _WARNED:
                    _WARNED.add((width, height))
                    print(
                        f"gvc: warning: {action} {width}x{height} needs ~{describe_bytes(need.total)} more than this process "
                        f"holds ({plan.describe()}), over the default memory budget of {describe_bytes(self.max_memory)}: "
                        f"set --max-memory (or {ENV_VAR}) to choose one",
                        file=sys.stderr,
                    )
            elif not fits:
                raise OverBudget(
                    f"{action} {width}x{height} needs ~{describe_bytes(need.total)} more than this process holds "
                    f"({plan.describe()}), the memory budget of {describe_bytes(self.max_memory)} leaves "
                    f"{describe_bytes(max(0, left))}: raise --max-memory"
                )
        self.model.pixel_strips = plan.strips
        self.plan = plan  # what the last encode or decode ran with
        return plan

    # ---- encoding -----------------------------------------------------------------------------

    def encode(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        rate_point: int,
        *,
        max_frames: int | None = None,
        on_recon: FrameCallback | None = None,
        intra_period: int | None = None,
        **options: Any,
    ) -> CodingReport:
        """Code ``source`` (a video file or PNG folder) into ``output`` at quality ``rate_point``.

        ``intra_period``: frames between keyframes (-1: the first only); default codec.json's.
        ``on_recon`` gets the decoder's frames one by one (uint8 H x W x 3), exactly what
        :meth:`decode` gives. The file appears only when whole; ``output`` is never ``source``.
        """
        if options:
            raise ValueError(f"the {self.family} codec takes no option {sorted(options)}")
        if not (isinstance(rate_point, int) and 0 <= rate_point < self.num_rate_points):
            raise ValueError(f"quality must be an integer in 0..{self.num_rate_points - 1}, got {rate_point!r}")
        period = self.intra_period if intra_period is None else intra_period
        if not (isinstance(period, int) and (period == -1 or 1 <= period <= 1 << 20)):
            raise ValueError(f"intra_period must be -1 (first frame only) or in 1..{1 << 20}, got {period!r}")
        config = StreamConfig(rate_point, max(period, 0), self.model.frame_multiple)
        output = Path(output)
        started = time.perf_counter()
        frames = payload_bytes = 0
        with stream_body(output, source) as body_path:
            with VideoReader(source) as reader, open(body_path, "wb") as body, inference_mode(self.deterministic):
                info = reader.info
                if not self._fits(info.width, info.height):
                    raise ValueError(self._over_limit(info.width, info.height) + "; scale the video down")
                self._plan_synthesis(info.width, info.height, "encoding")
                x_ref = None
                for frame in reader.frames(max_frames):
                    x_ref, strings = self._encode_frame(frame, x_ref, config, frames)
                    body.write(chunk_bytes(ChunkType.FRAMES, frame_payload(self.check.value, strings)))
                    payload_bytes += sum(map(len, strings))
                    if on_recon is not None:
                        on_recon(self._pixels(x_ref, info.width, info.height))
                    frames += 1
                if frames == 0:
                    raise ValueError("the input has no frames")
            header, fps = stream_header(self.stream_id, self.fingerprint, info.width, info.height, frames, info.fps)
            assemble_stream(output, header + chunk_bytes(ChunkType.CONFIG, config.payload()), body_path)
        return CodingReport(
            str(output), frames, info.width, info.height, fps, rate_point,
            output.stat().st_size, payload_bytes, frames, time.perf_counter() - started, stats={"plan": self.plan.describe()},
        )  # fmt: skip

    def _encode_frame(self, frame_HWC: Any, x_ref: torch.Tensor | None, config: StreamConfig, index: int) -> tuple[torch.Tensor, list[bytes]]:
        """The decoder's reconstruction of frame ``index`` (padded, unclamped: the next reference)
        and its strings in stream order; the model check is then this frame's."""
        x = frames_to_tensor(frame_HWC[None])[:, :, 0]  # 1 x 3 x H x W
        h, w = self.padded_size(x.shape[-1], x.shape[-2])
        x = F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="replicate")
        self.check.start("encode", index, config.quality)
        if x_ref is None or config.is_keyframe(index):
            x_rec, out = self.model.encode_keyframe(x, config.quality)
            y, z = out["strings"]
            return x_rec, [z[0], y[0]]
        x_rec, out = self.model.encode_inter(x, x_ref, config.quality)
        (my, mz), (ry, rz) = out["strings"]["motion"], out["strings"]["residual"]
        return x_rec, [mz[0], my[0], rz[0], ry[0]]

    @staticmethod
    def _pixels(x_1Chw: torch.Tensor, width: int, height: int) -> Any:
        """The frame the user sees: cropped to the real size, clamped, uint8 H x W x 3."""
        return tensor_to_frames(x_1Chw[:, :, None, :height, :width])[0]

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, stream: str | os.PathLike, on_frame: FrameCallback | None) -> CodingReport:
        """Decode ``stream`` and hand every frame to ``on_frame``; BitstreamError on bad input."""
        started = time.perf_counter()
        path = Path(stream)
        if not path.is_file():
            raise BitstreamError(f"no bitstream at {path}")
        with open(path, "rb") as f, inference_mode(self.deterministic):
            header, config, chunks = self._open_stream(f)
            self._plan_synthesis(header.width, header.height, "decoding")
            payload_bytes = self._decode_frames(header, config, chunks, on_frame)
        return CodingReport(
            str(path), header.frames, header.width, header.height, header.fps, config.quality,
            path.stat().st_size, payload_bytes, header.frames, time.perf_counter() - started, stats={"plan": self.plan.describe()},
        )  # fmt: skip

    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, StreamConfig, Any]:
        """Header and CONFIG, checked against this codec before anything is allocated, and the
        FRAMES chunks to come, each under a bound on its length."""
        header = read_header(f, expected_fingerprint=fingerprint_prefix(self.fingerprint))
        if header.family != self.stream_id:
            raise BitstreamError(f"a stream of codec family {header.family}, not of the {self.family} family ({self.stream_id})")
        if not self._fits(header.width, header.height):
            raise BitstreamError(self._over_limit(header.width, header.height) + f" ({type(self).__name__}.max_frame_pixels)")
        payload, offset = read_config_chunk(f, 1024)
        config = StreamConfig.parse(payload)
        if not 0 <= config.quality < self.num_rate_points:
            raise BitstreamError(f"quality {config.quality} is outside this codec's 0..{self.num_rate_points - 1}")
        if config.pad_multiple != self.model.frame_multiple:
            raise BitstreamError(f"pad multiple {config.pad_multiple}; this codec codes frames in multiples of {self.model.frame_multiple}")
        # a frame's strings take far less than 8 bytes a symbol: a damaged length above is refused unread
        max_chunk = 64 * 1024 + 8 * self._symbols_per_frame(header.width, header.height)
        return header, config, iter_chunks(f, offset=offset, max_chunk_bytes=max_chunk)

    def _decode_frames(self, header: StreamHeader, config: StreamConfig, chunks: Any, on_frame: FrameCallback | None) -> int:
        """Every frame to ``on_frame``, one at a time; the strings' bytes."""
        h, w = self.padded_size(header.width, header.height)
        z_hw = (h // self.model.frame_multiple, w // self.model.frame_multiple)  # z's size (check_components: 128)
        q, x_ref, payload_bytes = config.quality, None, 0
        for index in range(header.frames):
            chunk: Chunk | None = next(chunks, None)
            if chunk is None:
                raise BitstreamError(f"stream ends after {index} of {header.frames} frames")
            if chunk.type != ChunkType.FRAMES:
                raise BitstreamError(f"chunk at byte {chunk.offset} is {chunk.type.name}, expected FRAMES")
            key = config.is_keyframe(index)
            expected, s = parse_frame_payload(chunk, len(KEYFRAME_STRINGS if key else INTER_STRINGS))
            payload_bytes += sum(map(len, s))
            self.check.start("decode", index, q)
            if key:
                x_ref = self.model.decode_keyframe([[s[1]], [s[0]]], z_hw, q)
            else:
                x_ref = self.model.decode_inter(x_ref, {"motion": [[s[1]], [s[0]]], "residual": [[s[3]], [s[2]]]}, {"motion": z_hw, "residual": z_hw}, q)
            if self.check.value != expected:
                raise BitstreamError(
                    f"frame {index}: this decoder's probability model differs from the encoder's (its symbols or scale "
                    "indexes fail the stream's model check: another build or CPU kind, other weights, or a rewritten stream)"
                )
            if on_frame is not None:
                on_frame(self._pixels(x_ref, header.width, header.height))
        if next(chunks, None) is not None:
            raise BitstreamError(f"more chunks than the {header.frames} frames the stream announces")
        return payload_bytes
