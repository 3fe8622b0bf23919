"""gradlab.watch in loops that go wrong: a forward or backward pass that raises and is caught (the
ordinary "skip the batch on OOM" loop) must never leave a trace in the records."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import gradlab


class Flaky(nn.Module):
    """Two Linear layers; the forward passes listed in `fail_at` raise between them."""

    def __init__(self, fail_at: set[int]):
        super().__init__()
        self.a, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x):
        h = torch.tanh(self.a(x))
        self.calls += 1
        if self.calls in self.fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.head(h)


def train(model, tmp_path, steps=4, backward_fails_at=()):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlab.watch(model, out=tmp_path, every=1, optimizer=opt) as w:
        done = attempts = 0
        while done < steps:
            attempts += 1
            x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
            opt.zero_grad()
            try:
                loss = nn.functional.cross_entropy(model(x), y)
                if attempts in backward_fails_at:
                    raise RuntimeError("backward out of memory (simulated)")
                loss.backward()
            except RuntimeError:
                continue
            opt.step()
            w.step(loss=loss)
            done += 1
    return w.run_dir


def rows(run_dir):
    with open(run_dir / "layers.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("fail_at", [{3}, {1}, {2, 3, 5}])
def test_a_forward_that_raised_and_was_caught_leaves_no_trace(tmp_path, fail_at):
    run_dir = train(Flaky(fail_at), tmp_path)
    table = rows(run_dir)
    assert [(r["step"], r["layer"], r["name"], r["kind"]) for r in table] == [
        (str(s), layer, name, kind) for s in range(4) for layer, name, kind in (("0", "a", "hidden"), ("1", "head", "head"))
    ]
    assert all(r["delta_norm"] and r["weight_grad_norm"] for r in table)
    run = gradlab.load(run_dir)
    assert sorted(run.layers["step"].unique().tolist()) == [0, 1, 2, 3] and not run.notes


def test_a_backward_that_raised_is_measured_again_on_the_next_pass(tmp_path):
    run_dir = train(Flaky(set()), tmp_path, backward_fails_at={2})
    table = rows(run_dir)
    assert [r["name"] for r in table] == ["a", "head"] * 4
    assert all(r["delta_norm"] and r["update_ratio"] for r in table)
