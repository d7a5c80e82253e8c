"""The codec-family interface: what ``gvc``, ``gvc eval`` and ``gvc-export`` rely on.

Every family's inference class subclasses :class:`Codec` and is named in the family table
(``codecs/families.py``). Callers never name a family: they call :func:`open_codec` on an
exported folder and use the interface:

* ``family`` (the table's name), ``fingerprint`` (codec.json's, which every stream carries);
* rate points: integers ``0 .. num_rate_points - 1``, a higher one giving more bits and a better
  reconstruction (the latent family's quality index, a progressive family's scale count);
* ``encode(source, output, rate_point, ...) -> CodingReport`` and ``decode(stream, on_frame) ->
  CodingReport``, real files and real bits;
* ``describe(stream)``: what ``gvc info`` prints, read without building a model;
* ``truncate(stream, output, scales | max_bytes)``: a stream cut after a scale, without a model,
  where the family's streams can be cut (``gvc truncate``; the default refuses); ``cut_fills``
  (empty where streams cannot be cut) names how ``decode_cut`` may predict what a cut lacks,
  which ``gvc eval``'s truncation curve measures;
* ``ceiling(frames)``: the reconstruction without any rate constraint (a tokenizer alone), where
  the family has one, for rate-distortion plots.
* ``curves(modes)``: the rate curves ``gvc eval`` draws (one per mode where a family has modes);
* ``known_controls`` and ``default_controls``: the controls a family that sends them can send
  (``encode(controls=...)`` takes any subset) and those it sends when not told; empty for the
  others. ``gvc eval``'s ablation table codes a clip once per subset.

The family-specific settings of ``gvc-export`` come from :meth:`Codec.export_extras` and
:meth:`Codec.check_components`, so a folder that cannot code is refused when it is exported.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from gvc_train.codecs.families import FAMILIES, FamilyEntry, family_by_stream_id

FrameCallback = Callable[[Any], None]  # one decoded frame: uint8 numpy H x W x 3


@dataclasses.dataclass
class CodingReport:
    """What one encode or decode did; bits are real file bits. ``quality`` is the rate point."""

    path: str
    frames: int
    width: int
    height: int
    fps: float
    quality: int
    file_bytes: int
    payload_bytes: int  # the entropy-coded strings alone (no container, no per-chunk checks)
    chunks: int
    seconds: float
    model_bits: float | None = None  # encoder only: -sum log2 p of what was coded, as coded
    estimate_bits: float | None = None  # encoder only: the same at the training model's exact probabilities
    # a family's own figures: zero-shot encodes' atom bits; decodes' stage_seconds (where the time went)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def bpp(self) -> float:
        return self.file_bytes * 8 / (self.frames * self.width * self.height)

    @property
    def overhead_bytes(self) -> int:
        return self.file_bytes - self.payload_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "bpp": self.bpp, "overhead_bytes": self.overhead_bytes}


class CodecError(ValueError):
    """A codec folder whose family has no inference class, or a class that does not fit its entry."""


class Codec(abc.ABC):
    """An exported codec folder, ready to encode and decode.

    ``deterministic`` (the default) makes decoding bit-exact whatever the thread settings
    (``codecs/determinism.py``): DCVC's one switch.
    """

    family: ClassVar[str]  # its name in the family table
    # What gvc eval writes beside the codec's points (e.g. that it has no intra refresh).
    report_notes: ClassVar[tuple[str, ...]] = ()
    intra_period: ClassVar[int] = -1  # frames between intra refreshes; -1: one GOP a video
    # Whether ``encode`` takes ``intra_period=`` (gvc encode --intra-period; gvc eval gives the
    # codec the anchors' own, so that both refresh alike).
    takes_intra_period: ClassVar[bool] = False
    # How the decoder may predict what a stream cut by :meth:`truncate` does not carry
    # (:meth:`decode_cut`'s ``fill``), the family's default first. Empty (the default): the
    # family's streams cannot be cut. A family that overrides ``truncate`` lists one at least.
    cut_fills: ClassVar[tuple[str, ...]] = ()
    # Components the family runs from their weights alone: name -> the config class that stands
    # for theirs (``components.load_component_state``); they come to ``check_components`` and
    # ``__init__`` as a ``ComponentState``, their module not even imported (the latent codec's
    # decoder needs no compressai package).
    state_only_components: ClassVar[dict[str, type]] = {}

    folder: Path
    meta: dict[str, Any]  # codec.json
    fingerprint: str
    deterministic: bool
    # Bytes the whole process may hold while coding (codecs/memory_plan.py; ``gvc --max-memory``
    # sets it, to 1.5 GiB by default): a family picks its plan from it and refuses in one line
    # when not even its smallest plan fits. None: no limit, the fastest plan.
    max_memory: int | None = None
    # Device kinds the family's networks may run on (``gvc --device``); the entropy coding stays
    # on the CPU. A family that lists only "cpu" refuses another in one line.
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    device: str = "cpu"

    @classmethod
    def entry(cls) -> FamilyEntry:
        return FAMILIES[cls.family]

    def _load_folder(self, folder: str | os.PathLike, deterministic: bool) -> dict[str, Any]:
        """Read ``folder`` (CodecFolderError unless it is this family's and its components fit),
        set the attributes every codec has, and return the components."""
        from gvc_train.codecs.codec_folder import CodecFolderError, load_codec_components

        meta, modules = load_codec_components(folder, self.family, self.state_only_components)
        try:
            self.check_components(modules, str(folder))
        except ValueError as e:
            raise CodecFolderError(str(e)) from None
        self.folder, self.meta, self.deterministic = Path(folder), meta, deterministic
        self.fingerprint = meta["fingerprint"]
        self.stream_id = self.entry().stream_id
        return modules

    @property
    @abc.abstractmethod
    def num_rate_points(self) -> int:
        """Rate points are 0 .. num_rate_points - 1; higher = more bits, better quality."""

    @property
    def default_rate_point(self) -> int:
        return self.num_rate_points // 2

    @abc.abstractmethod
    def encode(
        self,
        source: str | os.PathLike,
        output: str | os.PathLike,
        rate_point: int,
        *,
        max_frames: int | None = None,
        on_recon: FrameCallback | None = None,
        **options: Any,
    ) -> CodingReport:
        """Code ``source`` (a video file or PNG folder) into ``output`` (which appears when whole).

        ``on_recon`` gets the decoder's reconstruction frame by frame, exactly what
        :meth:`decode` will produce. ``options`` are the family's own (``gvc encode``'s family
        flags); a family refuses one it does not know with a ValueError.
        """

    @abc.abstractmethod
    def decode(self, stream: str | os.PathLike, on_frame: FrameCallback | None) -> CodingReport:
        """Decode ``stream`` and hand every frame to ``on_frame``; BitstreamError on bad input."""

    def use_device(self, kind: str) -> None:
        """Run the networks on ``kind`` ("cpu", "cuda"): CodecError in one line where this family
        or this machine cannot."""
        if kind not in self.devices:
            raise CodecError(f"the {self.family} family runs on {' or '.join(self.devices)} only, not {kind}")
        if kind == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise CodecError("--device cuda: this machine has no CUDA device that torch can use")
        self._move_to(kind)
        self.device = kind

    def _move_to(self, kind: str) -> None:
        """Move the family's networks to ``kind`` (a family that lists more than "cpu" in
        :attr:`devices` overrides this)."""

    @classmethod
    def describe(cls, stream: str | os.PathLike) -> dict[str, Any]:
        return describe_stream(stream)

    def ceiling(self, frames_THWC: Any) -> Any | None:
        """The reconstruction of ``frames_THWC`` (uint8) with no rate limit, or None if the family has none."""
        return None

    @classmethod
    def truncate(
        cls, stream: str | os.PathLike, output: str | os.PathLike, scales: int | None = None, max_bytes: int | None = None
    ) -> dict[str, Any]:
        """Write to ``output`` the stream cut after its first ``scales`` scales, or after the most
        that fit ``max_bytes`` (``gvc truncate``), without a model. Returns ``{"scales",
        "of_scales", "bytes", "source_bytes"}``. Only a family whose streams can be cut (a
        progressive one) overrides this; the default refuses in one line."""
        raise CodecError(f"streams of the {cls.family} family cannot be cut (gvc truncate is for families whose chunks are ordered by scale)")

    @classmethod
    def can_cut(cls) -> bool:
        """Whether :meth:`truncate` cuts this family's streams (``cut_fills`` names how a cut decodes)."""
        return bool(cls.cut_fills)

    def curves(self, modes: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The rate curves ``gvc eval`` draws for this codec: ``(label, encode options)`` each, the
        rate points run along each. One unlabelled curve by default; a family with modes (the
        zero-shot family's t2v, i2v, flf2v) gives one per mode, ``modes`` picking some (a family without modes ignores it)."""
        return [("", {})]

    @property
    def known_controls(self) -> list[str]:
        """The controls this codec's streams can carry, any subset of which ``encode(controls=...)``
        takes. Empty (the default): the family sends none."""
        return []

    @property
    def default_controls(self) -> list[str]:
        """The controls :meth:`encode` sends when not given ``controls`` (within :attr:`known_controls`)."""
        return []

    def decode_cut(self, stream: str | os.PathLike, on_frame: FrameCallback | None, fill: str) -> CodingReport:
        """Decode ``stream`` (whole or cut by :meth:`truncate`) as :meth:`decode` does, predicting
        what it does not carry with ``fill`` (one of :attr:`cut_fills`). The default refuses."""
        raise CodecError(f"streams of the {self.family} family cannot be cut, so there is nothing to fill in")

    @classmethod
    def check_components(cls, modules: dict[str, Any], where: str) -> None:
        """Refuse (ValueError, one line) components that cannot work together in this family."""

    @classmethod
    def export_extras(cls, modules: dict[str, Any]) -> dict[str, Any]:
        """What ``gvc-export`` adds to codec.json for this family (``qualities`` at least)."""
        return {}


def open_codec(folder: str | os.PathLike, deterministic: bool = True) -> Codec:
    """The codec exported in ``folder``, of whatever family its codec.json names."""
    from gvc_train.codecs.codec_folder import read_codec_json

    entry = FAMILIES[read_codec_json(folder)["family"]]  # read_codec_json refuses unknown families
    cls = entry.codec_class()
    if not (isinstance(cls, type) and issubclass(cls, Codec) and cls.family == entry.name):
        raise CodecError(f"{entry.codec} is not the {entry.name!r} family's Codec class")
    return cls(folder, deterministic=deterministic)


def describe_stream(stream: str | os.PathLike) -> dict[str, Any]:
    """Header, size and per-chunk rows of a bitstream, from its family's layout; no model built.
    Reads chunk by chunk: memory is one chunk whatever the file's size."""
    from gvc_train.coding.container import BitstreamError, iter_chunks, read_header

    path = Path(stream)
    if not path.is_file():
        raise BitstreamError(f"no bitstream at {stream}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = read_header(f)
        entry = family_by_stream_id(header.family)
        if entry is None:
            raise BitstreamError(f"unknown codec family {header.family} (this gvc_train knows {sorted(FAMILIES)})")
        rows = entry.describe_chunks()(header, iter_chunks(f, offset=f.tell()))
    return {
        "file": str(stream),
        "family": entry.name,
        "fingerprint": header.fingerprint.hex(),
        "width": header.width,
        "height": header.height,
        "frames": header.frames,
        "fps": f"{header.fps_num}/{header.fps_den}",
        "bytes": size,
        "bpp": size * 8 / (header.width * header.height * header.frames),
        "chunks": rows,
    }
