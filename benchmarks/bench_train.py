"""Training steps per second of each stage: under Lightning and in a hand-written PyTorch loop.

Both sides run the same model on the same batches (taken once and replayed, so data loading is
not in either figure), with the same losses and optimizers. Their ratio is what the Lightning
shell costs per step.

- tokenizer: the tiny tokenizer recipe's model on batches from the sample shards; the loop:
  reconstruction + KL loss, backward, clip, AdamW, scheduler;
- latent codec: recipes/tiny/latent_codec_shards.yaml's codec and batches (8 clips, latent
  16 x 5 x 12 x 12: the latents of 17-frame 96x96 crops of the sample shards, computed once by
  the tiny tokenizer: exports/tokenizer_tiny if it exists, else a random CausalVAE of its size,
  whose speed is the same); the stage optimizes manually, and the loop does the same work:
  forward at a random quality per clip, bpp + lambda x distortion + aux loss, one backward,
  clip of the main parameters, main Adam step, aux Adam step (the quantiles), scheduler.
  One torch thread on both sides (``CODEC_THREADS``): the step is many small ops, whose
  multi-threaded time on shared cores is dominated by thread barriers, not by the model.

    python -m benchmarks.bench_train [--steps 30] [--stage tokenizer|latent_codec|both]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny/tokenizer.yaml"
CODEC_RECIPE = REPO / "recipes/tiny/latent_codec_shards.yaml"
# The codec's step is many small ops: with 2 intra-op threads on this shared 2-core machine,
# OpenMP's barriers made the same loop 0.3-0.7 steps/s where 1 thread gave 3.5-5.6, run to run.
CODEC_THREADS = 1


class _Replay(Dataset):
    def __init__(self, batches: list[dict[str, Any]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.batches[i % len(self.batches)])


def _recipe_parts(train_shards: str) -> tuple[dict, dict]:
    config = yaml.safe_load(RECIPE.read_text())
    model_args = dict(config["model"]["init_args"])
    data_args = dict(config["data"]["init_args"], train_shards=train_shards, val_shards=None, num_workers=0)
    return model_args, data_args


def _build_module(model_args: dict) -> L.LightningModule:
    from gvc_train.lit.tokenizer import TokenizerModule
    from gvc_train.models import CausalVAE

    vae = CausalVAE(**model_args["vae"]["init_args"])
    kwargs = {k: v for k, v in model_args.items() if k not in ("vae", "discriminator")}
    return TokenizerModule(vae=vae, discriminator=None, **kwargs)


def _sample_batches(data_args: dict, count: int) -> list[dict[str, Any]]:
    from gvc_train.data.datamodule import VideoDataModule

    dm = VideoDataModule(**data_args)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append({"video": batch["video"]})
        if len(batches) == count:
            break
    return batches


class _StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.end, self.steps = time.perf_counter(), self.steps + 1


def lightning_steps_per_second(
    build: Callable[[], L.LightningModule], batches: list[dict], steps: int, warmup: int = 3
) -> float:
    """``trainer.fit`` of ``build()`` on the replayed batches: steps/s after ``warmup`` steps."""
    torch.manual_seed(0)
    module = build()
    timer = _StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps + warmup, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
    )
    loader = DataLoader(_Replay(batches, steps + warmup), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.steps / (timer.end - timer.start)


def plain_steps_per_second(model_args: dict, batches: list[dict], steps: int, warmup: int = 3) -> float:
    """The same step by hand: the stage's loss terms, backward, clip, AdamW, scheduler."""
    torch.manual_seed(0)
    module = _build_module(model_args)
    vae, hp = module.vae, module.hparams
    opt = torch.optim.AdamW(vae.parameters(), lr=hp.lr, betas=tuple(hp.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, hp.warmup_steps)))
    vae.train()
    start = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        x = batches[i % len(batches)]["video"]
        # the stage's own loss terms, so the baseline cannot drift from what Lightning runs
        terms = module._reconstruction_terms(x)
        loss = terms["nll"] + hp.kl_weight * terms["kl"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), hp.grad_clip)
        opt.step()
        sched.step()
    return steps / (time.perf_counter() - start)


def bench_training(train_shards: str, steps: int = 20, repeats: int = 2) -> dict[str, Any]:
    model_args, data_args = _recipe_parts(train_shards)
    batches = _sample_batches(data_args, 4)
    shape = list(batches[0]["video"].shape)
    best_l = best_p = 0.0
    for _ in range(repeats):  # interleaved, best of each: the cores may be shared
        best_p = max(best_p, plain_steps_per_second(model_args, batches, steps))
        best_l = max(best_l, lightning_steps_per_second(lambda: _build_module(model_args), batches, steps))
    return {
        "recipe": str(RECIPE.relative_to(REPO)),
        "batch_shape_BCThw": shape,
        "steps": steps,
        "lightning_steps_per_s": best_l,
        "plain_steps_per_s": best_p,
        "lightning_over_plain": best_l / best_p,
    }


# ---- the latent codec stage --------------------------------------------------------------


def _codec_recipe() -> tuple[dict, dict]:
    config = yaml.safe_load(CODEC_RECIPE.read_text())
    return dict(config["model"]["init_args"]), dict(config["data"]["init_args"])


def _tokenizer() -> tuple[torch.nn.Module, str]:
    """The recipe's tokenizer export if present, else a random CausalVAE of the tiny recipe's size."""
    from benchmarks.bench_latents import TINY_TOKENIZER
    from gvc_train.components import load_component
    from gvc_train.models import CausalVAE

    path = _codec_recipe()[0]["tokenizer_path"]
    if (REPO / path / "tokenizer.json").is_file():
        return load_component(REPO / path, "tokenizer").eval(), path
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CausalVAE(**TINY_TOKENIZER).eval(), "random CausalVAE of the tiny recipe's size"


