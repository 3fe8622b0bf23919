"""gradlab.watch on models gradlab did not build, against independent references.

The reference is a twin of the watched model (the same weights, the same batches, the same
optimizer) with no in-place operation, measured by hand: `retain_grad()` on every Linear/conv
output, `.grad` of every parameter, the weights copied around `optimizer.step()`. The watched
model's numbers are read back from layers.csv with the csv module, not with gradlab's reader.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlab
from gradlab.vocab.errors import ConfigError

# the modules whose calls the reference taps by hand (these tests' models use no functional call)
WATCHED_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase)


# --------------------------------------------------------------------------------------------
# models the tests define
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus the skip connection, then relu (He et al. 2016)."""

    def __init__(self, channels: int, inplace: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyResNet(nn.Module):
    """A stem conv whose output a ReLU(inplace=True) overwrites, two residual blocks with
    BatchNorm, global pooling, and a Linear whose output an in-place ReLU overwrites too."""

    def __init__(self, inplace: bool = True, channels: int = 4, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)  # with a bias
        self.stem_act = nn.ReLU(inplace=inplace)
        self.layer1 = nn.Sequential(BasicBlock(channels, inplace), BasicBlock(channels, inplace))
        self.fc = nn.Linear(channels, 8)
        self.fc_act = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        x = self.layer1(self.stem_act(self.stem(x)))
        x = x.mean(dim=(2, 3))
        return self.head(self.fc_act(self.fc(x)))


class SharedNet(nn.Module):
    """One Linear used twice per forward pass, a frozen Linear, and a Linear whose output the loss
    never sees (its parameters get no gradient)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)
        self.frozen = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 2)
        self.head = nn.Linear(8, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.frozen(h))
        h = torch.tanh(self.shared(h))
        self.unused(h)  # computed, never part of the loss
        return self.head(h)


def batches(n: int, shape: tuple[int, ...], classes: int = 3, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, *shape, generator=generator), torch.randint(0, classes, (16,), generator=generator)) for _ in range(n)]


def without_inplace(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return twin


# --------------------------------------------------------------------------------------------
# the reference: retain_grad and parameter gradients, by hand
# --------------------------------------------------------------------------------------------


def reference_step(model: nn.Module, optimizer, x, y) -> tuple[dict[str, dict[str, float]], float]:
    """One training step of `model`, measured by hand: {site name: {quantity: value}}, and the loss."""
    outputs: list[tuple[str, torch.Tensor]] = []
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, WATCHED_TYPES):

            def keep(module, args, output, name=name):
                k = calls.get(name, 0)
                calls[name] = k + 1
                if output.requires_grad:
                    output.retain_grad()
                outputs.append((name if k == 0 else f"{name}#{k}", output))

            handles.append(module.register_forward_hook(keep))
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for handle in handles:
        handle.remove()
    modules = dict(model.named_modules())
    before = {name: modules[name.split("#")[0]].weight.detach().clone() for name, _ in outputs}
    optimizer.step()
    measured = {}
    for name, output in outputs:
        module = modules[name.split("#")[0]]
        w, b = module.weight, module.bias
        g = output.grad
        measured[name] = {
            "delta_norm": g.norm().item() if g is not None else None,
            "delta_rms": delta_rms(g, conv=isinstance(module, nn.modules.conv._ConvNd)) if g is not None else None,
            "weight_norm": before[name].norm().item(),
            "weight_grad_norm": w.grad.norm().item() if w.grad is not None else None,
            "bias_grad_norm": b.grad.norm().item() if b is not None and b.grad is not None else None,
            "update_ratio": (module.weight.detach() - before[name]).norm().item() / before[name].norm().item() if w.requires_grad else None,
        }
    return measured, loss.item()


def delta_rms(grad: torch.Tensor, conv: bool) -> float:
    """From its definition (quantities.py): sqrt((1/B) sum_b sum_c g_bc^2), g_bc the sum over the
    positions of channel c of |dl_b/dz|, l_b = B * L's share of example b, so dl_b/dz = B dL/dz."""
    B = grad.shape[0]
    per_example = B * grad.abs()
    g = per_example.flatten(2).sum(2) if conv and grad.dim() > 2 else per_example
    return math.sqrt(sum((g[b] ** 2).sum().item() for b in range(B)) / B)


def read_layers(run_dir: Path) -> dict[int, dict[str, dict[str, float | None]]]:
    """{step: {name: {column: value or None}}} from layers.csv, as text."""
    out: dict[int, dict[str, dict[str, float | None]]] = {}
    with open(run_dir / "layers.csv", newline="") as file:
        for row in csv.DictReader(file):
            values = {k: (None if v == "" else float(v)) for k, v in row.items() if k not in ("step", "name", "kind", "layer")}
            values["kind"], values["layer"] = row["kind"], int(row["layer"])
            out.setdefault(int(row["step"]), {})[row["name"]] = values
    return out


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)


