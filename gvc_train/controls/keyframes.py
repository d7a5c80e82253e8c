"""Keyframe policies: which frames of a video are coded in full (the rest are regenerated).

Two policies share one interface (:class:`KeyframePolicy`), built by name from a plain-JSON
config (:func:`build_keyframe_policy`, :meth:`KeyframePolicy.config` gives it back):

* ``fixed``: clips of ``clip_frames`` (N) frames whose first and last frames are keyframes,
  shared by neighbouring clips: keyframes at ``0, N-1, 2(N-1), ...`` and the video's last frame.
* ``adaptive``: colour-distance-guided (CGVC): a frame becomes a keyframe when its colour
  distance to the last keyframe exceeds ``threshold`` (no sooner than ``min_interval`` frames
  after it), or when ``max_interval`` frames have passed. Distances: ``lab`` (mean CIE76
  colour difference, Delta E in Lab units, over the frame analysed at ``analysis_size``),
  ``hist_chi2`` and ``hist_bhattacharyya`` (between 3D RGB histograms of ``bins`` per channel,
  both in [0, 1]).

Both always keyframe the first and the last frame, so every frame in between has a keyframe on
each side to interpolate from. Policies run over frames one at a time
(:meth:`KeyframePolicy.selector`: ``push(frame) -> bool`` then ``finish()``), so a streaming
encoder never holds more than it must; :meth:`KeyframePolicy.select` runs a whole video.

Frames: ``T x H x W x 3`` uint8 numpy RGB (``push`` takes one ``H x W x 3``), or a clip of the
data contract, ``3 x T x H x W`` float32 torch in [0, 1] (quantized to uint8 first, as a codec
would read it). Pure numpy: no OpenCV.

``python -m gvc_train.keyframes_cli VIDEO --config '{"name": "adaptive", "threshold": 8}'``
prints the keyframes a policy chooses (the command lives outside this package, which reads no
video files: the shard writer in ``gvc_train.data`` runs the controls).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from gvc_train.frames import tensor_to_frames

# ---- colour -------------------------------------------------------------------------------------

# sRGB (IEC 61966-2-1) 8-bit code -> linear light, once for all 256 codes.
_LINEAR = np.where((c := np.arange(256) / 255.0) <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
# Linear sRGB -> XYZ (D65), each row already divided by the D65 white's X, Y, Z, so white -> (1, 1, 1).
_RGB_TO_XYZ_WHITE = (
    np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    / np.array([[0.95047], [1.0], [1.08883]])
).astype(np.float32)
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) of uint8 sRGB ``... x 3``: float32 ``... x 3``, L in [0, 100]."""
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"srgb_to_lab takes uint8 ... x 3 RGB, got {rgb.dtype} {rgb.shape}")
    xyz = _LINEAR[rgb] @ _RGB_TO_XYZ_WHITE.T
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1).astype(np.float32)


def area_downsample(frame_HWC: np.ndarray, size: int) -> np.ndarray:
    """``frame_HWC`` averaged over square blocks so that its longer side is at most ~``size``
    (an integer factor; the edge rows/columns that do not fill a block are dropped). Float32."""
    h, w = frame_HWC.shape[:2]
    k = min(math.ceil(max(h, w) / size), h, w)  # a block never larger than the frame
    if k <= 1:
        return frame_HWC.astype(np.float32)
    h, w = h // k * k, w // k * k
    return frame_HWC[:h, :w].astype(np.float32).reshape(h // k, k, w // k, k, -1).mean(axis=(1, 3))


def rgb_histogram(frame_HWC: np.ndarray, bins: int) -> np.ndarray:
    """Normalized 3D RGB histogram (``bins`` per channel, flattened, sums to 1) of a uint8 frame."""
    q = (frame_HWC.astype(np.int64) * bins) >> 8  # 0 .. bins - 1, equal-width bins
    index = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    counts = np.bincount(index.ravel(), minlength=bins**3).astype(np.float64)
    return counts / counts.sum()


def chi2_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Symmetric chi-square between two normalized histograms: 0.5 sum (p-q)^2/(p+q), in [0, 1]."""
    s = p + q
    nz = s > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz]))


def bhattacharyya_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger form of the Bhattacharyya distance (OpenCV's HISTCMP_BHATTACHARYYA): sqrt(1 - sum sqrt(pq)), in [0, 1]."""
    return float(math.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(p * q))))))


