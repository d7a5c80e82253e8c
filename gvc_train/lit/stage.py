"""StageModule: the base of every training stage (one LightningModule per stage).

A stage is its model, its losses and its step; everything else is wired here once:

- **precision policy**: refused at ``setup`` (before training) in one line;
- **frozen components**: declared sub-modules (a stage's already trained tokenizer) stay in eval
  mode with ``requires_grad`` False, whatever Lightning switches;
- **validation/test dispatch**: one ``evaluate(batch)`` serves both, prefixed and logged here;
- **lr schedule**: linear warm-up and an optional cosine decay, built and stepped by helpers
  (manual optimization);
- **non-finite guard**: a batch with a non-finite loss is skipped, too many in a row stop the run
  (:mod:`gvc_train.lit.step_guard`); skip counts in checkpoints;
- **export entry**: the checkpoint's ``gvc`` entry naming the exported components
  (:mod:`gvc_train.lit.checkpoint_meta`), with provenance and accumulated wall time;
- **the training RNG stream** saved in checkpoints, so a resumed run draws what an
  uninterrupted one drew.

A new stage subclasses :class:`StageModule`, sets the class attributes below, calls
``super().__init__(max_consecutive_nonfinite)`` then ``self.save_hyperparameters(...)``, and
implements ``training_step`` (manual optimization), :meth:`StageModule.evaluate` and
``configure_optimizers`` (ending in :meth:`StageModule.with_warmup`). It may override
:meth:`StageModule.check_trainer` for its own start-up checks.
"""

from __future__ import annotations

import functools
import math
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn

from gvc_train.components import load_component
from gvc_train.lit.checkpoint_meta import CHECKPOINT_KEY, checkpoint_entry, train_seconds_so_far, unexportable_components
from gvc_train.lit.finetune import (
    FineTune,
    FineTuneError,
    check_frozen_matches,
    check_same_finetune,
    frozen_parameter_names,
    lineage_of,
    load_parent_weights,
    named_parts,
    resolve_parent,
    under_paths,
)
from gvc_train.lit.lora import inject_lora, lora_entry
from gvc_train.lit.step_guard import NonFiniteGuard, TrainingRngStream
from gvc_train.models.tokenizer.streaming import require_streaming_tokenizer
from gvc_train.provenance import git_commit


def load_streaming_tokenizer(tokenizer_path: str | None, tokenizer: nn.Module | None, who: str) -> nn.Module:
    """The stage's frozen tokenizer: from a ``gvc-export`` folder or given as a module (tests);
    exactly one of the two. Refused unless it is a streaming tokenizer (the codec streams it)."""
    if (tokenizer_path is None) == (tokenizer is None):
        raise ValueError("give exactly one of tokenizer_path (a gvc-export folder) or tokenizer (a module)")
    if tokenizer is None:
        tokenizer = load_component(tokenizer_path, "tokenizer")
    require_streaming_tokenizer(tokenizer, who)
    return tokenizer


def cpu_seconds_now() -> float:
    """CPU seconds (user + system) this process has used, all its threads, plus its children's:
    those running now (data-loader workers) and those that have exited."""
    import psutil

    exited = resource.getrusage(resource.RUSAGE_CHILDREN)
    running = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # exited meanwhile: counted by the next call's RUSAGE_CHILDREN
            continue
        running += times.user + times.system
    return time.process_time() + exited.ru_utime + exited.ru_stime + running


