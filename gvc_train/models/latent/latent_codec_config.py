"""LatentVideoCodec's constructor config, bounds and state-dict layout, without the module.

A decoder needs the codec's weights, not its ``nn.Module``: building the module imports
compressai's package (and through it torch_geometric, transformers, scipy: +290 MB, ~4 s).
:class:`LatentCodecConfig` is what ``gvc_train.components.load_component_state`` checks a
``LatentVideoCodec`` component file against instead of the class: the same constructor
signature, bounds and constructor checks (``latent_codec.py`` takes its bounds and checks from
here; tests/test_inference_imports.py holds the signatures equal), and the tensors a config
builds, computed rather than built on the meta device (the same test compares the two).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

COMPONENT_NAME = "LatentVideoCodec"

# What a loaded config may hold (checked by gvc_train.components before building).
CONFIG_BOUNDS = {
    "latent_channels": (1, 1024), "channels": (1, 4096), "y_channels": (1, 4096), "z_channels": (1, 4096),
    "memory_channels": (1, 4096), "num_res_blocks": (0, 16), "num_qualities": (1, 64),
    "gain_range": (1e-3, 1e3), "len(gain_range)": (2, 2), "train_quantizer": {"noise", "ste"},
}  # fmt: skip

# compressai's EntropyBottleneck defaults (filters=(3, 3, 3, 3)): its density model's widths
_EB_WIDTHS = (1, 3, 3, 3, 3, 1)

Spec = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (safetensors dtype, shape)


class LatentCodecConfig:
    """A ``LatentVideoCodec`` config, checked as its constructor checks it (ValueError)."""

    component_name = COMPONENT_NAME
    config_bounds = CONFIG_BOUNDS

    def __init__(
        self,
        latent_channels: int = 16,
        channels: int = 64,
        y_channels: int = 64,
        z_channels: int = 32,
        memory_channels: int = 32,
        num_res_blocks: int = 2,
        num_qualities: int = 4,
        gain_range: Sequence[float] = (0.5, 4.0),
        train_quantizer: str = "noise",
    ) -> None:
        if num_qualities < 1:
            raise ValueError(f"num_qualities must be at least 1, got {num_qualities}")
        if train_quantizer not in ("noise", "ste"):
            raise ValueError(f"train_quantizer must be 'noise' or 'ste', got {train_quantizer!r}")
        lo, hi = (float(g) for g in gain_range)
        if not 0 < lo <= hi:
            raise ValueError(f"gain_range must be 0 < low <= high, got {gain_range}")
        self.latent_channels, self.channels, self.y_channels = latent_channels, channels, y_channels
        self.z_channels, self.memory_channels, self.num_res_blocks = z_channels, memory_channels, num_res_blocks
        self.num_qualities, self.gain_range, self.train_quantizer = num_qualities, (lo, hi), train_quantizer

    @classmethod
    def expected_tensors(cls, config: Mapping[str, Any]) -> Spec:
        """``{name: (dtype, shape)}`` of the state dict ``LatentVideoCodec(**config)`` has before
        ``update()`` (the entropy tables are empty placeholders: any size loads)."""
        c = cls(**config)
        spec: Spec = {}
        _trunk(spec, "ctx_net", c.latent_channels + c.memory_channels, c.channels, c.channels, c.num_res_blocks)
        spec["no_past"] = ("F32", (c.channels,))
        _conv(spec, "memory.gates", c.latent_channels + c.memory_channels, 2 * c.memory_channels)
        _conv(spec, "memory.candidate", c.latent_channels + c.memory_channels, c.memory_channels)
        _trunk(spec, "g_a", c.latent_channels + c.channels, c.channels, c.y_channels, c.num_res_blocks)
        _trunk(spec, "g_s", c.y_channels + c.channels, c.channels, c.latent_channels, c.num_res_blocks)
        _conv(spec, "h_a.net.0", c.y_channels, c.channels)
        _conv(spec, "h_a.net.2", c.channels, c.channels)
        _conv(spec, "h_a.net.4", c.channels, c.z_channels)
        _conv(spec, "h_s.conv_in", c.z_channels, c.channels)
        _conv(spec, "h_s.up", c.channels, 4 * c.channels)
        _conv(spec, "h_s.conv_out", c.channels, c.channels)
        _trunk(spec, "entropy_params", 2 * c.channels, c.channels, 2 * c.y_channels, 1)
        eb, z, w = "entropy_bottleneck", c.z_channels, _EB_WIDTHS
        spec.update({f"{eb}.quantiles": ("F32", (z, 1, 3)), f"{eb}.target": ("F32", (3,))})
        spec[f"{eb}.likelihood_lower_bound.bound"] = ("F32", (1,))
        for i in range(len(w) - 1):
            spec[f"{eb}.matrices.{i}"] = ("F32", (z, w[i + 1], w[i]))
            spec[f"{eb}.biases.{i}"] = ("F32", (z, w[i + 1], 1))
            if i < len(w) - 2:
                spec[f"{eb}.factors.{i}"] = ("F32", (z, w[i + 1], 1))
        gc = "gaussian_conditional"
        for model in (eb, gc):
            spec.update({f"{model}.{b}": ("I32", (0,)) for b in ("_offset", "_quantized_cdf", "_cdf_length")})
        spec[f"{gc}.scale_table"] = ("F32", (0,))
        for bound in ("scale_bound", "likelihood_lower_bound.bound", "lower_bound_scale.bound"):
            spec[f"{gc}.{bound}"] = ("F32", (1,))
        gains = ("F32", (c.num_qualities, c.y_channels))
        spec.update({"y_gain": gains, "y_inv_gain": gains})
        return spec


def _conv(spec: Spec, name: str, in_channels: int, out_channels: int) -> None:
    spec[f"{name}.weight"] = ("F32", (out_channels, in_channels, 3, 3))
    spec[f"{name}.bias"] = ("F32", (out_channels,))


def _trunk(spec: Spec, name: str, in_channels: int, channels: int, out_channels: int, num_res_blocks: int) -> None:
    """latent_codec_parts.trunk: conv, ResBlocks, LeakyReLU (no weights), conv."""
    _conv(spec, f"{name}.0", in_channels, channels)
    for i in range(1, num_res_blocks + 1):
        _conv(spec, f"{name}.{i}.conv1", channels, channels)
        _conv(spec, f"{name}.{i}.conv2", channels, channels)
    _conv(spec, f"{name}.{num_res_blocks + 2}", channels, out_channels)


def symbols_per_frame(y_channels: int, z_channels: int, height: int, width: int) -> int:
    """Symbols one latent frame of ``height x width`` puts in the stream (y, and z at half size)."""
    zh, zw = (height + 1) // 2, (width + 1) // 2
    return y_channels * height * width + z_channels * zh * zw
