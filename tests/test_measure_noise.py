"""The noise group (pe_grad_norm, grad_noise_scale, gsnr; gradlab/measure/noise.py) against per-example
gradients from torch.func.vmap(grad(...)) and side by side with BackPACK, on an MLP, a CNN and a
sequence layer; a gradlab run end to end, watch, and the BatchNorm refusal."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from typer.testing import CliRunner

from gradlab.build.models import build_model
from gradlab.config.experiment import validate
from gradlab.measure import noise
from gradlab.measure.probe import Probe
from gradlab.vocab.quantities import LAYERS_COLUMNS, NOISE, layers_columns
from probing import probed_rows

LOSS = nn.functional.cross_entropy


def values(measured: dict[str, torch.Tensor]) -> dict[str, float]:
    return {quantity: value.item() for quantity, value in measured.items()}


def reference(per_example: torch.Tensor) -> dict[str, float]:
    """The three quantities from the per-example gradients themselves, in float64, by their definitions."""
    g = per_example.double().flatten(1)  # (B, coordinates)
    batch = g.shape[0]
    g_bar = g.mean(dim=0)
    square_norms = (g * g).sum(dim=1)
    trace = (square_norms.sum() - batch * (g_bar * g_bar).sum()) / (batch - 1)
    variance = (g * g).mean(dim=0) - g_bar * g_bar
    kept = variance > 1e-12 * (g * g).mean(dim=0)
    return {
        "pe_grad_norm": square_norms.sqrt().mean().item(),
        "grad_noise_scale": (trace / (g_bar * g_bar).sum()).item(),
        "gsnr": (g_bar[kept] ** 2 / variance[kept]).mean().item(),
    }


def per_example_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """dl_n/dtheta for every example: the loss of example n alone (the batch mean's B times its share)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xn, yn):
        return LOSS(functional_call(model, p, (xn.unsqueeze(0),)), yn.unsqueeze(0))

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def make_model(kind="mlp", seed=0, **model):
    data = {"name": "images"} if kind == "cnn" else {}
    cfg = validate({"model": {"kind": kind, "depth": 3, "width": 8, "activation": "tanh", **model}, "data": data})
    torch.manual_seed(seed)
    shape = (1, 8, 8) if kind == "cnn" else (6,)
    return build_model(cfg.model, shape, 3), shape


def probe_rows(model, x, y, groups=("noise",), probe=None):
    probe = probe or Probe(model, groups)
    return probed_rows(probe, model, x, y)


def batch(shape, n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("kind,model", [
    ("mlp", {}), ("mlp", {"norm": "layernorm"}), ("mlp", {"residual": True, "dropout": 0.0}),
    ("cnn", {}), ("cnn", {"norm": {"name": "groupnorm", "groups": 4}, "pool_every": 1}),
], ids=str)  # fmt: skip
def test_the_probe_matches_vmap_per_example_gradients(kind, model):
    model, shape = make_model(kind, **model)
    x, y = batch(shape)
    rows = probe_rows(model, x, y)
    per_example = per_example_grads(model, x, y)
    names = [f"blocks.{k}.linear.weight" for k in range(3)] + ["head.weight"]
    for row, name in zip(rows, names):
        expected = reference(per_example[name])
        for quantity, value in expected.items():
            assert row[quantity] == pytest.approx(value, rel=1e-4), (row["name"], quantity)


def test_a_probe_measures_step_after_step_with_its_kept_buffers(monkeypatch):
    model, shape = make_model("mlp", depth=4)
    probe = Probe(model, ("noise",))
    monkeypatch.setattr(noise, "STACK_ENTRIES", 2 * 8 * 8)  # the hidden layers two at a time: chunks of a group, and a last one alone
    for seed in (1, 2):  # the second step overwrites the first one's buffers
        x, y = batch(shape, seed=seed)
        rows = probe_rows(model, x, y, probe=probe)
        per_example = per_example_grads(model, x, y)
        for row in rows[:-1]:
            expected = reference(per_example[f"{row['name']}.linear.weight"])
            assert [row[q] for q in expected] == pytest.approx(list(expected.values()), rel=1e-4)


def test_a_linear_on_a_sequence_and_a_strided_grouped_convolution_match_vmap():
    torch.manual_seed(3)
    x, y = torch.randn(10, 5, 7), torch.randint(0, 4, (10,))
    layer = nn.Linear(7, 4)

    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, v):
            return torch.tanh(self.layer(v)).mean(dim=1)

    model = Pooled()
    z = layer(x)
    z.retain_grad()
    LOSS(torch.tanh(z).mean(dim=1), y).backward()
    measured = values(noise.noise(noise.linear_sums(x, z.grad)))
    assert measured == pytest.approx(reference(per_example_grads(model, x, y)["layer.weight"]), rel=1e-6)

    conv = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)
    xs = torch.randn(10, 4, 9)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, v):
            return self.conv(v).mean(dim=2)[:, :4]

    net = Net()
    z = conv(xs)
    z.retain_grad()
    LOSS(z.mean(dim=2)[:, :4], y).backward()
    sums = noise.call_sums(lambda v, w, b: conv._conv_forward(v, w, b), xs, conv.weight, z.grad, (), {})
    measured = values(noise.noise(sums))
    assert measured == pytest.approx(reference(per_example_grads(net, xs, y)["conv.weight"]), rel=1e-6)


