"""Plain steps of a recurrent stack run PyTorch's fused call (torch.rnn_tanh / rnn_relu / lstm / gru);
logged steps run the unrolled, tapped code. Both must compute the same numbers bit for bit, forward
and backward, step after step: every comparison here is torch.equal, never a tolerance."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradlab.build.recurrent import RECURRENT_KINDS
from gradlab.measure.recurrent_probe import RecurrentProbe
from test_recurrent import model_cfg

# Widths: 8 (a row of a gate shorter than one pass of a vectorized kernel: every element in its
# scalar tail) and 37 (vectorized passes and a tail): PyTorch's transcendental kernels round the two
# differently, so the unrolled steps must hand each kernel the layout the fused call does.
CASES = [
    (kind, activation, depth, readout, bias, width)
    for kind, activation in (("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh"))
    for depth in (1, 2)
    for readout in ("last", "every")
    for bias in (True, False)
    for width in ((8, 37) if readout == "every" else (37,))
]


def build32(cfg, steps=9, features=3, classes=4, seed=0):
    """A float32 stack (the dtype runs use; in float32 torch.lstm would pick oneDNN's kernel)."""
    torch.manual_seed(seed)
    model = RECURRENT_KINDS[cfg.kind](cfg, (steps, features), classes)
    model.initialize(cfg)
    return model


def batches(readout, n=4, batch=16, steps=9, features=3, classes=4):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(batch, steps, features, generator=g)
        y = torch.randint(0, classes, (batch, steps) if readout == "every" else (batch,), generator=g)
        yield x, y


def train_step(model, opt, x, y, probe=None):
    opt.zero_grad(set_to_none=True)
    if probe is not None:
        probe.attach()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    if probe is not None:
        probe.detach()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return logits.detach(), loss.detach(), grads


@pytest.mark.parametrize("kind,activation,depth,readout,bias,width", CASES)
def test_fused_plain_steps_train_bit_for_bit_as_the_unrolled_stack(kind, activation, depth, readout, bias, width):
    """Same seed, same batches, several Adam steps: the fused model (no tap: the fused call) and the
    unrolled one (a probe attached on every step, as on logged steps) have equal logits, losses,
    gradients of every parameter and parameters after every step."""
    cfg = model_cfg(kind, depth=depth, width=width, activation=activation, readout=readout, bias=bias,
                    weight={"name": "normal", "std": 0.6}, recurrent={"name": "orthogonal", "gain": 1.0},
                    bias_init={"name": "normal", "std": 0.5} if bias else "default")  # fmt: skip
    fused = build32(cfg)
    unrolled = copy.deepcopy(fused)
    assert fused._fused_call(torch.zeros(1)) is not None  # the fused path is really taken
    probe = RecurrentProbe(unrolled)
    opt_f = torch.optim.Adam(fused.parameters(), lr=0.01)
    opt_u = torch.optim.Adam(unrolled.parameters(), lr=0.01)
    for x, y in batches(readout):
        logits_f, loss_f, grads_f = train_step(fused, opt_f, x, y)
        logits_u, loss_u, grads_u = train_step(unrolled, opt_u, x, y, probe)
        assert torch.equal(logits_f, logits_u) and torch.equal(loss_f, loss_u)
        names = [name for name, _ in fused.named_parameters()]
        for name, gf, gu in zip(names, grads_f, grads_u):
            assert torch.equal(gf, gu), name
        for (name, pf), pu in zip(fused.named_parameters(), unrolled.parameters()):
            assert torch.equal(pf, pu), name
    probe.measure(loss_u, logits_u, y).fetch()  # the probe saw the last unrolled step


@pytest.mark.parametrize("kind,activation", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")])
def test_the_flag_selects_unrolled_plain_steps_with_the_same_numbers(kind, activation):
    """fused_plain_steps = False runs the unrolled code without a tap: the same numbers again, and
    an rnn with an activation the fused call lacks (sigmoid) is unrolled whatever the flag."""
    cfg = model_cfg(kind, depth=2, width=8, activation=activation, readout="every")
    fused = build32(cfg)
    unrolled = copy.deepcopy(fused)
    unrolled.fused_plain_steps = False
    x, y = next(batches("every"))
    for model in (fused, unrolled):
        nn.functional.cross_entropy(model(x), y).backward()
    for pf, pu in zip(fused.parameters(), unrolled.parameters()):
        assert torch.equal(pf.grad, pu.grad)
    assert build32(model_cfg("rnn", activation="sigmoid"))._fused_call(x) is None


def test_the_fused_call_is_used_on_plain_cpu_steps_only(monkeypatch):
    """No tap on the CPU: one fused call, oneDNN off during it and restored after; with a tap, on the
    meta device, or with the flag off: the unrolled layers."""
    model = build32(model_cfg("lstm", depth=2, width=8))
    calls = []
    real = torch.lstm

    def spy(*args):
        calls.append(torch.backends.mkldnn.enabled)
        return real(*args)

    monkeypatch.setattr(torch, "lstm", spy)
    x = torch.randn(4, 9, 3)
    before = torch.backends.mkldnn.enabled
    model(x)
    assert calls == [False] and torch.backends.mkldnn.enabled == before
    probe = RecurrentProbe(model)
    probe.attach()
    model(x)
    probe.detach()
    model.fused_plain_steps = False
    model(x)
    model.fused_plain_steps = True
    with torch.device("meta"):
        meta_model = RECURRENT_KINDS["lstm"](model_cfg("lstm", depth=2, width=8), (9, 3), 4)
        assert meta_model(torch.empty(4, 9, 3)).device.type == "meta"
    assert len(calls) == 1


def test_onednn_would_round_differently():
    """Why the fused call runs with oneDNN off: in float32 on the CPU nn.LSTM's default kernel (oneDNN)
    differs from the cell's operations in the last bits, while with oneDNN off it equals them."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    model = build32(model_cfg("lstm", depth=1, width=16))
    model.fused_plain_steps = False
    x = torch.randn(8, 9, 3)
    lstm = nn.LSTM(3, 16, batch_first=True)
    lstm.load_state_dict(model.torch_state())
    unrolled = model.layers[0](x)
    with torch.no_grad():
        onednn = lstm(x)[0]
        torch.backends.mkldnn.enabled = False
        try:
            native = lstm(x)[0]
        finally:
            torch.backends.mkldnn.enabled = True
    assert torch.equal(native, unrolled.detach())
    assert not torch.equal(onednn, native)


@pytest.mark.parametrize("kind,activation", [("rnn", "tanh"), ("lstm", "tanh"), ("gru", "tanh")])
def test_a_run_records_the_same_numbers_whatever_log_every(tmp_path, kind, activation):
    """End to end: a run logged on every step (every step unrolled) and one logged every 4th step (the
    steps between fused) write the same cells at the steps both log, time_s aside."""
    import csv

    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import run_experiment

    def rows(run_dir, table, steps):
        with open(run_dir / table, newline="") as file:
            return [{k: v for k, v in row.items() if k != "time_s"} for row in csv.DictReader(file) if int(row["step"]) in steps]

    runs = []
    for every in (1, 4):
        exp = validate({
            "name": f"{kind}-every-{every}", "seed": 0, "device": "cpu",
            "data": {"name": "adding", "seq_len": 7, "n_train": 96, "n_test": 32, "batch_size": 16},
            "model": {"kind": kind, "depth": 2, "width": 6, "activation": activation},
            "loss": "mse", "optim": {"name": "adam", "lr": 0.01},
            "train": {"steps": 8, "eval_every": 4}, "log": {"every": every, "out": str(tmp_path / str(every))},
        })  # fmt: skip
        result = run_experiment(exp)
        assert result.status == "completed"
        runs.append(result.run_dir)
    steps = {0, 4, 8}
    for table in ("layers.csv", "timesteps.csv", "metrics.csv"):
        every_step, every_fourth = rows(runs[0], table, steps), rows(runs[1], table, steps)
        assert every_step == every_fourth and len(every_fourth) > 0, table
