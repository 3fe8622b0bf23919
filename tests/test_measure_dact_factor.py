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


def test_with_or_without_the_weights_group_the_factor_is_rms_f_prime_times_the_next_weight_scale(tmp_path):
    """The activations group takes the next layer's weight scale from the weights group's
    weight_norm when that group runs, and measures the weights itself when it does not: the same
    numbers either way, and the definition's, sqrt(mean relu'^2) * ||W_(l+1)||_F / sqrt(n_out)."""
    model = {"depth": 5, "width": 32, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}}
    data = {"name": "gaussian", "dim": 16, "classes": 4, "n_train": 128, "n_test": 64, "batch_size": 64}

    def step0(probes: list[str], out: str):
        config = {"name": "dact", "seed": 3, "device": "cpu", "data": data, "model": {"kind": "mlp", **model},
                  "train": {"steps": 1, "eval_every": 100}, "log": {"every": 1, "out": str(tmp_path / out), "probes": probes}}  # fmt: skip
        layers = gradlab.run(config).layers
        return layers[layers["step"] == 0].sort_values("layer")

    alone = step0(["activations"], "alone")
    beside = step0(["weights", "activations"], "beside")
    assert alone["dact_factor"].tolist()[:-1] == beside["dact_factor"].tolist()[:-1]  # bit for bit
    norms, dact = beside["weight_norm"].tolist(), beside["dact_mean"].tolist()  # relu' is 0 or 1: mean f'^2 = mean f'
    expected = [math.sqrt(dact[k]) * norms[k + 1] / math.sqrt(model["width"] if k + 1 < model["depth"] else data["classes"]) for k in range(model["depth"])]
    assert alone["dact_factor"].tolist()[: model["depth"]] == pytest.approx(expected, rel=1e-6)
