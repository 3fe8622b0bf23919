"""gradlab.watch used wrongly: one clear error, and nothing half-written.

A watch refused at its start writes nothing at all (not even the out folder); a run that started
and then failed (a forward pass that raises) is closed as failed, with only whole steps in its tables.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradlab
from gradlab.vocab.errors import ConfigError, GradlabError, RunError
from watch_twins import read_csv


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def refused(tmp_path, error=ConfigError, **kwargs) -> list[str]:
    """The lines of the error `gradlab.watch(**kwargs)` raises; nothing may be written."""
    kwargs.setdefault("out", tmp_path / "out")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(error) as caught:
        gradlab.watch(**kwargs)
    assert sorted(tmp_path.rglob("*")) == before
    return caught.value.lines


def test_a_model_without_parameters(tmp_path):
    assert refused(tmp_path, model=nn.Sequential(nn.ReLU(), nn.Flatten())) == ["watch: Sequential has no parameters to measure"]
    assert refused(tmp_path, model=lambda x: x) == ["watch: model is a function, not a torch.nn.Module"]


@pytest.mark.parametrize("every", [0, -3, 1.5, True, "10"])
def test_every_that_is_not_a_whole_number_of_steps(tmp_path, every):
    assert refused(tmp_path, model=small(), every=every) == [f"watch: every got {every!r}; a whole number of steps, 1 or more"]


def test_the_same_model_twice(tmp_path):
    model = small()
    first = gradlab.watch(model, out=tmp_path / "a")
    lines = refused(tmp_path, model=model)
    assert lines == [f"watch: Sequential is watched already (into {first.run_dir}); close that watch first"]
    assert refused(tmp_path, model=model[0])[0].startswith("watch: Linear is watched already")  # a part of it shares its parameters
    first.close()
    with gradlab.watch(model, out=tmp_path / "b") as second:  # closed: free to watch again
        F.cross_entropy(model(torch.randn(5, 4)), torch.zeros(5, dtype=torch.long)).backward()
        second.step()
    assert gradlab.load(second.run_dir).status == "completed"


def test_other_arguments(tmp_path):
    assert refused(tmp_path, model=small(), time=True) == [
        "watch: time=True, but Sequential has no nn.RNN, nn.LSTM or nn.GRU to measure time steps in"
    ]
    assert refused(tmp_path, model=small(), time="yes") == ["watch: time got 'yes'; True or False"]
    assert refused(tmp_path, model=small(), scaler=object()) == ["watch: scaler is a object, not a torch.amp.GradScaler"]
    assert refused(tmp_path, model=nn.LSTM(3, 4), time=True, groups=["gradients"]) == [
        "watch: groups got 'gradients'; allowed: weights, deltas, activations, updates, noise, spectrum"  # (the last two opt-in)
    ]


def test_an_out_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert refused(tmp_path, RunError, model=small(), out=blocker) == [f"log.out: {str(blocker)!r} is a file, not a folder"]
    assert refused(tmp_path, RunError, model=small(), out=blocker / "runs") == [
        f"log.out: cannot create {str(blocker / 'runs')!r}: {str(blocker)!r} is a file, not a folder"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o500 does not stop root from writing")
def test_an_out_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert refused(tmp_path, RunError, model=small(), out=locked) == [f"log.out: {str(locked)!r} is not writable"]
    finally:
        locked.chmod(0o700)


def test_a_forward_that_raises_closes_the_run_as_failed_with_whole_steps(tmp_path):
    class Breaks(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            h = self.a(x)
            if self.calls == 3:
                raise ValueError("the batch has NaNs")
            return self.b(torch.tanh(h))

    model = Breaks()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        with gradlab.watch(model, out=tmp_path, every=1, optimizer=opt) as w:
            for _ in range(5):
                opt.zero_grad()
                F.cross_entropy(model(torch.randn(5, 4)), torch.zeros(5, dtype=torch.long)).backward()
                opt.step()
                w.step()
    run = gradlab.load(w.run_dir)
    assert run.status == "failed" and run.meta["error"] == "ValueError: the batch has NaNs" and run.meta["steps_done"] == 2
    assert [(r["step"], r["name"]) for r in read_csv(w.run_dir, "layers.csv")] == [("0", "a"), ("0", "b"), ("1", "a"), ("1", "b")]
    assert [r["step"] for r in read_csv(w.run_dir, "metrics.csv")] == ["0", "1"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    from torch.overrides import _get_current_function_mode_stack

    assert not _get_current_function_mode_stack()


def test_every_refusal_is_a_gradlab_error_of_one_line(tmp_path):
    """What the CLI and the Lightning callback show: GradlabError's lines, one each."""
    for kwargs in ({"model": small(), "every": 0}, {"model": nn.Sequential()}, {"model": small(), "name": "a/b"}):
        with pytest.raises(GradlabError) as caught:
            gradlab.watch(out=tmp_path, **kwargs)
        assert len(caught.value.lines) == 1 and "\n" not in caught.value.lines[0]