def train_both(make, shape, steps, every, tmp_path, name, lr=0.1, device="cpu"):
    """Train the model from `make()` under watch and its in-place-free twin by hand, step for step;
    returns the run directory and the twin's measurements of the measured steps."""
    torch.manual_seed(0)
    model = make().to(device)
    twin = without_inplace(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    twin_opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    expected = {}
    with gradlab.watch(model, out=tmp_path, every=every, name=name, optimizer=opt) as w:
        for step, (x, y) in enumerate(batches(steps, shape)):
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            w.step(loss=loss, accuracy=(logits.argmax(1) == y).float().mean())
            measured, _ = reference_step(twin, twin_opt, x, y)
            if step % every == 0:
                expected[step] = measured
    return w.run_dir, expected


def assert_matches(recorded, expected):
    assert sorted(recorded) == sorted(expected)
    for step, sites in expected.items():
        assert list(recorded[step]) == list(sites), step  # the same sites, in forward order
        for name, values in sites.items():
            for quantity, value in values.items():
                assert close(recorded[step][name][quantity], value), (step, name, quantity, recorded[step][name][quantity], value)


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------


RESNET_SITES = ["stem", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "fc", "head"]


@pytest.fixture(params=["cpu", "cuda"])
def device(request, monkeypatch):
    """The CPU, and a CUDA GPU where there is one (convolutions made deterministic, so that the
    watched model and its twin compute the same numbers)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    return request.param


def test_resnet_with_inplace_relus_against_retain_grad(tmp_path, device):
    run_dir, expected = train_both(TinyResNet, (3, 6, 6), steps=5, every=2, tmp_path=tmp_path, name="resnet", device=device)
    recorded = read_layers(run_dir)
    assert sorted(recorded) == [0, 2, 4]
    assert list(recorded[0]) == RESNET_SITES
    assert [recorded[0][n]["layer"] for n in RESNET_SITES] == list(range(7))
    assert [recorded[0][n]["kind"] for n in RESNET_SITES] == ["hidden"] * 6 + ["head"]
    assert_matches(recorded, expected)
    # the convolutions without a bias have an empty bias cell; the stem's bias has its gradient
    assert recorded[0]["layer1.0.conv1"]["bias_grad_norm"] is None
    assert recorded[0]["stem"]["bias_grad_norm"] > 0
    # what an arbitrary model has no declared place for stays empty, never zero
    assert all(recorded[0][n][q] is None for n in RESNET_SITES for q in ("act_mean", "act_std", "saturated_frac", "dead_frac"))


def test_inplace_relu_after_a_linear_is_what_retain_grad_sees_without_it():
    """The case in isolation: the hook registered on z before relu_ overwrites z gets dL/dz."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3))
    twin = without_inplace(model)
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    expected, _ = reference_step(twin, torch.optim.SGD(twin.parameters(), lr=0.0), x, y)
    from gradlab.measure.watch import Watch
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        with Watch(model, out=out, every=1, name="seq") as w:
            F.cross_entropy(model(x), y).backward()
            w.step()
        recorded = read_layers(w.run_dir)[0]
    assert list(recorded) == ["0", "2"]
    for name in ("0", "2"):
        assert close(recorded[name]["delta_norm"], expected[name]["delta_norm"])
    # and it is not the gradient after the relu (which differs where z < 0)
    assert expected["0"]["delta_norm"] > 0


def test_shared_frozen_and_unused_layers(tmp_path, device):
    run_dir, expected = train_both(SharedNet, (6,), steps=3, every=1, tmp_path=tmp_path, name="shared", device=device)
    recorded = read_layers(run_dir)
    assert list(recorded[0]) == ["inp", "shared", "frozen", "shared#1", "unused", "head"]
    assert_matches(recorded, expected)
    row = recorded[0]
    # a module used twice: two rows, each with its own delta; its weight columns are the parameter's
    assert row["shared"]["delta_norm"] != row["shared#1"]["delta_norm"]
    assert row["shared"]["weight_grad_norm"] == row["shared#1"]["weight_grad_norm"]
    # frozen: its weight is measured, its gradient and update do not exist; its delta does
    assert row["frozen"]["weight_norm"] > 0 and row["frozen"]["delta_norm"] > 0
    assert row["frozen"]["weight_grad_norm"] is None and row["frozen"]["bias_grad_norm"] is None and row["frozen"]["update_ratio"] is None
    # computed but never in the loss: no gradient reaches it
    assert row["unused"]["delta_norm"] is None and row["unused"]["weight_grad_norm"] is None and row["unused"]["weight_norm"] > 0
    assert row["unused"]["update_ratio"] == 0.0  # measured: SGD leaves a parameter without gradient where it is


def test_no_grad_evaluation_is_not_measured_and_unmeasured_steps_have_no_hooks(tmp_path):
    def loop(evaluate: bool, out: Path) -> Path:
        torch.manual_seed(0)
        model = SharedNet()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        data = batches(5, (6,))
        with gradlab.watch(model, out=out, every=2, name="eval", optimizer=opt) as w:
            for step, (x, y) in enumerate(data):
                if evaluate:  # before the training forward of a measured step, too
                    with torch.no_grad():
                        w.test(loss=F.cross_entropy(model(x), y), accuracy=0.5)
                assert w.measuring == (step % 2 == 0)
                hooked = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
                assert bool(hooked) == (step % 2 == 0)  # a step that is not measured runs bare
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                w.step(loss=1.0)
        return w.run_dir

    plain, with_eval = loop(False, tmp_path / "a"), loop(True, tmp_path / "b")
    assert read_layers(plain) == read_layers(with_eval)
    metrics = read_metrics(with_eval)
    assert [(m["step"], m["split"]) for m in metrics if m["split"] == "test"] == [(str(s), "test") for s in range(5)]
    assert [m["step"] for m in metrics if m["split"] == "train"] == ["0", "2", "4"]


def test_metrics_rows(tmp_path):
    torch.manual_seed(0)
    model = SharedNet()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, y = batches(1, (6,))[0]
    with gradlab.watch(model, out=tmp_path, every=1, name="m", optimizer=opt) as w:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])).item()
        opt.step()
        w.step(loss=loss, accuracy=0.25)
    (row,) = read_metrics(w.run_dir)
    assert row["split"] == "train" and row["step"] == "0"
    assert float(row["loss"]) == loss.item()
    assert float(row["accuracy"]) == 0.25
    assert math.isclose(float(row["grad_norm"]), grad_norm, rel_tol=1e-6)
    assert float(row["lr"]) == 0.05


