"""One coded sampling trajectory: the encoder picks each stochastic step's noise, the decoder replays it.

:func:`code_trajectory` runs the :class:`~.sde.SdeSchedule` from seeded noise ``x_1`` to ``x_0``.
At stochastic step ``i`` and latent frame ``f`` the step's noise for that frame is

* with ``M_f = atoms_per_frame[f] > 0``: the combination of ``M_f`` atoms of the codebook keyed
  ``(seed, "atoms", gop, i, f)`` (``noise_codebook``). The **encoder** (``target`` given) picks
  them with the model's current prediction, ``r = target - x0_hat``; the **decoder** (``picks``
  given) reads them from the stream. Both then run the same calls on the same tensors, so the
  decoder's trajectory is the encoder's, bit for bit (on one machine);
* with ``M_f = 0`` (a frame the codec does not code, e.g. the I2V keyframe's latent frame):
  free seeded noise keyed ``(seed, "free", gop, i, f)``.

``x_1`` is keyed ``(seed, "start", gop)``. Everything random is a function of the stream's seed
and position, drawn on the CPU (``noise_codebook``) and moved to the state's device.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch

from gvc_train.models.codebook.noise_codebook import choose_atoms, codebook_key, combine_atoms, gaussian
from gvc_train.models.codebook.sde import SdeSchedule, ode_step, sde_step, x0_estimate

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
"""``velocity(x_BCThw, t) -> v_BCThw`` (float32, ``noise - x0``), conditions bound in."""


@dataclasses.dataclass(frozen=True)
class AtomPick:
    """The atoms of one step and latent frame: ``indices`` ascending (int64), ``positive`` (bool) their signs."""

    indices: torch.Tensor
    positive: torch.Tensor


Picks = list[list[AtomPick | None]]  # [stochastic step][latent frame]; None where M_f = 0


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def code_trajectory(
    velocity: Velocity,
    shape_BCThw: Sequence[int],
    schedule: SdeSchedule,
    codebook_size: int,
    atoms_per_frame: Sequence[int],
    seed: int,
    gop: int,
    *,
    target: torch.Tensor | None = None,
    picks: Picks | None = None,
    device: torch.device | str = "cpu",
    score_threads: int | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, Picks]:
    """Run one trajectory (module docstring); returns ``(x_0, picks)``, ``x_0`` float32 of ``shape_BCThw``.

    Exactly one of ``target`` (encoder: ``1 x C x T x h x w``, the latent to reach) and ``picks``
    (decoder: what the encoder returned, as read back) is given. ``score_threads``: intra-op
    threads while the encoder scores atoms (scores only choose atoms, which the stream then
    carries, so their bits need not be reproducible). ``on_step(i, x0_hat)`` sees every step's
    prediction (diagnostics)."""
    B, C, T, h, w = shape_BCThw
    if B != 1:
        raise ValueError(f"a trajectory codes one clip (batch 1), got a batch of {B}")
    if (target is None) == (picks is None):
        raise ValueError("give the target (encoder) or the picks (decoder), not both or neither")
    if len(atoms_per_frame) != T:
        raise ValueError(f"atoms_per_frame names {len(atoms_per_frame)} latent frames, the clip has {T}")
    if picks is not None and len(picks) != schedule.stochastic_steps:
        raise ValueError(f"{len(picks)} steps of picks for {schedule.stochastic_steps} stochastic steps")
    dim = C * h * w
    times = schedule.times()
    x = gaussian(codebook_key(seed, "start", gop), tuple(shape_BCThw)).to(device)
    chosen: Picks = []
    for i in range(schedule.num_steps):
        t, t_next = times[i], times[i + 1]
        u = velocity(x, t).float()
        if i >= schedule.stochastic_steps:
            x = ode_step(x, u, t, t_next)
            if on_step is not None:
                on_step(i, x0_estimate(x, u, t))
            continue
        x0_hat = x0_estimate(x, u, t)
        if on_step is not None:
            on_step(i, x0_hat)
        residual = (target - x0_hat).cpu() if target is not None else None
        noise = torch.empty(C, T, h, w)
        step_picks: list[AtomPick | None] = []
        for f, count in enumerate(atoms_per_frame):
            if count == 0:
                noise[:, f] = gaussian(codebook_key(seed, "free", gop, i, f), (C, h, w))
                step_picks.append(None)
                continue
            key = codebook_key(seed, "atoms", gop, i, f)
            if residual is not None:
                with _threads(score_threads):
                    indices, positive = choose_atoms(key, residual[0, :, f], codebook_size, count)
                pick = AtomPick(indices, positive)
            else:
                pick = _checked_pick(picks, i, f, count, codebook_size)  # type: ignore[arg-type]
            noise[:, f] = combine_atoms(key, pick.indices, pick.positive, dim).view(C, h, w)
            step_picks.append(pick)
        chosen.append(step_picks)
        x = sde_step(x, u, t, t_next, schedule.g(t), noise[None].to(x.device))
    return x, chosen


def _checked_pick(picks: Picks, step: int, frame: int, count: int, codebook_size: int) -> AtomPick:
    row = picks[step]
    pick = row[frame] if frame < len(row) else None
    if pick is None or len(pick.indices) != count or len(pick.positive) != count:
        raise ValueError(f"step {step}, latent frame {frame}: expected {count} atoms in the picks")
    if count and (int(pick.indices.min()) < 0 or int(pick.indices.max()) >= codebook_size):
        raise ValueError(f"step {step}, latent frame {frame}: an atom index outside the codebook of {codebook_size}")
    return pick