def test_the_unfolded_convolution_in_chunks_is_the_whole_batch_at_once(monkeypatch):
    conv = nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(9, 2, 5, 5)
    z = conv(x)
    delta = torch.randn_like(z)
    whole = list(values(noise.noise(noise.conv2d_sums(x, delta, conv))).values())
    monkeypatch.setattr(noise, "CHUNK_ENTRIES", 2 * conv.weight.numel())  # two examples a chunk
    chunked = list(values(noise.noise(noise.conv2d_sums(x, delta, conv))).values())
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_a_coordinate_without_variance_is_left_out_and_identical_examples_have_no_noise():
    torch.manual_seed(4)
    a = torch.randn(8, 5)
    a[:, 2] = 0.0  # an input that is always 0 (a dead unit below): its column's gradients are all 0
    delta = torch.randn(8, 3)
    g = torch.einsum("bo,bi->boi", delta, a) * 8  # g_n = B a_n delta_n^T
    measured = values(noise.noise(noise.linear_sums(a, delta), delta.T @ a))
    assert measured["gsnr"] == pytest.approx(reference(g)["gsnr"], rel=1e-5)  # 12 coordinates, not 15
    same_a, same_delta = a[:1].repeat(8, 1), delta[:1].repeat(8, 1)
    measured = values(noise.noise(noise.linear_sums(same_a, same_delta), same_delta.T @ same_a))
    assert measured["grad_noise_scale"] == 0.0
    assert math.isnan(measured["gsnr"])  # every coordinate's variance is 0: an empty cell, never a huge number
    assert measured["pe_grad_norm"] == pytest.approx(8 * same_a[0].norm().item() * same_delta[0].norm().item(), rel=1e-6)


def test_a_vanishing_gradient_is_measured_not_rounded_to_zero():
    torch.manual_seed(5)
    a, delta = torch.randn(16, 6), torch.randn(16, 4)
    plain = values(noise.noise(noise.linear_sums(a, delta), delta.T @ a))
    tiny = delta * 2.0**-110  # squares of 1e-33 underflow float32 to 0
    small = values(noise.noise(noise.linear_sums(a, tiny), tiny.T @ a))
    assert small["pe_grad_norm"] == pytest.approx(plain["pe_grad_norm"] * 2.0**-110, rel=1e-6)
    assert small["grad_noise_scale"] == pytest.approx(plain["grad_noise_scale"], rel=1e-6)
    assert small["gsnr"] == pytest.approx(plain["gsnr"], rel=1e-6)
    # a sequence (per-example gradients formed), with tiny inputs too: their products would underflow
    seq_a, seq_delta = torch.randn(16, 3, 6), torch.randn(16, 3, 4)
    plain = values(noise.noise(noise.linear_sums(seq_a, seq_delta)))
    small = values(noise.noise(noise.linear_sums(seq_a * 2.0**-70, seq_delta * 2.0**-70)))
    assert small["pe_grad_norm"] == pytest.approx(plain["pe_grad_norm"] * 2.0**-140, rel=1e-6)
    assert small["grad_noise_scale"] == pytest.approx(plain["grad_noise_scale"], rel=1e-9)
    assert small["gsnr"] == pytest.approx(plain["gsnr"], rel=1e-9)


def test_side_by_side_with_backpack():
    backpack = pytest.importorskip("backpack", reason="backpack-for-pytorch is not installed (pip install gradlab[anchors] or backpack-for-pytorch --no-deps)")
    from backpack.extensions import BatchL2Grad, SumGradSquared, Variance

    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    B = x.shape[0]
    extended = backpack.extend(copy.deepcopy(model))  # the same weights; its modules carry BackPACK's hooks, model's do not
    loss_fn = backpack.extend(nn.CrossEntropyLoss())
    with backpack.backpack(BatchL2Grad(), SumGradSquared(), Variance()):
        loss_fn(extended(x), y).backward()
    # BackPACK's per-example quantities are of the batch-mean loss: g_n / B
    inputs = {0: x, 2: torch.tanh(model[0](x))}
    for index in (0, 2):
        layer = model[index]
        z = layer(inputs[index].detach())
        z.retain_grad()
        out = model[2](torch.tanh(z)) if index == 0 else z
        model.zero_grad()
        LOSS(out, y).backward()
        ours = values(noise.noise(noise.linear_sums(inputs[index], z.grad), z.grad.T @ inputs[index].detach()))
        w = extended[index].weight
        l2 = w.batch_l2.double() * B**2  # ||g_n||^2
        g_bar = w.grad.double()
        trace = (l2.sum() - B * (g_bar**2).sum()) / (B - 1)
        assert ours["pe_grad_norm"] == pytest.approx(l2.sqrt().mean().item(), rel=1e-5)
        assert ours["grad_noise_scale"] == pytest.approx((trace / (g_bar**2).sum()).item(), rel=1e-4)
        variance = w.variance.double() * B**2  # Var_j of the g_nj
        assert torch.allclose(w.sum_grad_squared.double() * B**2 / B - g_bar**2, variance, rtol=1e-4, atol=1e-9)
        assert ours["gsnr"] == pytest.approx((g_bar**2 / variance).mean().item(), rel=1e-3)


