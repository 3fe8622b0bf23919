"""The training loop: wires data, model, optimizer and probes, and writes the run's records.

Step numbering follows layers.csv: the measurement at `step` s is taken on the network after s
optimizer updates, on the batch that update s+1 then uses. Step 0 is the network at
initialization; after the last update one more batch is measured without updating, so the
profile at step `train.steps` is the trained network.

A step that is not logged is the plain PyTorch step plus one read of the loss to catch
divergence. A logged step attaches the probe for that step only (see probes.py).
"""

from __future__ import annotations

import math
import platform
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import gradlab
from gradlab.components import build_optimizer, get_loss
from gradlab.config import Experiment
from gradlab.data import Batches, Dataset, load_dataset
from gradlab.errors import ConfigError
from gradlab.memory import check_fits, known_input_shape
from gradlab.models import Stack, build_model
from gradlab.probes import Probe, locate_non_finite
from gradlab.records import RunRecords, new_named_run_dir, new_run_dir, now_iso, prepare_out_dir

EVAL_CHUNK = 1024  # test examples per forward pass in evaluation
META_EVERY_S = 1.0  # meta.json's steps_done of a running run is refreshed at most this often


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived during a run; the records were closed as `interrupted`."""

    def __init__(self, signum: int, run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_dir = run_dir
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as shells report them


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | diverged
    steps_done: int
    divergence: dict[str, Any] | None


class Reporter:
    """Progress callbacks; the CLI passes a rich progress bar, tests the silent default."""

    def start(self, total_steps: int) -> None: ...
    def update(self, step: int, loss: float) -> None: ...
    def finish(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} asked for, but this torch sees no CUDA GPU; allowed here: auto, cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: mps asked for, but this torch has no MPS backend; allowed here: auto, cpu")
    return torch.device(name)


class StopRequest:
    """SIGINT/SIGTERM handling for the training loop.

    The first signal only sets `signum`; the loop checks it between steps, so a step's rows are
    never cut in half. A second signal stops at once (the user insists).
    """

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum, frame):
        if self.signum is not None:
            raise RunInterrupted(signum)
        self.signum = signum

    @contextmanager
    def installed(self):
        try:
            previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: the caller handles signals
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def evaluate(model: Stack, data: Dataset, loss_fn, device: torch.device) -> tuple[float, float]:
    """Test-set loss and accuracy in evaluation mode (BatchNorm uses its running statistics)."""
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = data.x_test.shape[0]
    with torch.no_grad():
        for start in range(0, n, EVAL_CHUNK):
            x = data.x_test[start : start + EVAL_CHUNK].to(device)
            y = data.y_test[start : start + EVAL_CHUNK].to(device)
            logits = model(x)
            # every loss is a batch mean, so a chunk contributes mean * size
            total_loss += loss_fn(logits, y).double() * x.shape[0]
            correct += (logits.argmax(dim=1) == y).sum()
    model.train()
    loss, right = torch.stack([total_loss, correct.double()]).cpu().tolist()
    return loss / n, right / n


class Trainer:
    """One run's state and its two kinds of step. `run_experiment` drives it."""

    records: RunRecords  # set once the run directory exists

    def __init__(self, exp: Experiment, device: torch.device, data: Dataset):
        self.exp, self.device, self.data = exp, device, data
        torch.manual_seed(exp.seed)  # the model's initialization and rrelu's slopes draw from it
        self.model = build_model(exp.model, data.input_shape, data.classes).to(device)
        self.optimizer = build_optimizer(exp.optim, self.model.parameters())
        self.loss_fn = get_loss(exp.loss)
        self.grad_clip = exp.optim.get("grad_clip")
        self.probe = Probe(self.model, exp.log.probes)
        self.started = time.perf_counter()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def plain_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """forward, backward, update; returns the loss (read before updating, to catch divergence)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        value = loss.item()
        if math.isfinite(value):
            self._update()
        return value

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
        values = [extras["loss"], extras["grad_norm"], *(v for column in columns.values() for v in column.values())]
        if not all(map(math.isfinite, values)):
            return math.nan  # not a row: the run stops here and the records say where
        if update:
            probe.snapshot_weights()
            self._update()
            columns.update(probe.update_ratios())
        self.records.layers.write(probe.rows(step, columns))
        self.records.metrics.write([{
            "step": step, "split": "train", "loss": extras["loss"], "accuracy": extras["accuracy"],
            "grad_norm": extras["grad_norm"], "lr": self.lr(), "time_s": round(time.perf_counter() - self.started, 4),
        }])  # fmt: skip
        return extras["loss"]

    def _update(self) -> None:
        if self.grad_clip is not None:
            # clips the global norm; the measured gradient norms are those before clipping
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()

    def evaluate(self, step: int) -> None:
        loss, accuracy = evaluate(self.model, self.data, self.loss_fn, self.device)
        self.records.metrics.write([{
            "step": step, "split": "test", "loss": loss, "accuracy": accuracy, "grad_norm": None,
            "lr": self.lr(), "time_s": round(time.perf_counter() - self.started, 4),
        }])  # fmt: skip


def run_experiment(exp: Experiment, reporter: Reporter | None = None, *, run_dir: Path | None = None) -> RunResult:
    """Train `exp` and write its run directory. Bad input raises before anything is written.

    `run_dir`: create the records in this new directory (a sweep member) instead of a new
    `log.out/name/<timestamp>-<id>/`; it must not exist yet.
    """
    reporter = reporter or Reporter()
    device = resolve_device(exp.device)
    if run_dir is None:
        prepare_out_dir(exp.log.out)
    shape = known_input_shape(exp)
    if shape is not None:  # refuse an impossible size before generating data or building anything
        check_fits(exp, shape, exp.data.classes, device.type)
    data = load_dataset(exp.data, exp.seed)
    if shape is None:
        check_fits(exp, data.input_shape, data.classes, device.type, with_data=False)
    batches = Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed)
    trainer = Trainer(exp, device, data)
    steps, every, eval_every = exp.train.steps, exp.log.every, exp.train.eval_every

    run_dir = new_run_dir(exp.log.out, exp.name) if run_dir is None else new_named_run_dir(Path(run_dir).parent, Path(run_dir).name)
    records = RunRecords(run_dir, exp.to_yaml(), {
        "name": exp.name, "run_id": run_dir.name, "seed": exp.seed, "device": str(device),
        "versions": {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "started": now_iso(), "ended": None, "steps_planned": steps, "steps_done": 0, "divergence": None,
    })  # fmt: skip
    result = RunResult(run_dir, "running", 0, None)
    meta_written = time.perf_counter()
    try:
        with StopRequest().installed() as stop:
            trainer.records = records
            trainer.model.train()
            reporter.start(steps)
            for step in range(steps + 1):
                if stop.signum is not None:
                    raise RunInterrupted(stop.signum)
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                update = step < steps  # the last measurement is taken without updating
                logged = step % every == 0 or step == steps
                if step % eval_every == 0 or step == steps:
                    trainer.evaluate(step)  # the network after `step` updates, before the next
                loss = trainer.logged_step(step, x, y, update) if logged else trainer.plain_step(x, y)
                if not math.isfinite(loss):
                    where = locate_non_finite(trainer.model, x, y, trainer.loss_fn)
                    result.status, result.divergence = "diverged", {"step": step, **where}
                    break
                result.steps_done = step + 1 if update else step
                if logged:
                    if time.perf_counter() - meta_written > META_EVERY_S:
                        records.write_meta(steps_done=result.steps_done)
                        meta_written = time.perf_counter()
                    reporter.update(step, loss)
    except RunInterrupted as exc:
        reporter.finish()
        records.close("interrupted", steps_done=result.steps_done)
        exc.run_dir = run_dir
        raise
    except BaseException as exc:
        reporter.finish()
        records.close("failed", steps_done=result.steps_done, error=f"{type(exc).__name__}: {exc}")
        raise
    reporter.finish()
    if result.status == "running":
        result.status = "completed"
    records.close(result.status, steps_done=result.steps_done, divergence=result.divergence)
    return result