@pytest.mark.slow
def test_records_are_read_by_compare_plot_and_check(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expect = {"status": ["completed"], "gain": {"step": 0, "between": [1e-6, 1e6]}}
    with gradlab.watch(model, out=tmp_path, every=1, name="resnet", optimizer=opt, expect=expect) as w:
        for x, y in batches(3, (3, 6, 6)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            w.step()
    run = gradlab.load(w.run_dir)
    assert run.status == "completed" and run.meta["steps_done"] == 3
    assert run.config["model"]["kind"] == "watch" and run.config["model"]["class"] == "TinyResNet"
    assert list(run.layers["name"][run.layers["step"] == 0]) == RESNET_SITES
    comparison = gradlab.comparison([w.run_dir])
    recorded = read_layers(w.run_dir)[0]
    # gain = first over last hidden delta_rms (the stem over fc), by hand from the CSV
    assert math.isclose(comparison.table["gain@0"][0], recorded["stem"]["delta_rms"] / recorded["fc"]["delta_rms"], rel_tol=1e-12)
    outcomes = gradlab.check(w.run_dir)
    assert [o.passed for o in outcomes] == [True, True]
    assert [p.name for p in gradlab.plot([w.run_dir], tmp_path / "figures")] == [
        "depth_profile_delta_norm.png", "depth_profile_weight_grad_norm.png", "heatmap_delta_norm.png", "training_curves.png", "saturation.png",
    ]

    from typer.testing import CliRunner

    from gradlab.cli.app import app

    result = CliRunner().invoke(app, ["check", str(w.run_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "2 expectations on 1 run: 2 passed, 0 failed"
    result = CliRunner().invoke(app, ["compare", str(w.run_dir), "--format", "csv", "--step", "0"])
    assert result.exit_code == 0, result.output
    import csv

    [row] = list(csv.DictReader(result.stdout.splitlines()))  # (a verdict says its rate: 'stable (×1.02/layer, ...)', quoted)
    assert row["verdict@0"].split(" ")[0] in ("vanishing", "stable", "exploding")
    result = CliRunner().invoke(app, ["plot", str(w.run_dir), "-o", str(tmp_path / "cli-figures")])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 5
    report = gradlab.write_report([w.run_dir], tmp_path / "report.html")
    assert (report.runs, report.rows, len(report.figures)) == (1, 1, 5)
    pytest.importorskip("tensorboard")
    (exported,) = gradlab.export_tensorboard([w.run_dir], tmp_path / "tb").runs
    assert exported.steps == 3 and exported.scalars > 0


def test_one_host_transfer_per_measured_step_and_no_item(tmp_path, monkeypatch, device):
    """Every value of a measured step (the loss and accuracy tensors too) reaches the host in one
    .cpu() call at w.step(); on an accelerator nothing calls .item() (a read there waits for the
    device). On the CPU, where a read costs nothing, the exact norms read a float32 norm to decide
    whether float64 must compute it again (gradlab.measure.norms). Steps that are not measured
    transfer nothing."""
    torch.manual_seed(0)
    model = TinyResNet().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = batches(5, (3, 6, 6))
    transfers = []
    cpu = torch.Tensor.cpu

    def counted_cpu(self, *args, **kwargs):
        transfers.append(self.numel())
        return cpu(self, *args, **kwargs)

    def no_item(self):
        raise AssertionError(".item() called while watching")

    with gradlab.watch(model, out=tmp_path, every=2, name="transfers", optimizer=opt) as w:
        per_step = []
        for x, y in data:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            accuracy = (logits.argmax(1) == y).float().mean()
            with monkeypatch.context() as patch:
                patch.setattr(torch.Tensor, "cpu", counted_cpu)
                if device != "cpu":
                    patch.setattr(torch.Tensor, "item", no_item)
                before = len(transfers)
                w.step(loss=loss, accuracy=accuracy)
                per_step.append(len(transfers) - before)
    assert per_step == [1, 0, 1, 0, 1]
    # 7 sites: weight_norm 7, weight_grad_norm 7, bias_grad_norm 3 (stem, fc, head), delta_norm and delta_rms 7 each,
    # update_ratio 7 (steps 0, 2 and 4 are followed by an update), + grad_norm, loss, accuracy
    assert transfers == [7 + 7 + 3 + 7 + 7 + 7 + 3] * 3


def test_a_failing_loop_closes_the_records_as_failed(tmp_path):
    model = SharedNet()
    with pytest.raises(ZeroDivisionError):
        with gradlab.watch(model, out=tmp_path, every=1, name="boom") as w:
            F.cross_entropy(model(torch.randn(4, 6)), torch.zeros(4, dtype=torch.long)).backward()
            w.step()
            1 / 0
    meta = gradlab.load(w.run_dir).meta
    assert meta["status"] == "failed" and meta["error"] == "ZeroDivisionError: division by zero" and meta["steps_done"] == 1
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        gradlab.watch(SharedNet(), out=tmp_path, every=0)
    assert caught.value.lines == ["watch: every got 0; a whole number of steps, 1 or more"]
    with pytest.raises(ConfigError) as caught:
        gradlab.watch(SharedNet(), out=tmp_path, groups=["deltas", "activations"])
    assert caught.value.lines == [
        "watch: groups got 'activations'; allowed: weights, deltas, updates, noise, spectrum (and activations with time=True: the recurrent layers' states and gates)"
    ]
    with pytest.raises(ConfigError) as caught:
        gradlab.watch(nn.Sequential(nn.Tanh()), out=tmp_path)
    assert caught.value.lines == ["watch: Sequential has no parameters to measure"]
    with pytest.raises(ConfigError) as caught:
        gradlab.watch(SharedNet(), out=tmp_path, name="a/b")
    assert caught.value.lines == ["watch: name 'a/b' cannot name a folder; use letters, digits, '-', '_' or '.'"]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_recurrent_layers_get_their_weight_rows(tmp_path):
    torch.manual_seed(0)

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    model = Tagger()
    x, y = torch.randn(5, 7, 4), torch.randint(0, 3, (5,))
    with gradlab.watch(model, out=tmp_path, every=1, name="lstm") as w:
        F.cross_entropy(model(x), y).backward()
        w.step()
    row = read_layers(w.run_dir)[0]["lstm"]
    weights = [model.lstm.weight_ih_l0, model.lstm.weight_hh_l0]
    assert close(row["weight_norm"], torch.cat([p.detach().flatten() for p in weights]).norm().item())
    assert close(row["weight_grad_norm"], torch.cat([p.grad.flatten() for p in weights]).norm().item())
    assert close(row["bias_grad_norm"], torch.cat([model.lstm.bias_ih_l0.grad, model.lstm.bias_hh_l0.grad]).norm().item())
    assert row["delta_norm"] is None  # torch's fused LSTM never forms the pre-activations


def test_half_precision_norms_do_not_overflow(tmp_path):
    """A float16 model whose gradients' entries fit float16 but whose norms do not (a loss scaled
    by 2^22, as a GradScaler may): the norms are taken in float32, checked against float32 math."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)).half()
    x, y = torch.randn(256, 64).half(), torch.randint(0, 4, (256,))
    outputs = []
    model[0].register_forward_hook(lambda module, args, output: output.retain_grad() or outputs.append(output))
    with gradlab.watch(model, out=tmp_path, every=1, name="half") as w:
        loss = F.cross_entropy(model(x).float(), y) * 2.0**22
        loss.backward()
        w.step()
    row = read_layers(w.run_dir)[0]["0"]
    delta = outputs[0].grad.float().norm().item()
    assert delta > 65504 and torch.isfinite(outputs[0].grad).all()  # the case: fine entries, a norm beyond float16
    assert math.isclose(row["delta_norm"], delta, rel_tol=1e-5)
    assert math.isclose(row["weight_grad_norm"], model[0].weight.grad.float().norm().item(), rel_tol=1e-5)


def test_delta_rms_of_a_linear_over_a_sequence(tmp_path):
    """A Linear applied to (B, T, F): its middle dimension is positions, its last the channels."""
    torch.manual_seed(0)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.proj(x)).mean(dim=1))

    model = Pooled()
    x, y = torch.randn(5, 7, 4), torch.randint(0, 3, (5,))
    outputs = []
    model.proj.register_forward_hook(lambda module, args, output: output.retain_grad() or outputs.append(output))
    with gradlab.watch(model, out=tmp_path, every=1, name="seq") as w:
        F.cross_entropy(model(x), y).backward()
        w.step()
    row = read_layers(w.run_dir)[0]["proj"]
    grad = outputs[0].grad  # (B, T, C)
    B = grad.shape[0]
    by_hand = math.sqrt(sum(((B * grad[b].abs()).sum(0) ** 2).sum().item() for b in range(B)) / B)
    assert math.isclose(row["delta_rms"], by_hand, rel_tol=1e-5)
    assert math.isclose(row["delta_norm"], grad.norm().item(), rel_tol=1e-5)


@pytest.mark.parametrize("make,shape", [(TinyResNet, (3, 6, 6)), (SharedNet, (6,))], ids=["resnet", "shared"])
def test_training_is_bit_for_bit_the_unwatched_one(tmp_path, make, shape):
    """Watched every 2 steps or not at all: the same parameters (BatchNorm's running statistics too)."""
    torch.manual_seed(0)
    model = make()
    twin = copy.deepcopy(model)
    for net, watched in ((model, True), (twin, False)):
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        w = gradlab.watch(net, out=tmp_path, every=2, optimizer=opt) if watched else None
        for x, y in batches(5, shape):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
            if w is not None:
                w.step()
        if w is not None:
            w.close()
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), name