def _latent_batches(train_shards: str, tokenizer: torch.nn.Module, count: int, data_args: dict | None = None) -> list[dict[str, Any]]:
    """``count`` batches of a latent recipe's shape (``data_args``: its data ``init_args``, by
    default the shards recipe's): latents of 17-frame crops, tokenized once."""
    from gvc_train.data.datamodule import VideoDataModule

    data_args = data_args or _codec_recipe()[1]
    latent_frames, crop, batch_size = data_args["latent_frames"], data_args["crop_size"], data_args["batch_size"]
    frames = 1 + tokenizer.temporal_stride * (latent_frames - 1)
    dm = VideoDataModule(train_shards=train_shards, clip_frames=frames, crop_size=crop * tokenizer.spatial_stride,
                         batch_size=batch_size, num_workers=0, samples_per_epoch=batch_size * count, rank=0, world_size=1)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        with torch.no_grad():
            batches.append({"latent": tokenizer.encode(batch["video"]).mode().float().contiguous()})
        if len(batches) == count:
            break
    return batches


def _build_codec_module(tokenizer: torch.nn.Module) -> L.LightningModule:
    from gvc_train.lit.latent_codec import LatentCodecModule
    from gvc_train.models import LatentVideoCodec

    model_args = _codec_recipe()[0]
    codec = LatentVideoCodec(**model_args["codec"]["init_args"])
    kwargs = {k: v for k, v in model_args.items() if k not in ("codec", "tokenizer_path")}
    return LatentCodecModule(codec=codec, tokenizer=tokenizer, **kwargs)


def plain_codec_steps_per_second(tokenizer: torch.nn.Module, batches: list[dict], steps: int, warmup: int = 3) -> float:
    """The latent-codec step by hand: what ``LatentCodecModule.training_step`` does, minus Lightning."""
    torch.manual_seed(0)
    module = _build_codec_module(tokenizer)
    codec, hp = module.codec, module.hparams
    configured = module.configure_optimizers()  # the stage's own optimizers and warm-up schedule
    if isinstance(configured, tuple):  # ([opt, aux_opt], [{"scheduler": ...}])
        (opt, aux_opt), sched = configured[0], configured[1][0]["scheduler"]
    else:
        (opt, aux_opt), sched = configured, None
    main_params = [p for group in opt.param_groups for p in group["params"]]
    module.train()
    start = 0.0
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        latent = batches[i % len(batches)]["latent"]
        quality = torch.randint(0, codec.num_qualities, (latent.shape[0],))
        terms = module.rate_distortion(latent, quality)  # bpp + lambda[q] x latent MSE
        total = terms["loss"] + codec.aux_loss()
        if not torch.isfinite(total):  # the stage skips such a batch too
            continue
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        total.backward()
        if hp.grad_clip:
            torch.nn.utils.clip_grad_norm_(main_params, hp.grad_clip)
        opt.step()
        aux_opt.step()
        if sched is not None:
            sched.step()
    return steps / (time.perf_counter() - start)


def bench_codec_training(train_shards: str, steps: int = 20, repeats: int = 2) -> dict[str, Any]:
    tokenizer, which = _tokenizer()
    batches = _latent_batches(train_shards, tokenizer, 4)
    best_l = best_p = 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(CODEC_THREADS)
    try:
        for _ in range(repeats):  # interleaved, best of each: the cores may be shared
            best_p = max(best_p, plain_codec_steps_per_second(tokenizer, batches, steps))
            best_l = max(best_l, lightning_steps_per_second(lambda: _build_codec_module(tokenizer), batches, steps))
    finally:
        torch.set_num_threads(threads)
    return {
        "recipe": str(CODEC_RECIPE.relative_to(REPO)),
        "tokenizer": which,
        "torch_threads": CODEC_THREADS,
        "batch_shape_BCthw": list(batches[0]["latent"].shape),
        "steps": steps,
        "lightning_steps_per_s": best_l,
        "plain_steps_per_s": best_p,
        "lightning_over_plain": best_l / best_p,
    }


def table_rows(tokenizer: dict[str, Any] | None, codec: dict[str, Any] | None) -> list[str]:
    """The lines ``benchmarks.run`` prints."""
    rows = []
    for stage, r, key in (("tokenizer", tokenizer, "batch_shape_BCThw"), ("latent codec", codec, "batch_shape_BCthw")):
        if r is None:
            continue
        what = f"batch {'x'.join(map(str, r[key]))}"
        if "tokenizer" in r:
            what += f", latents of {r['tokenizer']}, {r['torch_threads']} torch thread"
        rows.append(
            f"| {stage} training step, {r['recipe']} ({what}) | Lightning: {r['lightning_steps_per_s']:.2f} steps/s "
            f"| hand-written loop: {r['plain_steps_per_s']:.2f} steps/s | {r['lightning_over_plain']:.2f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default=str(REPO / "data/shards/train/*.tar"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--stage", choices=("tokenizer", "latent_codec", "both"), default="both")
    args = parser.parse_args(argv)
    tok = bench_training(args.shards, args.steps, args.repeats) if args.stage != "latent_codec" else None
    codec = bench_codec_training(args.shards, args.steps, args.repeats) if args.stage != "tokenizer" else None
    print("| measured | figure | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    print("\n".join(table_rows(tok, codec)))


if __name__ == "__main__":
    main()
