"""ScaleSpaceFlowCodec: compressai's Scale-Space Flow video codec (Agustsson et al., CVPR 2020)
at configurable widths, as a component: the learned pixel-domain peer of the generative families.

Per frame, as compressai's ``ScaleSpaceFlow`` (``compressai/models/video/google.py``):

    keyframe: y = img_encoder(x);  y_hat = img_hyperprior(y);  x_hat = img_decoder(y_hat)
    inter:    m_hat = motion_hyperprior(motion_encoder([x, ref]))
              flow, scale = motion_decoder(m_hat);  pred = warp(gaussian_volume(ref), flow, scale)
              r_hat = res_hyperprior(res_encoder(x - pred))
              x_hat = pred + res_decoder([r_hat, m_hat])

A hyperprior: ``z = hyper_encoder(y)`` (stride 8), ``z_hat = EntropyBottleneck(z)``, scales from
``hyper_decoder_scale(z_hat)`` (QReLU: clamped to [0, 255]), means from ``hyper_decoder_mean``,
``y_hat = round(y - means) + means`` (straight-through in training), y's likelihoods from a
``GaussianConditional``. In training the keyframe's reconstruction is detached before it becomes
the first reference (compressai, after the paper); inter frames backpropagate through the chain.

**Widths.** ``mid_planes``: the encoders' and decoders' inner width (compressai: 128);
``planes``: y's channels (192); ``hyper_planes``: the hyperpriors' inner width and z's channels
(192). compressai builds its networks as local classes with these widths fixed; here the same
layers (compressai's ``conv``/``deconv``/``QReLU``) are built at the configured widths. At the
defaults and ``num_qualities=1`` the state dict has exactly compressai's keys and shapes.
compressai's ``scale_field_shift`` argument is not taken: compressai stores it and never uses it.

**The one deviation: variable rate in one model.** With ``num_qualities > 1``, a quality index
selects learned per-channel gains for each of the three latents (keyframe, motion, residual):
y is multiplied by ``gain[q]`` before its hyperprior (quantization) and ``y_hat`` by
``inv_gain[q]`` after, as "Asymmetric Gained" VAEs and the latent codec's q_scale do. Gains start
geometrically spaced over ``gain_range``, so a higher index means finer quantization, a higher
rate and a higher quality (training with lambdas increasing with the index keeps it so).
compressai trains one model per rate point; ``num_qualities=1`` is plain SSF (no gain tensors).

**Frames** are ``B x 3 x H x W`` in [0, 1] with H and W multiples of ``FRAME_MULTIPLE`` (128):
stride 16 in the encoders, 8 more in the hyper path. Pad before (edge replication).

**Precision.** Each hyperprior runs in float32 with autocast off (its likelihoods are products of
CDF differences that bf16 cannot resolve, and it works at 1/16 of the resolution); the
full-resolution transforms follow the caller's autocast.

**Life cycle** as any compressai ``CompressionModel``: train with :meth:`aux_loss` (one summed
tensor; compressai's list is :meth:`aux_losses`) in its own optimizer on the ``quantiles``, then
``update(force=True)`` to build the entropy tables, then code one frame at a time with
``encode_keyframe``/``encode_inter`` and ``decode_keyframe``/``decode_inter``. An encode returns
the reconstruction the decoder will compute: the next inter frame's reference must be it, never
the source frame. Strings are compressai's: one ``bytes`` per batch element (code with B = 1).
``load_state_dict`` (compressai's) resizes the entropy tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import QReLU
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from compressai.models.video import ScaleSpaceFlow
from compressai.models.video.google import gaussian_kernel2d
from compressai.ops import quantize_ste
import torch.nn.functional as F
from torch import nn

from gvc_train.models.registry import register_component
from gvc_train.models.ssf.ssf_strips import blur_in_rows, run_in_strips

Quality = int | torch.Tensor
FRAME_MULTIPLE = 128  # 16 (encoder stride) x 8 (hyper path)
LATENTS = ("img", "motion", "res")  # keyframe, motion, residual: each has a hyperprior and gains


def _encoder(in_planes: int, mid_planes: int, out_planes: int) -> nn.Sequential:
    return nn.Sequential(
        conv(in_planes, mid_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
        conv(mid_planes, mid_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
        conv(mid_planes, mid_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
        conv(mid_planes, out_planes, kernel_size=5, stride=2),
    )  # fmt: skip


def _decoder(in_planes: int, mid_planes: int, out_planes: int) -> nn.Sequential:
    return nn.Sequential(
        deconv(in_planes, mid_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
        deconv(mid_planes, mid_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
        deconv(mid_planes, mid_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
        deconv(mid_planes, out_planes, kernel_size=5, stride=2),
    )  # fmt: skip


def _qrelu(x: torch.Tensor) -> torch.Tensor:
    return QReLU.apply(x, 8, 100)  # compressai's bit_depth=8, beta=100: a clamp to [0, 255]


class _ScaleDecoder(nn.Module):
    """compressai's HyperDecoderWithQReLU (same attribute names, so the same state-dict keys)."""

    def __init__(self, in_planes: int, mid_planes: int, out_planes: int) -> None:
        super().__init__()
        self.deconv1 = deconv(in_planes, mid_planes, kernel_size=5, stride=2)
        self.deconv2 = deconv(mid_planes, mid_planes, kernel_size=5, stride=2)
        self.deconv3 = deconv(mid_planes, out_planes, kernel_size=5, stride=2)

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return _qrelu(self.deconv3(_qrelu(self.deconv2(_qrelu(self.deconv1(z_hat))))))


