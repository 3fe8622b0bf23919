"""gradlab.integrations.lightning.GradlabCallback with a real Lightning Trainer on the CPU (and a
pytorch_lightning Trainer where that package is installed), against an independent reference.

The reference is a twin of the LightningModule's network (the same initial weights, the same
batches in the same order, the same optimizer) trained by a hand-written loop that does what
Lightning's automatic optimization does: the loss divided by accumulate_grad_batches, the batches
of one optimizer step accumulated, gradients clipped by norm before the update. It is measured by
hand: `retain_grad()` on every Linear output of the step's first batch, `.grad` of every
parameter, the weights copied around `optimizer.step()`. The callback's numbers are read back from
layers.csv and metrics.csv with the csv module.
"""

from __future__ import annotations

import copy
import csv
import importlib
import importlib.util
import json
import math
import signal
from pathlib import Path

import pytest

if importlib.util.find_spec("lightning") is None:
    pytest.skip("the lightning extra is not installed (pip install 'gradlab[lightning]')", allow_module_level=True)
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from gradlab.vocab.errors import ConfigError, ExpectationFailed  # noqa: E402

# Lightning's advice for real training (worker processes, a validation loader) and its own deprecations
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers", "ignore:You defined a `validation_step` but have no `val_dataloader`", "ignore:.*LeafSpec.*is deprecated"
)

SITES = ["net.0", "net.2", "net.4"]
LR, MOMENTUM = 0.1, 0.9


def gradlab_callback(**options):
    """gradlab's callback, imported at its first use: Lightning takes seconds to import, and every
    pytest-xdist worker collects this file."""
    from gradlab.integrations.lightning import GradlabCallback

    return GradlabCallback(**options)


@pytest.fixture(params=["lightning.pytorch", "pytorch_lightning"])
def pl(request):
    """The Lightning package a test trains with: `lightning`, and `pytorch_lightning` where installed."""
    if request.param == "pytorch_lightning":
        pytest.importorskip("pytorch_lightning", reason="pytorch_lightning is not installed")
    return importlib.import_module(request.param)


def tiny_module(pl, *, via_self: bool = False, fail_at: int | None = None, interrupt_at: int | None = None, manual: bool = False):
    """A LightningModule around a 3-Linear network. training_step reaches the network through
    `self.net(x)` or, with via_self, through `self(x)`; it raises at batch `fail_at` (RuntimeError)
    or `interrupt_at` (KeyboardInterrupt) of the fit."""

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
            self.batches = 0
            self.automatic_optimization = not manual

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            self.batches += 1
            if self.batches - 1 == fail_at:
                raise RuntimeError("boom")
            if self.batches - 1 == interrupt_at:
                raise KeyboardInterrupt
            x, y = batch
            logits = self(x) if via_self else self.net(x)
            return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

    return Tiny()


def data(n_batches: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)) for _ in range(n_batches)]


def loader(batches):
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)


def trainer(pl, tmp_path, callbacks, epochs: int = 2, **options):
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks, **options,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# the reference: Lightning's automatic optimization by hand, measured by retain_grad and .grad
# --------------------------------------------------------------------------------------------


def reference_fit(net: nn.Module, batches, epochs: int, every: int, accumulate: int = 1, clip: float | None = None):
    """{step: {site: {quantity: value}}} and {step: {metric: value}} of the measured steps."""
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    modules = {f"net.{name}": module for name, module in net.named_modules()}  # the LightningModule's paths
    layers, metrics, step = {}, {}, 0
    for _ in range(epochs):
        # Lightning steps the optimizer after every `accumulate` batches and after an epoch's last
        groups = [batches[i : i + accumulate] for i in range(0, len(batches), accumulate)]
        for group in groups:
            optimizer.zero_grad()
            outputs, loss_sum, accuracies = {}, 0.0, []
            for k, (x, y) in enumerate(group):
                handles = []
                if k == 0:  # the measured forward pass: the step's first batch
                    for name in SITES:

                        def keep(module, args, output, name=name):
                            output.retain_grad()
                            outputs[name] = output

                        handles.append(modules[name].register_forward_hook(keep))
                logits = net(x)
                for handle in handles:
                    handle.remove()
                loss = F.cross_entropy(logits, y) / accumulate
                loss.backward()
                loss_sum += loss.item()
                accuracies.append((logits.argmax(1) == y).float().mean().item())
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()])).item()
            measured = {
                name: {
                    "delta_norm": outputs[name].grad.norm().item(),
                    "delta_rms": math.sqrt((16 * outputs[name].grad).pow(2).sum().item() / 16),
                    "weight_norm": modules[name].weight.norm().item(),
                    "weight_grad_norm": modules[name].weight.grad.norm().item(),
                    "bias_grad_norm": modules[name].bias.grad.norm().item(),
                }
                for name in SITES
            }
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(list(net.parameters()), clip)
            before = {name: modules[name].weight.detach().clone() for name in SITES}
            optimizer.step()
            for name in SITES:
                measured[name]["update_ratio"] = (modules[name].weight.detach() - before[name]).norm().item() / before[name].norm().item()
            if step % every == 0:
                layers[step] = measured
                metrics[step] = {"loss": loss_sum, "accuracy": sum(accuracies) / len(accuracies), "grad_norm": grad_norm, "lr": LR}
            step += 1
    return layers, metrics


