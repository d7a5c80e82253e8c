"""The controlled diffusion stage at scale: 2 gloo ranks x 2 clips train like 1 process x 4
(modality dropout, times and noise are keyed by position in the global batch), and a run
interrupted and resumed from last.ckpt ends where an uninterrupted one ends (EMA included)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from controlled_fixtures import clip_slice, controlled_clips, tiny_controlled_module

GLOBAL_CLIPS, STEPS = 4, 3


class GlobalBatchSlices(L.LightningDataModule):
    """Each rank's share of the same global batches: rank r gets clips r*n .. r*n + n. A resumed
    run continues at the batch of its next step (as the project's shard loaders do; a plain
    loader would start its epoch again)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.batches = [controlled_clips(GLOBAL_CLIPS, seed=10 + s) for s in range(steps)]

    def train_dataloader(self) -> DataLoader:
        share = GLOBAL_CLIPS // self.trainer.world_size
        start = self.trainer.global_rank * share
        rest = self.batches[self.trainer.global_step :]  # the restored step: checkpoints load first
        return DataLoader([clip_slice(b, start, share) for b in rest], batch_size=None)


def _trainer(root: Path, devices: int, max_steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=devices, max_steps=max_steps, max_epochs=-1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False, deterministic=True,
        strategy="ddp_fork_find_unused_parameters_true" if devices > 1 else "auto", default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)],
    )  # fmt: skip


def _fit(root: Path, devices: int, max_steps: int, steps_of_data: int, ckpt_path: Path | None = None, seed: int = 0) -> dict:
    module = tiny_controlled_module(seed)
    _trainer(root, devices, max_steps).fit(module, GlobalBatchSlices(steps_of_data), ckpt_path=ckpt_path)
    return torch.load(root / "last.ckpt", weights_only=True)


def _max_diff(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
    assert keys and keys == [k for k in b if k.startswith(prefix) and b[k].is_floating_point()]
    return max((a[k].double() - b[k].double()).abs().max().item() for k in keys)


def test_two_gloo_ranks_of_two_clips_train_like_one_process_of_four(tmp_path: Path) -> None:
    one = _fit(tmp_path / "one", 1, STEPS, STEPS)
    two = _fit(tmp_path / "two", 2, STEPS, STEPS)
    assert one["global_step"] == two["global_step"] == STEPS
    start = tiny_controlled_module(0).state_dict()
    moved = _max_diff(start, one["state_dict"], "transformer.")
    assert moved > 1e-3, "training did not move the weights: the comparison proves nothing"
    # The same bound as tests/test_scale_out.py (sums in another order, then an all-reduce);
    # one Adam step moves a weight by about lr = 2e-3, 200 times more.
    for part in ("transformer.", "ema_transformer."):
        diff = _max_diff(one["state_dict"], two["state_dict"], part)
        assert diff < 1e-5, f"2 ranks drifted from 1 by {diff:.2e} in {part}"
    (a,), (b,) = one["optimizer_states"], two["optimizer_states"]
    assert a["state"].keys() == b["state"].keys()
    assert {float(s["step"]) for s in a["state"].values()} == {float(s["step"]) for s in b["state"].values()} == {STEPS}
    for key in ("exp_avg", "exp_avg_sq"):  # within 2e-4 of the largest moment, as tests/test_scale_out.py
        scale = max(s[key].abs().max().item() for s in a["state"].values())
        diff = max((s[key].double() - b["state"][i][key].double()).abs().max().item() for i, s in a["state"].items())
        assert diff < 2e-4 * scale, f"2 ranks drifted from 1 in Adam's {key}: {diff / scale:.2e} of its largest value"
    assert one["lr_schedulers"] == two["lr_schedulers"]


def test_a_run_resumed_from_last_ckpt_ends_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """6 steps straight vs 3 steps, then a new process-like start (another module, built from
    another seed) resumed from last.ckpt to step 6: every weight, the EMA, the Adam state and the
    schedule are the same, bit for bit."""
    straight = _fit(tmp_path / "straight", 1, 6, 6)
    interrupted = _fit(tmp_path / "interrupted", 1, 3, 6)
    assert interrupted["global_step"] == 3
    assert any(k.startswith("ema_transformer.") for k in interrupted["state_dict"]), "the EMA is not in the checkpoint"
    resumed = _fit(tmp_path / "interrupted", 1, 6, 6, ckpt_path=tmp_path / "interrupted" / "last.ckpt", seed=1)
    assert straight["global_step"] == resumed["global_step"] == 6
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), f"{key} differs after resuming from step 3"
    ema = [k for k in straight["state_dict"] if k.startswith("ema_transformer.")]
    assert any(not torch.equal(straight["state_dict"][k], interrupted["state_dict"][k]) for k in ema), "the EMA never moved after step 3"
    for a, b in zip(straight["optimizer_states"], resumed["optimizer_states"]):
        assert a["state"].keys() == b["state"].keys()
        for i, state in a["state"].items():
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(b["state"][i][key])), (i, key)
    assert straight["lr_schedulers"] == resumed["lr_schedulers"]
