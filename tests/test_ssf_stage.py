"""The Scale-Space Flow stage: rate-distortion steps, the aux optimizer, padding to the codec's
frame multiple, validation metrics, and gvc-export of its checkpoint into a codec that codes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from gvc_train.cli import run as gvc_train_cli
from gvc_train.components import load_component
from gvc_train.export import export_checkpoint
from gvc_train.lit.ssf import SSFModule, pad_to_multiple
from gvc_train.models.ssf.ssf_codec import ScaleSpaceFlowCodec

from conftest import REPO, tiny_fit_args

TINY = dict(mid_planes=8, planes=8, hyper_planes=8, num_levels=3)


def _module(**kwargs) -> SSFModule:
    torch.manual_seed(0)
    args = dict(lambdas=[0.01, 0.05], lr=1e-3, aux_lr=1e-2, warmup_steps=0)
    return SSFModule(ScaleSpaceFlowCodec(**TINY, num_qualities=2), **{**args, **kwargs})


def _batch(height: int = 32, width: int = 48) -> dict:
    """A 3-frame clip smaller than 128: the stage pads it (the tests' recipes crop 32)."""
    torch.manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(2, 3, height // 8, width // 8 + 3), scale_factor=8, mode="bilinear")
    return {"video": torch.stack([base[..., 8 * t : 8 * t + width] for t in range(3)], dim=2).clamp(0, 1)}


def _fit(module: SSFModule, batch: dict, steps: int, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None))
    return trainer


def _quantiles(module: SSFModule) -> list[torch.Tensor]:
    return [m.quantiles.detach().clone() for m in module.model.modules() if hasattr(m, "quantiles")]


def test_step_is_finite_and_quantiles_train_only_in_the_aux_optimizer() -> None:
    frozen_aux = _module(aux_lr=0.0)
    before, weights = _quantiles(frozen_aux), frozen_aux.model.img_encoder[0].weight.detach().clone()
    trainer = _fit(frozen_aux, _batch(), 1)
    assert trainer.global_step == 1  # the aux step is not counted
    assert torch.isfinite(trainer.logged_metrics["train/loss"])
    assert all(torch.equal(a, b) for a, b in zip(_quantiles(frozen_aux), before)), "the main optimizer moved the quantiles"
    assert not torch.equal(frozen_aux.model.img_encoder[0].weight, weights)
    opt, aux_opt = (o.optimizer for o in frozen_aux.optimizers())
    aux_ids = {id(p) for g in aux_opt.param_groups for p in g["params"]}
    assert len(aux_ids) == 3 and aux_ids == {id(m.quantiles) for m in frozen_aux.model.modules() if hasattr(m, "quantiles")}
    main_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not aux_ids & main_ids and id(frozen_aux.model.gain["res"]) in main_ids

    trained_aux = _module()
    _fit(trained_aux, _batch(), 1)
    assert not all(torch.equal(a, b) for a, b in zip(_quantiles(trained_aux), before))


def test_training_on_a_fixed_batch_reduces_the_loss() -> None:
    module, batch = _module(lr=3e-3), _batch()

    def eval_loss() -> float:
        module.eval()
        with torch.no_grad():
            return sum(float(module.rate_distortion(batch["video"], q)["loss"]) for q in range(2)) / 2

    first = eval_loss()
    _fit(module, batch, 15)
    assert eval_loss() < 0.8 * first


def test_nonfinite_loss_skips_the_step() -> None:
    module = _module()
    state = {k: v.clone() for k, v in module.model.state_dict().items()}
    batch = _batch()
    batch["video"][0, 0, 0, 0, 0] = float("nan")
    trainer = _fit(module, batch, 1)
    assert trainer.global_step == 0
    assert float(trainer.logged_metrics["train/nonfinite_skipped"]) == 1.0
    assert all(torch.equal(state[k], v) for k, v in module.model.state_dict().items())


def test_evaluation_pads_codes_every_quality_and_measures_the_real_pixels() -> None:
    module = _module().eval()
    video = _batch(height=40, width=72)["video"]
    padded = pad_to_multiple(video)
    assert padded.shape[-2:] == (128, 128)
    assert torch.equal(padded[..., :40, :72], video) and torch.equal(padded[..., 100, 100], video[..., 39, 71])
    with torch.no_grad():
        result = module.evaluate({"video": video})
    assert result.outputs["recon"].shape == video.shape
    for key in ("psnr", "bpp", "loss", "psnr_q0", "psnr_q1", "bpp_q0", "bpp_q1"):
        assert torch.isfinite(result.metrics[key]), key


def test_bad_arguments_are_clear_errors() -> None:
    codec = ScaleSpaceFlowCodec(**TINY, num_qualities=2)
    with pytest.raises(ValueError, match="one value per quality"):
        SSFModule(codec, lambdas=[0.01])
    with pytest.raises(ValueError, match="strictly increasing"):
        SSFModule(codec, lambdas=[0.05, 0.01])
    with pytest.raises(TypeError, match="ScaleSpaceFlowCodec"):
        SSFModule(torch.nn.Linear(1, 1), lambdas=[0.01])


def test_tiny_recipe_checkpoint_exports_a_codec_that_round_trips(tiny_shards, tmp_path, monkeypatch) -> None:
    """2 steps of recipes/tiny/ssf.yaml (at test widths, bf16-mixed), gvc-export, then the
    exported component codes a keyframe and an inter frame and decodes them exactly."""
    monkeypatch.chdir(tmp_path)
    shrink = [f"--model.init_args.model.init_args.{k}={v}" for k, v in TINY.items()]
    args = [*tiny_fit_args(REPO / "recipes/tiny/ssf.yaml", tiny_shards), *shrink, "--trainer.max_steps=2", "--trainer.precision=bf16-mixed"]
    cli = gvc_train_cli(args)
    assert cli.trainer.global_step == 2
    assert all(p.dtype == torch.float32 for p in cli.model.model.parameters())
    for key in ("val/psnr", "val/bpp", "val/psnr_q3", "val/bpp_q0"):
        assert torch.isfinite(cli.trainer.callback_metrics[key]), key
    last = Path(cli.trainer.checkpoint_callback.dirpath, "last.ckpt")

    written = export_checkpoint(last, tmp_path / "export")
    assert "ssf" in written
    codec = load_component(tmp_path / "export", "ssf")
    assert isinstance(codec, ScaleSpaceFlowCodec) and codec.tables_ready()  # export ran update(force=True)
    exported = dict(codec.named_parameters())
    for k, v in cli.model.model.named_parameters():
        assert torch.equal(exported[k], v.detach().cpu()), k
    frames = pad_to_multiple(_batch()["video"][:1]).unbind(dim=2)
    x_ref, key = codec.encode_keyframe(frames[0], 3)
    x_rec, inter = codec.encode_inter(frames[1], x_ref, 3)
    decoded_key = codec.decode_keyframe(key["strings"], key["shape"], 3)
    assert torch.equal(decoded_key, x_ref)
    assert torch.equal(codec.decode_inter(decoded_key, inter["strings"], inter["shape"], 3), x_rec)
