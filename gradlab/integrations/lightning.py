"""A Lightning callback: gradlab's per-layer gradient records of any LightningModule.

    import lightning as L
    from gradlab.integrations.lightning import GradlabCallback

    callback = GradlabCallback(every=10, out="results", expect={"gain": {"step": 0, "between": [0.01, 100]}})
    L.Trainer(max_epochs=2, callbacks=[callback]).fit(model, train_loader)
    callback.run_dir                                   # the run directory, as `gradlab.watch` writes it

The same class works with `pytorch_lightning.Trainer` where that package is installed (it
subclasses the `Callback` of each of the two packages that is installed). Needs Lightning:
`pip install 'gradlab[lightning]'`.

What it does, hook by hook:
    on_fit_start              `gradlab.watch` on the LightningModule, with the trainer's optimizer
                              (update ratios, lr); steps count from 0 at the start of every fit
    training_step             runs as one call of a module that holds the LightningModule's
                              submodules and parameters under their own names (`net.0`), so that
                              watch sees one forward pass per step however `training_step` reaches
                              its layers (`self(x)`, `self.net(x)`, several models): every use of a
                              parameter it makes is a site. The batch's first tensor (x of (x, y))
                              counts the examples, as a model's input does
    on_before_optimizer_step  watch's copy of the weights before the update (Lightning runs
                              training_step and backward *inside* `optimizer.step(closure)`, so a
                              torch step pre-hook would fire before the forward pass); gradients are
                              recorded as backward left them, before Lightning clips them
    on_train_batch_end        `w.step()` once per optimizer step (with `accumulate_grad_batches=k`,
                              on the batch whose optimizer step ran: the step's first batch is the
                              measured forward pass, the weight gradients are the k batches' sum)
    on_fit_end                the run closed as completed, then its `expect:` section checked with
                              gradlab's own checking (`gradlab.check`): a failure raises
                              `ExpectationFailed` out of `trainer.fit` (on_fail="raise") or warns
                              (on_fail="warn"); `callback.outcomes` holds every outcome
    on_exception              the run closed as `interrupted` (Ctrl-C) or `failed` (the error)

L is what Lightning back-propagates: the training_step's loss divided by `accumulate_grad_batches`.
metrics.csv's train `loss` is the sum of those over the step's batches (with no accumulation, the
training_step's loss), `accuracy` the mean of an `"accuracy"` entry where training_step returns a
dict holding one (else empty). Validation is not recorded. Manual optimization
(`automatic_optimization = False`) is refused: there training_step runs its own backward passes
and optimizer steps, which a callback cannot tell apart; call `gradlab.watch` inside the module
then. With several processes (DDP), only global rank 0 watches: its deltas are its own batches',
its weight gradients the reduced ones.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from gradlab.analysis.expectations import Outcome, parse
from gradlab.measure.watch import WATCH_GROUPS, Watch, watch
from gradlab.vocab.errors import ConfigError, ExpectationFailed

INSTALL = "pip install 'gradlab[lightning]'"


def _callback_bases() -> tuple[type, ...]:
    """The `Callback` class of `lightning` and of `pytorch_lightning`, each where installed: a
    Trainer accepts only callbacks of its own package."""
    bases = []
    for package, module in (("lightning", "lightning.pytorch"), ("pytorch_lightning", "pytorch_lightning")):
        try:
            bases.append(importlib.import_module(module).Callback)
        except ModuleNotFoundError as exc:
            if exc.name not in (package, module):  # installed, but something it needs is not: its own error says what
                raise
    if not bases:
        raise ModuleNotFoundError(f"gradlab.integrations.lightning needs Lightning (lightning or pytorch_lightning); {INSTALL}", name="lightning")
    return tuple(bases)


class _TrainingStep(nn.Module):
    """The LightningModule's training_step as a module call. It holds the LightningModule's
    submodules and its own parameters under the same names (not the LightningModule itself, whose
    `self(x)` inside training_step is then an ordinary call of an unwatched module)."""

    def __init__(self, module: nn.Module, training_step: Callable[..., Any]):
        super().__init__()
        for name, child in module.named_children():
            self.add_module(name, child)
        for name, param in module.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self._training_step = training_step

    def forward(self, examples: torch.Tensor | None, *args, **kwargs):
        # `examples` (the batch's first tensor) is there for watch alone: dimension 0 of the first
        # tensor a forward pass takes counts the examples, as in any model's forward(x)
        return self._training_step(*args, **kwargs)


def _step_module(module: nn.Module, training_step: Callable[..., Any]) -> _TrainingStep:
    # a subclass named as the LightningModule: config.yaml records `model.class` by the class's name
    named = type(type(module).__name__, (_TrainingStep,), {"__module__": __name__, "__qualname__": type(module).__qualname__})
    return named(module, training_step)


class _StepHooksAfterClosure:
    """The trainer's optimizer as watch sees it. Lightning calls `optimizer.step(closure)` with
    training_step and backward inside the closure, so torch's step pre-hooks run before the forward
    pass they should follow; this stand-in keeps the pre-hooks watch registers and runs them at
    on_before_optimizer_step (after backward, before the update). Everything else, post-hooks
    included, is the optimizer's own."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self._optimizer = optimizer
        self._pre_hooks: OrderedDict[int, Callable] = OrderedDict()  # (a RemovableHandle holds a weak reference to it)

    def register_step_pre_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        handle = torch.utils.hooks.RemovableHandle(self._pre_hooks)
        self._pre_hooks[handle.id] = hook
        return handle

    def before_update(self) -> None:
        for hook in list(self._pre_hooks.values()):
            hook(self._optimizer, (), {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_optimizer":
            raise AttributeError(name)
        return getattr(self._optimizer, name)


def _stand_in(optimizer: torch.optim.Optimizer) -> _StepHooksAfterClosure:
    # named as the optimizer's class: config.yaml records `optim.name` by the class's name
    named = type(type(optimizer).__name__, (_StepHooksAfterClosure,), {"__module__": __name__})
    return named(optimizer)


def _seed() -> int | None:
    """The seed of `lightning.seed_everything`, which it leaves in the environment."""
    try:
        return int(os.environ["PL_GLOBAL_SEED"])
    except (KeyError, ValueError):
        return None


class GradlabCallback(*_callback_bases()):
    """Watch a LightningModule during `trainer.fit` and write a gradlab run directory (see the
    module docstring for what happens at each hook).

    every: measure optimizer steps 0, every, 2*every, ... of the fit. out: the folder the run
    directory goes under (`out/name/<timestamp>-<id>/`). name: the run's name (default: the
    LightningModule's class name). expect: an `expect:` section, checked when the fit ends.
    on_fail: "raise" (ExpectationFailed out of `trainer.fit`) or "warn", when it does not hold.
    groups: of weights, deltas, updates (as `gradlab.watch`).

    After the fit: `run_dir` (the run directory) and `outcomes` (the expectations checked).
    """

    def __init__(
        self,
        every: int = 10,
        out: str | Path = "results",
        expect: dict[str, Any] | None = None,
        name: str | None = None,
        *,
        on_fail: Literal["raise", "warn"] = "raise",
        groups: Iterable[str] = WATCH_GROUPS,
    ):
        if on_fail not in ("raise", "warn"):
            raise ConfigError(f"GradlabCallback: on_fail got {on_fail!r}; allowed: raise, warn")
        if expect is not None:
            parse(expect, where="GradlabCallback: expect")  # a bad section fails here, not after training
        self.every, self.out, self.expect, self.name, self.on_fail, self.groups = every, out, expect, name, on_fail, list(groups)
        self.watch: Watch | None = None
        self.run_dir: Path | None = None
        self.outcomes: list[Outcome] = []
        self._optimizer: _StepHooksAfterClosure | None = None
        self._module: nn.Module | None = None
        self._own_step: tuple[bool, Any] | None = None  # the LightningModule's instance attribute training_step, if any
        self._closed = False
        self._reset_step()

    def _reset_step(self, global_step: int = 0) -> None:
        self._global_step = global_step  # the trainer's optimizer steps when the step now taken began
        self._loss: torch.Tensor | float | None = None
        self._accuracy: list[Any] = []

    # -- fit start and end --------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        self.watch, self.run_dir, self.outcomes, self._closed = None, None, [], False
        if not trainer.is_global_zero:
            return
        if not pl_module.automatic_optimization:
            raise ConfigError(
                "GradlabCallback: manual optimization (automatic_optimization = False) is not supported: training_step runs its own "
                "backward passes and optimizer steps, which a callback cannot tell apart; call gradlab.watch(self, ...) in the "
                "LightningModule and w.step() after each optimizer step"
            )
        if len(trainer.optimizers) > 1:
            raise ConfigError(f"GradlabCallback: {len(trainer.optimizers)} optimizers; one optimizer is supported (automatic optimization)")
        self._optimizer = _stand_in(trainer.optimizers[0]) if trainer.optimizers else None
        training_step = pl_module.training_step
        step_module = _step_module(pl_module, training_step)
        name = self.name if self.name is not None else type(pl_module).__name__
        self.watch = watch(step_module, out=self.out, every=self.every, name=name, optimizer=self._optimizer,
                           groups=self.groups, seed=_seed(), expect=self.expect)  # fmt: skip
        self.run_dir = self.watch.run_dir
        # training_step through the module call while the fit runs (restored when it ends)
        self._module = pl_module
        self._own_step = ("training_step" in vars(pl_module), vars(pl_module).get("training_step"))

        def through_the_module(*args, **kwargs):
            return step_module(_first_tensor(args[0] if args else kwargs.get("batch")), *args, **kwargs)

        vars(pl_module)["training_step"] = through_the_module  # an instance attribute: the class's method stays as it is
        self._reset_step(trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.watch is None:
            return
        self._finish("completed")
        self.outcomes = _check(self.run_dir)
        failed = [o for o in self.outcomes if not o.passed]
        if not failed:
            return
        lines = [f"{self.run_dir}: {o.failure()}" for o in failed]
        if self.on_fail == "raise":
            raise ExpectationFailed(*lines)
        warnings.warn("gradlab expect: " + "; ".join(lines), stacklevel=2)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.watch is None or self._closed:
            self._restore()
            return
        if isinstance(exception, KeyboardInterrupt):
            self._finish("interrupted")
        else:
            self._finish("failed", error=f"{type(exception).__name__}: {exception}")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()

    def _finish(self, status: str, error: str | None = None) -> None:
        self._restore()
        self._closed = True
        self.watch.close(status, error)

    def _restore(self) -> None:
        """The LightningModule's training_step as it was before the fit."""
        if self._module is None:
            return
        had, value = self._own_step
        if had:
            vars(self._module)["training_step"] = value
        else:
            vars(self._module).pop("training_step", None)
        self._module = None

    # -- steps --------------------------------------------------------------------------------

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.watch is not None and self._optimizer is not None:
            self._optimizer.before_update()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        w = self.watch
        if w is None:
            return
        if w.measuring and isinstance(outputs, Mapping):
            loss = outputs.get("loss")
            if isinstance(loss, torch.Tensor):  # (None: training_step skipped the batch)
                loss = loss.detach()
                self._loss = loss if self._loss is None else self._loss + loss
            if outputs.get("accuracy") is not None:
                self._accuracy.append(outputs["accuracy"])
        if trainer.global_step == self._global_step:
            return  # no optimizer step after this batch (gradient accumulation): the step goes on
        w.step(loss=self._loss, accuracy=_mean(self._accuracy))
        self._reset_step(trainer.global_step)


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The first tensor of a batch, depth first through tuples, lists and mappings: x of (x, y)."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _mean(values: list[Any]) -> Any:
    if not values:
        return None
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([v.detach().reshape(()).float() for v in values]).mean()
    return sum(float(v) for v in values) / len(values)


def _check(run_dir: Path) -> list[Outcome]:
    from gradlab.orchestrate.api import check

    return check(run_dir)
