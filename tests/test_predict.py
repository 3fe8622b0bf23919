"""Predictions from a config alone (gradlab.theory.predict): the numbers handed to theory (σw², σb², q⁰)
checked against the initializers and the generated data, the prediction for each kind checked
against closed forms and published values, and `none` with a reason where no theory applies.
(The whole chain, prediction against a measured network at step 0, is tests/test_predict_vs_measured.py.)"""

from __future__ import annotations

import math

import pytest

from gradlab.theory import batchnorm
from gradlab.config.experiment import validate
from gradlab.theory.predict import DEPARTS_TOLERANCE, input_moments, predict


def exp(data=None, **model):
    return validate({"data": {"dim": 64, **(data or {})}, "model": {"depth": 10, "width": 128, **model}})


def critical_tanh(scale=1.76, depth=10):
    # variance_scaling with mode fan_in states σw² = scale exactly, whatever the width
    return exp(activation="tanh", depth=depth, init={"weight": {"name": "variance_scaling", "scale": scale, "mode": "fan_in"},
                                                    "bias": {"name": "normal", "std": math.sqrt(0.05)}})  # fmt: skip


def test_input_moments_of_the_synthetic_datasets_match_the_generated_data():
    torch = pytest.importorskip("torch")
    from gradlab.build.data import load_dataset

    for data, tol in [({"name": "gaussian", "dim": 512, "classes": 20, "noise": 0.5}, 0.03),
                      ({"name": "teacher", "dim": 64}, 0.01),
                      ({"name": "spirals", "dim": 8, "noise": 2.0}, 0.02)]:  # fmt: skip
        cfg = exp(data={**data, "n_train": 8192, "n_test": 16, "batch_size": 16}).data
        x = load_dataset(cfg, seed=0).x_train.double()
        moments = input_moments(cfg)
        assert float((x**2).mean()) == pytest.approx(moments.second_moment, rel=tol), data
        assert float(x.var(dim=0, unbiased=False).mean()) == pytest.approx(moments.batch_variance, rel=tol), data
        assert abs(float(x.mean())) < 0.05


def test_sigma_w2_and_sigma_b2_come_from_the_stated_variances_with_the_actual_fans():
    p = predict(exp(activation="relu", init={"weight": "kaiming_normal", "bias": "zeros"}))
    assert p.inputs["sigma_w2"] == pytest.approx(2.0) and p.inputs["first_sigma_w2"] == pytest.approx(2.0)
    assert p.inputs["sigma_b2"] == 0.0
    # a fixed std: σw² = std² · fan_in, block 0's fan-in is the input dimension
    p = predict(exp(activation="tanh", init={"weight": {"name": "normal", "std": 0.1}, "bias": "default"}))
    assert p.inputs["sigma_w2"] == pytest.approx(0.01 * 128) and p.inputs["first_sigma_w2"] == pytest.approx(0.01 * 64)
    assert p.inputs["sigma_b2"] == pytest.approx(1 / (3 * 128)) and p.inputs["first_sigma_b2"] == pytest.approx(1 / (3 * 64))
    # no bias: σb² = 0 whatever the bias initializer says
    p = predict(exp(activation="tanh", bias=False, init={"weight": "xavier_normal", "bias": {"name": "normal", "std": 1.0}}))
    assert p.inputs["sigma_b2"] == 0.0


def test_relu_with_he_init_is_critical_with_factor_one():
    p = predict(exp(activation="relu", init={"weight": "kaiming_normal", "bias": "zeros"}))
    assert p.theory == "mean_field" and p.phase == "critical"
    assert p.chi1 == pytest.approx(1.0) and p.predicted_factor == pytest.approx(1.0)
    assert p.layer_factor == pytest.approx(1.0) and all(f == pytest.approx(1.0) for f in p.layers)
    # ReLU's length map is linear: q^l = σw²/2 · q^{l-1}, q^0 = σw² (1 + noise²)
    assert p.q == pytest.approx([4.0] * 10)
    assert len(p.layers) == 9


