"""One run's training state and its two kinds of step (the loop that drives them is gradlab.orchestrate.runner).

Step numbering follows layers.csv: the measurement at `step` s is taken on the network after s
optimizer updates, on the batch that update s+1 then uses. Step 0 is the network at
initialization; after the last update one more batch is measured without updating, so the
profile at step `train.steps` is the trained network.

A step that is not logged is the plain PyTorch step plus one read of the loss to catch
divergence. A logged step attaches the probe for that step only (see measure/probe.py).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
import sys
import time

import torch

from gradlab.build.components import build_optimizer, get_loss, schedule_factor
from gradlab.build.dataset import Dataset
from gradlab.build.memory import EVAL_CHUNK
from gradlab.build.models import Stack, build_model
from gradlab.build.parametrization import parameter_groups
from gradlab.build.system import available_cores, check_threads
from gradlab.config.experiment import Experiment
from gradlab.measure.recurrent_probe import probe_for
from gradlab.records.write import RunRecords
from gradlab.vocab.quantities import NOISE

def evaluate(model: Stack, data: Dataset, loss_fn, device: torch.device) -> tuple[float, float]:
    """Test-set loss and accuracy in evaluation mode (BatchNorm uses its running statistics)."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = data.x_test.shape[0]
    regression = data.y_test.is_floating_point()  # adding: accuracy does not exist (an empty cell)
    with torch.no_grad():
        for start in range(0, n, EVAL_CHUNK):
            x = data.x_test[start : start + EVAL_CHUNK].to(device)
            y = data.y_test[start : start + EVAL_CHUNK].to(device)
            logits = model(x)
            # every loss is a batch mean, so a chunk contributes mean * size
            total_loss += loss_fn(logits, y).double() * x.shape[0]
            if not regression:  # labels (B,), or a label per step (B, T) against logits (B, classes, T)
                correct += (logits.argmax(dim=1) == y).sum()
    model.train()
    loss, right = torch.stack([total_loss, correct.double()]).cpu().tolist()
    return loss / n, math.nan if regression else right / data.y_test.numel()


def evaluate_with_batch_stats(model: Stack, data: Dataset, loss_fn, device: torch.device, batch_size: int) -> tuple[float, float]:
    """Test-set loss and accuracy with BatchNorm normalizing each batch of `batch_size` test examples
    with that batch's own statistics, as in training (log.test_batch_stats); every other module in
    evaluation mode (no dropout). The running statistics are left as they were."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    model.eval()
    for m in norms:
        m.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = data.x_test.shape[0]
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                x = data.x_test[start : start + batch_size].to(device)
                y = data.y_test[start : start + batch_size].to(device)
                if x.shape[0] < 2:
                    continue  # the statistics of one example are undefined: a last batch of one is left out
                logits = model(x)
                total_loss += loss_fn(logits, y).double() * x.shape[0]
                correct += (logits.argmax(dim=1) == y).sum()
    finally:
        for m, (mean, var, tracked) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(tracked)
        model.train()
    n_used = n - (1 if n % batch_size == 1 and n > 1 else 0)
    loss, right = torch.stack([total_loss, correct.double()]).cpu().tolist()
    return loss / n_used, right / n_used


# -- threads ---------------------------------------------------------------------------------
# Intra-op threads pay only when each operation is big enough to split: a thread wakes, takes its
# share and joins, which costs more than it saves on small matrices, and with more threads than
# free cores (two runs side by side, a run beside the test suite) every join waits for a thread
# that is not running: a 6 x 32 MLP step went from 1.4 ms alone to 24 ms with two 2-thread runs
# on 2 cores. So `threads: auto` is one thread unless the largest layer's matrix product on one
# batch has at least PARALLEL_MIN_MACS multiply-adds; then one per core, at most AUTO_MAX_THREADS.
# How the line was drawn, and how to redraw it for a machine: docs/performance.md, "Threads", and
# `python benchmarks/threads.py --calibrate`.
PARALLEL_MIN_MACS = 2**25  # 33.5 M: e.g. batch 128 through a 512 x 512 layer
AUTO_MAX_THREADS = 4


def largest_layer_macs(exp: Experiment, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of the model's largest linear or convolution on one training batch (an upper
    bound for a CNN: every convolution counted at the input's resolution, before any pooling)."""
    m, batch = exp.model, exp.data.batch_size
    if m.kind == "cnn":
        channels, positions = input_shape[0], math.prod(input_shape[1:])
        return batch * positions * m.width * max(channels, m.width) * m.kernel_size**2
    features = math.prod(input_shape)
    return batch * m.width * max(features, m.width, exp.data.classes)


