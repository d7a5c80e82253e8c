"""``gvc --device``: where a codec's networks run. The latent family runs its tokenizer on a GPU;
the entropy coding stays on the CPU in fixed point, so a stream's latents are the same integers
whichever device coded or decodes it. Families that list only the CPU, and machines without CUDA,
are refused in one line. The GPU round trip runs where there is one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gvc_train.codecs.base import CodecError, open_codec
from gvc_train.codecs.cli import main as gvc_main
from gvc_train.codecs.latent import LatentCodec

from test_latent_budget import video  # noqa: F401 - the 9-frame PNG folder fixture

REPO = Path(__file__).resolve().parents[1]


def test_a_family_that_runs_on_the_cpu_only_refuses_cuda_in_one_line():
    codec = open_codec(REPO / "checkpoints" / "ssf_tiny")
    with pytest.raises(CodecError, match="the ssf family runs on cpu only, not cuda"):
        codec.use_device("cuda")
    assert codec.device == "cpu"


def test_which_families_run_on_a_gpu():
    # The families whose networks off the entropy path are only the tokenizer. The controlled and
    # zero-shot families sample on the decoder (a zero-shot stream's atoms are chosen along a
    # trajectory the decoder must repeat bit for bit), SSF's entropy parameters come from float
    # networks: they stay on the CPU until a GPU run measures them (README, gvc --device).
    from gvc_train.codecs.families import FAMILIES

    runs_on_gpu = {name for name, entry in FAMILIES.items() if "cuda" in entry.codec_class().devices}
    assert runs_on_gpu == {"latent", "progressive"}


def test_cuda_without_a_device_is_refused_before_anything_is_written(tiny_codec_dir, video, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "x.gvc"
    assert gvc_main(["encode", str(video), str(out), "--codec", str(tiny_codec_dir), "--device", "cuda"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--device cuda: this machine has no CUDA device that torch can use") and not out.exists()


def _latent_digest(codec: LatentCodec, stream: Path, frames: list) -> str:
    digest = hashlib.sha256()

    def on_latent(symbols, indexes, latent) -> None:  # noqa: ANN001 - integer tensors
        for t in (symbols, indexes, latent):
            digest.update(np.ascontiguousarray(t.cpu().numpy()).tobytes())

    codec.decode(stream, frames.append, on_latent=on_latent)
    return digest.hexdigest()


def test_the_cpu_device_is_the_default_path(tiny_codec_dir, video, tmp_path):
    codec = LatentCodec(tiny_codec_dir)
    recon: list = []
    codec.encode(video, tmp_path / "a.gvc", 1, on_recon=recon.append)
    codec.use_device("cpu")
    decoded: list = []
    _latent_digest(codec, tmp_path / "a.gvc", decoded)
    assert codec.device == "cpu" and np.array_equal(np.stack(decoded), np.stack(recon))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_stream_decodes_to_its_reconstruction_there_and_to_the_same_latents_on_the_cpu(tiny_codec_dir, video, tmp_path):
    gpu = LatentCodec(tiny_codec_dir)
    gpu.use_device("cuda")
    recon: list = []
    gpu.encode(video, tmp_path / "g.gvc", 1, on_recon=recon.append)
    on_gpu: list = []
    on_cpu: list = []
    digest = _latent_digest(gpu, tmp_path / "g.gvc", on_gpu)
    assert np.array_equal(np.stack(on_gpu), np.stack(recon))  # the same device kind: the same pixels
    assert _latent_digest(LatentCodec(tiny_codec_dir), tmp_path / "g.gvc", on_cpu) == digest  # any device: the same latents
    diff = np.abs(np.stack(on_cpu).astype(int) - np.stack(on_gpu).astype(int))
    assert diff.max() <= 4 and (diff > 0).mean() < 1e-2, (diff.max(), (diff > 0).mean())  # float kernels: bounded


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_progressive_gpu_stream_decodes_to_its_reconstruction_there_and_on_the_cpu(tmp_path):
    from progressive_fixtures import write_clip, write_codec_dir

    folder = write_codec_dir(tmp_path / "codec", "codebook")
    (tmp_path / "clip").mkdir()
    clip = write_clip(tmp_path / "clip")
    gpu = open_codec(folder)
    gpu.use_device("cuda")
    recon: list = []
    gpu.encode(clip, tmp_path / "g.gvc", gpu.num_rate_points - 1, on_recon=recon.append)
    on_gpu: list = []
    on_cpu: list = []
    gpu.decode(tmp_path / "g.gvc", on_gpu.append)
    assert np.array_equal(np.stack(on_gpu), np.stack(recon))
    open_codec(folder).decode(tmp_path / "g.gvc", on_cpu.append)  # every scale's CRC passes: the same tokens
    diff = np.abs(np.stack(on_cpu).astype(int) - np.stack(on_gpu).astype(int))
    assert diff.max() <= 4 and (diff > 0).mean() < 1e-2, (diff.max(), (diff > 0).mean())