# What a distance keeps of a frame, and how two of those compare.
_DISTANCES = ("lab", "hist_chi2", "hist_bhattacharyya")
# A default threshold per distance, between what the sample videos measured: carphone's motion
# (frame t to frame 0, 120 frames) reaches lab 12, chi2 0.08, Bhattacharyya 0.22; a cut between
# two of the sample videos (carphone, bikes, bigbuckbunny) measured lab >= 28, chi2 >= 0.33,
# Bhattacharyya >= 0.47.
DEFAULT_THRESHOLDS = {"lab": 18.0, "hist_chi2": 0.2, "hist_bhattacharyya": 0.33}


# ---- the interface ------------------------------------------------------------------------------


class KeyframeSelector(ABC):
    """One pass over one video: :meth:`push` every frame in order, then :meth:`finish`."""

    def __init__(self) -> None:
        self.frames = 0  # frames pushed so far
        self.keyframes: list[int] = []  # chosen so far, in order

    def push(self, frame_HWC: np.ndarray) -> bool:
        """Whether this frame (uint8 ``H x W x 3``, the next of the video) is a keyframe."""
        if not (isinstance(frame_HWC, np.ndarray) and frame_HWC.dtype == np.uint8 and frame_HWC.ndim == 3 and frame_HWC.shape[-1] == 3):
            what = f"{frame_HWC.dtype} {frame_HWC.shape}" if isinstance(frame_HWC, np.ndarray) else type(frame_HWC).__name__
            raise ValueError(f"push takes one uint8 H x W x 3 frame, got {what}")
        index = self.frames
        self.frames += 1
        chosen = index == 0 or self._choose(index, frame_HWC)
        if chosen:
            self.keyframes.append(index)
            self._keyed(frame_HWC)
        return chosen

    def finish(self) -> int | None:
        """End of the video: the last frame's index if it becomes a keyframe now (it was not one
        yet), else None. :attr:`keyframes` is then complete; ValueError if no frame was pushed."""
        if self.frames == 0:
            raise ValueError("the video has no frames")
        last = self.frames - 1
        if self.keyframes[-1] == last:
            return None
        self.keyframes.append(last)
        return last

    @abstractmethod
    def _choose(self, index: int, frame_HWC: np.ndarray) -> bool:
        """Whether frame ``index`` (> 0) is a keyframe."""

    def _keyed(self, frame_HWC: np.ndarray) -> None:
        """A keyframe was chosen (a policy that compares with it keeps what it needs)."""


class KeyframePolicy(ABC):
    """A keyframe policy. A subclass takes its settings as keyword arguments with defaults,
    keeps each in the attribute of the same name, and makes :class:`KeyframeSelector` s."""

    name: ClassVar[str]

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments as plain JSON (read back from the attributes)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def config(self) -> dict[str, Any]:
        """``{"name": ..., **settings}``: what :func:`build_keyframe_policy` takes."""
        return {"name": self.name, **self.settings()}

    @abstractmethod
    def selector(self) -> KeyframeSelector:
        """A fresh pass over one video."""

    def select(self, video: np.ndarray | torch.Tensor) -> list[int]:
        """Sorted keyframe indexes of ``video``: uint8 ``T x H x W x 3`` numpy, or float
        ``3 x T x H x W`` torch in [0, 1]. The first and the last frame are always in it."""
        selector = self.selector()
        for frame in as_frames_THWC(video):
            selector.push(frame)
        selector.finish()
        return selector.keyframes


