"""SLURM end to end on a real single-node cluster: slurm/single_node.sbatch as 2 CPU tasks (DDP,
gloo), and preemption: SIGUSR1 to the job's tasks, a checkpoint, a requeue, a resume to the end.

The module brings the cluster up with slurm/local_cluster.sh (installing Debian's slurm-wlm and
munge where they are missing) in a state directory of its own, on free ports, and takes it down
after. Where SLURM cannot be installed (not root, no apt) the tests are skipped with the reason.
The jobs ask for 2 CPUs in all: a job asking for more than the node has would wait forever.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.slurm

CLUSTER = REPO / "slurm/local_cluster.sh"
TEMPLATE = REPO / "slurm/single_node.sbatch"
RECIPE = REPO / "recipes/tiny/tokenizer.yaml"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A running single-node cluster; the environment its clients (sbatch, scontrol) need."""
    state = tmp_path_factory.mktemp("slurm_state")
    env = dict(os.environ, GVC_SLURM_DIR=str(state), GVC_SLURM_CTLD_PORT=str(_free_port()), GVC_SLURMD_PORT=str(_free_port()))
    up = subprocess.run(["bash", str(CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=600)
    if up.returncode == 3:
        pytest.skip(up.stdout.strip() or "SLURM cannot be installed here")
    try:
        assert up.returncode == 0, f"local_cluster.sh up failed ({up.returncode}):\n{up.stdout}{up.stderr}"
        # the jobs: the submitter's environment (sbatch --export=ALL), with gvc-train on PATH
        env.update(
            SLURM_CONF=str(state / "slurm.conf"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}{os.pathsep}/usr/sbin",
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            WANDB_MODE="offline",
            WANDB_SILENT="true",
            HF_HUB_OFFLINE="1",
        )
        yield env
    finally:
        down = subprocess.run(["bash", str(CLUSTER), "down"], env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, f"local_cluster.sh down failed:\n{down.stdout}{down.stderr}"


def _fit_args(max_steps: int, samples_per_epoch: int) -> list[str]:
    """gvc-train fit arguments after the template's own: the tiny recipe on synthetic clips, on CPUs."""
    return [
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.precision=32-true",
        f"--trainer.max_steps={max_steps}",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--data=gvc_train.data.synthetic.SyntheticVideoDataModule",
        "--data.init_args.clip_frames=5",
        "--data.init_args.height=32",
        "--data.init_args.width=32",
        "--data.init_args.batch_size=1",
        f"--data.init_args.samples_per_epoch={samples_per_epoch}",
    ]


def _submit(env: dict[str, str], workdir: Path, name: str, fit_args: list[str]) -> tuple[str, Path, Path]:
    """sbatch the single-node template as 2 one-CPU tasks; (job id, its log, its run dir)."""
    (workdir / "runs/slurm").mkdir(parents=True, exist_ok=True)  # SLURM does not make the log dir
    cmd = [
        "sbatch", "--parsable", f"--job-name={name}",
        "--nodes=1", "--ntasks=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
        # the template's default overlay (recipes/cluster/ddp.yaml: DDP, find_unused_parameters for
        # the tokenizer's GAN); the fit arguments below move it to the CPU
        f"--export=ALL,CONFIG={RECIPE},NAME={name},OVERLAY_FILE={REPO / 'recipes/cluster/ddp.yaml'}",
        str(TEMPLATE), *fit_args,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"sbatch failed: {out.stderr}"
    job = out.stdout.strip().split(";")[0]
    return job, workdir / f"runs/slurm/{name}-{job}.out", workdir / f"runs/{name}/job-{job}"


def _job(env: dict[str, str], job: str) -> dict[str, str]:
    """`scontrol show job` as a dict (accounting is off here: no sacct); {} once the job is gone."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return {}
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", out.stdout))


def _tail(log: Path, n: int = 60) -> str:
    """The job log's last lines, without the progress bars' redraws."""
    if not log.exists():
        return f"(no log at {log})"
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip() and "it/s]" not in line]
    return "\n".join(lines[-n:])


def _cancel(env: dict[str, str], job: str) -> None:
    subprocess.run(["scancel", job], env=env, capture_output=True, timeout=30)


def _wait_done(env: dict[str, str], job: str, log: Path, timeout: float) -> dict[str, str]:
    """Poll until the job is in a final state twice in a row (a requeue passes through none)."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        info = _job(env, job)
        state = info.get("JobState", "GONE")
        if state in TERMINAL or state == "GONE":
            if seen == state:
                return info
            seen = state
        else:
            seen = None
        time.sleep(1.0)
    info = _job(env, job)
    _cancel(env, job)
    pytest.fail(f"job {job} not finished after {timeout:.0f} s: {info.get('JobState')} {info.get('Reason')}\n{_tail(log)}")


def _global_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])


def test_sbatch_two_tasks_trains_to_max_steps(slurm: dict[str, str], tmp_path: Path) -> None:
    t0 = time.monotonic()
    job, log, run_dir = _submit(slurm, tmp_path, "fit", _fit_args(max_steps=6, samples_per_epoch=6))
    info = _wait_done(slurm, job, log, timeout=150)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{_tail(log)}"
    text = log.read_text(errors="replace")
    assert f"gvc-train: job {job} start" in text, _tail(log)
    last = run_dir / "checkpoints/last.ckpt"
    assert last.is_file(), f"no {last}: {sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*.ckpt'))}\n{_tail(log)}"
    assert _global_step(last) == 6
    print(f"sbatch job {job}: 2 tasks, 6 steps, done in {time.monotonic() - t0:.1f} s")


def test_usr1_saves_requeues_and_resumes(slurm: dict[str, str], tmp_path: Path) -> None:
    max_steps = 18
    t0 = time.monotonic()
    # short epochs (3 steps): the first validation saves best-step=3.ckpt, the sign that it trains
    # (last.ckpt is no sign: ModelCheckpoint writes it beside a new best, or at the end)
    job, log, run_dir = _submit(slurm, tmp_path, "preempt", _fit_args(max_steps=max_steps, samples_per_epoch=6))
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("*.ckpt")):
        state = _job(slurm, job).get("JobState", "GONE")
        if state in TERMINAL or state == "GONE" or time.monotonic() > deadline:
            _cancel(slurm, job)
            pytest.fail(f"job {job} ({state}) saved no checkpoint in {run_dir} before the signal\n{_tail(log)}")
        time.sleep(0.5)
    t_signal = time.monotonic()
    # what --signal=SIGUSR1@90 or a preempting scheduler does: SIGUSR1 to every task of the steps
    sig = subprocess.run(["scancel", "--signal=USR1", job], env=slurm, capture_output=True, text=True, timeout=30)
    assert sig.returncode == 0, sig.stderr

    info = _wait_done(slurm, job, log, timeout=180)
    text = log.read_text(errors="replace")
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{_tail(log)}"
    assert info.get("Restarts") == "1", f"job not requeued once: Restarts={info.get('Restarts')}\n{_tail(log)}"

    preempted = re.search(r"gvc-train: preempted at step (\d+): saved (\S+), requeued job (\d+)", text)
    assert preempted, f"no preemption line in the log\n{_tail(log)}"
    saved_step, saved = int(preempted.group(1)), Path(preempted.group(2))
    assert preempted.group(3) == job
    assert 0 < saved_step < max_steps, f"preempted at step {saved_step} of {max_steps}: too late to test a resume"
    if not saved.is_absolute():
        saved = tmp_path / saved
    assert saved.is_file() and saved.name.startswith("hpc_ckpt_"), f"{saved} missing"
    assert saved.parent == run_dir, f"{saved} not in the job's run dir {run_dir}"
    assert _global_step(saved) == saved_step

    # the second start: SLURM_RESTART_COUNT=1, and Lightning restored from the hpc checkpoint
    restart = text.find(f"gvc-train: job {job} start")
    restart = text.find(f"gvc-train: job {job} start", restart + 1)
    assert restart > 0 and "restart 1" in text[restart:].splitlines()[0], f"no second start in the log\n{_tail(log)}"
    assert re.search(r"Restored all states from the checkpoint.*hpc_ckpt_", text[restart:]), _tail(log)
    assert _global_step(run_dir / "checkpoints/last.ckpt") == max_steps
    print(
        f"preemption job {job}: signalled {t_signal - t0:.1f} s after submit, preempted at step {saved_step}, "
        f"requeued and finished {time.monotonic() - t_signal:.1f} s later"
    )
