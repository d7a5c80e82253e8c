"""The zero-shot family at inference: a pretrained video generator steered by seeded codebooks.

Nothing is trained. A codec folder holds a pretrained generator (``models/codebook/generator.py``),
a latent codec of the project for the frames it sends as images (keyframes), and the defaults
(``ZeroShotSettings``). The video is cut into GOPs of ``gop_frames`` frames that share their
boundary frame (``zeroshot_stream.gop_bounds``); each GOP is one sampling trajectory of the
generator converted to an SDE (``models/codebook/sde.py``), whose noise at each stochastic step
and latent frame is the combination of ``M`` atoms of a codebook of ``K`` seeded Gaussian vectors
picked by the encoder to point the model's prediction toward the GOP's latent
(``models/codebook/trajectory.py``). The stream is those atoms (``coding/atom_sets.py``), the
keyframes and the caption; the rate point picks ``M``.

Modes (``mode=``, one rate curve each in ``gvc eval --modes``):

* ``t2v``: a caption only (the ``caption`` option, else the sidecar text file; none: the model's
  empty prompt). GOP 0 is generated from text; each later GOP starts from the previous GOP's last
  decoded frame, given to the model as an image (chained), where the generator does i2v; a
  text-only generator codes each GOP on its own.
* ``i2v``: frame 0 is coded by the latent codec (a FRAMES chunk) and given to the model; later
  GOPs chain as above. The last ``tail_frames`` latent frames of each GOP get ``tail_atoms``.
* ``flf2v``: every GOP boundary frame is coded (frame 0 and each GOP's last frame); each GOP is
  generated between its two.

A frame the model is given (frame 0 of a GOP that starts from a known frame) gets no atoms (free
seeded noise); the decoder shows the given frames as decoded, the generated ones as the
generator decodes them. Each GOP's ATOMS chunk carries a 4-byte check of the encoder's final
latent: a decoder whose trajectory differs (another model, settings, seed, damage, or arithmetic)
stops with one BitstreamError line instead of showing another video.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F

from gvc_train.codecs.base import Codec, CodingReport, FrameCallback
from gvc_train.codecs.codec_folder import CodecFolderError
from gvc_train.codecs.controlled_clips import Keyframe, KeyframeCoder, padded_size
from gvc_train.codecs.controlled_stream import keyframe_payload, parse_keyframe
from gvc_train.codecs.determinism import inference_mode
from gvc_train.codecs.stream_layout import read_config_chunk
from gvc_train.codecs.memory_plan import OverBudget, whole_pass_refusal
from gvc_train.codecs.tokenizer_io import MAX_CHUNK_PIXELS, assemble_stream, decode_frames, stream_body, stream_header
from gvc_train.codecs.zeroshot_stream import (
    MAX_ATOM_BYTES,
    MAX_CAPTION_BYTES,
    MODES,
    TRAJECTORY_CHECK_BYTES,
    ZeroShotConfig,
    atoms_payload,
    float_bits,
    gop_bounds,
    parse_atoms,
    parse_caption,
)
from gvc_train.coding.atom_sets import pack_groups, packed_bits, packed_size, set_bits, size_bound, unpack_groups
from gvc_train.coding.container import (
    MAX_CHUNK_BYTES,
    BitstreamError,
    ChunkType,
    StreamHeader,
    chunk_bytes,
    fingerprint_prefix,
    iter_chunks,
    read_header,
)
from gvc_train.data.video_io import VideoReader, read_caption
from gvc_train.frames import frames_to_tensor, tensor_to_frames
from gvc_train.models.codebook.sde import SdeSchedule
from gvc_train.models.codebook.trajectory import AtomPick, code_trajectory
from gvc_train.models.fixed_point import FixedPointError

MAX_CONFIG_BYTES = 256


class ZeroShotCodec(Codec):
    """A zero-shot codec folder on the project's controlled transformer (module docstring).
    Subclasses build other generators (:meth:`build_generator`)."""

    family = "zeroshot"
    report_notes = ("zero-shot codecs send codebook atoms that steer a pretrained generator; the frames are generated, not coded",)

    def __init__(self, folder: str | os.PathLike, deterministic: bool = True) -> None:
        modules = self._load_folder(folder, deterministic)
        self.tokenizer = modules["tokenizer"].eval()
        self.latent_codec = modules["latent_codec"].eval()
        self.settings = modules["zeroshot"]
        self.max_gop_pixels = MAX_CHUNK_PIXELS  # for a generator without a memory estimate (a pipeline's own VAE)
        try:
            self.tables = self.latent_codec.cdf_tables()
            self.net = self.latent_codec.fixed_point()
        except (ValueError, FixedPointError) as e:
            raise CodecFolderError(f"{folder}: {e}") from None
        self.generator = self.build_generator(modules)

    def build_generator(self, modules: dict[str, Any]) -> Any:
        from gvc_train.models.codebook.controlled_generator import ControlledGenerator

        coding = modules["coding"]
        return ControlledGenerator(
            self.tokenizer, modules["transformer"].eval(), modules["text_encoder"].eval() if "text_encoder" in modules else None,
            coding.latent_scale, coding.end_role, self.settings.guidance_scale,
        )  # fmt: skip

    # ---- the folder ---------------------------------------------------------------------------

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        tokenizer, codec, settings = modules["tokenizer"], modules["latent_codec"], modules["zeroshot"]
        if codec.latent_channels != tokenizer.latent_channels:
            raise ValueError(f"{where}: the latent codec must take the tokenizer's {tokenizer.latent_channels} latent channels")
        if settings.keyframe_quality >= codec.num_qualities:
            raise ValueError(f"{where}: keyframe quality {settings.keyframe_quality} is not one of the latent codec's {codec.num_qualities}")
        if "transformer" in modules:
            model = modules["transformer"]
            if model.latent_channels != tokenizer.latent_channels:
                raise ValueError(f"{where}: the transformer must take the tokenizer's {tokenizer.latent_channels} latent channels")
            latents = 1 + -(-(settings.gop_frames - 1) // tokenizer.temporal_stride)
            if latents > model.max_latent_frames:
                raise ValueError(f"{where}: GOPs of {settings.gop_frames} frames make {latents} latent frames, over the transformer's {model.max_latent_frames}")

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        return {"quality_direction": "a higher quality index sends more codebook atoms a step", "qualities": len(modules["zeroshot"].atoms)}

    @property
    def num_rate_points(self) -> int:
        return len(self.settings.atoms)

    @property
    def modes(self) -> list[str]:
        """The modes this codec's generator can code (``encode(mode=...)``; ``gvc eval --modes``)."""
        return [m for m in MODES if m in self.generator.modes]

    def curves(self, modes: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """One rate curve per mode (``modes``: some of them; one this generator cannot code: ValueError)."""
        wanted = self.modes if modes is None else list(modes)
        unknown = [m for m in wanted if m not in self.modes]
        if unknown:
            raise ValueError(f"mode(s) {unknown}: {self.folder} codes {self.modes}")
        return [(m, {"mode": m}) for m in wanted]

    def gop_pixels(self, width: int, height: int, gop_frames: int) -> int:
        s = self.generator.size_multiple
        frames = 1 + self.generator.temporal_stride * -(-(gop_frames - 1) // self.generator.temporal_stride)
        return frames * (-(-height // s) * s) * (-(-width // s) * s)

    def gop_memory(self, width: int, height: int, gop_frames: int) -> int | None:
        """Bytes a GOP holds beside the tokenizer's planned passes: the generator's sampling and the
        frames (uint8 as read and padded, float32 to encode: 18 bytes a padded pixel); None without
        the generator's estimate (a pipeline's own VAE: the fixed pixel bound applies)."""
        s, ts = self.generator.spatial_stride, self.generator.temporal_stride
        padded_w, padded_h = padded_size(width, height, self.generator.size_multiple)
        latent_thw = (1 + -(-(gop_frames - 1) // ts), padded_h // s, padded_w // s)
        sampling = self.generator.sampling_bytes(latent_thw)
        return None if sampling is None else sampling + 18 * self.gop_pixels(width, height, gop_frames)

    # ---- encoding -----------------------------------------------------------------------------

    def encode(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        rate_point: int,
        *,
        max_frames: int | None = None,
        on_recon: FrameCallback | None = None,
        mode: str | None = None,
        caption: str | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> CodingReport:
        """Code ``source`` into ``output`` (module docstring). Options: ``mode`` (``t2v``, ``i2v``,
        ``flf2v``; the settings' by default), ``caption``, ``seed``."""
        if options:
            raise ValueError(f"the {self.family} codec takes no option {sorted(options)}")
        if not (isinstance(rate_point, int) and 0 <= rate_point < self.num_rate_points):
            raise ValueError(f"quality must be an integer in 0..{self.num_rate_points - 1}, got {rate_point!r}")
        s = self.settings
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2**63):
            raise ValueError(f"the seed must be an integer in 0..2^63-1, got {seed!r}")
        mode = s.mode if mode is None else mode
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r}: this codec's generator codes {self.modes}")
        if caption is None and self.generator.takes_text:
            caption = read_caption(source)
        if caption is not None:
            if not self.generator.takes_text:
                raise ValueError("this codec's generator takes no caption (it has no text encoder)")
            if not isinstance(caption, str) or not caption.strip() or len(caption.encode()) > MAX_CAPTION_BYTES:
                raise ValueError(f"the caption must be non-empty text of at most {MAX_CAPTION_BYTES} bytes")
        atoms = s.atoms[rate_point]
        config = ZeroShotConfig(
            MODES.index(mode), s.codebook_size, atoms, s.tail_frames if mode == "i2v" else 0, s.tail_atoms(atoms),
            s.num_steps, s.ode_tail, float_bits(s.shift), float_bits(s.g_scale), float_bits(s.g_power),
            float_bits(self.generator.guidance_scale), int(s.seed if seed is None else seed), s.gop_frames, s.keyframe_quality, int(caption is not None),
        )  # fmt: skip
        config.check()
        self._check_atom_bytes(config, 1 + -(-(config.gop_frames - 1) // self.generator.temporal_stride), ValueError)
        output = Path(output)
        started = time.perf_counter()
        score_threads = torch.get_num_threads()
        with stream_body(output, source) as body_path:
            with VideoReader(source) as reader, open(body_path, "wb") as body, inference_mode(self.deterministic):
                info = reader.info
                self._check_size(info.width, info.height, config, ValueError)
                run = _GopRunner(self, config, info.width, info.height, caption, on_recon)
                run.start_encode(body, score_threads)
                for frame in reader.frames(max_frames):
                    run.add(frame)
                run.finish()
            header, fps = stream_header(self.stream_id, self.fingerprint, info.width, info.height, run.frames, info.fps)
            head = header + chunk_bytes(ChunkType.CONFIG, config.payload())
            if caption is not None:
                head += chunk_bytes(ChunkType.TEXT, caption.encode())
            assemble_stream(output, head, body_path)
        return CodingReport(
            str(output), run.frames, info.width, info.height, fps, rate_point, output.stat().st_size,
            run.payload_bytes + (len(caption.encode()) if caption else 0), run.chunks + 1 + int(caption is not None),
            time.perf_counter() - started, run.keys.model_bits + run.atom_information_bits, stats=run.stats(),
        )  # fmt: skip

    @staticmethod
    def _check_atom_bytes(config: ZeroShotConfig, latents: int, error: type[Exception]) -> None:
        """A GOP's atoms within MAX_ATOM_BYTES (zeroshot_stream), bounded without big integers."""
        counts = [max(config.atoms, config.tail_atoms)] * latents * (config.num_steps - config.ode_tail)
        if size_bound(config.codebook_size, counts) > MAX_ATOM_BYTES:
            raise error(
                f"{config.atoms} atoms of {config.codebook_size} a step, {latents} latent frames and {config.num_steps - config.ode_tail} "
                f"stochastic steps a GOP: over the {MAX_ATOM_BYTES}-byte atoms limit of a GOP (fewer atoms, steps or frames a GOP)"
            )

    def _check_size(self, width: int, height: int, config: ZeroShotConfig, error: type[Exception]) -> None:
        """Refuse, before anything is allocated, GOPs over the generator's length, over the memory
        budget (none set: the default's) or, without an estimate, over the pixel bound; a mode it cannot do."""
        latents = 1 + -(-(config.gop_frames - 1) // self.generator.temporal_stride)
        if self.generator.max_latent_frames is not None and latents > self.generator.max_latent_frames:
            raise error(f"GOPs of {config.gop_frames} frames make {latents} latent frames, over this generator's {self.generator.max_latent_frames}")
        need = self.gop_memory(width, height, config.gop_frames)
        if need is not None:
            refusal = whole_pass_refusal(f"coding {width}x{height} GOPs of {config.gop_frames} frames", need, self.max_memory)
            if refusal is not None:
                raise OverBudget(refusal)
        elif self.gop_pixels(width, height, config.gop_frames) > self.max_gop_pixels:
            raise error(f"{width}x{height} GOPs of {config.gop_frames} frames are over this codec's {self.max_gop_pixels}-pixel limit: scale the video down")
        if config.mode_name not in self.modes:
            raise error(f"mode {config.mode_name!r}: this codec's generator codes {self.modes}")

    # ---- decoding -----------------------------------------------------------------------------

    def decode(self, stream: str | os.PathLike, on_frame: FrameCallback | None) -> CodingReport:
        """Decode ``stream`` and hand every frame to ``on_frame``; BitstreamError on bad input."""
        started = time.perf_counter()
        path = Path(stream)
        if not path.is_file():
            raise BitstreamError(f"no bitstream at {path}")
        with open(path, "rb") as f, inference_mode(self.deterministic):
            header, config, caption, chunks = self._open_stream(f)
            run = _GopRunner(self, config, header.width, header.height, caption, on_frame)
            run.decode(header.frames, chunks)
        return CodingReport(
            str(path), header.frames, header.width, header.height, header.fps, self.settings.atoms.index(config.atoms)
            if config.atoms in self.settings.atoms else -1, path.stat().st_size, run.payload_bytes, run.chunks + 1, time.perf_counter() - started,
            stats={"plan": run.plan},
        )  # fmt: skip

    def _open_stream(self, f: BinaryIO) -> tuple[StreamHeader, ZeroShotConfig, str | None, Any]:
        header = read_header(f, expected_fingerprint=fingerprint_prefix(self.fingerprint))
        if header.family != self.stream_id:
            raise BitstreamError(f"a stream of codec family {header.family}, not of the {self.family} family ({self.stream_id})")
        payload, offset = read_config_chunk(f, MAX_CONFIG_BYTES)
        config = ZeroShotConfig.parse(payload)
        self._check_size(header.width, header.height, config, BitstreamError)
        if config.keyframe_quality >= self.latent_codec.num_qualities:
            raise BitstreamError(f"keyframe quality {config.keyframe_quality} is outside this codec's 0..{self.latent_codec.num_qualities - 1}")
        latents = 1 + -(-(config.gop_frames - 1) // self.generator.temporal_stride)
        self._check_atom_bytes(config, latents, BitstreamError)
        if config.guidance_scale != self.generator.guidance_scale:
            raise BitstreamError(f"the stream was coded with guidance {config.guidance_scale}; this codec's generator samples with {self.generator.guidance_scale}")
        atom_bytes = packed_size(config.codebook_size, [max(config.atoms, config.tail_atoms)] * latents * (config.num_steps - config.ode_tail))
        keyframe_bytes = 8 * KeyframeCoder(self.tokenizer, self.latent_codec, self.tables, self.net, 0, header.width, header.height).symbols
        bound = min(MAX_CHUNK_BYTES, (1 << 16) + max(atom_bytes, keyframe_bytes, MAX_CAPTION_BYTES))
        chunks = iter_chunks(f, offset=offset, max_chunk_bytes=bound)
        caption = None
        if config.has_caption:
            chunk = next(chunks, None)
            if chunk is None:
                raise BitstreamError("the stream ends before its caption")
            caption = parse_caption(chunk)
            if not self.generator.takes_text:
                raise BitstreamError("the stream sends a caption; this codec's generator takes no text")
        return header, config, caption, chunks


def _pick(indices: list[int], positive: list[bool]) -> AtomPick:
    return AtomPick(torch.tensor(indices, dtype=torch.int64), torch.tensor(positive, dtype=torch.bool))


def trajectory_check(latent: torch.Tensor) -> bytes:
    """The first bytes of the sha256 of a GOP's final latent (float32, C order)."""
    return hashlib.sha256(latent.detach().float().cpu().contiguous().numpy().tobytes()).digest()[:TRAJECTORY_CHECK_BYTES]


class _GopRunner:
    """The GOP loop, shared by encoder and decoder: each GOP's given frames, atoms per latent
    frame, trajectory and output frames are computed by the same calls on both sides."""

    def __init__(self, owner: ZeroShotCodec, config: ZeroShotConfig, width: int, height: int, caption: str | None, on_frame: FrameCallback | None) -> None:
        self.owner, self.config, self.width, self.height, self.caption, self.on_frame = owner, config, width, height, caption, on_frame
        self.gen = owner.generator
        self.keys = KeyframeCoder(owner.tokenizer, owner.latent_codec, owner.tables, owner.net, config.keyframe_quality, width, height, owner.max_memory)
        self.schedule = SdeSchedule(config.num_steps, config.ode_tail, config.shift, config.g_scale, config.g_power)
        self.mode = config.mode_name
        self.chains = "i2v" in self.gen.modes  # a later GOP starts from the previous one's last frame
        self.payload_bytes = self.chunks = 0
        self.atom_information_bits = 0.0
        self.atom_groups: list[int] = []  # atoms per coded group, for the stats
        self.previous: np.ndarray | None = None  # the last frame shown
        self.plan: str | None = None  # the tokenizer's decoding plan for the last GOP (None: a pipeline's VAE)

    # ---- what both sides compute ----

    def latent_frames(self, frames: int) -> int:
        return 1 + -(-(frames - 1) // self.gen.temporal_stride)

    def atom_counts(self, latents: int, given_first: bool) -> list[int]:
        counts = [self.config.atoms] * latents
        if self.mode == "i2v":
            for f in range(max(1, latents - self.config.tail_frames), latents):
                counts[f] = self.config.tail_atoms
        if given_first:
            counts[0] = 0
        return counts

    def _image(self, frame_HWC: np.ndarray) -> torch.Tensor:
        return self._pad(frames_to_tensor(frame_HWC[None]))[:, :, 0]

    def _pad(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        s = self.gen.size_multiple
        ph, pw = -self.height % s, -self.width % s
        return F.pad(video_BCTHW, (0, pw, 0, ph, 0, 0), mode="replicate") if ph or pw else video_BCTHW

    def _plan(self, gop: int, length: int) -> tuple[str, bool, bool, list[int], tuple[int, ...]]:
        """``(generator mode, first given, last given, atoms per latent frame, latent shape)``."""
        first = (gop == 0 and self.mode != "t2v") or (gop > 0 and (self.chains or self.mode == "flf2v"))
        last = self.mode == "flf2v" and length > 1
        mode = "flf2v" if first and last else "i2v" if first else "t2v"
        latents = self.latent_frames(length)
        s = self.gen.size_multiple
        shape = (1, self.gen.latent_channels, latents, -(-self.height // s) * s // self.gen.spatial_stride, -(-self.width // s) * s // self.gen.spatial_stride)
        return mode, first, last, self.atom_counts(latents, first), shape

    def _trajectory(self, gop: int, mode: str, counts: list[int], shape: tuple[int, ...], first: np.ndarray | None, last: np.ndarray | None, **coding: Any) -> tuple[torch.Tensor, Any]:
        conditions = self.gen.conditions(
            mode, shape, caption=self.caption, first_B3HW=None if first is None else self._image(first), last_B3HW=None if last is None else self._image(last)
        )
        return code_trajectory(
            lambda x, t: self.gen.velocity(x, t, conditions), shape, self.schedule, self.config.codebook_size, counts,
            self.config.seed, gop, device=self.gen.device, **coding,
        )  # fmt: skip

    def _note_plan(self, plan: str) -> None:
        self.plan = plan

    def _show(self, gop: int, length: int, latent: torch.Tensor, first: np.ndarray | None, last: np.ndarray | None) -> None:
        tokenizer = getattr(self.gen, "tokenizer", None)
        if hasattr(tokenizer, "decode_chunk"):  # a streaming tokenizer's latents: decode within the memory budget
            out = decode_frames(tokenizer, latent / self.gen.latent_scale, self.width, self.height, self.owner.max_memory, length, self._note_plan)
        else:  # a pipeline's own VAE (Wan): at once
            out = tensor_to_frames(self.gen.decode_latent(latent)[0, :, :length, : self.height, : self.width]).copy()
        if first is not None:
            out[0] = first
        if last is not None:
            out[length - 1] = last
        for frame in out[0 if gop == 0 else 1 :]:
            if self.on_frame is not None:
                self.on_frame(frame)
        self.previous = out[length - 1]

    def _show_given(self, frame_HWC: np.ndarray) -> None:
        if self.on_frame is not None:
            self.on_frame(frame_HWC)
        self.previous = frame_HWC

    def _groups(self, counts: list[int]) -> list[int]:
        return [c for _ in range(self.schedule.stochastic_steps) for c in counts if c]

    # ---- encoder ----

    def start_encode(self, body: BinaryIO, score_threads: int) -> None:
        self.body, self.score_threads = body, score_threads
        self.buffer: list[np.ndarray] = []  # the current GOP's frames, its shared first frame first
        self.frames = self.gops = 0

    def add(self, frame_HWC: np.ndarray) -> None:
        """One more source frame; a GOP is coded as soon as it is whole (``gop_bounds``' layout)."""
        self.buffer.append(np.array(frame_HWC, dtype=np.uint8))
        self.frames += 1
        if len(self.buffer) == self.config.gop_frames:
            self._encode_gop(self.frames - len(self.buffer), self.buffer)
            self.buffer = self.buffer[-1:]

    def finish(self) -> None:
        if self.frames == 0:
            raise ValueError("the input has no frames")
        if len(self.buffer) > 1 or self.frames == 1:
            self._encode_gop(self.frames - len(self.buffer), self.buffer)

    def _encode_gop(self, start: int, clip: list[np.ndarray]) -> None:
        body, gop, length = self.body, self.gops, len(clip)
        stop = start + length - 1
        self.gops += 1
        mode, given_first, given_last, counts, shape = self._plan(gop, length)
        first = self._keyframe(body, start, clip[0]) if given_first and gop == 0 else self.previous if given_first else None
        last = self._keyframe(body, stop, clip[-1]) if given_last else None
        if length == 1 and first is not None:  # a one-frame video sent as an image: nothing to generate
            self._show_given(first)
            return
        padded = clip + [clip[-1]] * (1 + self.gen.temporal_stride * (shape[2] - 1) - length)
        target = self.gen.encode_video(self._pad(frames_to_tensor(np.stack(padded))))
        latent, picks = self._trajectory(gop, mode, counts, shape, first, last, target=target, score_threads=self.score_threads)
        groups = [(p.indices.tolist(), p.positive.tolist()) for step in picks for p in step if p is not None]
        packed = pack_groups(self.config.codebook_size, groups)
        body.write(chunk_bytes(ChunkType.ATOMS, atoms_payload(gop, trajectory_check(latent), packed)))
        self.payload_bytes += len(packed)
        self.chunks += 1
        sizes = self._groups(counts)
        self.atom_groups += sizes
        self.atom_information_bits += sum(set_bits(self.config.codebook_size, m) for m in sizes)
        self._show(gop, length, latent, first, last)

    def _keyframe(self, body: BinaryIO, frame: int, frame_HWC: np.ndarray) -> np.ndarray:
        check, rans, keyframe = self.keys.encode(frame, frame_HWC)
        body.write(chunk_bytes(ChunkType.FRAMES, keyframe_payload(frame, check, rans)))
        self.payload_bytes += len(rans)
        self.chunks += 1
        return keyframe.pixels_HWC

    def stats(self) -> dict[str, Any]:
        """The atoms' bits as coded, as packed (``log2 K + 1`` an atom), the atom count and the
        tokenizer's decoding plan."""
        K = self.config.codebook_size
        return {
            "atoms": sum(self.atom_groups),
            "atom_bits_packed": sum(packed_bits(K, m) for m in self.atom_groups),
            "atom_bits_information": self.atom_information_bits,
            "groups": len(self.atom_groups),
            "plan": self.plan,
        }

    # ---- decoder ----

    def decode(self, frames: int, chunks: Any) -> None:
        for gop, (start, stop) in enumerate(gop_bounds(frames, self.config.gop_frames)):
            length = stop - start + 1
            mode, given_first, given_last, counts, shape = self._plan(gop, length)
            first = self._read_keyframe(chunks, start) if given_first and gop == 0 else self.previous if given_first else None
            last = self._read_keyframe(chunks, stop) if given_last else None
            if length == 1 and first is not None:
                self._show_given(first)
                continue
            chunk = next(chunks, None)
            if chunk is None:
                raise BitstreamError(f"the stream ends before GOP {gop}'s atoms")
            index, check, packed = parse_atoms(chunk)
            if index != gop:
                raise BitstreamError(f"atoms chunk at byte {chunk.offset} is GOP {index}, expected GOP {gop}")
            groups = iter(unpack_groups(packed, self.config.codebook_size, self._groups(counts), f"GOP {gop}'s atoms"))
            picks = [[None if c == 0 else _pick(*next(groups)) for c in counts] for _ in range(self.schedule.stochastic_steps)]
            latent, _ = self._trajectory(gop, mode, counts, shape, first, last, picks=picks)
            if trajectory_check(latent) != check:
                raise BitstreamError(
                    f"GOP {gop}: the decoded trajectory is not the encoder's (its check fails): the stream was made with another "
                    "model or settings, was damaged, or this machine's arithmetic differs from the encoder's"
                )
            self.payload_bytes += len(packed)
            self.chunks += 1
            self._show(gop, length, latent, first, last)
        if next(chunks, None) is not None:
            raise BitstreamError("more chunks than the stream's GOPs")

    def _read_keyframe(self, chunks: Any, expected: int) -> np.ndarray:
        chunk = next(chunks, None)
        if chunk is None:
            raise BitstreamError(f"the stream ends before keyframe {expected}")
        frame, check, rans = parse_keyframe(chunk)
        if frame != expected:
            raise BitstreamError(f"keyframe chunk at byte {chunk.offset} is frame {frame}, expected {expected}")
        self.payload_bytes += len(rans)
        self.chunks += 1
        keyframe: Keyframe = self.keys.decode(frame, check, rans)
        return keyframe.pixels_HWC
