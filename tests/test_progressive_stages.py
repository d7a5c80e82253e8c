"""The progressive family's two training stages (lit/progressive_quantizer.py,
lit/progressive_context.py): the quantizer's latent error falls, the context model's rate falls
below a uniform code's, both resume exactly, and every progressive recipe trains, validates,
checkpoints and exports (test_recipes.py leaves them here: they need exports besides shards)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gvc_train.cli import run as gvc_train_cli
from gvc_train.components import load_component, save_component
from gvc_train.export import export_checkpoint
from gvc_train.lit.progressive_context import ProgressiveContextModule
from gvc_train.lit.progressive_quantizer import ProgressiveQuantizerModule
from gvc_train.models import CausalVAE, MultiScaleQuantizer, ProgressiveContextModel
from gvc_train.recipe_bases import load_recipe

from conftest import REPO

STAGE_1 = "gvc_train.lit.progressive_quantizer.ProgressiveQuantizerModule"
STAGE_2 = "gvc_train.lit.progressive_context.ProgressiveContextModule"
RECIPES = {
    p.relative_to(REPO).as_posix(): load_recipe(p)
    for p in sorted((REPO / "recipes").rglob("*.yaml"))
    if p.parent.name not in ("cluster", "base", "finetune") and load_recipe(p)["model"]["class_path"] in (STAGE_1, STAGE_2)
}
TINY_QUANTIZER = dict(latent_channels=4, code_dim=4, codebook_size=16, scales=[0.25, 0.5, 1.0], refine_groups=2)
TINY_CONTEXT = dict(num_scales=3, code_dim=4, codebook_size=16, width=32, depth=2, heads=2, pos_grid=4)


def _vae(latent_channels: int = 4) -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(latent_channels=latent_channels, base_channels=8, channel_mults=[1, 2, 2, 2], num_res_blocks=1,
                     mid_attention=False, norm_groups=4)  # fmt: skip


def _smooth_clips(seed: int, b: int = 2, c: int = 4, t: int = 3, h: int = 8, w: int = 8) -> dict[str, torch.Tensor]:
    """Latent clips ``B x C x t x h x w`` with coarse structure that changes slowly over time."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, c, 1, 2, 2, generator=g) + 0.3 * torch.randn(b, c, t, 2, 2, generator=g)
    smooth = F.interpolate(coarse.flatten(1, 2), size=(h, w), mode="bicubic", align_corners=False).view(b, c, t, h, w)
    return {"latent": 2.0 * smooth + 0.1 * torch.randn(b, c, t, h, w, generator=g)}


def _trainer(steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kwargs,
    )  # fmt: skip