def test_tanh_at_sigma_b2_0_05_is_critical_at_sigma_w2_1_76_schoenholz_2017():
    assert predict(critical_tanh(1.76)).chi1 == pytest.approx(1.0, abs=2e-3)
    assert predict(critical_tanh(1.5)).phase == "ordered"
    assert predict(critical_tanh(2.5)).phase == "chaotic"
    p = predict(critical_tanh(2.5))
    assert p.xi_grad < 0 and p.xi_c > 0  # gradients grow; correlations converge to c* < 1 over ξ_c


def test_the_layer_factor_is_the_geometric_mean_of_the_layers():
    p = predict(critical_tanh(2.5))
    assert p.layer_factor == pytest.approx(math.prod(p.layers) ** (1 / len(p.layers)))


def test_batchnorm_relu_grows_by_yang_2019s_factor():
    p = predict(exp(activation="relu", norm="batchnorm", init={"weight": "kaiming_normal", "bias": "zeros"}))
    assert p.theory == "batchnorm"
    # Yang's large-batch limit, and between hidden blocks the factor at the config's batch size (128)
    assert p.extra["large_batch_factor"] == pytest.approx(math.sqrt(math.pi / (math.pi - 1)))
    assert p.inputs["batch_size"] == 128
    assert p.predicted_factor == pytest.approx(batchnorm.batchnorm_gradient_factor_finite_batch(0.0, 128)) and p.predicted_factor == pytest.approx(1.2164215)
    assert p.layers[1:] == pytest.approx([1.2164215] * 8)
    # block 0 reads the input: factor² = σw²₁ E[φ'²] / (σw²₀ · the input's batch variance)
    assert p.layers[0] == pytest.approx(math.sqrt(0.5 / (1 - 1 / 10 + 1)))


@pytest.mark.parametrize("model, data, says", [
    ({"norm": "layernorm"}, {}, "layernorm"),
    ({"norm": "lrn"}, {}, "lrn"),
    ({"norm": {"name": "batchnorm", "placement": "post"}}, {}, "placement post"),
    ({"activation": "rrelu"}, {}, "rrelu"),
    ({"init": {"weight": {"name": "normal", "mean": 0.1, "std": 0.1}}}, {}, "mean 0.1"),
    ({"init": {"weight": "xavier_normal", "bias": {"name": "constant", "value": 0.1}}}, {}, "zero-mean biases"),
    ({"kind": "cnn"}, {"name": "images"}, "model.kind cnn"),
])  # fmt: skip
def test_no_prediction_says_why(model, data, says):
    p = predict(exp(data=data, **model))
    assert p.theory == "none" and says in p.reason
    assert p.layer_factor is None and p.layers == () and p.chi1 is None


def test_file_data_has_no_prediction_unless_its_moments_are_given(tmp_path):
    import numpy as np

    from gradlab.theory.predict import InputMoments

    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.ones((8, 64), np.float32), y_train=np.zeros(8, np.int64), x_test=np.ones((4, 64), np.float32), y_test=np.zeros(4, np.int64))
    e = exp(data={"name": "npz", "path": str(path), "batch_size": 4}, activation="relu", init={"weight": "kaiming_normal", "bias": "zeros"})
    assert "q⁰ is not known" in predict(e).reason
    assert predict(e, InputMoments(1.0, 0.0, 0.0, "measured")).chi1 == pytest.approx(1.0)


def test_the_json_form_has_the_documented_keys():
    data = predict(critical_tanh(1.76)).to_json()
    for key in ("q_star", "chi1", "predicted_factor", "xi_grad", "xi_c", "phase", "layers", "layer_factor"):
        assert key in data
    relu = predict(exp(activation="relu", init={"weight": "kaiming_normal", "bias": "zeros"})).to_json()
    assert relu["xi_grad"] == "inf"  # exactly critical: an infinite depth scale
    assert 0 < DEPARTS_TOLERANCE < 1