def test_watch_measures_the_noise_of_a_linear_and_a_convolution(tmp_path):
    from gradlab.measure.watch import watch
    from gradlab.records.run import load_run

    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    x, y = torch.randn(10, 1, 5, 5), torch.randint(0, 3, (10,))
    with watch(model, out=tmp_path, every=1, name="noisy", groups=["weights", "noise"]) as w:
        model.zero_grad()
        loss = LOSS(model(x), y)
        loss.backward()
        w.step(loss=loss)
    run = load_run(w.run_dir)
    layers = run.layers.astype({"name": str}).set_index("name")
    per_example = per_example_grads(model, x, y)
    for name, param in (("0", "0.weight"), ("3", "3.weight")):
        expected = reference(per_example[param])
        for quantity, value in expected.items():
            assert layers.loc[name, quantity] == pytest.approx(value, rel=1e-4), (name, quantity)


def test_watch_measures_grouped_transposed_and_sequence_uses_through_the_general_fallback(tmp_path):
    from gradlab.measure.watch import watch
    from gradlab.records.run import load_run

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2)
            self.up = nn.ConvTranspose1d(6, 4, 2, stride=2)
            self.mix = nn.Linear(4, 5)  # on (B, T, 4): a weight used at every position
            self.head = nn.Linear(5, 3)

        def forward(self, v):
            h = torch.tanh(self.up(torch.tanh(self.conv(v))))  # (B, 4, T)
            return self.head(torch.tanh(self.mix(h.transpose(1, 2))).mean(dim=1))

    torch.manual_seed(8)
    model = Net()
    x, y = torch.randn(9, 4, 8), torch.randint(0, 3, (9,))
    with watch(model, out=tmp_path, every=1, groups=["noise"]) as w:
        loss = LOSS(model(x), y)
        loss.backward()
        w.step(loss=loss)
    layers = load_run(w.run_dir).layers.astype({"name": str}).set_index("name")
    per_example = per_example_grads(model, x, y)
    for name in ("conv", "up", "mix", "head"):
        expected = reference(per_example[f"{name}.weight"])
        assert [layers.loc[name, q] for q in expected] == pytest.approx(list(expected.values()), rel=1e-4), name


def test_watch_with_a_grad_scaler_reports_the_unscaled_losss_noise(tmp_path):
    from gradlab.measure.watch import watch
    from gradlab.records.run import load_run

    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(12, 5), torch.randint(0, 3, (12,))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    with watch(model, out=tmp_path, every=1, probes=["noise"], scaler=scaler) as w:
        loss = LOSS(model(x), y)
        scaler.scale(loss).backward()  # every gradient 1024 times the loss's
        w.step(loss=loss)
    layers = load_run(w.run_dir).layers.astype({"name": str}).set_index("name")
    per_example = per_example_grads(model, x, y)
    for name in ("0", "2"):
        expected = reference(per_example[f"{name}.weight"])
        assert [layers.loc[name, q] for q in expected] == pytest.approx(list(expected.values()), rel=1e-4), name


def test_watch_leaves_the_noise_of_a_batchnorm_model_empty_and_says_why(tmp_path):
    from gradlab.measure.watch import NOISE_BATCHNORM, watch
    from gradlab.records.run import load_run

    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with watch(model, out=tmp_path, every=1, groups=["weights", "noise"]) as w:
        loss = LOSS(model(x), y)
        loss.backward()
        w.step(loss=loss)
    run = load_run(w.run_dir)
    assert run.layers[list(NOISE)].isna().all().all()
    assert run.config["log"]["noise"] == NOISE_BATCHNORM


