"""Data-parallel scaling: the tiny tokenizer recipe on 1 process vs 2 gloo processes (DDP).

Same global batch (4 clips) both ways: 1 process x 4 clips with all the machine's threads, or
2 processes x 2 clips with an equal share of the threads each: strong scaling, so the ratio is
the speed-up DDP gives on this machine, communication and duplicated overheads included. Steps
per second are timed between the trainer's own batch hooks, after a warm-up, so process start,
imports and the first steps' allocations are left out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

REPO = Path(__file__).resolve().parents[1]
TIMES_ENV = "GVC_BENCH_STEP_TIMES"


class StepTimer(L.Callback):
    """Rank 0 writes the wall time at the end of every training batch (``$GVC_BENCH_STEP_TIMES``)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and os.environ.get(TIMES_ENV):
            Path(os.environ[TIMES_ENV]).write_text(json.dumps(self.times))


def steps_per_second(processes: int, steps: int, warmup: int, train_shards: str, tmp: Path) -> float:
    tmp.mkdir(parents=True, exist_ok=True)
    recipe = tmp / "recipe.yaml"
    _quiet_recipe(REPO / "recipes/tiny/tokenizer.yaml", recipe)
    times_file = tmp / f"times_{processes}.json"
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    env[TIMES_ENV] = str(times_file)
    args = [
        str(Path(sys.executable).with_name("gvc-train")), "fit", "--config", str(recipe),
        f"--data.init_args.train_shards={train_shards}",
        f"--data.init_args.batch_size={4 // processes}", "--data.init_args.num_workers=0",
        "--data.init_args.samples_per_epoch=100000", f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu", f"--trainer.devices={processes}",
        f"--trainer.strategy={'ddp_find_unused_parameters_true' if processes > 1 else 'auto'}",
        "--trainer.callbacks+=benchmarks.bench_scaling.StepTimer", f"--run_dir={tmp / f'run_{processes}'}",
    ]  # fmt: skip
    result = subprocess.run(args, env=env, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{processes}-process run failed: {result.stderr[-2000:]}")
    times = json.loads(times_file.read_text())
    timed = times[warmup:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def _quiet_recipe(src: Path, dst: Path) -> None:
    import yaml

    from gvc_train.recipe_bases import load_recipe

    cfg = load_recipe(src)  # the recipe with its base resolved: the copy stands alone
    trainer = cfg["trainer"]
    trainer["logger"] = False
    trainer["enable_progress_bar"] = False
    trainer["enable_checkpointing"] = False
    trainer["callbacks"] = []
    cfg["model"]["init_args"]["gan_start_step"] = 0  # time the full step: generator and discriminator
    dst.write_text(yaml.safe_dump(cfg))


def bench_scaling(train_shards: str, steps: int = 40, warmup: int = 10, repeats: int = 2) -> dict[str, Any]:
    """Best of ``repeats`` interleaved runs of each."""
    one, two = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            one.append(steps_per_second(1, steps, warmup, train_shards, Path(tmp) / f"r{r}"))
            two.append(steps_per_second(2, steps, warmup, train_shards, Path(tmp) / f"r{r}"))
    return {
        "global_batch": 4, "steps": steps, "warmup": warmup,
        "one_process_steps_per_s": max(one), "two_process_steps_per_s": max(two),
        "ratio": max(two) / max(one), "all": {"one": one, "two": two},
    }  # fmt: skip


def table_row(r: dict[str, Any]) -> str:
    return (
        f"| DDP scaling, tiny tokenizer recipe (GAN on), global batch {r['global_batch']}: 2 gloo processes x "
        f"{r['global_batch'] // 2} clips | {r['two_process_steps_per_s']:.2f} steps/s "
        f"| 1 process x {r['global_batch']} clips, all threads: {r['one_process_steps_per_s']:.2f} steps/s "
        f"| {r['ratio']:.2f} |"
    )
