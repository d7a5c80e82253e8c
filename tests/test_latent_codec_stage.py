"""The latent-codec stage: rate-distortion steps, the aux optimizer, its recipes, export."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from gvc_train.cli import run as gvc_train_cli
from gvc_train.components import load_component, save_component
from gvc_train.export import export_checkpoint
from gvc_train.lit.latent_codec import LatentCodecModule
from gvc_train.models import CausalVAE, LatentVideoCodec
from gvc_train.models.tokenizer.streaming import NotAStreamingTokenizer, StreamingTokenizer, require_streaming_tokenizer
from gvc_train.recipe_bases import load_recipe

from conftest import REPO, tiny_fit_args

STAGE = "gvc_train.lit.latent_codec.LatentCodecModule"
# test_recipes.py leaves these to this file: they need a tokenizer export besides shards.
LATENT_RECIPES = sorted(
    p.relative_to(REPO).as_posix()
    for p in (REPO / "recipes").rglob("*.yaml")
    if p.parent.name not in ("cluster", "base", "finetune")  # overlays (test_scale_out.py), bases (test_recipes.py), fine-tunes (test_finetune_recipes.py)
    if load_recipe(p)["model"]["class_path"] == STAGE
)
TINY_CODEC = dict(channels=16, y_channels=8, z_channels=8, memory_channels=8, num_res_blocks=1)
SHRINK_CODEC = [f"--model.init_args.codec.init_args.{k}={v}" for k, v in TINY_CODEC.items()]


def _tiny_vae() -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(base_channels=8, channel_mults=[1, 2, 2, 2], num_res_blocks=1, mid_attention=False, norm_groups=4)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny CausalVAE exported as ``gvc-export`` would: stands in for exports/tokenizer*."""
    folder = tmp_path_factory.mktemp("tokenizer_export")
    save_component(_tiny_vae(), folder, "tokenizer", provenance={"global_step": 7, "train_seconds": 1.5, "cpu_seconds": 2.5})
    return str(folder)


def _module(**kwargs) -> LatentCodecModule:
    torch.manual_seed(0)
    codec = LatentVideoCodec(num_qualities=2, **TINY_CODEC)
    args = dict(lambdas=[1.0, 4.0], lr=1e-3, aux_lr=1e-2, warmup_steps=0)
    return LatentCodecModule(codec, tokenizer=_tiny_vae(), **{**args, **kwargs})


def _fit(module: LatentCodecModule, batch: dict, steps: int, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **trainer_kwargs,
    )
    trainer.fit(module, DataLoader([batch] * steps, batch_size=None))
    return trainer


def _latent_batch() -> dict:
    torch.manual_seed(1)
    return {"latent": 1.5 * torch.randn(2, 16, 2, 4, 4)}


def test_step_is_finite_and_quantiles_train_only_in_the_aux_optimizer() -> None:
    quantiles = lambda m: m.codec.entropy_bottleneck.quantiles.detach().clone()  # noqa: E731
    frozen_aux = _module(aux_lr=0.0)
    before, weights = quantiles(frozen_aux), frozen_aux.codec.g_a[0].weight.detach().clone()
    trainer = _fit(frozen_aux, _latent_batch(), 1)
    assert trainer.global_step == 1  # the aux step is not counted
    assert torch.isfinite(trainer.logged_metrics["train/loss"])
    assert torch.equal(quantiles(frozen_aux), before), "the main optimizer moved the quantiles"
    assert not torch.equal(frozen_aux.codec.g_a[0].weight, weights)
    opt, aux_opt = (o.optimizer for o in frozen_aux.optimizers())
    aux_ids = {id(p) for g in aux_opt.param_groups for p in g["params"]}
    assert aux_ids == {id(frozen_aux.codec.entropy_bottleneck.quantiles)}
    assert not aux_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(not p.requires_grad for p in frozen_aux.tokenizer.parameters()) and not frozen_aux.tokenizer.training

    trained_aux = _module()
    _fit(trained_aux, _latent_batch(), 1)
    assert not torch.equal(quantiles(trained_aux), before)


def test_nonfinite_loss_skips_the_step() -> None:
    module = _module()
    state = {k: v.clone() for k, v in module.codec.state_dict().items()}
    batch = _latent_batch()
    batch["latent"][0, 0, 0, 0, 0] = float("nan")
    trainer = _fit(module, batch, 1)
    assert trainer.global_step == 0
    assert float(trainer.logged_metrics["train/nonfinite_skipped"]) == 1.0
    assert all(torch.equal(state[k], v) for k, v in module.codec.state_dict().items())


