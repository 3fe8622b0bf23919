"""Residual networks, prediction against measurement at initialization: the stream's second moment
and variance per block (predict's `extra`, from theory.residual.residual_moments) against Brock et al.'s
statistics measured at the stream (spp_sq_mean + spp_var = mean(x²) exactly), the stream gradient's
per-block factor against stream_delta_norm, and the predicted layer_factor, on width-512 stacks of
10 blocks (teacher data: x ~ N(0, I), so q⁰ = 1 up to 1/√(batch·dim)).

Tolerances: 5% on layer_factor (measured +1.3% for one-layer ReLU branches, +3% for two-layer ones:
finite width), 3% on each stream moment with BatchNorm or a small residual_scale, and for unnormalized
ReLU branches at alpha = 1 — whose second moment doubles per block, each block's finite-width
fluctuation compounding — 3% on the geometric growth rate over the stack."""

from __future__ import annotations

import numpy as np
import pytest

from gradlab.config.experiment import validate
from gradlab.theory.predict import predict
from gradlab.records.run import load_run
from gradlab.analysis.summaries import profile_at

HE = {"weight": "kaiming_normal", "bias": "zeros"}


def measure(tmp_path, model):
    from gradlab.orchestrate.runner import run_experiment

    exp = validate({
        "name": "residual-chain", "seed": 0, "device": "cpu",
        "data": {"name": "teacher", "dim": 64, "n_train": 512, "n_test": 64, "batch_size": 256},
        "model": {"width": 512, "depth": 10, "residual": True, "activation": "relu", "init": HE, **model},
        "train": {"steps": 0, "eval_every": 1}, "log": {"every": 1, "out": str(tmp_path), "probes": ["deltas", "activations"]},
    })  # fmt: skip
    run = load_run(run_experiment(exp).run_dir)
    hidden = run.layers[(run.layers["step"] == 0) & (run.layers["kind"] == "hidden")].sort_values("layer")
    return predict(exp, correlations=False), run, hidden


def stream(hidden):
    second = (hidden["spp_sq_mean"] + hidden["spp_var"]).to_numpy()
    variance = (hidden["act_std"] ** 2).to_numpy()
    delta = hidden["stream_delta_norm"].to_numpy()
    return second, variance, delta[:-1] / delta[1:]


@pytest.mark.parametrize("model", [
    {"residual_scale": 0.2},  # SkipInit-like small alpha: growth (1 + alpha²) per block
    {"norm": "batchnorm"},  # De & Smith 2020: the variance grows linearly
    {"norm": "batchnorm", "activation": "tanh", "branch_depth": 2},
], ids=["relu-alpha-0.2", "relu-batchnorm", "tanh-batchnorm-two-layers"])  # fmt: skip
@pytest.mark.slow
def test_stream_moments_and_gradient_follow_theory(tmp_path, model):
    prediction, run, hidden = measure(tmp_path, model)
    second, variance, factors = stream(hidden)
    assert list(second) == pytest.approx(prediction.extra["stream_second_moment"][1:], rel=0.03)
    assert list(variance) == pytest.approx(prediction.extra["stream_variance"][1:], rel=0.03)
    assert list(factors) == pytest.approx(prediction.extra["stream_factors"], rel=0.03)
    assert profile_at(run, 0)["layer_factor"] == pytest.approx(prediction.layer_factor, rel=0.05)


@pytest.mark.parametrize("branch_depth", [1, 2])
def test_unnormalized_relu_branches_double_the_stream(tmp_path, branch_depth):
    prediction, run, hidden = measure(tmp_path, {"branch_depth": branch_depth})
    second, _, factors = stream(hidden)
    predicted = np.array(prediction.extra["stream_second_moment"][1:])
    rate = (second[-1] / second[0]) ** (1 / (len(second) - 1))
    assert rate == pytest.approx((predicted[-1] / predicted[0]) ** (1 / (len(predicted) - 1)), rel=0.03)
    assert float(np.exp(np.mean(np.log(factors)))) == pytest.approx(np.sqrt(2), rel=0.05)  # He init: √(1 + α²)
    assert profile_at(run, 0)["layer_factor"] == pytest.approx(prediction.layer_factor, rel=0.05)


def test_batchnorm_variance_grows_linearly(tmp_path):
    prediction, _, hidden = measure(tmp_path, {"norm": "batchnorm"})
    _, variance, _ = stream(hidden)
    steps = np.diff(variance)
    # each block adds the branch's variance Var(relu(z)) = 1/2 - 1/(2 pi), z ~ N(0, 1) (BN's output)
    assert steps == pytest.approx(np.full(len(steps), 0.5 - 1 / (2 * np.pi)), rel=0.1)
    assert np.diff(prediction.extra["stream_variance"][1:]) == pytest.approx(np.full(len(steps), 0.5 - 1 / (2 * np.pi)))


def test_skipinit_zero_keeps_the_stream_and_has_no_gradient_prediction(tmp_path):
    prediction, run, hidden = measure(tmp_path, {"residual_scale": 0.0})
    assert prediction.layer_factor is None and "SkipInit" in prediction.reason
    second, _, factors = stream(hidden)
    assert list(second) == pytest.approx([second[0]] * len(second))  # the blocks add nothing
    assert list(factors) == pytest.approx([1.0] * len(factors))
    assert (hidden["delta_norm"] == 0).all()
