"""The memory estimate of recurrent stacks: T time steps are counted, not run one by one, and what
a logged step's probe keeps per time step is part of the bound."""

from __future__ import annotations

import time

import pytest

from gradlab.build import memory
from gradlab.config.experiment import validate
from gradlab.vocab.datasets import known_input_shape
from peak_memory import run_peaks


def recurrent(kind: str, readout: str, steps: int, **model) -> dict:
    data, loss = ("copy", "cross_entropy") if readout == "every" else ("adding", "mse")
    return {"loss": loss, "data": {"name": data, "seq_len": steps, "batch_size": 8},
            "model": {"kind": kind, "depth": 2, "width": 16, "readout": readout, **model}}  # fmt: skip


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("readout", ["last", "every"])
@pytest.mark.parametrize("steps", [memory.EXACT_STEPS + 5, 300])
def test_counted_time_steps_equal_the_steps_run(kind, readout, steps):
    """Beyond EXACT_STEPS the footprint is extrapolated from 8 and 9 steps: the same bytes as running
    every step on the meta device."""
    exp = validate(recurrent(kind, readout, steps))
    shape = known_input_shape(exp.data)
    assert memory.footprint(exp, shape, exp.data.classes) == memory._footprint_at_depth(exp, shape, exp.data.classes)


def test_ten_million_time_steps_are_refused_at_once(invoke, tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text("data: {name: adding, seq_len: 10000000}\nmodel: {kind: lstm, depth: 1, width: 8}\nloss: mse\n")
    start = time.perf_counter()
    result = invoke("run", config, "--out", tmp_path / "out")
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2
    assert result.stderr.startswith("error: data: the dataset alone needs ")
    assert result.stderr.rstrip().endswith("reduce data.n_train, data.n_test, data.seq_len")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("meta.json"))


def test_the_probe_buffers_are_counted_by_hand():
    exp = validate({**recurrent("lstm", "last", 50), "log": {"probes": ["weights", "deltas", "activations", "updates"]}})
    need = memory.estimate(exp, known_input_shape(exp.data), exp.data.classes)
    # per example, layer and step: deltas 2 * 4 + 1 + 1 widths, activations 2 * (1 + 4)
    assert need.probe == 2 * 50 * 8 * (10 + 10) * 16 * 4
    weights_only = validate({**recurrent("lstm", "last", 50), "log": {"probes": ["weights"]}})
    assert memory.estimate(weights_only, (50, 2), 1).probe == 0


PEAK_GRID = {
    "lstm, all probes": {"data": {"name": "adding", "seq_len": 200, "n_train": 128, "n_test": 64, "batch_size": 64},
                         "model": {"kind": "lstm", "depth": 1, "width": 192}, "loss": "mse"},
    "gru, all probes": {"data": {"name": "adding", "seq_len": 200, "n_train": 128, "n_test": 64, "batch_size": 64},
                        "model": {"kind": "gru", "depth": 1, "width": 192}, "loss": "mse"},
    "rnn, all probes": {"data": {"name": "adding", "seq_len": 300, "n_train": 128, "n_test": 64, "batch_size": 64},
                        "model": {"kind": "rnn", "depth": 1, "width": 256}, "loss": "mse"},
}  # fmt: skip


@pytest.mark.slow
def test_the_estimate_bounds_a_recurrent_runs_real_peak_within_a_factor_of_2(tmp_path):
    for label, real in run_peaks(PEAK_GRID, tmp_path).items():
        exp = validate({"device": "cpu", **PEAK_GRID[label]})
        need = memory.estimate(exp, known_input_shape(exp.data), exp.data.classes).total
        assert real <= need <= 2 * real, f"{label}: real peak {real / 1e6:.0f} MB, estimate {need / 1e6:.0f} MB"