def lr_factor(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """The lr multiplier at ``step``: linear warm-up times a cosine decay (see ``with_warmup``)."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_steps > 0:
        progress = min(1.0, step / decay_steps)
        factor *= min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


@dataclass
class EvalResult:
    """What a stage's :meth:`StageModule.evaluate` gives for one batch.

    ``metrics``: scalar tensors under names without the ``val/`` or ``test/`` prefix (the base
    adds it); ``outputs``: returned beside them but not logged (``recon``, the reconstruction of
    ``batch["video"]`` in [0, 1], is what ``ReconstructionVideoLogger`` shows).
    """

    metrics: dict[str, torch.Tensor]
    batch_size: int
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


class StageModule(L.LightningModule):
    """What every training stage shares; see the module docstring.

    Class attributes a stage sets:
        stage_name: how messages name it (``"the tokenizer stage"``).
        exported_components: component name in the export -> attribute of the registered
            module (``{"tokenizer": "vae"}``); ``gvc-export`` writes these, in this order.
        frozen_components: attributes whose modules never train: put in eval mode with
            ``requires_grad`` False when assigned, and kept in eval mode by :meth:`train`.
        supported_precisions: the Lightning precisions it trains under; None: every one but
            fp16 (``16-mixed``, ``16-true``): manual optimization clips before the grad scaler
            unscales, and would update the scaler once per optimizer step.
        progress_bar_metrics: names (unprefixed) of :meth:`evaluate`'s metrics shown in the
            progress bar during validation.
        finetune_targets: component name -> the attribute that trains it, for ``finetune``
            (:mod:`gvc_train.lit.finetune`); None: the exported components not frozen.
        extra_parts: the stage's own named parts for ``finetune.train``/``freeze`` beyond its
            components' (part -> module paths, e.g. ``{"discriminator": ("discriminator",)}``).
    """

    stage_name: ClassVar[str] = "this stage"
    exported_components: ClassVar[Mapping[str, str]] = {}
    frozen_components: ClassVar[tuple[str, ...]] = ()
    supported_precisions: ClassVar[tuple[str, ...] | None] = None
    progress_bar_metrics: ClassVar[tuple[str, ...]] = ()
    finetune_targets: ClassVar[Mapping[str, str] | None] = None
    extra_parts: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    run_config: str | None = None  # the resolved recipe as YAML, set by the CLI

    def __init__(self, max_consecutive_nonfinite: int = 100) -> None:
        super().__init__()
        self.automatic_optimization = False  # every stage steps its optimizers itself
        self._max_nonfinite = max_consecutive_nonfinite
        self._nonfinite_guards: list[NonFiniteGuard] = []
        self.nonfinite = self.add_nonfinite_guard("loss", "nonfinite_skipped")
        self._rng_stream = TrainingRngStream()
        self._fit_started: float | None = None
        self._git_commit: str | None = None
        self._train_seconds_before = 0.0
        self._cpu_started: float | None = None
        self._cpu_seconds_before = 0.0
        self._idle_paths: list[str] = []  # fine-tune: frozen parts, kept in eval mode
        self._lineage: dict[str, Any] | None = None
        self._lora: dict[str, dict[str, Any]] = {}  # attribute -> adapter record (gvc-export merges)

    # ---- frozen components ----------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, nn.Module) and name in self.frozen_components:
            value = value.eval().requires_grad_(False)
        super().__setattr__(name, value)

    def train(self, mode: bool = True) -> StageModule:
        # Lightning switches the whole module to train mode; frozen components stay in eval so
        # that what they compute is deterministic (a VAE built with dropout would perturb it).
        super().train(mode)
        for attr in self.frozen_components:
            frozen = getattr(self, attr, None)
            if frozen is not None:
                frozen.eval()
        for path in self._idle_paths:
            self.get_submodule(path).eval()
        return self

    # ---- fine-tuning ----------------------------------------------------------------------
    def finetune_component_attrs(self) -> dict[str, str]:
        """Component name -> attribute, for the components this stage trains."""
        if self.finetune_targets is not None:
            return dict(self.finetune_targets)
        return {n: a for n, a in self.exported_components.items() if a not in self.frozen_components and getattr(self, a, None) is not None}

    def apply_finetune(self, finetune: FineTune | None) -> None:
        """Start from ``finetune.init_from`` (see :mod:`gvc_train.lit.finetune`); a stage calls
        this at the end of ``__init__``, once its components are built."""
        if finetune is None:
            return
        targets = self.finetune_component_attrs()
        parent = resolve_parent(finetune.init_from, finetune.expect_fingerprint)
        mapping = dict(finetune.components) if finetune.components else {n: n for n in targets if n in parent.component_fingerprints}
        for ours in mapping.values():
            if ours not in targets:
                raise FineTuneError(f"finetune.components: {self.stage_name} trains {sorted(targets)}, not {ours!r}")
        if not mapping:
            raise FineTuneError(
                f"finetune.init_from: {parent.path} has none of the components {self.stage_name} trains ({sorted(targets)})"
            )
        for theirs, ours in mapping.items():
            load_parent_weights(getattr(self, targets[ours]), parent, theirs, ours)
        relations = {
            name: check_frozen_matches(getattr(self, attr), parent, name, self.stage_name)
            for name, attr in self.exported_components.items()
            if attr in self.frozen_components and name in parent.component_fingerprints and name not in mapping.values()
            and getattr(self, attr, None) is not None
        }  # fmt: skip
        parts = named_parts({n: (a, getattr(self, a)) for n, a in targets.items()}, dict(self.extra_parts))
        # the stage's own parts (a discriminator) train too, so train/freeze must reach them
        trainable_attrs = (*targets.values(), *(p for paths in self.extra_parts.values() for p in paths))
        frozen, self._idle_paths = frozen_parameter_names(self, parts, trainable_attrs, finetune.train, finetune.freeze)
        for name, param in self.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
        lora = None
        if finetune.lora is not None:
            spec = finetune.lora
            if spec.component not in targets:
                raise FineTuneError(f"finetune.lora.component: {self.stage_name} trains {sorted(targets)}, not {spec.component!r}")
            adapted = getattr(self, targets[spec.component])
            # parts that train names inside the adapted component keep training beside the adapters
            named_inside = tuple(p for part in finetune.train or [] if part.startswith(f"{spec.component}.") for p in parts[part])
            kept = [p for n, p in self.named_parameters() if p.requires_grad and named_inside and under_paths(n, named_inside)]
            inject_lora(adapted, spec)
            for param in kept:
                param.requires_grad_(True)
            self._lora[targets[spec.component]] = lora_entry(spec)
            lora = {"component": spec.component, **lora_entry(spec)}  # gvc info names the adapted component
        idle_components = sorted(n for n, a in targets.items() if not self.trainable(getattr(self, a).parameters()))
        if idle_components:
            raise FineTuneError(f"finetune: {', '.join(idle_components)} would have nothing to train (train {finetune.train}, freeze {finetune.freeze})")
        trained = list(finetune.train) if finetune.train is not None else sorted(targets)
        self._lineage = lineage_of(parent, mapping, trained, list(finetune.freeze), lora, relations)
        self.train(self.training)  # the idle parts to eval mode now

    def trainable(self, params: Any) -> list[nn.Parameter]:
        """The parameters of ``params`` that train (a fine-tune freezes some)."""
        return [p for p in params if p.requires_grad]

    # ---- start-up checks ------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self._trainer is None:
            return
        self.check_precision(str(self.trainer.precision))
        unexportable = unexportable_components(self, self.exported_components)
        if unexportable:
            raise ValueError(f"{self.stage_name}: gvc-export could not write {', '.join(unexportable)}")
        self.check_trainer(self.trainer)

    def check_precision(self, precision: str) -> None:
        """Raise ValueError unless the stage trains under Lightning's ``precision``."""
        if self.supported_precisions is None:
            supported = not precision.startswith("16")
        else:
            supported = precision in self.supported_precisions
        if not supported:
            raise ValueError(f"{self.stage_name} does not support precision={precision}; use bf16-mixed or 32-true")

    def check_trainer(self, trainer: L.Trainer) -> None:
        """A stage's own start-up checks (strategy, devices), run in ``setup``; raise ValueError."""

    # ---- non-finite guard -----------------------------------------------------------------
    def add_nonfinite_guard(self, what: str, name: str) -> NonFiniteGuard:
        """Another guard (e.g. a discriminator's loss) with its own count: ``name`` is its key
        in checkpoints and, under ``train/``, in the logs. ``self.nonfinite`` guards the loss."""
        guard = NonFiniteGuard(self._max_nonfinite, what, name)
        self._nonfinite_guards.append(guard)
        return guard

    # ---- validation and test --------------------------------------------------------------
    def evaluate(self, batch: dict[str, Any]) -> EvalResult:
        """Metrics of one validation or test batch (no gradients, eval mode)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement evaluate()")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
        result = self.evaluate(batch)
        metrics = {f"{prefix}/{k}": v for k, v in result.metrics.items()}
        shown = {f"{prefix}/{k}" for k in self.progress_bar_metrics} if prefix == "val" else set()
        for prog_bar in (False, True):
            part = {k: v for k, v in metrics.items() if (k in shown) == prog_bar}
            if part:
                self.log_dict(part, prog_bar=prog_bar, sync_dist=True, batch_size=result.batch_size)
        return {**result.outputs, **metrics}

    # ---- warm-up schedule -----------------------------------------------------------------
    @staticmethod
    def with_warmup(
        optimizers: list[torch.optim.Optimizer],
        warmup_steps: int,
        scheduled: int | None = None,
        decay_steps: int = 0,
        min_lr_ratio: float = 0.05,
    ) -> Any:
        """What ``configure_optimizers`` returns: ``optimizers``, and for the first ``scheduled`` of
        them (all by default) a schedule advanced by :meth:`step_schedulers`: a linear warm-up over
        ``warmup_steps``, times (with ``decay_steps > 0``) a cosine from 1 down to
        ``min_lr_ratio`` over the first ``decay_steps`` steps, flat after. The factor is a pure
        function of the step count, which checkpoints keep, so a resumed run follows the same
        curve."""
        if warmup_steps <= 0 and decay_steps <= 0:
            return optimizers
        factor = functools.partial(lr_factor, warmup_steps=warmup_steps, decay_steps=decay_steps, min_lr_ratio=min_lr_ratio)
        schedulers = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"} for o in optimizers[:scheduled]
        ]
        return optimizers, schedulers

    def step_schedulers(self, *stepped: bool) -> None:
        """Advance the schedules after a batch (manual optimization: Lightning does not). A
        schedule counts its own optimizer's steps: ``stepped[i]`` False (an optimizer that did not
        step this batch) leaves the i-th alone; optimizers not listed stepped."""
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for i, scheduler in enumerate(schedulers if isinstance(schedulers, list) else [schedulers]):
            if i >= len(stepped) or stepped[i]:
                scheduler.step()

    # ---- hooks: RNG stream, divergence stop, checkpoint entry -----------------------------
    def on_fit_start(self) -> None:
        self._fit_started = time.monotonic()
        self._cpu_started = cpu_seconds_now()
        self._git_commit = git_commit()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._rng_stream.step_started()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning calls the callbacks' hooks (ModelCheckpoint's batch-end save) before this one.
        self._rng_stream.step_ended()
        # Outside the forward pass, where every strategy (FSDP included) can gather a state to save.
        for guard in self._nonfinite_guards:
            guard.stop_if_diverged(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self._fit_started if self._fit_started is not None else 0.0
        checkpoint["rng_state"] = self._rng_stream.state()  # Lightning does not save it; exact resume needs it
        checkpoint[CHECKPOINT_KEY] = checkpoint_entry(
            self,
            self.exported_components,
            git_commit=self._git_commit if self._git_commit is not None else git_commit(),
            run_config=self.run_config,
            train_seconds=self._train_seconds_before + elapsed,
        )
        provenance = checkpoint[CHECKPOINT_KEY]["provenance"]
        # CPU time beside wall time: on a shared machine the wall clock also counts the others' work
        provenance["cpu_seconds"] = round(self.cpu_seconds_so_far(), 1)
        if self._lineage is not None:
            provenance["lineage"] = self._lineage
        for guard in self._nonfinite_guards:
            checkpoint[guard.name] = guard.skipped

    def cpu_seconds_so_far(self) -> float:
        """CPU seconds the run has trained, over every resume (:func:`cpu_seconds_now`)."""
        cpu = cpu_seconds_now() - self._cpu_started if self._cpu_started is not None else 0.0
        return self._cpu_seconds_before + cpu

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        provenance = checkpoint.get(CHECKPOINT_KEY, {}).get("provenance", {})
        check_same_finetune(provenance.get("lineage"), self._lineage)
        self._train_seconds_before = train_seconds_so_far(checkpoint)
        self._cpu_seconds_before = float(provenance.get("cpu_seconds", 0.0))
        self._rng_stream.resume_from(checkpoint.get("rng_state"))
        for guard in self._nonfinite_guards:
            guard.skipped = int(checkpoint.get(guard.name, 0))