def resolve_threads(setting: int | str, exp: Experiment, input_shape: tuple[int, ...], share: int = 1) -> int:
    """The torch thread count for a run: `setting` if it is a number, else (`auto`) from the model's
    size, out of the cores left to each of `share` runs working side by side (a sweep's --jobs)."""
    if setting != "auto":
        check_threads(int(setting), "threads")
        return int(setting)
    if largest_layer_macs(exp, input_shape) < PARALLEL_MIN_MACS:
        return 1
    return max(1, min(AUTO_MAX_THREADS, available_cores() // max(1, share)))


def defers_loss_reads(device: torch.device) -> bool:
    """Whether plain steps leave their loss on the device for `Trainer.check`: on a GPU, where
    reading it is a host sync per step. On the CPU a read costs nothing and the loss is read at once."""
    return device.type == "cuda"


# -- where the data lives ---------------------------------------------------------------------
DEVICE_DATA_SHARE = 0.25  # the dataset moves to the GPU when it takes at most this share of its free memory


def place_dataset(data: Dataset, device: torch.device) -> Dataset:
    """The dataset where batches are best drawn from. On a GPU: on the device when it fits in
    DEVICE_DATA_SHARE of the free memory (moved once; every batch is then gathered there), else in
    pinned host memory, so that the `non_blocking` copy of each batch overlaps the GPU's work (on
    pageable memory `non_blocking` does nothing). Elsewhere, as it is."""
    if device.type != "cuda":
        return data
    tensors = (data.x_train, data.y_train, data.x_test, data.y_test)
    size = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    moved = [t.to(device) for t in tensors] if size <= DEVICE_DATA_SHARE * free else [t.pin_memory() for t in tensors]
    return dataclasses.replace(data, x_train=moved[0], y_train=moved[1], x_test=moved[2], y_test=moved[3])


# -- the optimizer without torch._dynamo ---------------------------------------------------------
# torch.optim imports torch._dynamo (about 1.2 s on an idle 2-core machine, more than the whole
# training of a smoke run) the first time an optimizer adds its parameters, zeroes its gradients or
# steps: those methods are wrapped to keep torch.compile from tracing into them, and the wrapper
# imports dynamo to say so. gradlab never compiles, so where dynamo is not loaded yet each wrapped
# function is marked as its own "dynamo-disabled" version (the cache the wrapper looks up first),
# and the step is called unwrapped under no_grad, as the wrapper itself would call it. The numbers
# are the same: the same function runs. A process that has already imported dynamo is left alone.
_DYNAMO_WRAPPED = (("torch.optim.optimizer", "Optimizer.add_param_group"), ("torch.optim.optimizer", "Optimizer.zero_grad"),
                   ("torch.optim.optimizer", "Optimizer.state_dict"), ("torch.optim.optimizer", "Optimizer.load_state_dict"),
                   ("torch.optim.sgd", "sgd"), ("torch.optim.adam", "adam"), ("torch.optim.adamw", "adamw"),
                   ("torch.optim.rmsprop", "rmsprop"))  # fmt: skip


def keep_dynamo_unloaded() -> bool:
    """Mark the optimizer functions gradlab calls so that calling them does not import
    torch._dynamo; False (nothing done) when dynamo is loaded already."""
    if "torch._dynamo" in sys.modules:
        return False
    for module_name, path in _DYNAMO_WRAPPED:
        try:
            target = importlib.import_module(module_name)
            for part in path.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            continue  # another torch version: that function is not there, or not wrapped
        raw = getattr(target, "__wrapped__", None)
        if raw is not None and getattr(raw, "__dynamo_disable", None) is None:
            raw.__dynamo_disable = raw
    return True


def optimizer_step(optimizer: torch.optim.Optimizer):
    """`optimizer.step` as a function of no arguments: unwrapped (its profiling and hook wrapper
    and its grad-mode wrapper, which imports dynamo) when nothing needs the wrappers, else as is."""
    step = type(optimizer).step
    module = importlib.import_module("torch.optim.optimizer")
    hooked = optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
    hooked = hooked or module._global_optimizer_pre_hooks or module._global_optimizer_post_hooks
    if "torch._dynamo" in sys.modules or optimizer.defaults.get("differentiable") or hooked:
        return optimizer.step
    raw = step
    while hasattr(raw, "__wrapped__"):
        raw = raw.__wrapped__

    def unwrapped() -> None:
        with torch.no_grad():
            raw(optimizer)

    return unwrapped


class Trainer:
    """One run's state and its two kinds of step. `gradlab.orchestrate.runner.run_experiment` drives it."""

    records: RunRecords  # set once the run directory exists

    def __init__(self, exp: Experiment, device: torch.device, data: Dataset):
        self.exp, self.device = exp, device
        self.data = place_dataset(data, device)
        torch.manual_seed(exp.seed)  # the model's initialization and rrelu's slopes draw from it
        self.model = build_model(exp.model, data.input_shape, data.classes).to(device)
        keep_dynamo_unloaded()
        self.optimizer = build_optimizer(exp.optim, parameter_groups(self.model, exp.model, exp.optim))  # per-layer lr: model.parametrization
        self._step = optimizer_step(self.optimizer)
        self.loss_fn = get_loss(exp.loss)
        self.grad_clip = exp.optim.get("grad_clip")
        # optim.schedule: update k uses the configured lr times schedule_factor(k); the optimizer's lr
        # is always the next update's (what metrics.csv's lr column shows, train and test rows alike)
        self.schedule = exp.optim.get("schedule")
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._updates = 0  # updates applied: k of the next one
        self._apply_schedule()
        self.probe = probe_for(self.model, exp.log.probes, exp.log.saturation_threshold)  # a RecurrentProbe for rnn, lstm, gru
        self.started = time.perf_counter()
        # On a GPU a plain step does not read its loss (a host sync per step): `check` reads the
        # losses of the steps since the last check at once, at the next logged or evaluated step.
        self.deferred = defers_loss_reads(device)
        self._unchecked: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (step, x, y, loss)
        self._checkpoint: dict | None = None

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def plain_step(self, x: torch.Tensor, y: torch.Tensor, step: int | None = None) -> float | None:
        """forward, backward, update; returns the loss (read before updating, to catch divergence).

        Deferred (a GPU, and `step` given): the loss stays on the device and None is returned; the
        update is applied without looking, and `check` finds a non-finite loss later, exactly."""
        if self.deferred and step is not None:
            if not self._unchecked:
                self._save_checkpoint()  # the state the first unchecked step starts from
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self._unchecked.append((step, x, y, loss.detach()))
            self._update()
            return None
        return self._read_step(x, y)

    def _read_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        value = loss.item()
        if math.isfinite(value):
            self._update()
        return value

    def check(self) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """The first unchecked step whose loss was not finite, as (step, x, y), with the model,
        optimizer and random state put back to just before that step: exactly where a run that
        read every loss would have stopped (its step not updated), ready for locate_non_finite.
        None when every loss was finite. One host read, of all the unchecked losses together.

        When one was not finite, the steps since the last check point are replayed from it one by
        one, reading each loss, up to the first non-finite one, whose forward and backward run as
        in a step-by-step run (the random state after it is the same too: rrelu's slopes)."""
        unchecked, self._unchecked = self._unchecked, []
        if not unchecked:
            return None
        finite = torch.isfinite(torch.stack([loss for *_, loss in unchecked])).tolist()  # the one host read
        if all(finite):
            return None
        self._restore_checkpoint()
        for step, x, y, _ in unchecked:
            if not math.isfinite(self._read_step(x, y)):  # replayed reading every loss, as on the CPU
                return step, x, y
        return None  # every loss was finite on replay (a nondeterministic kernel): the replayed run goes on

    def _save_checkpoint(self) -> None:
        self._checkpoint = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "updates": self._updates,  # the schedule's position
            # rrelu draws its slopes in training: the replay must draw the same ones
            "rng": (torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None),
        }

    def _restore_checkpoint(self) -> None:
        saved = self._checkpoint
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self._updates = saved["updates"]
        torch.set_rng_state(saved["rng"][0])
        if saved["rng"][1] is not None:
            torch.cuda.set_rng_state(saved["rng"][1], self.device)

    def logged_step(self, step: int, x: torch.Tensor, y: torch.Tensor, update: bool) -> float:
        """The plain step with the probe attached; writes this step's rows. Returns the loss."""
        model, probe = self.model, self.probe
        self.optimizer.zero_grad(set_to_none=True)
        probe.attach()
        try:
            logits = model(x)  # (B, classes); the model taps its sites into the probe
            loss = self.loss_fn(logits, y)
            loss.backward()
        finally:
            probe.detach()
        columns, extras = probe.measure(loss, logits, y).fetch()  # the one host transfer
        # the noise group's NaN is an empty cell by definition (B = 1, no variance), not a divergence
        values = [extras["loss"], extras["grad_norm"], *(v for q, column in columns.items() if q not in NOISE for v in column.values())]
        if not all(map(math.isfinite, values)):
            return math.nan  # not a row: the run stops here and the records say where
        lr = self.lr()  # the lr of this step's update (a schedule moves it on in _update)
        jacobian_rows = self._jacobian(step, x) if self._jacobian_due(step) else None  # the network as this step measured it
        if update:
            probe.snapshot_weights()
            self._update()
            columns.update(probe.update_ratios())
        self.records.layers.write(probe.rows(step, columns))
        if jacobian_rows is not None:
            self.records.jacobian.write(jacobian_rows)
        if getattr(self.records, "timesteps", None) is not None:  # recurrent runs: timesteps.csv
            self.records.timesteps.write(probe.timestep_rows(step, columns))
        self.records.metrics.write([{
            "step": step, "split": "train", "loss": extras["loss"], "accuracy": extras["accuracy"],
            "grad_norm": extras["grad_norm"], "clipped_grad_norm": self._clipped(extras["grad_norm"]),
            "lr": lr, "time_s": round(time.perf_counter() - self.started, 4),
        }])  # fmt: skip
        return extras["loss"]

    def _jacobian_due(self, step: int) -> bool:
        """Whether log.jacobian measures at this logged step: every log.jacobian.every steps, and the last."""
        settings = self.exp.log.jacobian
        return settings is not None and (step % settings.every == 0 or step == self.exp.train.steps)

    def _jacobian(self, step: int, x: torch.Tensor) -> list[dict]:
        """jacobian.csv's rows of this step, on the batch's first log.jacobian.examples examples."""
        from gradlab.measure.jacobian import jacobian_spectrum, probe_generator

        settings = self.exp.log.jacobian
        examples = x if settings.examples is None else x[: settings.examples]
        generator = probe_generator(x.device, self.exp.seed, step)
        return jacobian_spectrum(self.model, examples, settings.probes, settings.power_iterations, generator).rows(step)

    def _clipped(self, norm: float) -> float | None:
        """The global gradient norm after optim.grad_clip, by clip_grad_norm_'s own rule (the
        gradient is scaled by min(1, max_norm / (norm + 1e-6))); None without a grad_clip."""
        if self.grad_clip is None:
            return None
        return norm * min(1.0, self.grad_clip / (norm + 1e-6))

    def _apply_schedule(self) -> None:
        if self.schedule is not None:
            factor = schedule_factor(self.schedule, self._updates, self.exp.train.steps)
            for group, base in zip(self.optimizer.param_groups, self._base_lrs):
                group["lr"] = base * factor

    def _update(self) -> None:
        if self.grad_clip is not None:
            # clips the global norm; the measured gradient norms are those before clipping
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self._step()
        self._updates += 1
        self._apply_schedule()

    def evaluate(self, step: int) -> None:
        if self.exp.log.test_batch_stats:
            loss, accuracy = evaluate_with_batch_stats(self.model, self.data, self.loss_fn, self.device, self.exp.data.batch_size)
            self.records.metrics.write([{
                "step": step, "split": "test_batch_stats", "loss": loss, "accuracy": accuracy, "grad_norm": None,
                "lr": self.lr(), "time_s": round(time.perf_counter() - self.started, 4),
            }])  # fmt: skip
        loss, accuracy = evaluate(self.model, self.data, self.loss_fn, self.device)
        self.records.metrics.write([{
            "step": step, "split": "test", "loss": loss, "accuracy": accuracy, "grad_norm": None,
            "lr": self.lr(), "time_s": round(time.perf_counter() - self.started, 4),
        }])  # fmt: skip
