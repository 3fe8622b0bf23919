"""The whole chain: a config's prediction (gradlab.predict, from the config alone) against what gradlab
measures on the network it builds, at initialization (step 0), on wide layers (width 512, batch 256,
depth 12, one seed). Everything goes through `gradlab run`'s own path: config -> run_experiment ->
layers.csv -> summaries.profile_at.

Tolerances (relative, on layer_factor = (first/last delta_norm)^(1/(depth-1))): 2% for the mean
field of unnormalized stacks (measured: within 0.5% for tanh, ReLU and sigmoid at several σw²), 3%
for BatchNorm (measured +0.9% for ReLU, +1.5% for tanh: Yang et al.'s prediction is the large-batch
limit, and a batch of 256 grows the gradient slightly faster)."""

from __future__ import annotations

import math

import pytest

from gradlab.config import validate
from gradlab.predict import predict
from gradlab.records import load_run
from gradlab.summaries import profile_at

WIDE = {"width": 512, "depth": 12}
MEAN_FIELD_TOL = 0.02
BATCHNORM_TOL = 0.03


def variance_scaling(scale):
    return {"name": "variance_scaling", "scale": scale, "mode": "fan_in"}


def measure(tmp_path, model, probes=("deltas",)):
    from gradlab.runner import run_experiment

    exp = validate({
        "name": "chain", "seed": 0, "device": "cpu",
        "data": {"name": "gaussian", "dim": 64, "n_train": 512, "n_test": 64, "batch_size": 256},
        "model": {**WIDE, **model}, "train": {"steps": 0, "eval_every": 1}, "log": {"every": 1, "out": str(tmp_path), "probes": list(probes)},
    })  # fmt: skip
    return exp, load_run(run_experiment(exp).run_dir)


@pytest.mark.parametrize("model", [
    {"activation": "tanh", "init": {"weight": variance_scaling(1.0), "bias": "zeros"}},  # ordered
    {"activation": "tanh", "init": {"weight": variance_scaling(1.76), "bias": {"name": "normal", "std": math.sqrt(0.05)}}},  # critical
    {"activation": "tanh", "init": {"weight": variance_scaling(3.0), "bias": {"name": "normal", "std": math.sqrt(0.05)}}},  # chaotic
    {"activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},  # He 2015: factor 1
    {"activation": "relu", "init": {"weight": "xavier_normal", "bias": "zeros"}},  # factor 1/√2
    {"activation": "sigmoid", "init": {"weight": variance_scaling(1.0), "bias": {"name": "normal", "std": 1.0}}},  # ~0.2 per layer
], ids=["tanh-ordered", "tanh-critical", "tanh-chaotic", "relu-he", "relu-xavier", "sigmoid"])  # fmt: skip
def test_mean_field_predicts_the_measured_layer_factor(tmp_path, model):
    exp, run = measure(tmp_path, model)
    predicted = predict(exp, correlations=False).layer_factor
    assert profile_at(run, 0)["layer_factor"] == pytest.approx(predicted, rel=MEAN_FIELD_TOL)


def test_mean_field_predicts_each_layers_factor_too(tmp_path):
    # tanh from an input far from q*: the per-layer factors change over the first layers
    exp, run = measure(tmp_path, {"activation": "tanh", "init": {"weight": variance_scaling(3.0), "bias": "zeros"}})
    delta = run.layers[(run.layers["step"] == 0) & (run.layers["kind"] == "hidden")].sort_values("layer")["delta_norm"].to_numpy()
    measured = delta[:-1] / delta[1:]
    assert list(measured) == pytest.approx(list(predict(exp).layers), rel=0.03)


def test_batchnorm_relu_grows_by_1_2112_per_layer(tmp_path):
    exp, run = measure(tmp_path, {"activation": "relu", "norm": "batchnorm", "init": {"weight": "kaiming_normal", "bias": "zeros"}})
    prediction = predict(exp)
    assert prediction.predicted_factor == pytest.approx(1.2112, abs=1e-4)
    assert profile_at(run, 0)["layer_factor"] == pytest.approx(prediction.layer_factor, rel=BATCHNORM_TOL)
    # between hidden blocks (block 0 reads the input, whose batch variance differs): Yang's factor
    delta = run.layers[(run.layers["step"] == 0) & (run.layers["kind"] == "hidden")].sort_values("layer")["delta_norm"].to_numpy()
    growth = (delta[1] / delta[-1]) ** (1 / (len(delta) - 2))
    assert growth == pytest.approx(math.sqrt(math.pi / (math.pi - 1)), rel=BATCHNORM_TOL)


def test_batchnorm_tanh_follows_the_general_case(tmp_path):
    exp, run = measure(tmp_path, {"activation": "tanh", "norm": "batchnorm", "init": {"weight": "kaiming_normal", "bias": "zeros"}})
    assert profile_at(run, 0)["layer_factor"] == pytest.approx(predict(exp).layer_factor, rel=BATCHNORM_TOL)
