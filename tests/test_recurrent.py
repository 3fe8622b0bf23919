"""Recurrent stacks (gradlab/build/recurrent.py) against PyTorch's fused modules and hand computations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gradlab.build.recurrent import GATES, RECURRENT_KINDS

TORCH_MODULES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def model_cfg(kind="lstm", depth=2, width=6, activation="tanh", readout="last", bias=True, forget_bias=None,
              weight="default", recurrent="default", bias_init="default"):  # fmt: skip
    init = SimpleNamespace(weight={"name": weight} if isinstance(weight, str) else weight,
                           recurrent={"name": recurrent} if isinstance(recurrent, str) else recurrent,
                           bias={"name": bias_init} if isinstance(bias_init, str) else bias_init)  # fmt: skip
    return SimpleNamespace(kind=kind, depth=depth, width=width, activation={"name": activation}, readout=readout,
                           bias=bias, forget_bias=forget_bias, init=init)  # fmt: skip


def build(cfg, steps=7, features=3, classes=4, seed=0):
    torch.manual_seed(seed)
    model = RECURRENT_KINDS[cfg.kind](cfg, (steps, features), classes)
    model.initialize(cfg)
    return model.double()


@pytest.mark.parametrize(
    "kind,activation,bias,depth",
    [("rnn", "tanh", True, 2), ("rnn", "relu", True, 3), ("rnn", "tanh", False, 1), ("lstm", "tanh", True, 2),
     ("lstm", "tanh", False, 1), ("gru", "tanh", True, 2), ("gru", "tanh", False, 3)],
)  # fmt: skip
def test_unrolled_stack_equals_torch_fused_module(kind, activation, bias, depth):
    """Same weights -> the same hidden states, logits and gradients of every weight as nn.RNN/LSTM/GRU,
    bit for bit (float64: no oneDNN kernel; the unrolled steps are PyTorch's cell operations)."""
    cfg = model_cfg(kind, depth=depth, width=5, activation=activation, bias=bias)
    ours = build(cfg)
    ours.fused_plain_steps = False  # the unrolled code, as on logged steps
    extra = {"nonlinearity": activation} if kind == "rnn" else {}
    torch.manual_seed(1)
    fused = TORCH_MODULES[kind](3, 5, num_layers=depth, bias=bias, batch_first=True, **extra).double()
    ours.load_torch_state(dict(fused.named_parameters()))
    head = nn.Linear(5, 4, bias=bias).double()
    head.load_state_dict(ours.head.state_dict())

    x = torch.randn(8, 7, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    logits = ours(x)
    out, _ = fused(x)
    reference = head(out[:, -1])
    assert torch.equal(logits, reference)

    nn.functional.cross_entropy(logits, y).backward()
    nn.functional.cross_entropy(reference, y).backward()
    ours_grads = {name: p.grad for name, p in ours.torch_state().items()}
    for name, p in fused.named_parameters():
        assert torch.equal(ours_grads[name], p.grad), name
    assert torch.equal(ours.head.weight.grad, head.weight.grad)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_parameter_names_map_one_to_one_to_torch_cells(kind):
    cfg = model_cfg(kind, depth=1)
    ours = build(cfg).float()
    cell = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](3, 6)
    layer_state = {k: v for k, v in ours.layers[0].state_dict().items() if not k.startswith("act")}
    assert set(layer_state) == set(cell.state_dict())
    cell.load_state_dict(layer_state)  # shapes agree too
    assert set(ours.torch_state()) == {name for name, _ in TORCH_MODULES[kind](3, 6).named_parameters()}


def test_readout_every_gives_logits_per_step_in_cross_entropy_layout():
    cfg = model_cfg("gru", depth=1, readout="every")
    model = build(cfg)
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    logits = model(x)
    assert logits.shape == (5, 4, 7)  # (B, classes, T)
    hidden = model.layers[0](x)
    torch.testing.assert_close(logits[:, :, 2], model.head(hidden[:, 2]))


def test_forget_bias_sets_the_total_forget_bias_in_bias_ih():
    cfg = model_cfg("lstm", depth=2, width=4, forget_bias=1.0)
    model = build(cfg)
    for layer in model.layers:
        total = layer.bias_ih + layer.bias_hh
        torch.testing.assert_close(total[4:8], torch.ones(4, dtype=torch.float64))
        assert (layer.bias_hh[4:8] == 0).all() and (layer.bias_ih[4:8] == 1).all()
        # the other gates keep init.bias's values (PyTorch's default: not all zero)
        assert total[:4].abs().sum() > 0


def test_recurrent_init_applies_per_gate_block():
    """orthogonal on weight_hh: each gate's H x H block is orthogonal (times the gain)."""
    cfg = model_cfg("lstm", depth=1, width=5, recurrent={"name": "orthogonal", "gain": 1.1}, weight={"name": "normal", "std": 0.5},
                    bias_init="zeros")  # fmt: skip
    model = build(cfg)
    layer = model.layers[0]
    for block in layer.gate_blocks(layer.weight_hh.detach()):
        torch.testing.assert_close(block.T @ block, 1.21 * torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)  # made in float32
    assert (layer.bias_ih == 0).all() and (layer.bias_hh == 0).all()
    assert abs(layer.weight_ih.std().item() - 0.5) < 0.2


def test_gates_are_named_in_torch_order():
    assert GATES["lstm"] == ("input", "forget", "cell", "output")
    assert GATES["gru"] == ("reset", "update", "new")


# --------------------------------------------------------------------------------------------
# The recurrent probe against an independent unrolled computation
# --------------------------------------------------------------------------------------------

from gradlab.measure.recurrent_probe import RecurrentProbe  # noqa: E402


def reference_forward(model, x):
    """The stack's forward written out from the equations on its parameters, every tensor kept with
    retain_grad(): {(layer, t): {'a': [parts], 'h': h_t, 'c': c_t, gate: value}} and the logits."""
    kept = {}
    sequence = x
    for k, layer in enumerate(model.layers):
        H = layer.width
        W_ih, W_hh, b_ih, b_hh = layer.weight_ih, layer.weight_hh, layer.bias_ih, layer.bias_hh
        h = torch.zeros(x.shape[0], H, dtype=x.dtype)
        c = torch.zeros_like(h)
        outputs = []
        for t in range(sequence.shape[1]):
            gi = sequence[:, t] @ W_ih.T + (b_ih if b_ih is not None else 0)
            gh = h @ W_hh.T + (b_hh if b_hh is not None else 0)
            entry = {}
            if layer.kind == "rnn":
                a = gi + gh
                h = layer.act(a)
                entry["a"] = [a]
            elif layer.kind == "lstm":
                a = gi + gh
                gates = {"input": torch.sigmoid(a[:, :H]), "forget": torch.sigmoid(a[:, H : 2 * H]),
                         "cell": torch.tanh(a[:, 2 * H : 3 * H]), "output": torch.sigmoid(a[:, 3 * H :])}  # fmt: skip
                c = gates["forget"] * c + gates["input"] * gates["cell"]
                h = gates["output"] * torch.tanh(c)
                entry.update(gates, a=[a], c=c)
            else:
                a_r = gi[:, :H] + gh[:, :H]
                a_z = gi[:, H : 2 * H] + gh[:, H : 2 * H]
                r, z = torch.sigmoid(a_r), torch.sigmoid(a_z)
                a_n = gi[:, 2 * H :] + r * gh[:, 2 * H :]
                n = torch.tanh(a_n)
                h = (1 - z) * n + z * h
                entry.update(reset=r, update=z, new=n, a=[a_r, a_z, a_n])
            entry["h"] = h
            for value in [*entry["a"], h, c]:
                if value.requires_grad:
                    value.retain_grad()
            kept[(k, t)] = entry
            outputs.append(h)
        sequence = torch.stack(outputs, dim=1)
    if model.readout == "last":
        logits = model.head(sequence[:, -1])
    else:
        logits = model.head(sequence).transpose(1, 2)
    return kept, logits, sequence


def probe_step(model, x, y, groups=("weights", "deltas", "activations", "updates")):
    probe = RecurrentProbe(model, groups)
    columns, extras = measured_pass(probe, model, x, y)
    return probe, columns, extras


def sigmoid_saturated(g):
    return (g * (1 - g) < 0.05 * 0.25).double().mean().item()


def tanh_saturated(g):
    return (1 - g * g < 0.05).double().mean().item()


@pytest.mark.parametrize("kind,readout", [("rnn", "last"), ("lstm", "last"), ("gru", "last"), ("lstm", "every"), ("gru", "every")])
def test_every_time_step_quantity_equals_retain_grad_and_hand_built_gates(kind, readout):
    cfg = model_cfg(kind, depth=2, width=6, readout=readout, weight={"name": "normal", "std": 0.8},
                    recurrent={"name": "orthogonal", "gain": 1.0}, bias_init={"name": "normal", "std": 1.5})  # fmt: skip
    model = build(cfg)
    x = torch.randn(10, 7, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (10, 7) if readout == "every" else (10,))
    probe, columns, _ = probe_step(model, x, y)

    model.zero_grad(set_to_none=True)
    kept, logits, _ = reference_forward(model, x)
    nn.functional.cross_entropy(logits, y).backward()
    rows = probe.timestep_rows(3, columns)
    assert [(r["layer"], r["t"]) for r in rows] == sorted(kept)
    for row in rows:
        entry = kept[(row["layer"], row["t"])]
        delta = torch.sqrt(sum(part.grad.pow(2).sum() for part in entry["a"])).item()
        assert row["delta_norm"] == pytest.approx(delta, rel=1e-10)
        assert row["hidden_delta_norm"] == pytest.approx(entry["h"].grad.norm().item(), rel=1e-10)
        assert row["hidden_norm"] == pytest.approx(entry["h"].norm().item(), rel=1e-12)
        if kind == "lstm":
            assert row["cell_delta_norm"] == pytest.approx(entry["c"].grad.norm().item(), rel=1e-10)
        else:
            assert row["cell_delta_norm"] is None
        for gate in ("input", "forget", "cell", "output", "reset", "update", "new"):
            if gate in GATES[kind]:
                value = entry[gate].detach()
                saturated = tanh_saturated(value) if gate in ("cell", "new") else sigmoid_saturated(value)
                assert row[f"{gate}_mean"] == pytest.approx(value.mean().item(), rel=1e-12)
                assert row[f"{gate}_saturated_frac"] == pytest.approx(saturated, abs=1e-12)
            else:
                assert row[f"{gate}_mean"] is None and row[f"{gate}_saturated_frac"] is None
        if kind == "rnn":
            assert row["saturated_frac"] == pytest.approx(tanh_saturated(entry["h"].detach()), abs=1e-12)
        else:
            assert row["saturated_frac"] is None
    # the gates saturate at times with these biases: the test would see a wrong threshold
    if kind != "rnn":
        assert any(0 < row[f"{GATES[kind][0]}_saturated_frac"] < 1 for row in rows)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_layer_rows_carry_both_weight_families_and_their_combination(kind):
    cfg = model_cfg(kind, depth=2, width=5)
    model = build(cfg)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    probe, columns, extras = probe_step(model, x, y)
    with torch.no_grad():
        first = model.layers[0](x)
        output_means = [first.mean().item(), model.layers[1](first).mean().item()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    probe.snapshot_weights()
    optimizer.step()
    columns.update(probe.update_ratios())
    rows = probe.rows(0, columns)
    assert [r["name"] for r in rows] == ["layers.0", "layers.1", "head"]
    timesteps = probe.timestep_rows(0, columns)
    for k, row in enumerate(rows[:2]):
        layer = model.layers[k]
        W_ih, W_hh = before[f"layers.{k}.weight_ih"], before[f"layers.{k}.weight_hh"]
        assert row["ih_weight_norm"] == pytest.approx(W_ih.norm().item(), rel=1e-12)
        assert row["hh_weight_norm"] == pytest.approx(W_hh.norm().item(), rel=1e-12)
        assert row["weight_norm"] == pytest.approx(torch.cat([W_ih, W_hh], dim=1).norm().item(), rel=1e-12)
        assert row["ih_weight_grad_norm"] == pytest.approx(layer.weight_ih.grad.norm().item(), rel=1e-12)
        assert row["hh_weight_grad_norm"] == pytest.approx(layer.weight_hh.grad.norm().item(), rel=1e-12)
        assert row["weight_grad_norm"] == pytest.approx(torch.cat([layer.weight_ih.grad, layer.weight_hh.grad], 1).norm().item(), rel=1e-12)
        assert row["hh_bias_grad_norm"] == pytest.approx(layer.bias_hh.grad.norm().item(), rel=1e-12)
        assert row["bias_grad_norm"] == pytest.approx(torch.cat([layer.bias_ih.grad, layer.bias_hh.grad]).norm().item(), rel=1e-12)
        change_ih = (layer.weight_ih.detach() - W_ih).norm()
        change_hh = (layer.weight_hh.detach() - W_hh).norm()
        assert row["ih_update_ratio"] == pytest.approx((change_ih / W_ih.norm()).item(), rel=1e-10)
        assert row["hh_update_ratio"] == pytest.approx((change_hh / W_hh.norm()).item(), rel=1e-10)
        together = torch.sqrt(change_ih**2 + change_hh**2) / torch.cat([W_ih, W_hh], 1).norm()
        assert row["update_ratio"] == pytest.approx(together.item(), rel=1e-10)
        steps = [r["delta_norm"] for r in timesteps if r["layer"] == k]
        assert len(steps) == 4
        assert row["delta_norm"] == pytest.approx(sum(d * d for d in steps) ** 0.5, rel=1e-12)
        assert row["act_mean"] == pytest.approx(output_means[k], rel=1e-12)
    head = rows[2]
    assert head["ih_weight_norm"] is None and head["hh_update_ratio"] is None
    assert head["weight_norm"] == pytest.approx(before["head.weight"].norm().item(), rel=1e-12)
    assert extras["grad_norm"] == pytest.approx(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item(), rel=1e-10)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_rnn_layer_saturation_and_dead_units_over_every_step(activation):
    cfg = model_cfg("rnn", depth=1, width=8, activation=activation, weight={"name": "normal", "std": 1.5}, bias_init={"name": "normal", "std": 1.5})
    model = build(cfg)
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    probe, columns, _ = probe_step(model, x, y)
    kept, _, _ = reference_forward(model, x)
    a = torch.stack([kept[(0, t)]["a"][0].detach() for t in range(6)])  # (T, B, H)
    row = probe.rows(0, columns)[0]
    steps = probe.timestep_rows(0, columns)
    if activation == "relu":  # no saturating tail: no saturated_frac; dead where a <= 0 at every (t, example)
        assert row["saturated_frac"] is None and all(r["saturated_frac"] is None for r in steps)
        assert row["dead_frac"] == pytest.approx((a <= 0).all(dim=0).all(dim=0).double().mean().item(), abs=1e-12)
        # the off side over every (t, example, unit) triple
        assert row["inactive_frac"] == pytest.approx((a <= 0).double().mean().item(), abs=1e-12)
        assert 0 < row["inactive_frac"] < 1
    else:  # tanh: both tails, 1 - tanh^2 < 0.05
        assert row["inactive_frac"] is None  # tanh has no off side
        flat = 1 - torch.tanh(a) ** 2 < 0.05
        assert row["saturated_frac"] == pytest.approx(flat.double().mean().item(), abs=1e-12)
        assert [r["saturated_frac"] for r in steps] == pytest.approx(flat.double().mean(dim=(1, 2)).tolist(), abs=1e-12)
        assert 0 < row["saturated_frac"] < 1
        assert row["dead_frac"] == 0.0


@pytest.mark.parametrize("lam", [0.8, 1.0, 1.25])
def test_linear_rnn_with_scaled_orthogonal_recurrence_shrinks_the_delta_by_exactly_lambda_per_step(lam):
    """h_t = a_t and dL/da_t = W_hh^T dL/da_{t+1} with W_hh = lam Q: every step multiplies the
    norm by lam exactly (the readout is on the last step only)."""
    cfg = model_cfg("rnn", depth=1, width=6, activation="identity", recurrent={"name": "orthogonal", "gain": lam})
    model = build(cfg, steps=12)
    x = torch.randn(9, 12, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (9,))
    probe, columns, _ = probe_step(model, x, y)
    deltas = [r["delta_norm"] for r in probe.timestep_rows(0, columns)]
    for t in range(11):
        assert deltas[t] / deltas[t + 1] == pytest.approx(lam, rel=1e-6)  # W_hh made in float32, then cast


def test_accuracy_is_empty_for_a_regression_and_per_step_for_labels_per_step():
    model = build(model_cfg("rnn", depth=1, width=4), classes=1)
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    target = torch.rand(6, dtype=torch.float64)
    probe = RecurrentProbe(model)
    probe.attach()
    out = model(x)
    loss = ((out[:, 0] - target) ** 2).mean()
    loss.backward()
    probe.detach()
    _, extras = probe.measure(loss, out, target).fetch()
    assert extras["accuracy"] != extras["accuracy"]  # NaN: written as an empty cell

    model = build(model_cfg("gru", depth=1, width=4, readout="every"))
    labels = torch.randint(0, 4, (6, 5))
    probe, _, extras = probe_step(model, x, labels)
    logits = model(x)
    assert extras["accuracy"] == pytest.approx((logits.argmax(dim=1) == labels).double().mean().item())


# --------------------------------------------------------------------------------------------
# End to end: a config, a run directory, its tables, compare, plot, expect
# --------------------------------------------------------------------------------------------

import csv as _csv  # noqa: E402
from pathlib import Path  # noqa: E402

from gradlab.config.experiment import validate  # noqa: E402
from gradlab.vocab.errors import ConfigError  # noqa: E402
from gradlab.vocab.quantities import LAYERS_COLUMNS, RECURRENT_LAYERS_COLUMNS, TIMESTEPS_COLUMNS  # noqa: E402
from gradlab.records.run import load_run  # noqa: E402
from gradlab.orchestrate.runner import run_experiment  # noqa: E402
from probing import measured_pass


def recurrent_experiment(tmp_path, kind="lstm", **model):
    return validate({
        "name": f"{kind}-adding", "seed": 0, "device": "cpu",
        "data": {"name": "adding", "seq_len": 6, "n_train": 64, "n_test": 32, "batch_size": 16},
        "model": {"kind": kind, "depth": 2, "width": 5, **model},
        "loss": "mse", "optim": {"name": "adam", "lr": 0.01},
        "train": {"steps": 4, "eval_every": 2}, "log": {"every": 2, "out": str(tmp_path)},
    })  # fmt: skip


def read_csv(path):
    with open(path, newline="") as file:
        return list(_csv.DictReader(file))


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_a_recurrent_run_writes_timesteps_and_both_weight_families(tmp_path, kind):
    result = run_experiment(recurrent_experiment(tmp_path, kind, **({"forget_bias": 1.0} if kind == "lstm" else {})))
    assert result.status == "completed"
    run_dir = result.run_dir
    with open(run_dir / "layers.csv") as file:
        assert file.readline().strip().split(",") == RECURRENT_LAYERS_COLUMNS
    with open(run_dir / "timesteps.csv") as file:
        assert file.readline().strip().split(",") == TIMESTEPS_COLUMNS
    rows = read_csv(run_dir / "timesteps.csv")
    assert len(rows) == 3 * 2 * 6  # logged steps 0, 2, 4 x 2 layers x 6 time steps
    assert [(r["step"], r["layer"], r["t"]) for r in rows[:7]] == [("0", "0", str(t)) for t in range(6)] + [("0", "1", "0")]
    assert all(r["delta_norm"] and r["hidden_delta_norm"] and r["hidden_norm"] for r in rows)
    assert all(bool(r["cell_delta_norm"]) == (kind == "lstm") for r in rows)
    layers = read_csv(run_dir / "layers.csv")
    assert [r["name"] for r in layers[:3]] == ["layers.0", "layers.1", "head"]
    assert layers[0]["ih_weight_norm"] and layers[0]["hh_update_ratio"] and not layers[2]["ih_weight_norm"]
    metrics = read_csv(run_dir / "metrics.csv")
    assert all(r["accuracy"] == "" for r in metrics)  # a regression has no accuracy
    run = load_run(run_dir)
    assert run.timesteps is not None and len(run.timesteps) == 36


def test_step_zero_of_a_run_equals_the_probe_on_the_same_batch(tmp_path):
    """The recorded step-0 time-step rows are the probe's on the first batch of the seeded run."""
    from gradlab.build.data import Batches, load_dataset
    from gradlab.build.models import build_model

    exp = recurrent_experiment(tmp_path, "gru")
    run_dir = run_experiment(exp).run_dir
    data = load_dataset(exp.data, exp.seed)
    x, y = next(Batches(data.x_train, data.y_train, exp.data.batch_size, exp.seed))
    torch.manual_seed(exp.seed)
    model = build_model(exp.model, data.input_shape, data.classes)
    model.zero_grad(set_to_none=True)
    kept, logits, _ = reference_forward(model, x)
    ((logits[:, 0] - y) ** 2).mean().backward()
    recorded = [r for r in read_csv(run_dir / "timesteps.csv") if r["step"] == "0"]
    for row in recorded:
        entry = kept[(int(row["layer"]), int(row["t"]))]
        delta = torch.sqrt(sum(part.grad.double().pow(2).sum() for part in entry["a"])).item()
        assert float(row["delta_norm"]) == pytest.approx(delta, rel=1e-5)
        assert float(row["hidden_delta_norm"]) == pytest.approx(entry["h"].grad.norm().item(), rel=1e-5)


def test_feed_forward_records_keep_their_columns_and_have_no_timesteps(tmp_path):
    exp = validate({"name": "mlp", "device": "cpu", "data": {"dim": 8, "classes": 3, "n_train": 32, "n_test": 16, "batch_size": 8},
                    "model": {"depth": 2, "width": 4}, "train": {"steps": 2, "eval_every": 2}, "log": {"every": 1, "out": str(tmp_path)}})  # fmt: skip
    run_dir = run_experiment(exp).run_dir
    with open(run_dir / "layers.csv") as file:
        assert file.readline().strip().split(",") == LAYERS_COLUMNS
    assert not (run_dir / "timesteps.csv").exists()
    text = exp.to_yaml()
    assert "readout" not in text and "forget_bias" not in text and "recurrent" not in text and "seq_len" not in text
    assert load_run(run_dir).timesteps is None


@pytest.mark.parametrize(
    "changes,message",
    [({"model": {"kind": "lstm"}, "data": {"name": "gaussian", "seq_len": None}}, "data.name: model.kind lstm needs sequence data (adding, copy, sequential_mnist), got gaussian"),
     ({"model": {"kind": "mlp"}}, "model.kind: adding is sequence data for the recurrent kinds (rnn, lstm, gru), not model.kind mlp"),
     ({"model": {"kind": "rnn", "forget_bias": 1.0}}, "model.forget_bias: applies to kind lstm only (the forget gate), not rnn"),
     ({"model": {"kind": "gru", "activation": "relu"}}, "model.activation: gru's nonlinearities are fixed (sigmoid gates, tanh); allowed: tanh, or leave it out"),
     ({"model": {"kind": "lstm", "readout": "every"}}, "model.readout: adding has one target per sequence: it needs model.readout last, got every"),
     ({"loss": "cross_entropy"}, "loss: adding needs loss mse, got cross_entropy"),
     ({"data": {"name": "copy", "seq_len": 30}, "loss": "cross_entropy"}, "model.readout: copy has a label at every step: it needs model.readout every, got last"),
     ({"data": {"seq_len": 1}}, "data.seq_len: adding needs at least 2 steps, got 1"),
     ({"data": {"name": "adding", "classes": 10}}, "data.classes: adding has 1 output fixed by the task, got 10; leave data.classes out"),
     ({"data": {"name": "adding", "permute": True}}, "data.permute: applies to sequential_mnist only, not adding"),
     ({"model": {"kind": "rnn", "norm": "batchnorm"}}, "model.norm: kind rnn takes no normalization; allowed: none")],
)  # fmt: skip
def test_bad_recurrent_configs_are_one_line_errors(changes, message):
    base = {"name": "x", "data": {"name": "adding", "seq_len": 6, "n_train": 64, "n_test": 32, "batch_size": 16},
            "model": {"kind": "lstm", "depth": 1, "width": 4}, "loss": "mse"}  # fmt: skip
    for section, value in changes.items():
        base[section] = {**base[section], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as info:
        validate(base)
    assert str(info.value) == message


def test_feed_forward_keys_refuse_recurrent_settings():
    with pytest.raises(ConfigError) as info:
        validate({"model": {"readout": "every"}})
    assert str(info.value) == "model.readout: applies to the recurrent kinds (rnn, lstm, gru) only, not mlp"
    with pytest.raises(ConfigError) as info:
        validate({"data": {"seq_len": 5}})
    assert str(info.value) == "data.seq_len: applies to the sequence datasets (adding, copy, sequential_mnist) only, not gaussian"


@pytest.mark.parametrize("lam", [0.9, 1.1])
def test_compare_reports_the_exact_per_step_factor_of_a_linear_rnn(tmp_path, lam):
    """A linear RNN whose recurrent matrix is lam * orthogonal, read out at the last step: the
    per-step factor is lam exactly, the gain through time lam^(T-1); the verdict follows it."""
    from gradlab.analysis.compare import compare_runs
    from gradlab.analysis.expectations import check, parse

    exp = recurrent_experiment(tmp_path, "rnn", depth=1, width=6, activation="identity",
                               init={"weight": "xavier_uniform", "recurrent": {"name": "orthogonal", "gain": lam}, "bias": "zeros"})  # fmt: skip
    exp = exp.model_copy(update={"data": exp.data.model_copy(update={"seq_len": 50}), "train": exp.train.model_copy(update={"steps": 0})})
    run = load_run(run_experiment(exp).run_dir)
    table = compare_runs([run]).table
    assert table.loc[0, "step_factor@0"] == pytest.approx(lam, rel=1e-5)
    assert table.loc[0, "time_gain@0"] == pytest.approx(lam**49, rel=1e-4)
    assert table.loc[0, "time_verdict@0"].split(" ")[0] == ("vanishing" if lam < 1 else "exploding")  # 0.9^49 = 0.0057, 1.1^49 = 107
    outcomes = check(run, parse({"step_factor": {"step": 0, "between": [lam - 0.001, lam + 0.001]}, "time_gain": {"step": 0, "max": 0.5}}))
    assert {o.name: o.passed for o in outcomes} == {"time_gain@0": lam < 1, "step_factor@0": True}


def test_time_summaries_against_a_hand_built_table():
    import pandas as pd

    from gradlab.records.run import Run
    from gradlab.analysis.summaries import time_profile_at

    deltas = [8.0, 4.0, 2.0, 1.0]
    timesteps = pd.DataFrame({"step": [0] * 8, "layer": [0] * 4 + [1] * 4, "name": ["layers.0"] * 4 + ["layers.1"] * 4,
                              "t": [0, 1, 2, 3] * 2, "delta_norm": [1.0] * 4 + deltas})  # fmt: skip
    layers = pd.DataFrame({"step": [0], "layer": [0], "kind": ["hidden"]})
    run = Run(None, {}, {"status": "completed"}, layers, pd.DataFrame(), [], timesteps)
    profile = time_profile_at(run, 0)
    assert profile["time_gain"] == 8.0  # the last recurrent layer's: 8 / 1
    assert profile["step_factor"] == pytest.approx(2.0)  # each step back doubles it
    assert all(v != v for v in time_profile_at(run, 5).values())  # a step not logged: empty


def test_plot_draws_the_gradient_through_time_for_recurrent_runs_only(tmp_path):
    from gradlab.show.plots import build_figures

    recurrent = load_run(run_experiment(recurrent_experiment(tmp_path, "lstm")).run_dir)
    figures = build_figures([recurrent])
    assert {"time_profile_hidden_delta_norm", "heatmap_time_hidden_delta_norm"} <= set(figures)
    axes = figures["time_profile_hidden_delta_norm"].axes[0]
    line = axes.get_lines()[0]
    at_zero = recurrent.timesteps[(recurrent.timesteps["step"] == 0) & (recurrent.timesteps["layer"] == 1)].sort_values("t")
    assert list(line.get_xdata()) == list(at_zero["t"])
    assert list(line.get_ydata()) == pytest.approx(list(at_zero["hidden_delta_norm"]))
    assert axes.get_yscale() == "log"


def test_sequential_mnist_config_reads_the_folder_of_idx_files():
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not folder.is_dir():
        pytest.skip("real MNIST files not found")
    exp = validate({"data": {"name": "sequential_mnist", "path": str(folder), "seq_len": 28, "n_train": 20, "n_test": 10, "batch_size": 5},
                    "model": {"kind": "lstm", "depth": 1, "width": 4}})  # fmt: skip
    assert exp.model.activation == {"name": "tanh"} and exp.loss == "cross_entropy"
    with pytest.raises(ConfigError) as info:
        validate({"data": {"name": "sequential_mnist", "path": str(folder), "seq_len": 100}, "model": {"kind": "rnn"}})
    assert str(info.value) == "data.seq_len: sequential_mnist reads rows (28) or pixels (784), got 100"


def test_the_records_reference_tables_of_recurrent_runs_are_the_declarations():
    from test_records import reference_table

    from gradlab.vocab import quantities

    declared = [*quantities.TIMESTEPS_KEYS.items(), *((q.name, q.meaning) for q in quantities.TIMESTEP_QUANTITIES)]
    assert reference_table("## timesteps.csv") == declared
    assert [name for name, _ in declared] == quantities.TIMESTEPS_COLUMNS
    assert reference_table("### Recurrent runs") == [(q.name, q.meaning) for q in quantities.RECURRENT_LAYER_QUANTITIES]


def test_copy_task_run_with_a_label_per_step(tmp_path):
    exp = validate({
        "name": "copy", "device": "cpu", "data": {"name": "copy", "seq_len": 21, "n_train": 32, "n_test": 16, "batch_size": 8},
        "model": {"kind": "gru", "depth": 1, "width": 6, "readout": "every"}, "loss": "cross_entropy",
        "train": {"steps": 2, "eval_every": 2}, "log": {"every": 1, "out": str(tmp_path)},
    })  # fmt: skip
    run_dir = run_experiment(exp).run_dir
    metrics = read_csv(run_dir / "metrics.csv")
    accuracies = [float(r["accuracy"]) for r in metrics]
    # a share of (example, step) pairs: the blanks alone make 11 of the 21 steps right for a model
    # that predicts blank, so every value is a fraction in [0, 1]
    assert all(0 <= a <= 1 for a in accuracies)
    assert len(read_csv(run_dir / "timesteps.csv")) == 3 * 21


def test_labels_leave_out_forget_bias_for_kinds_it_does_not_act_on():
    """A sweep of rnn, lstm (forget bias 0 and 1) and gru: forget_bias differs (null for rnn and gru
    in their resolved configs), but only the lstm runs' labels name it."""
    from gradlab.analysis import configdiff

    def resolved(**model):
        data = {"name": "adding-sweep", "data": {"name": "adding", "seq_len": 10}, "loss": "mse", "model": {"depth": 1, "width": 4, **model}}
        return validate(data).model_dump(mode="json")

    configs = [resolved(kind="rnn"), resolved(kind="lstm", forget_bias=0.0), resolved(kind="lstm", forget_bias=1.0), resolved(kind="gru")]
    assert [c["model"]["forget_bias"] for c in configs] == [None, 0.0, 1.0, None]
    assert configdiff.labels(configs) == ["model.kind=rnn", "model.kind=lstm, model.forget_bias=0", "model.kind=lstm, model.forget_bias=1", "model.kind=gru"]
    assert configdiff.row_labels(["s"] * 4, configs) == ["s#kind=rnn", "s#kind=lstm,forget_bias=0", "s#kind=lstm,forget_bias=1", "s#kind=gru"]
    # an lstm whose forget_bias is null says so: the key acts there
    assert configdiff.labels([resolved(kind="lstm"), resolved(kind="lstm", forget_bias=1.0)]) == ["model.forget_bias=null", "model.forget_bias=1"]


def test_forget_bias_null_sets_nothing_and_zero_makes_the_total_exactly_zero():
    """The default (null) leaves the forget slices as init.bias made them (PyTorch's U(-1/sqrt(H),
    1/sqrt(H)) here: nonzero per unit); forget_bias 0 makes bias_ih's and bias_hh's forget slices 0."""
    H = 4
    default = build(model_cfg("lstm", depth=1, width=H, forget_bias=None))
    same_seed = build(model_cfg("lstm", depth=1, width=H, forget_bias=None))
    zero = build(model_cfg("lstm", depth=1, width=H, forget_bias=0.0))
    layer, zeroed = default.layers[0], zero.layers[0]
    assert torch.equal(layer.bias_ih, same_seed.layers[0].bias_ih)  # nothing drawn or set after init.bias
    assert (layer.bias_ih[H : 2 * H] + layer.bias_hh[H : 2 * H]).abs().min() > 0
    assert (layer.bias_ih[H : 2 * H].abs() <= H**-0.5).all()
    assert (zeroed.bias_ih[H : 2 * H] == 0).all() and (zeroed.bias_hh[H : 2 * H] == 0).all()
    # the other gates are untouched by forget_bias
    assert torch.equal(zeroed.bias_ih[:H], layer.bias_ih[:H]) and torch.equal(zeroed.bias_hh[2 * H :], layer.bias_hh[2 * H :])