def test_recurrent_predictions_once_the_config_has_the_kinds():
    # the recurrent kinds' config keys are another issue's; predict reads them by name when they exist
    from types import SimpleNamespace as NS

    def rnn(kind, recurrent=None, forget_bias=None, activation="tanh"):
        model = NS(kind=kind, width=128, activation={"name": activation}, init=NS(recurrent=recurrent), forget_bias=forget_bias)
        return NS(model=model, data=NS(name="adding"))

    p = predict(rnn("rnn", {"name": "orthogonal", "gain": 0.9}))
    assert p.theory == "recurrent" and p.extra["step_bound"] == pytest.approx(0.9)  # tanh: gamma = 1
    assert predict(rnn("rnn", {"name": "orthogonal", "gain": 2.0}, activation="sigmoid")).extra["step_bound"] == pytest.approx(0.5)
    lstm = predict(rnn("lstm", forget_bias=1.0))
    assert lstm.predicted_factor == pytest.approx(1 / (1 + math.exp(-1.0)))
    # lstm without a forget_bias and gru: the gates' mean field (tests/test_theory_gates.py checks its numbers)
    assert predict(rnn("lstm")).gates["direct_factor"] == pytest.approx(0.5, abs=1e-3)
    assert predict(rnn("gru")).theory == "recurrent" and predict(rnn("gru")).step_factor is None


def test_recurrent_step_factor_is_a_prediction_only_for_a_linear_norm_preserving_rnn():
    from types import SimpleNamespace as NS

    from gradlab.theory.predict import STEP_AT_MOST, STEP_EQUALS

    def rnn(activation, recurrent, readout="last", kind="rnn", forget_bias=None):
        model = NS(kind=kind, width=128, activation={"name": activation}, init=NS(recurrent=recurrent), readout=readout, forget_bias=forget_bias)
        return predict(NS(model=model, data=NS(name="adding")))

    linear = rnn("identity", {"name": "orthogonal", "gain": 1.2})
    assert (linear.step_factor, linear.step_relation) == (1.2, STEP_EQUALS)
    assert (rnn("identity", {"name": "identity", "gain": 0.5}).step_factor, rnn("identity", {"name": "identity", "gain": 0.5}).step_relation) == (0.5, STEP_EQUALS)
    sigmoid = rnn("sigmoid", {"name": "orthogonal", "gain": 2.0})
    assert sigmoid.step_factor == pytest.approx(0.5) and sigmoid.step_relation == STEP_AT_MOST
    # a normal matrix's singular values spread: even a linear rnn only has the bound (2 std sqrt(n) = 0.8)
    normal = rnn("identity", {"name": "normal", "std": 0.4 / math.sqrt(128)})
    assert normal.step_factor == pytest.approx(0.8) and normal.step_relation == STEP_AT_MOST
    every = rnn("tanh", {"name": "orthogonal", "gain": 0.9}, readout="every")
    assert every.step_factor is None and every.extra["step_bound"] == pytest.approx(0.9)
    assert any(note.startswith("no step_factor: with readout every") for note in every.notes)
    lstm = rnn("tanh", {"name": "orthogonal", "gain": 1.0}, kind="lstm", forget_bias=1.0)
    assert lstm.step_factor is None and any(note.startswith("no step_factor: σ(forget bias)") for note in lstm.notes)
    assert linear.to_json()["step_factor"] == 1.2 and linear.to_json()["step_relation"] == "equals"


def test_batchnorm_other_activations_keep_the_large_batch_limit():
    tanh = predict(exp(activation="tanh", norm="batchnorm", init={"weight": "kaiming_normal", "bias": "zeros"}))
    assert tanh.predicted_factor == tanh.extra["large_batch_factor"]
    assert any(note.startswith("the large-batch limit: the finite-batch factor is derived for relu") for note in tanh.notes)
    leaky = predict(exp(activation={"name": "leaky_relu", "negative_slope": 0.2}, norm="batchnorm", data={"batch_size": 16}))
    assert leaky.predicted_factor == pytest.approx(batchnorm.batchnorm_gradient_factor_finite_batch(0.2, 16))