class _Hyperprior(CompressionModel):
    """compressai's SSF Hyperprior at ``planes`` (y) and ``hyper_planes`` (inner width and z), in float32.

    compressai's hyper decoders take ``planes`` input channels where z has ``mid_planes``: the
    same number at its defaults. Here they take z's ``hyper_planes``, so any widths work.
    """

    def __init__(self, planes: int, hyper_planes: int) -> None:
        super().__init__()
        self.entropy_bottleneck = EntropyBottleneck(hyper_planes)
        self.hyper_encoder = nn.Sequential(
            conv(planes, hyper_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
            conv(hyper_planes, hyper_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
            conv(hyper_planes, hyper_planes, kernel_size=5, stride=2),
        )  # fmt: skip
        self.hyper_decoder_mean = nn.Sequential(
            deconv(hyper_planes, hyper_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
            deconv(hyper_planes, hyper_planes, kernel_size=5, stride=2), nn.ReLU(inplace=True),
            deconv(hyper_planes, planes, kernel_size=5, stride=2),
        )  # fmt: skip
        self.hyper_decoder_scale = _ScaleDecoder(hyper_planes, hyper_planes, planes)
        self.gaussian_conditional = GaussianConditional(None)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = y.float()
            z_hat, z_likelihoods = self.entropy_bottleneck(self.hyper_encoder(y))
            scales, means = self.hyper_decoder_scale(z_hat), self.hyper_decoder_mean(z_hat)
            _, y_likelihoods = self.gaussian_conditional(y, scales, means)
            return quantize_ste(y - means) + means, {"y": y_likelihoods, "z": z_likelihoods}

    def compress(self, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = y.float()
            z = self.hyper_encoder(y)
            z_strings = self.entropy_bottleneck.compress(z)
            shape = tuple(z.shape[-2:])
            # The decoder's z_hat, scales and means: the encoder computes exactly what it will.
            z_hat = self.entropy_bottleneck.decompress(z_strings, shape)
            scales, means = self.hyper_decoder_scale(z_hat), self.hyper_decoder_mean(z_hat)
            indexes = self.gaussian_conditional.build_indexes(scales)
            y_strings = self.gaussian_conditional.compress(y, indexes, means)
            y_hat = self.gaussian_conditional.quantize(y, "dequantize", means)
            return y_hat, {"strings": [y_strings, z_strings], "shape": shape}

    def decompress(self, strings: list[list[bytes]], shape: tuple[int, int]) -> torch.Tensor:
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError("a hyperprior's strings are [y_strings, z_strings]")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        scales, means = self.hyper_decoder_scale(z_hat), self.hyper_decoder_mean(z_hat)
        indexes = self.gaussian_conditional.build_indexes(scales)
        return self.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype, means)


@register_component("ScaleSpaceFlowCodec")
class ScaleSpaceFlowCodec(ScaleSpaceFlow):
    """Scale-Space Flow with configurable widths and an optional quality index (module docstring).

    ``mid_planes``, ``planes``, ``hyper_planes``: widths (compressai's defaults 128/192/192,
    34.2 M parameters; a CPU size is 48/64/64). ``num_levels``, ``sigma0``: the scale-space
    volume (compressai's 5 and 1.5). ``num_qualities``: rate points in one model (1: plain SSF);
    ``gain_range``: (lowest, highest) initial gain, spaced geometrically.
    """

    # named parts for fine-tuning (finetune.train / freeze): part -> sub-modules. The gains
    # (num_qualities > 1) are in none: they train only with the whole model.
    parts = {
        "intra": ("img_encoder", "img_decoder"),
        "motion": ("motion_encoder", "motion_decoder"),
        "residual": ("res_encoder", "res_decoder"),
        "entropy_models": ("img_hyperprior", "motion_hyperprior", "res_hyperprior"),
    }
    config_bounds = {
        "mid_planes": (1, 4096), "planes": (1, 4096), "hyper_planes": (1, 4096), "num_levels": (1, 7),
        "sigma0": (0.1, 16.0), "num_qualities": (1, 64), "gain_range": (1e-3, 1e3), "len(gain_range)": (2, 2),
    }  # fmt: skip
    frame_multiple = FRAME_MULTIPLE
    # Horizontal strips the coding methods run the pixel-resolution transforms in (analysis and
    # synthesis, ssf_strips.py): the same bits as whole frames in less memory; the codec sets it
    # from its memory budget. Training's forward runs whole frames.
    pixel_strips = 1

    def __init__(
        self,
        mid_planes: int = 128,
        planes: int = 192,
        hyper_planes: int = 192,
        num_levels: int = 5,
        sigma0: float = 1.5,
        num_qualities: int = 1,
        gain_range: Sequence[float] = (0.5, 2.0),  # a Sequence: a YAML list round-trips (jsonargparse)
    ) -> None:
        # Not ScaleSpaceFlow.__init__: it builds its fixed-width networks (34 M parameters) only
        # for them to be replaced. Its methods (volume, warp, prediction) are used as they are.
        CompressionModel.__init__(self)
        if num_qualities < 1:
            raise ValueError(f"num_qualities must be at least 1, got {num_qualities}")
        lo, hi = (float(g) for g in gain_range)
        if not 0 < lo <= hi:
            raise ValueError(f"gain_range must be 0 < low <= high, got {list(gain_range)}")
        self.img_encoder = _encoder(3, mid_planes, planes)
        self.img_decoder = _decoder(planes, mid_planes, 3)
        self.img_hyperprior = _Hyperprior(planes, hyper_planes)
        self.res_encoder = _encoder(3, mid_planes, planes)
        self.res_decoder = _decoder(2 * planes, mid_planes, 3)
        self.res_hyperprior = _Hyperprior(planes, hyper_planes)
        self.motion_encoder = _encoder(2 * 3, mid_planes, planes)
        self.motion_decoder = _decoder(planes, mid_planes, 2 + 1)  # flow (2) and scale field (1)
        self.motion_hyperprior = _Hyperprior(planes, hyper_planes)
        self.sigma0 = sigma0
        self.num_levels = num_levels
        self.planes = planes
        self.num_qualities = num_qualities
        if num_qualities > 1:
            gains = torch.logspace(math.log10(lo), math.log10(hi), num_qualities)[:, None].repeat(1, planes)
            self.gain = nn.ParameterDict({k: nn.Parameter(gains.clone()) for k in LATENTS})
            self.inv_gain = nn.ParameterDict({k: nn.Parameter(1.0 / gains) for k in LATENTS})

    # ---- quality ------------------------------------------------------------------------------
    def check_quality(self, quality: Quality, batch: int) -> torch.Tensor:
        """The quality index as a ``1`` or ``B`` long tensor; ValueError/TypeError when out of range."""
        if isinstance(quality, torch.Tensor):
            q = quality.to(dtype=torch.long).reshape(-1)
            if q.numel() not in (1, batch):
                raise ValueError(f"quality tensor must hold 1 or {batch} indexes, got {q.numel()}")
        elif isinstance(quality, int) and not isinstance(quality, bool):
            q = torch.tensor([quality])
        else:
            raise TypeError(f"quality must be an int or a tensor of ints, got {type(quality).__name__}")
        if int(q.min()) < 0 or int(q.max()) >= self.num_qualities:
            raise ValueError(f"quality index must be in [0, {self.num_qualities}), got {quality}")
        return q

    def _gains(self, kind: str, quality: Quality, batch: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        q = self.check_quality(quality, batch)
        if self.num_qualities == 1:
            return None
        q = q.to(self.gain[kind].device)
        return self.gain[kind][q][:, :, None, None], self.inv_gain[kind][q][:, :, None, None]

    def _to_coded(self, kind: str, y: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, torch.Tensor | None]:
        """y in the gained (coded) domain, float32, and the inverse gain to apply after (None: plain SSF)."""
        gains = self._gains(kind, quality, y.shape[0])
        y = y.float()
        return (y, None) if gains is None else (y * gains[0], gains[1])

    @staticmethod
    def _from_coded(y_hat: torch.Tensor, inv_gain: torch.Tensor | None) -> torch.Tensor:
        return y_hat if inv_gain is None else y_hat * inv_gain

    def _code(self, kind: str, y: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y, inv_gain = self._to_coded(kind, y, quality)
        y_hat, likelihoods = getattr(self, f"{kind}_hyperprior")(y)
        return self._from_coded(y_hat, inv_gain), likelihoods

    # ---- training forward ---------------------------------------------------------------------
    def forward_keyframe(self, x: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, dict[str, Any]]:
        _check_frame(x)
        y_hat, likelihoods = self._code("img", self.img_encoder(x), quality)
        return self.img_decoder(y_hat).float(), {"keyframe": likelihoods}

    def forward_inter(self, x_cur: torch.Tensor, x_ref: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, dict[str, Any]]:
        _check_frame(x_cur)
        motion_hat, motion_likelihoods = self._code("motion", self.motion_encoder(torch.cat((x_cur, x_ref), dim=1)), quality)
        x_pred = self.forward_prediction(x_ref, self.motion_decoder(motion_hat))
        res_hat, res_likelihoods = self._code("res", self.res_encoder(x_cur - x_pred), quality)
        x_rec = x_pred + self.res_decoder(torch.cat((res_hat, motion_hat), dim=1))
        return x_rec.float(), {"motion": motion_likelihoods, "residual": res_likelihoods}

    def forward(self, video_BCThw: torch.Tensor, quality: Quality) -> dict[str, Any]:
        """Code a GOP ``B x 3 x T x H x W`` (keyframe, then T - 1 inter frames) at ``quality``
        (an int or a ``B`` tensor). Returns ``x_hat`` (same shape, float32, not clamped),
        ``likelihoods`` (per frame, compressai's nesting: ``{"keyframe": {"y", "z"}}`` then
        ``{"motion": {...}, "residual": {...}}``) and ``bits`` (``B x T``, the model's bits)."""
        if not isinstance(video_BCThw, torch.Tensor) or video_BCThw.dim() != 5 or video_BCThw.shape[1] != 3:
            raise ValueError(f"expected a video B x 3 x T x H x W, got {_shape(video_BCThw)}")
        frames = video_BCThw.unbind(dim=2)
        x_hat, likelihoods = self.forward_keyframe(frames[0], quality)
        recons, all_likelihoods = [x_hat], [likelihoods]
        x_ref = x_hat.detach()  # stop gradient flow (compressai, after the paper)
        for x in frames[1:]:
            x_ref, likelihoods = self.forward_inter(x, x_ref, quality)
            recons.append(x_ref)
            all_likelihoods.append(likelihoods)
        bits = torch.stack([bits_per_item(lk) for lk in all_likelihoods], dim=1)
        return {"x_hat": torch.stack(recons, dim=2), "likelihoods": all_likelihoods, "bits": bits}

    # ---- entropy models -----------------------------------------------------------------------
    def aux_loss(self) -> torch.Tensor:
        """The summed auxiliary loss of the three entropy bottlenecks (one tensor)."""
        return CompressionModel.aux_loss(self)

    def aux_losses(self) -> list[torch.Tensor]:
        """compressai's ``ScaleSpaceFlow.aux_loss``: one loss per hyperprior, a list."""
        return ScaleSpaceFlow.aux_loss(self)

    def tables_ready(self) -> bool:
        """Whether ``update()`` has built every entropy table (coding needs them)."""
        return all(m._quantized_cdf.numel() > 0 for m in self.modules() if isinstance(m, (EntropyBottleneck, GaussianConditional)))

    def _require_tables(self) -> None:
        if not self.tables_ready():
            raise RuntimeError("the entropy tables are not built: call update(force=True) before coding")

    # ---- coding, one frame at a time (after update()) -----------------------------------------
    def gaussian_volume(self, x: torch.Tensor, sigma: float, num_levels: int) -> torch.Tensor:
        """compressai's scale-space volume, the same values; under a strip plan each blur runs in
        row bands (ssf_strips.blur_in_rows: the full-resolution blur's temporaries are the peak
        of a strip-planned frame) and each level is written into one volume (compressai's list
        and ``cat`` hold it twice)."""
        if self.pixel_strips <= 1 or torch.is_grad_enabled() or not torch.is_floating_point(x):
            return ScaleSpaceFlow.gaussian_volume(x, sigma, num_levels)
        kernel = gaussian_kernel2d(2 * int(math.ceil(3 * sigma)) + 1, sigma, device=x.device, dtype=x.dtype)
        volume = x.new_empty(x.shape[0], x.shape[1], num_levels + 1, *x.shape[2:])
        volume[:, :, 0] = x
        x = volume[:, :, 1] = blur_in_rows(x, kernel)
        for i in range(1, num_levels):
            x = blur_in_rows(F.avg_pool2d(x, kernel_size=(2, 2), stride=(2, 2)), kernel)
            interp = x
            for _ in range(i):
                interp = F.interpolate(interp, scale_factor=2, mode="bilinear", align_corners=False)
            volume[:, :, i + 1] = interp
        return volume

    def _in_strips(self, transform: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """``transform(x)``, in ``pixel_strips`` strips: bit for bit the whole frame's."""
        return run_in_strips(transform, x, self.pixel_strips)

    def _compress(self, kind: str, y: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, dict[str, Any]]:
        y, inv_gain = self._to_coded(kind, y, quality)
        y_hat, out = getattr(self, f"{kind}_hyperprior").compress(y)
        return self._from_coded(y_hat, inv_gain), out

    def _decompress(self, kind: str, strings: list, shape: tuple[int, int], quality: Quality) -> torch.Tensor:
        inv_gain = self._gains(kind, quality, len(strings[0]))
        y_hat = getattr(self, f"{kind}_hyperprior").decompress(strings, shape)
        return self._from_coded(y_hat, None if inv_gain is None else inv_gain[1])

    @torch.no_grad()
    def encode_keyframe(self, x: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(decoder's reconstruction, {"strings": [y, z], "shape": z's (h, w)})`` of a keyframe."""
        self._require_tables()
        _check_frame(x)
        y_hat, out = self._compress("img", self._in_strips(self.img_encoder, x), quality)
        return self._in_strips(self.img_decoder, y_hat).float(), out

    @torch.no_grad()
    def decode_keyframe(self, strings: list, shape: tuple[int, int], quality: Quality) -> torch.Tensor:
        self._require_tables()
        return self._in_strips(self.img_decoder, self._decompress("img", strings, shape, quality)).float()

    @torch.no_grad()
    def encode_inter(self, x_cur: torch.Tensor, x_ref: torch.Tensor, quality: Quality) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(decoder's reconstruction, {"strings": {"motion", "residual"}, "shape": {...}})`` of an
        inter frame; ``x_ref`` must be the decoder's previous reconstruction (an encode's output)."""
        self._require_tables()
        _check_frame(x_cur)
        motion_hat, motion = self._compress("motion", self._in_strips(self.motion_encoder, torch.cat((x_cur, x_ref), dim=1)), quality)
        x_pred = self.forward_prediction(x_ref, self._in_strips(self.motion_decoder, motion_hat))
        res_hat, res = self._compress("res", self._in_strips(self.res_encoder, x_cur - x_pred), quality)
        x_rec = x_pred + self._in_strips(self.res_decoder, torch.cat((res_hat, motion_hat), dim=1))
        strings = {"motion": motion["strings"], "residual": res["strings"]}
        return x_rec.float(), {"strings": strings, "shape": {"motion": motion["shape"], "residual": res["shape"]}}

    @torch.no_grad()
    def decode_inter(self, x_ref: torch.Tensor, strings: dict[str, list], shapes: dict[str, tuple[int, int]], quality: Quality) -> torch.Tensor:
        self._require_tables()
        motion_hat = self._decompress("motion", strings["motion"], shapes["motion"], quality)
        x_pred = self.forward_prediction(x_ref, self._in_strips(self.motion_decoder, motion_hat))
        res_hat = self._decompress("res", strings["residual"], shapes["residual"], quality)
        return (x_pred + self._in_strips(self.res_decoder, torch.cat((res_hat, motion_hat), dim=1))).float()

    def compress(self, frames: Sequence[torch.Tensor], quality: Quality) -> tuple[list[Any], list[Any]]:
        """compressai's GOP API with a quality: ``(per-frame strings, per-frame shapes)``."""
        x_ref, out = self.encode_keyframe(frames[0], quality)
        strings, shapes = [out["strings"]], [out["shape"]]
        for x in frames[1:]:
            x_ref, out = self.encode_inter(x, x_ref, quality)
            strings.append(out["strings"])
            shapes.append(out["shape"])
        return strings, shapes

    def decompress(self, strings: Sequence[Any], shapes: Sequence[Any], quality: Quality) -> list[torch.Tensor]:
        if len(strings) != len(shapes) or not strings:
            raise ValueError(f"decompress needs one shape per frame's strings, got {len(strings)} and {len(shapes)}")
        frames = [self.decode_keyframe(strings[0], shapes[0], quality)]
        for s, shape in zip(strings[1:], shapes[1:]):
            frames.append(self.decode_inter(frames[-1], s, shape, quality))
        return frames


def bits_per_item(likelihoods: Any) -> torch.Tensor:
    """``B``: bits ``-sum log2 p`` per batch element over a likelihood tensor or any dict nesting."""
    if isinstance(likelihoods, torch.Tensor):
        return torch.log(likelihoods).flatten(1).sum(dim=1) / -math.log(2.0)
    return torch.stack([bits_per_item(v) for v in likelihoods.values()]).sum(dim=0)


def _shape(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_frame(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected frames B x 3 x H x W, got {_shape(x)}")
    if x.shape[-2] % FRAME_MULTIPLE or x.shape[-1] % FRAME_MULTIPLE:
        raise ValueError(
            f"frames of {x.shape[-2]}x{x.shape[-1]}: the Scale-Space Flow codec needs H and W multiples of "
            f"{FRAME_MULTIPLE} (pad first)"
        )
