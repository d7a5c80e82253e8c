"""Tokenizer training steps per second: under Lightning and in a hand-written PyTorch loop.

Both run the tiny tokenizer recipe's model on the same batches (taken once from the sample
shards and replayed, so data loading is not in either figure), with the same losses and
optimizer. Their ratio is what the Lightning shell costs per step.

    python -m benchmarks.bench_train [--steps 30]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/tiny/tokenizer.yaml"


class _Replay(Dataset):
    def __init__(self, batches: list[dict[str, Any]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"video": self.batches[i % len(self.batches)]["video"]}


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


def lightning_steps_per_second(model_args: dict, batches: list[dict], steps: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    module = _build_module(model_args)
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
        best_l = max(best_l, lightning_steps_per_second(model_args, batches, steps))
    return {
        "recipe": str(RECIPE.relative_to(REPO)),
        "batch_shape_BCThw": shape,
        "steps": steps,
        "lightning_steps_per_s": best_l,
        "plain_steps_per_s": best_p,
        "lightning_over_plain": best_l / best_p,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default=str(REPO / "data/shards/train/*.tar"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    r = bench_training(args.shards, args.steps)
    print(f"tokenizer ({r['recipe']}, batch {r['batch_shape_BCThw']}): Lightning {r['lightning_steps_per_s']:.2f} steps/s, "
          f"plain loop {r['plain_steps_per_s']:.2f} steps/s, ratio {r['lightning_over_plain']:.2f}")


if __name__ == "__main__":
    main()
