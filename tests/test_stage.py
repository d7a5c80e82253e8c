"""The stage base: a new stage is a small subclass, and gets what every stage shares."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY
from gvc_train.lit.latent_codec import LatentCodecModule
from gvc_train.lit.stage import EvalResult, StageModule
from gvc_train.lit.tokenizer import TokenizerModule
from gvc_train.models import CausalVAE, LatentVideoCodec


def _tiny_vae() -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, mid_attention=False, norm_groups=4, temporal_downsample=[True])


class ToyStage(StageModule):
    """All a stage writes: its declarations, its step, its metrics, its optimizers."""

    stage_name = "the toy stage"
    exported_components = {"tokenizer": "vae"}
    frozen_components = ("teacher",)
    progress_bar_metrics = ("l1",)

    def __init__(self, vae: torch.nn.Module, lr: float = 0.1, warmup_steps: int = 4, max_consecutive_nonfinite: int = 2) -> None:
        super().__init__(max_consecutive_nonfinite)
        self.save_hyperparameters(ignore=["vae"])
        self.vae = vae
        self.teacher = torch.nn.Dropout(0.5)  # frozen: stays in eval mode

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        x = self.teacher(batch["video"])
        loss = (self.vae(x, sample_posterior=False)[0] - x).abs().mean()
        if not self.nonfinite.ok(self, loss, x.shape[0]):
            return None
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self.step_schedulers()
        return loss.detach()

    def evaluate(self, batch: dict) -> EvalResult:
        recon = self.vae(batch["video"], sample_posterior=False)[0]
        return EvalResult({"l1": (recon - batch["video"]).abs().mean(), "max": recon.max()}, batch_size=1, outputs={"recon": recon})

    def configure_optimizers(self):
        return self.with_warmup([torch.optim.SGD(self.vae.parameters(), lr=self.hparams.lr)], self.hparams.warmup_steps)


def _trainer(root: Path, steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=root, enable_checkpointing=False,
    )  # fmt: skip


def test_a_small_subclass_gets_warmup_eval_dispatch_guard_and_the_export_entry(tmp_path: Path) -> None:
    stage = ToyStage(_tiny_vae())
    clip = {"video": torch.rand(1, 3, 5, 16, 16)}
    bad = {"video": torch.full((1, 3, 5, 16, 16), float("nan"))}
    trainer = _trainer(tmp_path, 2)
    trainer.fit(stage, DataLoader([clip, bad, clip], batch_size=None), DataLoader([clip], batch_size=None))
    assert trainer.global_step == 2 and stage.nonfinite.skipped == 1  # the NaN batch did not step
    # linear warm-up over 4 steps, advanced by the two steps taken
    assert stage.optimizers().param_groups[0]["lr"] == pytest.approx(0.1 * 3 / 4)
    assert not stage.teacher.training and stage.vae.training
    assert {"val/l1", "val/max"} <= set(trainer.callback_metrics)
    assert set(trainer.progress_bar_metrics) == {"val/l1"}  # progress_bar_metrics, during validation
    tested = trainer.test(stage, DataLoader([clip], batch_size=None), verbose=False)[0]
    assert set(tested) == {"test/l1", "test/max"}
    trainer.save_checkpoint(tmp_path / "toy.ckpt")
    saved = torch.load(tmp_path / "toy.ckpt", weights_only=True)
    entry = saved[CHECKPOINT_KEY]
    assert entry["components"] == {"tokenizer": {"class": "CausalVAE", "config": stage.vae.config, "state_prefix": "vae."}}
    assert entry["provenance"]["global_step"] == 2 and saved["nonfinite_skipped"] == 1 and "rng_state" in saved


def test_frozen_components_never_train() -> None:
    module = LatentCodecModule(LatentVideoCodec(num_qualities=2, channels=16, y_channels=8, z_channels=8, memory_channels=8, num_res_blocks=1),
                               lambdas=[1.0, 2.0], tokenizer=_tiny_vae().train())  # fmt: skip
    for mode in (True, False, True):
        module.train(mode)
        assert module.codec.training is mode and not module.tokenizer.training
    assert not any(p.requires_grad for p in module.tokenizer.parameters())
    module.tokenizer = _tiny_vae().train()  # a reassigned one is frozen too
    assert not module.tokenizer.training and not any(p.requires_grad for p in module.tokenizer.parameters())


def test_precision_policy_and_unexportable_components_are_refused_at_start_up(tmp_path: Path) -> None:
    tokenizer_stage = TokenizerModule(_tiny_vae())
    for precision in ("32-true", "bf16-mixed", "bf16-true"):
        tokenizer_stage.check_precision(precision)
    with pytest.raises(ValueError, match=r"^the tokenizer stage does not support precision=16-mixed; use bf16-mixed or 32-true$"):
        tokenizer_stage.check_precision("16-mixed")

    class Unregistered(ToyStage):
        exported_components = {"tokenizer": "vae", "head": "head"}

        def __init__(self) -> None:
            super().__init__(_tiny_vae())
            self.head = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"^the toy stage: gvc-export could not write head \(Linear is not a registered component\)$"):
        _trainer(tmp_path, 1).fit(Unregistered(), DataLoader([{"video": torch.rand(1, 3, 5, 16, 16)}], batch_size=None))


def test_the_lr_schedule_warms_up_then_decays_by_cosine_and_is_a_function_of_the_step() -> None:
    from gvc_train.lit.stage import lr_factor

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    _, [entry] = StageModule.with_warmup([opt], warmup_steps=4, decay_steps=20, min_lr_ratio=0.1)
    lrs = []
    for _ in range(24):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        entry["scheduler"].step()
    assert lrs[:4] == pytest.approx([lr_factor(s, 4, 20, 0.1) for s in range(4)])
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3]  # warm-up
    assert all(a > b for a, b in zip(lrs[4:20], lrs[5:21]))  # cosine decay
    assert lrs[10] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert lrs[20:] == pytest.approx([0.1] * 4)  # flat at the floor after decay_steps
    # no warm-up and no decay: no scheduler at all
    assert StageModule.with_warmup([opt], warmup_steps=0) == [opt]
    # a scheduler restored mid-decay (its state is the step count) continues on the same curve
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    _, [entry] = StageModule.with_warmup([opt], warmup_steps=4, decay_steps=20, min_lr_ratio=0.1)
    for _ in range(7):
        entry["scheduler"].step()
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    _, [entry2] = StageModule.with_warmup([opt2], warmup_steps=4, decay_steps=20, min_lr_ratio=0.1)
    entry2["scheduler"].load_state_dict(entry["scheduler"].state_dict())
    entry["scheduler"].step()
    entry2["scheduler"].step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[8]) == pytest.approx(opt.param_groups[0]["lr"])


def test_cpu_budget_stops_the_run_once_its_cpu_seconds_are_spent(tmp_path: Path) -> None:
    from gvc_train.lit.cpu_budget import CpuBudget

    stage = ToyStage(_tiny_vae())
    clip = {"video": torch.rand(1, 3, 5, 16, 16)}
    stage._cpu_seconds_before = 1e6  # a resumed run already past its budget
    trainer = L.Trainer(
        accelerator="cpu", max_steps=50, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path, enable_checkpointing=False, callbacks=[CpuBudget(10.0)],
    )  # fmt: skip
    trainer.fit(stage, DataLoader([clip] * 50, batch_size=None))
    assert trainer.global_step == 1
    with pytest.raises(ValueError, match="max_cpu_seconds"):
        CpuBudget(0)
