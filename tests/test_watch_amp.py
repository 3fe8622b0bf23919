"""gradlab.watch under mixed precision: a GradScaler's scaled gradients recorded unscaled, the steps
it skipped said so; bfloat16 and float16 autocast on the CPU; torch.compile'd models refused.

The references are twins measured by hand (watch_twins.reference_step): retain_grad() on every
Linear output, the gradients divided by the scale the twin's own GradScaler used for that step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlab
from gradlab.vocab.errors import ConfigError
from watch_twins import assert_matches, assert_same_parameters, read_csv, read_layers, read_timesteps, reference_step

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


class MLP(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.inp, self.hidden, self.head = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, x, keep=None):
        keep = keep or (lambda *args, **kwargs: None)
        z = self.inp(x)
        keep("inp", z, self.inp.weight, self.inp.bias)
        u = self.hidden(torch.tanh(z))
        keep("hidden", u, self.hidden.weight, self.hidden.bias)
        logits = self.head(torch.tanh(u))
        keep("head", logits, self.head.weight, self.head.bias)
        return logits.float()


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def train_scaled(tmp_path, dtype, scaler_options, steps=6, every=1):
    """The scaled loop under watch and its twin by hand, each with its own GradScaler."""
    torch.manual_seed(0)
    model = MLP()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    scaler, twin_scaler = torch.amp.GradScaler("cpu", **scaler_options), torch.amp.GradScaler("cpu", **scaler_options)
    expected, scales = {}, []
    with gradlab.watch(model, out=tmp_path, every=every, name="amp", optimizer=opt, scaler=scaler) as w:
        for step, (x, y) in enumerate(batches(steps)):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=dtype):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            w.step(loss=loss)
            scales.append(twin_scaler.get_scale())
            expected[step] = reference_step(twin, twin_opt, x, y, F.cross_entropy, scaler=twin_scaler, autocast=dtype)
    return w.run_dir, expected, scales, model, twin


def test_float16_autocast_with_a_grad_scaler_is_recorded_unscaled(tmp_path):
    run_dir, expected, scales, model, twin = train_scaled(tmp_path, torch.float16, {"init_scale": 2.0**12, "growth_interval": 2})
    assert_matches(read_layers(run_dir), expected, rel=1e-4)  # (the twin's float16 sums may round apart in the last bit)
    metrics = read_csv(run_dir, "metrics.csv")
    assert [float(m["loss_scale"]) for m in metrics] == scales and len(set(scales)) > 1  # the scale grew, and each step's is used
    assert [m["skipped_update"] for m in metrics] == ["0"] * 6
    assert_same_parameters(model, twin)  # the scaler's steps, taken alike


def test_skipped_steps_write_no_rows_and_the_next_step_is_measured(tmp_path):
    """A scale so large that float16 gradients overflow: the scaler skips updates and backs off;
    those steps get a metrics row saying so and no layers.csv row, and the step after each is
    measured instead, until one is taken."""
    run_dir, expected, scales, model, twin = train_scaled(tmp_path, torch.float16, {"init_scale": 2.0**40, "backoff_factor": 2.0**-12}, steps=8, every=4)
    metrics = read_csv(run_dir, "metrics.csv")
    skipped = [m["step"] for m in metrics if m["skipped_update"] == "1"]
    assert skipped and skipped == [str(s) for s in range(len(skipped))]  # from step 0 on, until the scale fits
    first = len(skipped)  # the first step taken: measured, though not a multiple of every
    assert [m["step"] for m in metrics] == [*skipped, str(first), *(str(s) for s in range(first + 1, 8) if s % 4 == 0)]
    assert all(m["grad_norm"] == "" for m in metrics if m["skipped_update"] == "1")
    recorded = read_layers(run_dir)
    assert sorted(recorded) == [int(m["step"]) for m in metrics if m["skipped_update"] == "0"]
    assert_matches(recorded, {step: expected[step] for step in recorded}, rel=1e-4)
    assert_same_parameters(model, twin)


def test_bfloat16_autocast_on_the_cpu_against_retain_grad(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    twin = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    expected = {}
    with gradlab.watch(model, out=tmp_path, every=1, optimizer=opt) as w:
        for step, (x, y) in enumerate(batches(3)):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            w.step(loss=loss)
            expected[step] = reference_step(twin, twin_opt, x, y, F.cross_entropy, autocast=torch.bfloat16)
    assert_matches(read_layers(w.run_dir), expected)
    assert_same_parameters(model, twin)
    assert all(m["loss_scale"] == "" and m["skipped_update"] == "" for m in read_csv(w.run_dir, "metrics.csv"))


def test_bfloat16_autocast_lstm_time_steps_train_bit_for_bit(tmp_path):
    """The unrolled cells under CPU autocast: the same casts as the fused call's cell loop."""

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True)
            self.head = nn.Linear(6, 3)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Tagger()
    twin = copy.deepcopy(model)
    data = [(torch.randn(5, 7, 4), torch.randint(0, 3, (5,))) for _ in range(4)]
    with torch.backends.mkldnn.flags(enabled=False):
        for net, watched in ((model, True), (twin, False)):
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            w = gradlab.watch(net, out=tmp_path, every=1, optimizer=opt, time=True) if watched else None
            for x, y in data:
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(net(x), y)
                loss.backward()
                opt.step()
                w.step() if w is not None else None
            if w is not None:
                run_dir = w.close()
    assert_same_parameters(model, twin)
    assert gradlab.load(run_dir).config["model"]["time"]["lstm"].startswith("exact")
    assert all(row["delta_norm"] > 0 for row in read_timesteps(run_dir)[3].values())