def _fit(module: L.LightningModule, batches: list[dict], steps: int, ckpt_path: str | None = None, epochs: int = 1) -> L.Trainer:
    trainer = _trainer(steps, max_epochs=epochs)
    trainer.fit(module, DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    return trainer


def _validate(module: L.LightningModule, batches: list[dict]) -> dict[str, float]:
    validator = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return validator.validate(module, DataLoader(batches, batch_size=None), verbose=False)[0]


def _stage_1(**kwargs) -> ProgressiveQuantizerModule:
    torch.manual_seed(0)
    return ProgressiveQuantizerModule(MultiScaleQuantizer(**TINY_QUANTIZER), tokenizer=_vae(), **{"lr": 1e-2, **kwargs})


def _trained_quantizer() -> MultiScaleQuantizer:
    """A quantizer whose codebook came from the data (its first training forward restarts every code)."""
    torch.manual_seed(0)
    q = MultiScaleQuantizer(**TINY_QUANTIZER)
    q.train()
    for seed in range(3):
        q(_smooth_clips(seed)["latent"])
    return q.eval()


def _stage_2(**kwargs) -> ProgressiveContextModule:
    torch.manual_seed(0)
    model = ProgressiveContextModel(**{**TINY_CONTEXT, **kwargs.pop("model", {})})
    return ProgressiveContextModule(model, quantizer=_trained_quantizer(), tokenizer=_vae(), **{"lr": 3e-3, **kwargs})


# ---- stage 1 -------------------------------------------------------------------------------


def test_quantizer_stage_lowers_the_latent_error_and_logs_its_parts() -> None:
    module, batches = _stage_1(), [_smooth_clips(seed) for seed in range(4)]
    trainer = _fit(module, batches, 1)  # the first step fills the codebook from the data
    first = _validate(module, batches)
    trainer = _fit(module, batches * 6, 24)
    after = _validate(module, batches)
    assert after["val/mse"] < 0.7 * first["val/mse"], (first["val/mse"], after["val/mse"])
    logged = trainer.logged_metrics
    for key in ("loss", "mse", "psnr_latent", "commitment_loss", "codebook_loss", "perplexity", "used_fraction", "restarted", "dropped_fraction"):
        assert torch.isfinite(logged[f"train/{key}"]), key
    # every cut of the pyramid is measured; more scales, less error, more uniform-code bits
    psnr = [after[f"val/psnr_latent_scales{k}"] for k in (1, 2, 3)]
    bpp = [after[f"val/bpp_uniform_scales{k}"] for k in (1, 2, 3)]
    assert psnr[0] < psnr[1] < psnr[2] == pytest.approx(after["val/psnr_latent"])
    assert 0 < bpp[0] < bpp[1] < bpp[2]
    assert 1 < after["val/perplexity"] <= 16 and 0 < after["val/used_fraction"] <= 1


def test_a_nonfinite_latent_is_skipped_before_it_reaches_the_codebook() -> None:
    module = _stage_1()
    _fit(module, [_smooth_clips(0)], 1)
    state = {k: v.clone() for k, v in module.quantizer.state_dict().items()}
    bad = _smooth_clips(1)
    bad["latent"][0, 0, 0, 0, 0] = float("nan")
    trainer = _fit(module, [bad], 1)
    assert trainer.global_step == 0 and float(trainer.logged_metrics["train/nonfinite_skipped"]) == 1.0
    assert all(torch.equal(state[k], v) for k, v in module.quantizer.state_dict().items())


# ---- stage 2 -------------------------------------------------------------------------------


def test_context_stage_brings_the_rate_below_a_uniform_code() -> None:
    module, batches = _stage_2(), [_smooth_clips(seed) for seed in range(4)]
    before = _validate(module, batches)
    trainer = _fit(module, batches * 10, 40)
    after = _validate(module, batches)
    assert after["val/bpp"] < 0.8 * before["val/bpp"], (before["val/bpp"], after["val/bpp"])
    assert after["val/bpp"] < 0.8 * after["val/bpp_uniform"], after
    assert before["val/bpp_uniform"] == pytest.approx(after["val/bpp_uniform"])
    # the per-scale shares add up to the rate; the unigram baseline is logged beside it
    assert sum(after[f"val/bpp_scale{k}"] for k in (1, 2, 3)) == pytest.approx(after["val/bpp"], rel=1e-5)
    assert sum(after[f"val/bpp_unigram_scale{k}"] for k in (1, 2, 3)) == pytest.approx(after["val/bpp_unigram"], rel=1e-5)
    assert after["val/rate_vs_unigram"] == pytest.approx(after["val/bpp"] / after["val/bpp_unigram"], rel=1e-4)
    assert 0 < after["val/bpp_unigram"] < after["val/bpp_unigram_train"] < after["val/bpp_uniform"]
    assert after["val/rate_vs_unigram_train"] == pytest.approx(after["val/bpp"] / after["val/bpp_unigram_train"], rel=1e-4)
    # before training the table is empty: its unigram model is the uniform code
    assert before["val/bpp_unigram_train"] == pytest.approx(before["val/bpp_uniform"], rel=1e-6)
    # every training token was counted once: 40 steps of 2 clips x 3 frames of 2x2 + 4x4 + 8x8 tokens
    assert module.train_histogram.sum().item() == 40 * 2 * 3 * (4 + 16 + 64)
    assert {f"train/bpp_scale{k}" for k in (1, 2, 3)} | {"train/bpp"} <= set(trainer.logged_metrics)
    assert all(not p.requires_grad for p in module.quantizer.parameters()) and not module.quantizer.training


def test_frames_are_coded_in_order_each_with_the_previous_frames_past_per_scale() -> None:
    module = _stage_2().eval()
    latent = _smooth_clips(0)["latent"]
    with torch.no_grad():
        bits, pyr = module.clip_bits(latent)
        b, t = latent.shape[0], latent.shape[2]
        model, frames = module.context_model, b * t
        pick = lambda maps, i: [m[i : i + 1] for m in maps]  # noqa: E731
        for clip in range(b):
            expected = torch.zeros(3)
            for i in range(t):
                n = clip * t + i
                past = None if i == 0 else module.past_per_scale(pick(pyr["tokens"], n - 1), latent.shape[-2:])
                expected += model.rate_bits(model(pick(pyr["inputs"], n), past), pick(pyr["tokens"], n))[0]
            assert (bits[clip] - expected).abs().max() <= 1e-4 + 1e-5 * expected.abs().max(), (bits[clip], expected)
    assert len(pyr["tokens"]) == 3 and pyr["tokens"][0].shape[0] == frames


def test_the_context_model_must_fit_the_quantizer() -> None:
    with pytest.raises(ValueError, match=r"codebook_size 32 \(the quantizer's: 16\)"):
        _stage_2(model={"codebook_size": 32})
    with pytest.raises(ValueError, match=r"num_scales 4 \(the quantizer's: 3\)"):
        _stage_2(model={"num_scales": 4})
    with pytest.raises(ValueError, match="quantizer_path"):
        ProgressiveContextModule(ProgressiveContextModel(**TINY_CONTEXT), quantizer=_trained_quantizer())


def test_the_bitwise_kind_trains_and_validates_in_both_stages() -> None:
    """Tokens of D sign bits: the uniform code spends one bit a bit, the unigram model is one
    Bernoulli per scale and bit channel."""
    batches = [_smooth_clips(seed) for seed in range(2)]
    torch.manual_seed(0)
    quantizer = MultiScaleQuantizer(**{**TINY_QUANTIZER, "kind": "bitwise", "entropy_weight": 0.1})
    stage_1 = ProgressiveQuantizerModule(quantizer, tokenizer=_vae(), lr=1e-2)
    trainer = _fit(stage_1, batches, 2)
    assert torch.isfinite(trainer.logged_metrics["train/entropy_loss"])
    model = ProgressiveContextModel(**{**TINY_CONTEXT, "kind": "bitwise"})
    stage_2 = ProgressiveContextModule(model, quantizer=quantizer.eval(), tokenizer=_vae(), lr=3e-3)
    _fit(stage_2, batches, 2)
    metrics = _validate(stage_2, batches)
    t, h, w = batches[0]["latent"].shape[2:]
    tokens = sum(side * side for side in (2, 4, 8))  # scales 0.25, 0.5, 1 of 8 x 8
    assert metrics["val/bpp_uniform"] == pytest.approx(t * tokens * 4 / ((1 + 4 * (t - 1)) * 64 * h * w))  # 4 bits a token
    assert 0 < metrics["val/bpp_unigram"] <= metrics["val/bpp_unigram_train"] <= metrics["val/bpp_uniform"] and metrics["val/bpp"] > 0


# ---- exact resume --------------------------------------------------------------------------


def _resumable_stage_1() -> ProgressiveQuantizerModule:
    """Scale dropout on every frame draw, and a code unused for one step restarts."""
    torch.manual_seed(0)
    q = MultiScaleQuantizer(**{**TINY_QUANTIZER, "dead_code_window": 1, "scale_dropout_p": 0.5, "scale_dropout_from": 1})
    return ProgressiveQuantizerModule(q, tokenizer=_vae(), lr=1e-2)


@pytest.mark.parametrize("stage", ["quantizer", "context"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(stage: str, tmp_path: Path) -> None:
    """4 steps straight against 2 + checkpoint + 2 more: weights, buffers (the EMA codebook and
    its dead-code counters) and optimizer moments equal bit for bit. Stage 1 draws scale
    dropout and code restarts from the global RNG, whose stream the checkpoint carries."""
    make = _resumable_stage_1 if stage == "quantizer" else (lambda: _stage_2(model={"dropout": 0.1}))
    batches = [_smooth_clips(0)] * 4  # one batch: a plain loader restarts its epoch on resume
    L.seed_everything(0, verbose=False)
    straight = make()
    straight_trainer = _fit(straight, batches, 4, epochs=-1)
    L.seed_everything(0, verbose=False)
    first = make()
    trainer = _fit(first, batches, 2, epochs=-1)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    L.seed_everything(5, verbose=False)  # the checkpoint, not the seed, decides what comes next
    resumed = make()
    resumed_trainer = _fit(resumed, batches, 4, ckpt_path=str(tmp_path / "half.ckpt"), epochs=-1)
    assert resumed_trainer.global_step == 4
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    moments = [t.optimizers[0].state_dict()["state"] for t in (straight_trainer, resumed_trainer)]
    assert moments[0].keys() == moments[1].keys()
    for i, state in moments[0].items():
        assert all(torch.equal(state[k], moments[1][i][k]) for k in ("exp_avg", "exp_avg_sq")), i


# ---- recipes -------------------------------------------------------------------------------


def _recipe_init(recipe: str, key: str) -> dict:
    return RECIPES[recipe]["model"]["init_args"][key]["init_args"]


def test_every_progressive_recipe_is_found_and_each_context_model_fits_its_quantizer() -> None:
    expected = {f"recipes/{d}progressive_{s}.yaml" for d in ("", "tiny/") for s in ("quantizer", "context")}
    assert expected <= set(RECIPES)
    for folder in ("", "tiny/"):
        q = _recipe_init(f"recipes/{folder}progressive_quantizer.yaml", "quantizer")
        cm = _recipe_init(f"recipes/{folder}progressive_context.yaml", "context_model")
        assert (cm["num_scales"], cm["code_dim"], cm["kind"], cm["codebook_size"]) == (
            len(q["scales"]), q["code_dim"], q["kind"], q["codebook_size"],
        ), folder  # fmt: skip


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny tokenizer export, latent shards of carphone made with it (3 clips of 9 frames at
    64 x 64: 8 x 8 latents), and a stage-1 export (tokenizer + the tiny recipe's quantizer)."""
    from gvc_train.data.latent_shards import write_latent_shards
    from gvc_train.data.sample_videos import sample_video

    root = tmp_path_factory.mktemp("progressive")
    vae = _vae(latent_channels=16)
    save_component(vae, root / "tokenizer", "tokenizer")
    write_latent_shards([sample_video("carphone_pristine.mp4")], str(root / "shards"), tokenizer=str(root / "tokenizer"),
                        clip_frames=9, max_frames_per_video=27, crop=64, maxcount=2, workers=1, progress=False,
                        log=lambda line: None)  # fmt: skip
    torch.manual_seed(0)
    quantizer = MultiScaleQuantizer(**_recipe_init("recipes/tiny/progressive_quantizer.yaml", "quantizer"))
    quantizer.train()
    quantizer(torch.randn(4, 16, 8, 8))  # codes from data, as after a training step
    save_component(vae, root / "stage1", "tokenizer")
    save_component(quantizer.eval(), root / "stage1", "quantizer")
    return {"tokenizer": str(root / "tokenizer"), "stage1": str(root / "stage1"), "shards": str(root / "shards" / "*.tar")}


def _shrink(recipe: str) -> list[str]:
    """Full-size recipes at CPU test size: a small quantizer (stage 1), or a small transformer
    fitted to the stage-1 export's quantizer, the tiny recipe's (stage 2)."""
    if "/tiny/" in recipe:
        return []
    if RECIPES[recipe]["model"]["class_path"] == STAGE_1:
        q = "--model.init_args.quantizer.init_args"
        return [f"{q}.code_dim=8", f"{q}.codebook_size=32"]
    fit = {k: v for k, v in _recipe_init("recipes/tiny/progressive_context.yaml", "context_model").items() if k in ("num_scales", "code_dim", "kind", "codebook_size")}
    small = {**fit, "width": 32, "depth": 1, "heads": 2, "pos_grid": 4, "context_grid": 2}
    return [f"--model.init_args.context_model.init_args.{k}={v}" for k, v in small.items()]


def _fit_recipe(recipe: str, exports: dict[str, str], *extra: str):
    init = "--data.init_args"
    stage_1 = RECIPES[recipe]["model"]["class_path"] == STAGE_1
    source = f"--model.init_args.tokenizer_path={exports['tokenizer']}" if stage_1 else f"--model.init_args.quantizer_path={exports['stage1']}"
    precision = "32-true" if "/tiny/" in recipe else "bf16-mixed"  # the full recipes train in bf16-mixed
    return gvc_train_cli([
        "fit", "--config", str(REPO / recipe), source, *_shrink(recipe),
        f"{init}.train_shards={exports['shards']}", f"{init}.val_shards={exports['shards']}", f"{init}.test_shards={exports['shards']}",
        f"{init}.latent_frames=2", f"{init}.crop_size=8", f"{init}.batch_size=2", f"{init}.num_workers=0", f"{init}.samples_per_epoch=4",
        f"{init}.tokenizer_fingerprint={exports['tokenizer']}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        f"--trainer.precision={precision}", "--trainer.limit_val_batches=1", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_validates_checkpoints_and_exports(recipe: str, exports, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # recipes write runs/... relative to the working directory
    cli = _fit_recipe(recipe, exports, "--trainer.max_steps=2")
    trainer, stage_1 = cli.trainer, RECIPES[recipe]["model"]["class_path"] == STAGE_1
    assert trainer.global_step == 2
    keys = ("val/psnr_latent", "val/psnr_latent_scales1") if stage_1 else ("val/bpp", "val/bpp_uniform", "val/bpp_unigram", "val/rate_vs_unigram", "val/bpp_unigram_train")
    for key in (trainer.checkpoint_callback.monitor, *keys):
        assert torch.isfinite(trainer.callback_metrics[key]), key
    last = Path(trainer.checkpoint_callback.dirpath, "last.ckpt")
    written = export_checkpoint(last, tmp_path / "export")
    names = {"tokenizer", "quantizer"} if stage_1 else {"tokenizer", "quantizer", "context_model"}
    assert names <= set(written)
    trained = cli.model.quantizer if stage_1 else cli.model.context_model
    exported = load_component(tmp_path / "export", "quantizer" if stage_1 else "context_model").state_dict()
    for key, value in trained.state_dict().items():
        assert torch.equal(exported[key], value.detach().cpu()), key
    if not stage_1:  # the frozen parts leave with the very weights they came with
        fingerprint = lambda folder, name: json.loads(Path(folder, f"{name}.json").read_text())["fingerprint"]  # noqa: E731
        for name in ("tokenizer", "quantizer"):
            assert fingerprint(tmp_path / "export", name) == fingerprint(exports["stage1"], name), name
        from gvc_train.codecs.families import FAMILIES

        if "progressive" in FAMILIES:  # codec.json once the codec registers the family
            assert "codec" in written and (tmp_path / "export" / "codec.json").is_file()