def test_a_run_records_the_noise_columns_only_when_asked(tmp_path):
    from gradlab.orchestrate.api import run as run_config

    base = {"name": "noise", "data": {"dim": 6, "classes": 3, "n_train": 64, "n_test": 16, "batch_size": 16},
            "model": {"depth": 2, "width": 8, "activation": "relu"}, "train": {"steps": 2, "eval_every": 2},
            "log": {"every": 1, "out": str(tmp_path)}}  # fmt: skip
    plain = run_config(base)
    assert list(plain.layers.columns) == LAYERS_COLUMNS
    noisy = run_config({**base, "log": {**base["log"], "probes": ["weights", "noise"]}})
    assert list(noisy.layers.columns) == layers_columns(noise=True) == [*LAYERS_COLUMNS, *NOISE]
    assert noisy.layers["pe_grad_norm"].notna().all() and noisy.layers["gsnr"].notna().all()
    assert (noisy.layers["grad_noise_scale"] > 0).all()


def test_a_batch_of_one_example_has_empty_noise_cells_and_the_run_goes_on(tmp_path):
    from gradlab.orchestrate.api import run as run_config

    run = run_config({"name": "one", "data": {"dim": 6, "classes": 3, "n_train": 8, "n_test": 4, "batch_size": 1},
                      "model": {"depth": 2, "width": 8}, "train": {"steps": 2, "eval_every": 2},
                      "log": {"every": 1, "probes": ["weights", "noise"], "out": str(tmp_path)}})  # fmt: skip
    assert run.meta["status"] == "completed" and run.last_step == 2
    # one example: no covariance (B - 1 = 0) and no variance of any coordinate; its own gradient's norm is ||dL/dW||
    assert run.layers["grad_noise_scale"].isna().all() and run.layers["gsnr"].isna().all()
    assert run.layers["pe_grad_norm"].to_numpy() == pytest.approx(run.layers["weight_grad_norm"].to_numpy(), rel=1e-5)


@pytest.mark.slow
def test_the_noise_figure_draws_each_layer_at_the_step_asked(tmp_path):
    from gradlab.cli.app import app
    from gradlab.orchestrate.api import run as run_config
    from gradlab.show import plots

    run = run_config({"name": "fig", "data": {"dim": 6, "classes": 3, "n_train": 64, "n_test": 16, "batch_size": 16},
                      "model": {"depth": 3, "width": 8}, "train": {"steps": 2, "eval_every": 2},
                      "log": {"every": 1, "probes": ["noise"], "out": str(tmp_path / "runs")}})  # fmt: skip
    figure = plots.noise([run], 1)
    at_1 = run.layers[run.layers["step"] == 1].sort_values("layer")
    for axes, column in zip(figure.axes, ("grad_noise_scale", "gsnr")):
        (line,) = [line for line in axes.get_lines() if len(line.get_xdata()) > 2]
        assert list(line.get_xdata()) == list(at_1["layer"]) and list(line.get_ydata()) == pytest.approx(list(at_1[column]))
    assert plots.has_noise([run])  # what makes build_figures draw it (a run without the group has no gsnr column)
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "runs"), "-o", str(tmp_path / "figures"), "--step", "0"])
    assert result.exit_code == 0 and (tmp_path / "figures" / "noise.png").is_file()


def test_a_recurrent_run_keeps_the_noise_columns_empty(tmp_path):
    from gradlab.orchestrate.api import run as run_config

    run = run_config({"name": "rnn", "data": {"name": "adding", "seq_len": 5, "n_train": 32, "n_test": 8, "batch_size": 8},
                      "model": {"kind": "rnn", "depth": 1, "width": 8, "readout": "last"}, "loss": "mse",
                      "train": {"steps": 1, "eval_every": 1}, "log": {"every": 1, "probes": ["weights", "noise"], "out": str(tmp_path)}})  # fmt: skip
    assert run.meta["status"] == "completed"
    assert list(run.layers.columns[-3:]) == list(NOISE) and run.layers[list(NOISE)].isna().all().all()


def test_the_noise_group_with_batchnorm_is_refused_at_validate(tmp_path):
    from gradlab.cli.app import app

    config = tmp_path / "bn.yaml"
    config.write_text("model: {norm: batchnorm}\nlog: {probes: [weights, noise]}\n")
    result = CliRunner().invoke(app, ["validate", str(config)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "log.probes" in lines[0] and "batchnorm" in lines[0] and "Traceback" not in result.output


@pytest.mark.parametrize("config,says", [
    ("expect: {first_gsnr: {min: 0.001}}\n", "add noise to log.probes"),
    ("data: {name: adding}\nmodel: {kind: rnn, readout: last}\nloss: mse\nlog: {probes: [weights, noise]}\n"
     "expect: {last_grad_noise_scale: {max: 100}}\n", "model.kind rnn leaves the noise columns empty"),
])  # fmt: skip
def test_a_bound_on_a_noise_summary_needs_the_group_at_validate(tmp_path, config, says):
    from gradlab.cli.app import app

    path = tmp_path / "c.yaml"
    path.write_text(config)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
