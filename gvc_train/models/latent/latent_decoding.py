"""The latent codec's decoder from its weights alone: no ``nn.Module``, no compressai package.

Everything a decoder recomputes runs in fixed point (``models/fixed_point.py``) and its CDFs
are the entropy models' saved buffers, so a state dict is enough: :func:`decoder_parts` turns
one into the coder's tables and the fixed-point net, and :func:`decompress_frame` reads a latent
frame with them. ``LatentVideoCodec.decompress_frame`` is this function, so the module and the
state-only decoder cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gvc_train.coding.rans import CdfTables, SymbolDecoder
from gvc_train.models.fixed_point import FixedPointNet, FixedPointState, FrameObserver, StateTensors, to_float


def decoder_parts(config: Mapping[str, Any], tensors: StateTensors) -> tuple[dict[str, CdfTables], FixedPointNet]:
    """``(tables, net)`` of a ``LatentVideoCodec`` state dict after ``update()``: what
    ``cdf_tables()`` and ``fixed_point()`` give from the module (ValueError or FixedPointError
    when the weights cannot decode)."""
    tables = {
        key: CdfTables.from_buffers(
            tensors[f"{model}._quantized_cdf"], tensors[f"{model}._cdf_length"], tensors[f"{model}._offset"], model
        )
        for key, model in (("z", "entropy_bottleneck"), ("y", "gaussian_conditional"))
    }
    return tables, FixedPointNet.from_state(config, tensors)


def z_indexes(channels: int, height: int, width: int) -> torch.Tensor:
    """The CDF index of every z symbol, ``1 x channels x height x width`` (int32): its channel
    (compressai's ``EntropyBottleneck._build_indexes``)."""
    return torch.arange(channels, dtype=torch.int32).view(1, -1, 1, 1).repeat(1, 1, height, width)


def check_quality(quality: Any, num_qualities: int) -> None:
    if not isinstance(quality, int) or isinstance(quality, bool):
        raise TypeError(f"quality must be an int or a tensor of ints, got {type(quality).__name__}")
    if not 0 <= quality < num_qualities:
        raise ValueError(f"quality index must be in [0, {num_qualities}), got {quality}")


@torch.no_grad()
def decompress_frame(
    state: FixedPointState,
    quality: int,
    size_hw: tuple[int, int],
    decoder: SymbolDecoder,
    tables: dict[str, CdfTables],
    net: FixedPointNet,
    num_qualities: int,
    z_channels: int,
    observer: FrameObserver | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, FixedPointState]:
    """Read one latent frame (batch 1) of ``size_hw`` from ``decoder``: the latent (float32, on
    ``device``) and the next state (``net.init_state()`` first). ``observer`` sees ``(y symbols,
    y scale indexes, latent at 2^-FRAC_BITS)``."""
    h, w = size_hw
    check_quality(quality, num_qualities)
    z_symbols = decoder.get(z_indexes(z_channels, (h + 1) // 2, (w + 1) // 2), tables["z"])
    ctx_fixed = net.context(state, 1, h, w)
    scales_fixed, means_fixed = net.entropy_parameters(z_symbols, ctx_fixed)
    indexes = net.scale_indexes(scales_fixed)
    y_symbols = decoder.get(indexes, tables["y"])
    recon_fixed = net.synthesize(y_symbols, means_fixed, quality, ctx_fixed)
    if observer is not None:
        observer(y_symbols, indexes, recon_fixed)
    return to_float(recon_fixed).to(device), net.advance(state, recon_fixed)