@CUDA
def test_float16_autocast_on_cuda_with_a_grad_scaler(tmp_path):
    torch.manual_seed(0)
    model = MLP().cuda()
    twin = copy.deepcopy(model)
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    scaler, twin_scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10), torch.amp.GradScaler("cuda", init_scale=2.0**10)
    for step, (x, y) in enumerate(batches(3)):
        x, y = x.cuda(), y.cuda()
        with gradlab.watch(model, out=tmp_path / str(step), every=1, optimizer=opt, scaler=scaler) as w:
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            w.step(loss=loss)
        twin_opt.zero_grad()
        kept = []
        with torch.autocast("cuda", dtype=torch.float16):
            twin_loss = F.cross_entropy(twin(x, keep=lambda name, z, *a, **k: (z.retain_grad(), kept.append((name, z)))), y)
        scale = twin_scaler.get_scale()
        twin_scaler.scale(twin_loss).backward()
        twin_scaler.step(twin_opt)
        twin_scaler.update()
        row = read_layers(w.run_dir)[0]
        for name, z in kept:
            assert abs(row[name]["delta_norm"] - z.grad.float().norm().item() / scale) <= 1e-4 * row[name]["delta_norm"]


# --------------------------------------------------------------------------------------------
# torch.compile: refused, in one line that says why and what to do
# --------------------------------------------------------------------------------------------


def test_compiled_models_are_refused_in_one_line(tmp_path):
    model = MLP()
    with pytest.raises(ConfigError) as caught:
        gradlab.watch(torch.compile(model), out=tmp_path)
    assert caught.value.lines == [
        "watch: OptimizedModule is torch.compile'd: a compiled graph runs none of the Python hooks watch measures with; "
        "watch the module itself (model._orig_mod for torch.compile(model)) and train it uncompiled while watching"
    ]
    inner = MLP()
    inner.hidden.compile()  # nn.Module.compile, in place, on a submodule
    with pytest.raises(ConfigError) as caught:
        gradlab.watch(inner, out=tmp_path)
    assert caught.value.lines[0].startswith("watch: hidden is torch.compile'd")
    assert list(tmp_path.iterdir()) == []  # nothing written
    with gradlab.watch(model, out=tmp_path) as w:  # the module itself is watched
        F.cross_entropy(model(torch.randn(4, 8)), torch.zeros(4, dtype=torch.long)).backward()
        w.step()
    assert list(read_layers(w.run_dir)[0]) == ["inp", "hidden", "head"]