def as_frames_THWC(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``T x H x W x 3`` of either layout :meth:`KeyframePolicy.select` takes."""
    if isinstance(video, torch.Tensor):
        if video.dim() != 4 or video.shape[0] != 3 or not video.is_floating_point():
            raise ValueError(f"a tensor video is float 3 x T x H x W in [0, 1], got {video.dtype} {tuple(video.shape)}")
        return tensor_to_frames(video)
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"a numpy video is uint8 T x H x W x 3, got {video.dtype} {video.shape}")
    return video


# ---- fixed --------------------------------------------------------------------------------------


class FixedKeyframes(KeyframePolicy):
    """Clips of ``clip_frames`` frames, first and last frame keyframes, shared between clips."""

    name = "fixed"

    def __init__(self, clip_frames: int = 16) -> None:
        if not isinstance(clip_frames, int) or clip_frames < 2:
            raise ValueError(f"clip_frames must be an integer >= 2 (a clip's first and last frame differ), got {clip_frames!r}")
        self.clip_frames = clip_frames

    def selector(self) -> KeyframeSelector:
        return _FixedSelector(self.clip_frames - 1)


class _FixedSelector(KeyframeSelector):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def _choose(self, index: int, frame_HWC: np.ndarray) -> bool:
        return index % self.step == 0


# ---- adaptive -----------------------------------------------------------------------------------


class AdaptiveKeyframes(KeyframePolicy):
    """A keyframe when the colour distance to the last keyframe exceeds ``threshold`` (and at
    least ``min_interval`` frames have passed), or every ``max_interval`` frames at the latest.

    ``threshold``: None takes :data:`DEFAULT_THRESHOLDS` for the distance (settings hold the
    value used). ``analysis_size``: the ``lab`` distance is measured on frames area-averaged to
    about this longer side (noise averages out; a 1080p frame costs what a small one does).
    ``bins``: histogram bins per RGB channel for the ``hist_*`` distances.
    """

    name = "adaptive"

    def __init__(
        self,
        distance: str = "lab",
        threshold: float | None = None,
        max_interval: int = 32,
        min_interval: int = 1,
        analysis_size: int = 64,
        bins: int = 8,
    ) -> None:
        if distance not in _DISTANCES:
            raise ValueError(f"unknown colour distance {distance!r}; known: {', '.join(_DISTANCES)}")
        if not (isinstance(max_interval, int) and isinstance(min_interval, int) and 1 <= min_interval <= max_interval):
            raise ValueError(f"need integers 1 <= min_interval <= max_interval, got {min_interval!r}, {max_interval!r}")
        if not (isinstance(analysis_size, int) and analysis_size >= 1 and isinstance(bins, int) and 1 <= bins <= 64):
            raise ValueError(f"analysis_size must be an integer >= 1 and bins one in 1..64, got {analysis_size!r}, {bins!r}")
        threshold = DEFAULT_THRESHOLDS[distance] if threshold is None else float(threshold)
        if not threshold >= 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.distance, self.threshold = distance, threshold
        self.max_interval, self.min_interval = max_interval, min_interval
        self.analysis_size, self.bins = analysis_size, bins

    def describe(self, frame_HWC: np.ndarray) -> np.ndarray:
        """What the distance compares of a uint8 frame: its Lab image at the analysis size, or its histogram."""
        if self.distance == "lab":
            small = np.clip(np.rint(area_downsample(frame_HWC, self.analysis_size)), 0, 255).astype(np.uint8)
            return srgb_to_lab(small)
        return rgb_histogram(frame_HWC, self.bins)

    def compare(self, a: np.ndarray, b: np.ndarray) -> float:
        """The distance between two :meth:`describe` results."""
        if self.distance == "lab":
            return float(np.sqrt(((a - b) ** 2).sum(axis=-1)).mean())
        if self.distance == "hist_chi2":
            return chi2_distance(a, b)
        return bhattacharyya_distance(a, b)

    def distance_between(self, frame_a: np.ndarray, frame_b: np.ndarray) -> float:
        """The colour distance of two uint8 ``H x W x 3`` frames."""
        return self.compare(self.describe(frame_a), self.describe(frame_b))

    def selector(self) -> KeyframeSelector:
        return _AdaptiveSelector(self)


class _AdaptiveSelector(KeyframeSelector):
    def __init__(self, policy: AdaptiveKeyframes) -> None:
        super().__init__()
        self.policy = policy
        self.reference: np.ndarray | None = None  # the last keyframe, described
        self.current: np.ndarray | None = None  # the frame being pushed, described (when it was)
        self.last_distance = 0.0  # the last measured frame's distance to the keyframe before it

    def _choose(self, index: int, frame_HWC: np.ndarray) -> bool:
        self.current = None
        since = index - self.keyframes[-1]
        if since >= self.policy.max_interval:
            return True  # no need to measure
        assert self.reference is not None
        self.current = self.policy.describe(frame_HWC)
        self.last_distance = self.policy.compare(self.current, self.reference)
        return since >= self.policy.min_interval and self.last_distance > self.policy.threshold

    def _keyed(self, frame_HWC: np.ndarray) -> None:
        self.reference = self.current if self.current is not None else self.policy.describe(frame_HWC)


# ---- by name ------------------------------------------------------------------------------------

KEYFRAME_POLICIES: dict[str, type[KeyframePolicy]] = {"fixed": FixedKeyframes, "adaptive": AdaptiveKeyframes}


def build_keyframe_policy(config: dict[str, Any]) -> KeyframePolicy:
    """A policy from ``{"name": "fixed" | "adaptive", **settings}`` (what :meth:`KeyframePolicy.config`
    gives); an unknown name or setting is a ValueError naming it."""
    settings = dict(config)
    name = settings.pop("name", None)
    if name not in KEYFRAME_POLICIES:
        raise ValueError(f"unknown keyframe policy {name!r}; known: {', '.join(KEYFRAME_POLICIES)}")
    try:
        return KEYFRAME_POLICIES[name](**settings)
    except TypeError as e:
        raise ValueError(f"keyframe policy {name!r}: {e}") from None