def test_training_on_a_fixed_batch_reduces_the_loss() -> None:
    module, batch = _module(lr=5e-3), _latent_batch()

    def eval_loss() -> float:
        module.eval()
        with torch.no_grad():
            return sum(float(module.rate_distortion(batch["latent"], q)["loss"]) for q in range(2)) / 2

    first = eval_loss()
    _fit(module, batch, 25)
    assert eval_loss() < 0.8 * first


def test_bad_arguments_are_clear_errors(tokenizer_dir) -> None:
    codec = LatentVideoCodec(num_qualities=2, **TINY_CODEC)
    with pytest.raises(ValueError, match="exactly one"):
        LatentCodecModule(codec, lambdas=[1, 2])
    with pytest.raises(ValueError, match="exactly one"):
        LatentCodecModule(codec, lambdas=[1, 2], tokenizer_path=tokenizer_dir, tokenizer=_tiny_vae())
    with pytest.raises(ValueError, match="one value per quality"):
        LatentCodecModule(codec, lambdas=[1, 2, 3], tokenizer_path=tokenizer_dir)
    with pytest.raises(ValueError, match="increasing"):
        LatentCodecModule(codec, lambdas=[2, 1], tokenizer_path=tokenizer_dir)
    with pytest.raises(ValueError, match="precision=bf16-true"):
        _fit(_module(), _latent_batch(), 1, precision="bf16-true")


class _WholeVideoVAE(torch.nn.Module):
    """A tokenizer with the whole-video API and geometry but no chunked API, as DiffusersVAE."""

    spatial_stride, temporal_stride, latent_channels = 8, 4, 16
    config: dict = {}

    def encode(self, x_BCThw, chunk_frames=None): ...

    def decode(self, z_BCthw, chunk_latents=None): ...


def test_the_tokenizer_must_stream_or_the_stage_is_refused_when_built() -> None:
    vae = _tiny_vae()
    assert isinstance(vae, StreamingTokenizer)
    require_streaming_tokenizer(vae, "the latent-codec stage")  # CausalVAE declares and implements it
    codec = LatentVideoCodec(num_qualities=2, **TINY_CODEC)
    lacks = "init_encoder_state, init_decoder_state, encode_chunk, decode_chunk"
    with pytest.raises(NotAStreamingTokenizer) as refused:
        LatentCodecModule(codec, lambdas=[1, 2], tokenizer=_WholeVideoVAE())
    message = str(refused.value)
    assert message.startswith(f"the latent-codec stage: the tokenizer _WholeVideoVAE is not a streaming tokenizer (it lacks {lacks})")
    assert "\n" not in message and isinstance(refused.value, ValueError)  # gvc-train reports ValueErrors in one line
    with pytest.raises(NotAStreamingTokenizer, match="it lacks spatial_stride, temporal_stride, latent_channels, encode,"):
        LatentCodecModule(codec, lambdas=[1, 2], tokenizer=torch.nn.Linear(2, 2))
    # DiffusersVAE caches chunks inside one encode/decode call, never across calls: not streaming
    from gvc_train.models import DiffusersVAE

    assert not any(hasattr(DiffusersVAE, name) for name in lacks.split(", "))


def _reads_latent_shards(recipe: str) -> bool:
    return yaml.safe_load((REPO / recipe).read_text())["data"]["class_path"].endswith("LatentDataModule")


@pytest.fixture(scope="module")
def latent_shards(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: str) -> dict[str, str]:
    """Latent shards of carphone made with ``tokenizer_dir``: 3 clips of 9 frames, 64x64."""
    from gvc_train.data.latent_shards import write_latent_shards
    from gvc_train.data.sample_videos import sample_video

    root = tmp_path_factory.mktemp("latent_shards")
    write_latent_shards([sample_video("carphone_pristine.mp4")], str(root), tokenizer=tokenizer_dir, clip_frames=9,
                        max_frames_per_video=27, crop=64, maxcount=2, workers=1, progress=False, log=lambda line: None)
    return {"train": str(root / "*.tar"), "val": str(root / "*.tar")}


def _latent_fit_args(recipe: str, shards: dict[str, str], tokenizer: str) -> list[str]:
    init = "--data.init_args"
    return [
        "fit", "--config", str(REPO / recipe),
        f"{init}.train_shards={shards['train']}", f"{init}.val_shards={shards['val']}", f"{init}.test_shards={shards['val']}",
        f"{init}.latent_frames=2", f"{init}.crop_size=4", f"{init}.batch_size=2", f"{init}.num_workers=0",
        f"{init}.samples_per_epoch=4", f"{init}.tokenizer_fingerprint={tokenizer}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true", "--trainer.limit_val_batches=1",
    ]  # fmt: skip


