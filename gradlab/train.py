"""One run's training state and its two kinds of step (the loop that drives them is gradlab.runner).

Step numbering follows layers.csv: the measurement at `step` s is taken on the network after s
optimizer updates, on the batch that update s+1 then uses. Step 0 is the network at
initialization; after the last update one more batch is measured without updating, so the
profile at step `train.steps` is the trained network.

A step that is not logged is the plain PyTorch step plus one read of the loss to catch
divergence. A logged step attaches the probe for that step only (see probes.py).
"""

from __future__ import annotations

import math
import time

import torch

from gradlab.components import build_optimizer, get_loss
from gradlab.config import Experiment
from gradlab.data import Dataset
from gradlab.models import Stack, build_model
from gradlab.probes import Probe
from gradlab.records import RunRecords

EVAL_CHUNK = 1024  # test examples per forward pass in evaluation


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
    """One run's state and its two kinds of step. `gradlab.runner.run_experiment` drives it."""

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


_MOVED_TO_RUNNER = ("run_experiment", "resolve_device", "RunInterrupted", "RunResult")


def __getattr__(name: str):  # moved: re-export until integration (lazy: gradlab.runner imports this module)
    if name in _MOVED_TO_RUNNER:
        from gradlab import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
