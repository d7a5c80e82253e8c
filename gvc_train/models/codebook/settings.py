"""ZeroShotSettings: the zero-shot codec's defaults, a config-only component.

Like the controlled family's ``ControlledCodingSettings``, it travels in the codec folder as
JSON (and an empty safetensors file) and is fingerprinted with the rest. A stream carries every
setting it was coded with (``codecs/zeroshot_stream.py``); these are the defaults.

**ZeroShotSettings** (defaults: the published setting, GVC's Turbo-DDCM on Wan 2.1 at 480p):

* ``codebook_size`` K = 16384 atoms a step and latent frame; ``atoms``: the atoms per step (M) of
  each rate point, ascending (rate point ``i`` sends ``atoms[i]``);
* ``num_steps`` = 20 with the last ``ode_tail`` = 3 deterministic; ``shift`` = 3 (the time shift);
  ``g_scale``, ``g_power``: ``g(t) = 3 t^2``;
* ``gop_frames`` = 33 (neighbouring GOPs share a frame); ``mode``: the default of ``t2v``,
  ``i2v``, ``flf2v``;
* ``tail_frames`` = 2, ``tail_atoms_factor`` = 2: in i2v the last latent frames, farthest from
  the given frame, get ``round(M x factor)`` atoms (GVC: 64 -> 128);
* ``keyframe_quality``: the latent codec's quality index for coded keyframes;
* ``guidance_scale`` (1: one model call a step), ``seed`` (of every codebook and the start noise).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from gvc_train.models.codebook.generator import MODES
from gvc_train.models.registry import register_component

MAX_ATOMS = 4096  # what a stream may send a step and frame (codecs/zeroshot_stream.py's MAX_ATOMS, tested equal)


@register_component("ZeroShotSettings")
class ZeroShotSettings(nn.Module):
    """The zero-shot codec's defaults (module docstring). No weights."""

    config_bounds = {
        "codebook_size": (2, 1 << 24), "num_steps": (1, 1000), "ode_tail": (1, 1000), "shift": (1e-3, 1e3),
        "g_scale": (0.0, 100.0), "g_power": (-10.0, 10.0), "gop_frames": (2, 4097), "mode": set(MODES),
        "tail_frames": (0, 4097), "tail_atoms_factor": (1.0, 1e3), "keyframe_quality": (0, 255),
        "guidance_scale": (0.0, 100.0), "seed": (0, 2**63 - 1),
    }  # fmt: skip

    def __init__(
        self,
        codebook_size: int = 16384,
        atoms: list[int] | None = None,
        num_steps: int = 20,
        ode_tail: int = 3,
        shift: float = 3.0,
        g_scale: float = 3.0,
        g_power: float = 2.0,
        gop_frames: int = 33,
        mode: str = "i2v",
        tail_frames: int = 2,
        tail_atoms_factor: float = 2.0,
        keyframe_quality: int = 0,
        guidance_scale: float = 1.0,
        seed: int = 42,
    ) -> None:
        super().__init__()
        self.atoms = [int(m) for m in (atoms or [8, 16, 32, 64, 128])]
        top = min(codebook_size, MAX_ATOMS)
        if any(not 1 <= m <= top for m in self.atoms) or self.atoms != sorted(set(self.atoms)):
            raise ValueError(f"atoms must be ascending distinct counts in 1..{top} (the codebook size, at most {MAX_ATOMS}), got {self.atoms}")
        if not 1 <= ode_tail <= num_steps:
            raise ValueError(f"ode_tail must be 1..num_steps ({num_steps}), got {ode_tail}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.codebook_size, self.num_steps, self.ode_tail = int(codebook_size), int(num_steps), int(ode_tail)
        self.shift, self.g_scale, self.g_power = float(shift), float(g_scale), float(g_power)
        self.gop_frames, self.mode = int(gop_frames), mode
        self.tail_frames, self.tail_atoms_factor = int(tail_frames), float(tail_atoms_factor)
        self.keyframe_quality, self.guidance_scale, self.seed = int(keyframe_quality), float(guidance_scale), int(seed)

    def tail_atoms(self, atoms: int) -> int:
        return min(self.codebook_size, MAX_ATOMS, max(atoms, round(atoms * self.tail_atoms_factor)))

    def forward(self, *args: Any) -> None:  # pragma: no cover - a settings holder, never called
        raise RuntimeError("ZeroShotSettings holds settings; it is not called")
