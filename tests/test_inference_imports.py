"""What decoding loads: no compressai package, no training or data-science stack, little memory.

``gvc decode`` of a latent stream runs the latent codec from its weights (fixed-point net, saved
CDF tables) and loads only compressai's ``ans`` extension, so opening a codec and decoding adds
tens of MB to ``import torch``, not the ~320 MB (torch_geometric, transformers, scipy, pandas,
sympy, torch._dynamo) and ~6 s it used to. A fresh process checks it, as ``gvc decode`` runs.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gvc_train.codecs.latent import LatentCodec
from gvc_train.components import ComponentError, _build_on_meta, load_component, load_component_state
from gvc_train.models.latent.latent_codec import LatentVideoCodec
from gvc_train.models.latent.latent_codec_config import LatentCodecConfig

NEVER_LOADED = ("compressai", "torch_geometric", "transformers", "scipy", "pandas", "sympy", "lightning", "webdataset", "wandb", "torch._dynamo")
# Resident growth over `import torch` (this test's child, measured 3 times on 2 cores, torch 2.14
# cu130; a clean clone's CI once saw +96 MB after decoding with glibc's default mmap threshold,
# so the child fixes it): +17 MB after open_codec (gvc_train, numpy, safetensors, the weights), +55 MB after
# decoding 5 frames of 40x24 to a y4m file and a PNG folder (of which av 15 MB, PIL 2 MB, torch's
# kernels on first use 18 MB). What the bounds catch: the compressai package was +290 MB, and
# torch._dynamo with sympy (pulled in by torch.eye on the meta device) +150 MB.
MAX_OPEN_GROWTH_MB = 40
MAX_DECODE_GROWTH_MB = 110  # 2x the measured 55: a +150 MB regression still fails

_CHILD = r"""
import hashlib, json, re, sys
from pathlib import Path

def rss_mb():
    return int(re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) / 1024

import torch
base = rss_mb()
from gvc_train.codecs.base import open_codec
from gvc_train.codecs.frame_io import FrameSink

codec = open_codec(sys.argv[1])
opened = rss_mb() - base
out = Path(sys.argv[3])
sinks = [FrameSink(out / "decoded.y4m", 25), FrameSink(out / "decoded_png", 25)]
digest = hashlib.sha256()

def on_frame(frame):
    digest.update(frame.tobytes())
    for sink in sinks:
        sink.write(frame)

codec.decode(sys.argv[2], on_frame)
for sink in sinks:
    sink.close()
print(json.dumps({"opened_mb": opened, "decoded_mb": rss_mb() - base, "frames_sha256": digest.hexdigest(), "modules": sorted(sys.modules)}))
"""


@pytest.fixture(scope="module")
def tiny_stream(tiny_codec_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 5-frame 40x24 stream of the tiny codec and the sha256 of the encoder's reconstruction."""
    import hashlib

    folder = tmp_path_factory.mktemp("tiny_frames")
    y, x = np.mgrid[0:24, 0:40]
    for i in range(5):
        rgb = np.stack([(x * 6 + i * 9) % 256, (y * 10) % 256, ((x + y) * 4) % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"im{i + 1}.png")
    stream, digest = folder.parent / "tiny.gvc", hashlib.sha256()
    LatentCodec(tiny_codec_dir).encode(folder, stream, 1, on_recon=lambda frame: digest.update(frame.tobytes()))
    return stream, digest.hexdigest()


def test_decoding_loads_no_compressai_package_and_little_memory(tiny_codec_dir: Path, tiny_stream: tuple[Path, str], tmp_path: Path) -> None:
    stream, recon_sha256 = tiny_stream
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tiny_codec_dir), str(stream), str(tmp_path)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},  # large blocks returned when freed: live memory, not the heap's history
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    modules = set(report["modules"])
    loaded = sorted(m for m in modules if m != "compressai.ans" and any(m == n or m.startswith(n + ".") for n in NEVER_LOADED))
    assert not loaded, f"decoding imported {loaded[:10]}"
    assert "compressai.ans" in modules  # the rANS coder itself, loaded by file
    assert "gvc_train.models.latent.latent_codec" not in modules, "the decoder built the compressai model"
    assert report["frames_sha256"] == recon_sha256, "the state-only decoder's frames differ from the encoder's reconstruction"
    assert report["opened_mb"] < MAX_OPEN_GROWTH_MB and report["decoded_mb"] < MAX_DECODE_GROWTH_MB, {k: report[k] for k in ("opened_mb", "decoded_mb")}
    assert (tmp_path / "decoded.y4m").stat().st_size > 0 and len(list((tmp_path / "decoded_png").iterdir())) == 5


def test_the_rans_extension_is_one_module_whoever_imports_it_first() -> None:
    """compressai's own imports (``from compressai import ans``, ``from compressai.ans import``)
    get the module rans.py loaded, so its pybind types are one set."""
    from compressai import ans
    from compressai.ans import RansDecoder

    from gvc_train.coding import rans

    assert ans is rans._ANS is sys.modules["compressai.ans"]
    assert rans.RansDecoder is RansDecoder


@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_the_config_class_stands_for_the_module(blocks: int) -> None:
    """Same signature, annotations and bounds as LatentVideoCodec, and the state dict it computes
    is the one the module builds."""
    init = LatentVideoCodec.__init__.__wrapped_init__  # type: ignore[attr-defined]
    assert inspect.signature(LatentCodecConfig.__init__) == inspect.signature(init)
    assert typing.get_type_hints(LatentCodecConfig.__init__) == typing.get_type_hints(init)
    assert LatentCodecConfig.config_bounds is LatentVideoCodec.config_bounds
    config = {"latent_channels": 4, "channels": 8, "y_channels": 6, "z_channels": 5, "memory_channels": 3, "num_res_blocks": blocks, "num_qualities": 2}
    assert LatentCodecConfig.expected_tensors(config) == _build_on_meta(LatentVideoCodec, "LatentVideoCodec", config, "t")


def test_state_only_loading_gives_the_modules_tables_and_net(tiny_codec_dir: Path) -> None:
    from gvc_train.models.latent.latent_decoding import decoder_parts

    state = load_component_state(tiny_codec_dir, "latent_codec", LatentCodecConfig)
    module = load_component(tiny_codec_dir, "latent_codec")
    tables, net = decoder_parts(state.config, state.tensors)
    assert tables == module.cdf_tables()
    ours, theirs = net.g_s.conv_out, module.fixed_point().g_s.conv_out
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    assert torch.equal(net.scale_thresholds, module.fixed_point().scale_thresholds)
    with pytest.raises(ComponentError, match="'CausalVAE' component, where a 'LatentVideoCodec' one"):
        load_component_state(tiny_codec_dir, "tokenizer", LatentCodecConfig)