def read_layers(run_dir: Path) -> dict[int, dict[str, dict[str, str]]]:
    out: dict[int, dict[str, dict[str, str]]] = {}
    with open(run_dir / "layers.csv", newline="") as file:
        for row in csv.DictReader(file):
            out.setdefault(int(row["step"]), {})[row["name"]] = row
    return out


def read_metrics(run_dir: Path) -> dict[int, dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return {int(row["step"]): row for row in csv.DictReader(file) if row["split"] == "train"}


def meta(run_dir: Path) -> dict:
    return json.loads((run_dir / "meta.json").read_text())


def assert_matches(run_dir: Path, layers, metrics) -> None:
    recorded = read_layers(run_dir)
    assert sorted(recorded) == sorted(layers)
    for step, sites in layers.items():
        assert list(recorded[step]) == SITES, step  # every Linear, in forward order
        assert [recorded[step][n]["kind"] for n in SITES] == ["hidden", "hidden", "head"]
        for name, values in sites.items():
            for quantity, value in values.items():
                cell = float(recorded[step][name][quantity])
                assert math.isclose(cell, value, rel_tol=1e-5), (step, name, quantity, cell, value)
    rows = read_metrics(run_dir)
    assert sorted(rows) == sorted(metrics)
    for step, values in metrics.items():
        for metric, value in values.items():
            assert math.isclose(float(rows[step][metric]), value, rel_tol=1e-5), (step, metric, rows[step][metric], value)


# --------------------------------------------------------------------------------------------
# the numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via_self", [False, True], ids=["self.net(x)", "self(x)"])
def test_every_cell_equals_retain_grad_over_two_epochs(pl, tmp_path, via_self):
    batches = data(4)
    module = tiny_module(pl, via_self=via_self)
    twin = copy.deepcopy(module.net)
    callback = gradlab_callback(every=3, out=tmp_path / "results", name="tiny")
    trainer(pl, tmp_path, [callback]).fit(module, loader(batches), loader(data(2, seed=7)))
    layers, metrics = reference_fit(twin, batches, epochs=2, every=3)
    assert sorted(layers) == [0, 3, 6]  # 8 optimizer steps
    assert_matches(callback.run_dir, layers, metrics)
    # the validation passes (the sanity check, one per epoch) measured nothing
    assert callback.run_dir.parent == tmp_path / "results" / "tiny"
    assert meta(callback.run_dir)["status"] == "completed" and meta(callback.run_dir)["steps_done"] == 8
    assert "training_step" not in vars(module)  # the LightningModule's own training_step again
    # and the fit trained what the hand-written loop trained
    for mine, theirs in zip(module.net.parameters(), twin.parameters()):
        assert torch.allclose(mine, theirs, rtol=1e-6, atol=0)


def test_gradient_accumulation_steps_once_per_optimizer_step(pl, tmp_path):
    """accumulate_grad_batches=2 over 5 batches an epoch: optimizer steps after batches 2, 4 and
    5 (the epoch's last), 6 steps in 2 epochs, and gradients clipped by norm before each update."""
    batches = data(5)
    module = tiny_module(pl)
    twin = copy.deepcopy(module.net)
    callback = gradlab_callback(every=1, out=tmp_path)
    trainer(pl, tmp_path, [callback], accumulate_grad_batches=2, gradient_clip_val=0.05).fit(module, loader(batches))
    layers, metrics = reference_fit(twin, batches, epochs=2, every=1, accumulate=2, clip=0.05)
    assert sorted(layers) == [0, 1, 2, 3, 4, 5]
    assert_matches(callback.run_dir, layers, metrics)
    config = (callback.run_dir / "config.yaml").read_text()
    assert "class: Tiny" in config and "name: sgd" in config  # the LightningModule's and optimizer's names


def test_the_callback_does_not_change_training(pl, tmp_path):
    batches = data(4)
    watched, plain = tiny_module(pl), tiny_module(pl)
    trainer(pl, tmp_path, [gradlab_callback(every=1, out=tmp_path)]).fit(watched, loader(batches))
    trainer(pl, tmp_path, []).fit(plain, loader(batches))
    for a, b in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# expect:, failures, what is refused
# --------------------------------------------------------------------------------------------

HOLDS = {"status": "completed", "gain": {"step": 0, "between": [1e-3, 1e3]}}
FAILS = {"gain": {"step": 0, "between": [1e6, 1e7]}}


def test_an_expectation_that_holds_lets_the_fit_end(pl, tmp_path):
    callback = gradlab_callback(every=2, out=tmp_path, expect=HOLDS)
    trainer(pl, tmp_path, [callback]).fit(tiny_module(pl), loader(data(4)))
    assert [o.name for o in callback.outcomes] == ["status", "gain@0"]
    assert all(o.passed for o in callback.outcomes)


def test_an_expectation_that_fails_fails_the_fit(pl, tmp_path):
    callback = gradlab_callback(every=2, out=tmp_path, expect=FAILS)
    module = tiny_module(pl)
    with pytest.raises(ExpectationFailed) as caught:
        trainer(pl, tmp_path, [callback]).fit(module, loader(data(4)))
    (outcome,) = callback.outcomes
    assert not outcome.passed
    assert caught.value.lines == [f"{callback.run_dir}: gain@0 = {outcome.measured_text()}, expected between [1e+06, 1e+07]"]
    # the same verdict as gradlab check's; the run itself completed
    import gradlab

    assert [o.passed for o in gradlab.check(callback.run_dir)] == [False]
    assert meta(callback.run_dir)["status"] == "completed"
    assert "training_step" not in vars(module)


def test_on_fail_warn_reports_and_the_fit_ends(pl, tmp_path):
    callback = gradlab_callback(every=2, out=tmp_path, expect=FAILS, on_fail="warn")
    with pytest.warns(UserWarning, match=r"gradlab expect: .*gain@0 = .*, expected between \[1e\+06, 1e\+07\]"):
        trainer(pl, tmp_path, [callback]).fit(tiny_module(pl), loader(data(4)))
    assert meta(callback.run_dir)["status"] == "completed"


def test_a_training_step_that_raises_closes_the_run_as_failed(pl, tmp_path):
    callback = gradlab_callback(every=1, out=tmp_path)
    module = tiny_module(pl, fail_at=3)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(pl, tmp_path, [callback]).fit(module, loader(data(4)))
    record = meta(callback.run_dir)
    assert (record["status"], record["error"], record["steps_done"]) == ("failed", "RuntimeError: boom", 3)
    assert sorted(read_layers(callback.run_dir)) == [0, 1, 2]  # every whole step before it
    assert "training_step" not in vars(module)


def test_ctrl_c_closes_the_run_as_interrupted(pl, tmp_path):
    callback = gradlab_callback(every=1, out=tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown exits with 1
            trainer(pl, tmp_path, [callback]).fit(tiny_module(pl, interrupt_at=2), loader(data(4)))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores Ctrl-C from then on
    assert meta(callback.run_dir)["status"] == "interrupted"
    assert sorted(read_layers(callback.run_dir)) == [0, 1]


def test_manual_optimization_is_refused_in_one_line(pl, tmp_path):
    with pytest.raises(ConfigError) as caught:
        trainer(pl, tmp_path, [gradlab_callback(out=tmp_path / "results")]).fit(tiny_module(pl, manual=True), loader(data(2)))
    (line,) = caught.value.lines
    assert line.startswith("GradlabCallback: manual optimization (automatic_optimization = False) is not supported")
    assert not (tmp_path / "results").exists()  # nothing written


def test_bad_arguments(tmp_path, pl):
    with pytest.raises(ConfigError, match=r"GradlabCallback: expect\.gain\.betwen"):
        gradlab_callback(expect={"gain": {"betwen": [1, 2]}})
    with pytest.raises(ConfigError, match="on_fail got 'ignore'; allowed: raise, warn"):
        gradlab_callback(on_fail="ignore")
    # watch's own checks, at the start of the fit, before any step
    module = tiny_module(pl)
    with pytest.raises(ConfigError, match="every got 0"):
        trainer(pl, tmp_path, [gradlab_callback(every=0, out=tmp_path / "results")]).fit(module, loader(data(2)))
    assert module.batches == 0 and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_without_lightning_the_import_says_how_to_install():
    import subprocess
    import sys

    probe = (
        "import sys\nsys.modules['lightning'] = sys.modules['pytorch_lightning'] = None\n"
        "try:\n    import gradlab.integrations.lightning\nexcept ModuleNotFoundError as exc:\n    print(exc.name, '|', exc)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "lightning | gradlab.integrations.lightning needs Lightning (lightning or pytorch_lightning); pip install 'gradlab[lightning]'"
    )
