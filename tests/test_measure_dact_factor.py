"""dact_factor predicts the measured per-layer change of the back-propagated signal: exactly for one
unit and one example (the lecture's |w| |f'|), within a few percent on wide random networks."""

from __future__ import annotations

import math

import pytest

import gradlab


def run_at_init(tmp_path, **model):
    data = {"name": "gaussian", "dim": model.pop("dim", 64), "classes": model.pop("classes", 10), "n_train": 256, "n_test": 64,
            "batch_size": model.pop("batch_size", 128)}  # fmt: skip
    config = {"name": "dact", "seed": 1, "device": "cpu", "data": data, "model": {"kind": "mlp", **model},
              "train": {"steps": 1, "eval_every": 100}, "log": {"every": 1, "out": str(tmp_path)}}  # fmt: skip
    layers = gradlab.run(config).layers
    return layers[layers["step"] == 0].sort_values("layer")


def measured_ratios(rows) -> list[float]:
    deltas = rows["delta_norm"].tolist()
    return [deltas[k] / deltas[k + 1] for k in range(len(deltas) - 1)]


def test_one_unit_and_one_example_is_exactly_w_times_f_prime(tmp_path):
    rows = run_at_init(tmp_path, depth=4, width=1, dim=1, classes=2, batch_size=1, activation="tanh",
                       init={"weight": {"name": "normal", "std": 1.0}, "bias": {"name": "normal", "std": 0.5}})  # fmt: skip
    hidden = rows[rows["kind"] == "hidden"]
    for ratio, factor in zip(measured_ratios(rows)[:-1], hidden["dact_factor"].tolist()[:-1]):
        assert factor == pytest.approx(ratio, rel=1e-6)


@pytest.mark.parametrize("activation,std", [("tanh", 1.2), ("sigmoid", 1.0), ("relu", math.sqrt(2.0))])
def test_a_wide_random_network_changes_its_signal_by_dact_factor(tmp_path, activation, std):
    width = 512
    rows = run_at_init(tmp_path, depth=8, width=width, activation=activation,
                       init={"weight": {"name": "normal", "std": std / math.sqrt(width)}, "bias": "zeros"})  # fmt: skip
    hidden = rows[rows["kind"] == "hidden"]
    ratios, factors = measured_ratios(rows)[1:-1], hidden["dact_factor"].tolist()[1:-1]  # hidden-to-hidden layers
    for ratio, factor in zip(ratios, factors):
        assert factor == pytest.approx(ratio, rel=0.05)
    assert math.prod(factors) == pytest.approx(math.prod(ratios), rel=0.05)