def _fit_recipe(recipe: str, shards: dict[str, str], tokenizer: str, *extra: str, latent_shards: dict[str, str] | None = None):
    shrink = [] if "/tiny/" in recipe else SHRINK_CODEC  # full-size recipes shrink to CPU size
    if _reads_latent_shards(recipe):
        assert latent_shards is not None, f"{recipe} reads latent shards"
        base = _latent_fit_args(recipe, latent_shards, tokenizer)
    else:
        base = tiny_fit_args(REPO / recipe, shards)
    return gvc_train_cli([*base, f"--model.init_args.tokenizer_path={tokenizer}", *shrink, *extra])


def test_every_latent_codec_recipe_is_found() -> None:
    expected = {"recipes/latent_codec.yaml", "recipes/tiny/latent_codec.yaml", "recipes/tiny/latent_codec_shards.yaml"}
    assert expected <= set(LATENT_RECIPES)


@pytest.mark.parametrize("recipe", LATENT_RECIPES)
def test_recipe_trains_validates_checkpoints_and_exports(recipe, tiny_shards, latent_shards, tokenizer_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # recipes write runs/... relative to the working directory
    cli = _fit_recipe(recipe, tiny_shards, tokenizer_dir, "--trainer.max_steps=2", latent_shards=latent_shards)
    trainer = cli.trainer
    assert trainer.global_step == 2
    assert trainer.checkpoint_callback.monitor == "val/loss"
    keys = ("val/loss", "val/bpp_q0", "val/psnr_latent_q3") + (() if _reads_latent_shards(recipe) else ("val/psnr_q0",))
    for key in keys:
        assert torch.isfinite(trainer.callback_metrics[key]), key
    last = Path(trainer.checkpoint_callback.dirpath, "last.ckpt")
    assert last.is_file()

    written = export_checkpoint(last, tmp_path / "export")
    assert {"tokenizer", "latent_codec"} <= set(written)
    codec = load_component(tmp_path / "export", "latent_codec")
    assert isinstance(codec, LatentVideoCodec)
    exported = dict(codec.named_parameters())  # parameters: export adds the entropy tables (buffers)
    for k, v in cli.model.codec.named_parameters():
        assert torch.equal(exported[k], v.detach().cpu()), k
    assert isinstance(load_component(tmp_path / "export", "tokenizer"), CausalVAE)
    # the tokenizer is frozen: it leaves training with the very weights it came with
    fingerprint = lambda folder: json.loads(Path(folder, "tokenizer.json").read_text())["fingerprint"]  # noqa: E731
    assert fingerprint(tmp_path / "export") == fingerprint(tokenizer_dir)
    # ... and its export keeps where it was trained; the codec's run is recorded beside that
    meta = lambda folder, name: json.loads(Path(folder, f"{name}.json").read_text())["provenance"]  # noqa: E731
    tokenizer, run = meta(tmp_path / "export", "tokenizer"), meta(tmp_path / "export", "latent_codec")
    assert {k: v for k, v in tokenizer.items() if k != "reused_by"} == meta(tokenizer_dir, "tokenizer")
    assert tokenizer["reused_by"] == run and run["global_step"] == 2


def test_full_recipe_runs_a_bf16_step_on_cpu(tiny_shards, tokenizer_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _fit_recipe("recipes/latent_codec.yaml", tiny_shards, tokenizer_dir, "--trainer.max_steps=1", "--trainer.precision=bf16-mixed")
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.logged_metrics["train/loss"])
    assert all(p.dtype == torch.float32 for p in cli.model.codec.parameters())


def test_tiny_recipe_resumes_from_last(tiny_shards, tokenizer_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = "recipes/tiny/latent_codec.yaml"
    first = _fit_recipe(recipe, tiny_shards, tokenizer_dir, "--trainer.max_steps=1")
    last = Path(first.trainer.checkpoint_callback.dirpath, "last.ckpt")
    resumed = _fit_recipe(recipe, tiny_shards, tokenizer_dir, "--trainer.max_steps=2", "--ckpt_path=last")
    assert resumed.trainer.global_step == 2
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2 and len(saved["optimizer_states"]) == 2  # main + aux


def test_latent_only_batches_train_with_a_pixel_term_and_validate() -> None:
    module = _module(pixel_weight=1.0)
    trainer = _fit(module, _latent_batch(), 1)
    assert trainer.global_step == 1 and "train/pixel_mse" in trainer.logged_metrics
    validator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = validator.validate(module, DataLoader([_latent_batch()], batch_size=None), verbose=False)[0]
    assert {"val/loss", "val/bpp_q0", "val/bpp_q1", "val/psnr_latent_q1"} <= set(metrics)
    assert not any(k.startswith("val/psnr_q") for k in metrics)  # no source video, no pixel PSNR
    assert metrics["val/bpp_q1"] > metrics["val/bpp_q0"] > 0
