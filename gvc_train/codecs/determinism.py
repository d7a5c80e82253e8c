"""The one switch for deterministic inference (after DCVC's): the same bits and frames anywhere
the same build of the code runs, whatever the caller's thread count.

Why a switch is needed: PyTorch's CPU kernels do not promise the same floating-point result for
different intra-op thread counts. Measured here (torch 2.14, 2 cores): every 3x3 convolution
of the latent codec gave identical results with 1 and 2 threads, but the tokenizer decoder's
1x1 Conv3d shortcut did not (max difference 6e-6), enough to flip ~1 in 10^4 output pixels by
one level. A flip in the networks that produce the entropy model's means and scales would be
worse: the decoder would pick other CDFs and lose sync with the encoder.

So encoding and decoding run every network on one intra-op thread. Scale indexes, means and
latents do not depend on this switch: the decoder side computes them in exact fixed point
(``models/fixed_point.py``), the same integers on every CPU kind and thread count. The switch
keeps the float parts (the tokenizer, g_a, h_a) reproducible on one machine, so the decoded
pixels equal the encoder's own reconstruction. ``deterministic=False`` lets torch use its
threads: faster on many cores; the latents stay exact, the pixels then match only between runs
with equal thread counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def inference_mode(deterministic: bool = True) -> Iterator[None]:
    """``torch.inference_mode`` plus, when ``deterministic``, one intra-op thread and, on a CUDA
    machine, cuDNN's deterministic algorithms in full float32 (no autotuning, no TF32): the
    decoder's pixels then equal the encoder's reconstruction on the same device kind. All restored
    after."""
    previous = torch.get_num_threads()
    cuda = torch.cuda.is_available()
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if deterministic:
        torch.set_num_threads(1)
        if cuda:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            yield
    finally:
        if deterministic:
            torch.set_num_threads(previous)
            if cuda:
                (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                 torch.backends.cuda.matmul.allow_tf32) = saved  # fmt: skip
