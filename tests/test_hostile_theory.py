"""Theory attacked (issue 23, items 4, 5, 10, 11 and the σw² = 2.56e38 wording; issue 24, items 4
and 7): every number checked against an independent computation (a closed form, mpmath), every
refusal one line and exit code 2, one run's failure never sinking the others' predictions."""

from __future__ import annotations

import json
import math

import mpmath
import pytest
import yaml

from gradlab.config.experiment import validate
from gradlab.theory import mean_field, predict
from gradlab.theory.predict import NumpyActivation
from run_factory import one_run, resolved_config

MLP = {"name": "mlp", "data": {"name": "gaussian", "dim": 32}, "model": {"depth": 4, "width": 64, "activation": "relu",
                                                                      "init": {"weight": "kaiming_normal", "bias": "zeros"}}}  # fmt: skip
LSTM = {"name": "lstm", "data": {"name": "adding", "seq_len": 20}, "loss": "mse", "model": {"kind": "lstm", "depth": 1, "width": 8, "forget_bias": -1000.0}}


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def with_model(**model):
    return {**MLP, "model": {**MLP["model"], **model}}


# ------------------------------------------------------------------ issue 23 item 4: forget_bias -1000


@pytest.mark.parametrize("bias", [-1000.0, -745.5, -30.0, -1.0, 0.0, 1.0, 30.0, 1000.0])
def test_lstm_cell_factor_is_log_sigmoid_exact_for_any_forget_bias(bias):
    exact = -mpmath.log1p(mpmath.exp(-mpmath.mpf(bias)))  # log σ(b), to 50 digits
    prediction = predict.predict(validate({**LSTM, "model": {**LSTM["model"], "forget_bias": bias}}))
    assert prediction.extra["log_cell_step_factor"] == pytest.approx(float(exact), rel=1e-15, abs=1e-300)
    assert prediction.predicted_factor == pytest.approx(float(mpmath.exp(exact)), rel=1e-14, abs=1e-320)
    # −1/ln σ(b)², infinite where σ(b)² is within predict.CRITICAL_TOL of 1 (exactly critical)
    xi = math.inf if -2 * exact <= predict.CRITICAL_TOL else float(-1 / (2 * exact))
    assert prediction.xi_grad == pytest.approx(xi, rel=1e-12) or (math.isinf(xi) and math.isinf(prediction.xi_grad))


def test_theory_of_an_lstm_with_forget_bias_minus_1000_is_a_table_not_an_overflow(tmp_path, invoke):
    result = invoke("theory", write(tmp_path, LSTM))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "predicted_factor      0" in lines and "xi_grad               0.0005" in lines and "log_cell_step_factor  -1000" in lines
    assert any("e^-1000 is below the smallest double" in line for line in lines)


def test_a_prediction_that_fails_for_one_run_is_a_note_for_that_run(tmp_path, monkeypatch):
    from gradlab.analysis.compare import compare_runs

    he = {"model__activation": "relu", "model__width": 64, "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}
    good = one_run(tmp_path / "a", [1.0, 1.0, 1.0], name="good", **he)
    bad = one_run(tmp_path / "b", [1.0, 1.0, 1.0], name="bad", model__activation="tanh", model__width=64)
    real = predict.predict

    def failing(exp, *args, **kwargs):  # the theory of one config breaks (as exp(1000) did)
        if exp.model.activation["name"] == "tanh":
            raise OverflowError("math range error")
        return real(exp, *args, **kwargs)

    monkeypatch.setattr(predict, "predict", failing)
    predict._BY_CONFIG.clear()
    comparison = compare_runs([good, bad], steps=[0], theory=True)
    table = comparison.table.set_index("label")
    assert table.loc["good", "predicted_factor"] == pytest.approx(1.0) and table.loc["good", "departs"] == "no"
    assert math.isnan(table.loc["bad", "predicted_factor"])
    assert any(note.startswith("bad: no predicted_factor: theory could not compute a prediction for this config (OverflowError") for note in comparison.notes)
    predict._BY_CONFIG.clear()


def test_plots_profile_of_a_run_whose_theory_fails_is_empty_not_an_error(monkeypatch):
    monkeypatch.setattr(predict, "predict", lambda *a, **k: 1 / 0)
    predict._BY_CONFIG.clear()
    prediction = predict.for_config(resolved_config("x"))
    assert prediction.theory == "none" and "ZeroDivisionError" in prediction.reason
    assert predict.predicted_profile(prediction, 1.0) == []
    predict._BY_CONFIG.clear()


# ------------------------------------------------------------------ issue 23 item 10: huge data.noise


def test_theory_refuses_a_noise_that_overflows_the_features_as_run_does(tmp_path, invoke):
    from gradlab.build.dataset import split_dataset  # run's own check, for the wording
    import inspect

    result = invoke("theory", write(tmp_path, MLP), "--set", "data.noise=1.0e+160")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: data.noise: 1e+160 makes the gaussian features overflow float32 (NaN or inf); use a smaller noise"]
    assert "makes the {cfg.name} features overflow float32 (NaN or inf); use a smaller noise" in inspect.getsource(split_dataset)


def test_compare_on_a_run_whose_config_says_noise_1e200_notes_it(tmp_path):
    from gradlab.analysis.compare import compare_runs

    he = {"model__activation": "relu", "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}
    good = one_run(tmp_path / "a", [1.0, 1.0, 1.0], name="good", **he)
    loud = one_run(tmp_path / "b", [1.0, 1.0, 1.0], name="loud", data__noise=1e200, **he)
    comparison = compare_runs([good, loud], steps=[0], theory=True)
    table = comparison.table.set_index("label")
    assert table.loc["good", "predicted_factor"] == pytest.approx(1.0)
    assert any("loud: no predicted_factor: theory refuses this config: data.noise: 1e+200 makes the gaussian features overflow" in n for n in comparison.notes)


def test_a_noise_below_the_limit_is_predicted_without_overflow():
    prediction = predict.predict(validate({**MLP, "data": {**MLP["data"], "noise": 1e30}}))
    assert prediction.inputs["q0"] == pytest.approx(1e60, rel=1e-15) and prediction.layer_factor == pytest.approx(1.0)


# ------------------------------------------------------------------ issue 23 item 11: size and speed


def test_theory_refuses_a_depth_run_refuses_with_runs_line(tmp_path, invoke):
    result = invoke("theory", write(tmp_path, MLP), "--set", "model.depth=10000000")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model: this experiment needs up to ") and "reduce model.depth" in lines[0]


def test_the_per_layer_map_costs_nothing_more_once_at_its_fixed_point(monkeypatch):
    calls = []
    real = mean_field.expect

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mean_field, "expect", counting)
    mean_field._MOMENTS.clear()
    tanh = NumpyActivation("tanh")
    qs = mean_field.layer_variances(tanh, 1.0, 100_000, 1.5, 0.05)
    factors = mean_field.gradient_factors(tanh, qs, 1.5)
    assert len(qs) == 100_000 and len(factors) == 99_999 and len(calls) < 400
    # the fill is the fixed point: the map leaves it where it is (to rounding), and so does fixed_point
    assert mean_field.length_map(tanh, qs[-1], 1.5, 0.05) == pytest.approx(qs[-1], rel=1e-15)
    assert mean_field.fixed_point(tanh, 1.5, 0.05).q_star == pytest.approx(qs[-1], rel=1e-9)
    # a growing q under a x / a·x activation: one quadrature for the whole stack, q beyond float range is inf
    calls.clear()
    relu = NumpyActivation("relu")
    qs = mean_field.layer_variances(relu, 1.0, 5000, 4.0, 0.0)
    factors = mean_field.gradient_factors(relu, qs, 4.0)
    assert len(calls) <= 4 and qs[10] == pytest.approx(4.0 * 2.0**10) and math.isinf(qs[-1])
    assert factors[0] == factors[-1] == pytest.approx(math.sqrt(2.0))  # √(σw² / 2), at every q


def test_a_non_homogeneous_activation_beyond_float_range_gives_the_limit_not_a_crash(tmp_path, invoke):
    # elu with σw² = 4 (std 0.25, width 64): q doubles per layer and passes 1e300 near layer 1000
    elu = with_model(depth=3000, activation="elu", init={"weight": {"name": "normal", "std": 0.25}, "bias": "zeros"})
    result = invoke("theory", write(tmp_path, elu), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["q"][-1] == "inf" and data["chi1"] == pytest.approx(2.0, rel=1e-12)  # σw² · 1/2 as q → ∞
    assert math.isclose(data["layers"][-1], math.sqrt(2.0), rel_tol=1e-12)
    assert any("beyond float range" in note for note in data["notes"])


def test_sweep_progress_goes_to_stderr_and_each_combination_is_predicted_once(tmp_path, monkeypatch):
    from gradlab.orchestrate.sweep_plan import load_plan, predictions

    sweep = {**MLP, "sweep": {"model.activation": ["relu", "tanh"], "train.steps": [10, 20, 30]}}
    plan = load_plan(write(tmp_path, sweep), [], [])
    calls, seen = [], []
    real = predict.guarded
    monkeypatch.setattr(predict, "guarded", lambda exp, **k: calls.append(1) or real(exp, **k))
    named = predictions(plan, correlations=False, progress=lambda done, total: seen.append((done, total)))
    assert len(named) == 6 and len(calls) == 2  # the training length changes no prediction
    assert seen == [(i, 6) for i in range(1, 7)]


def test_the_cli_reports_progress_of_a_long_sweep_on_stderr(tmp_path):
    import subprocess
    import sys

    sweep = {**MLP, "sweep": {"model.init.weight": [{"name": "normal", "std": s} for s in (0.1, 0.2, 0.3)]}}
    code = ("import sys, gradlab.cli.app as a\n"
            "real = a._theory_progress\n"
            "a._theory_progress = lambda every=2.0: real(0.0)\n"
            "sys.argv = ['gradlab', 'theory', sys.argv[1], '--format', 'json']\n"
            "a.main()\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(write(tmp_path, sweep))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3
    assert "theory: 3 of 3 combinations" in done.stderr


# ------------------------------------------------------------------ σw² = 2.56e38: a fixed point, or "beyond float range"


def test_sigmoid_with_a_huge_sigma_w2_has_its_fixed_point():
    # std 2e18 at width 64: σw² = 2.56e38; q* = σw² E[σ(√q* z)²] = σw²/2 − O(σw²/√q*)
    exp = validate(with_model(activation="sigmoid", init={"weight": {"name": "normal", "std": 2.0e18}, "bias": "zeros"}))
    p = predict.predict(exp)
    assert not any("no fixed point" in note for note in p.notes)
    sw2 = 2.56e38
    assert p.q_star == pytest.approx(sw2 / 2, rel=1e-12)
    # χ₁ = σw² E[σ'(√q z)²] → σw² ∫σ'(x)² dx / √(2π q) = σw² / (6 √(2π q)) for large q (mpmath)
    integral = mpmath.quad(lambda x: (mpmath.exp(-x) / (1 + mpmath.exp(-x)) ** 2) ** 2, [-mpmath.inf, 0, mpmath.inf])
    assert float(integral) == pytest.approx(1 / 6, rel=1e-12)
    assert p.chi1 == pytest.approx(sw2 / (6 * math.sqrt(2 * math.pi * p.q_star)), rel=1e-9)


def test_a_map_past_float_range_says_so():
    fp = mean_field.fixed_point(NumpyActivation("elu"), 4.0, 0.0)
    assert fp.status == "diverged" and "beyond float range" in fp.detail


# ------------------------------------------------------------------ issue 24 item 4: leaky_relu, prelu, elu


@pytest.mark.parametrize("activation, slope", [("leaky_relu", 0.01), ({"name": "leaky_relu", "negative_slope": 0.2}, 0.2), ("prelu", 0.25)])
def test_x_ax_activations_have_chi1_and_phase_without_a_fixed_point(activation, slope):
    # He init (σw² = 2): q grows ×(1 + a²) per layer, but χ₁ = σw² (1 + a²)/2 at every q
    p = predict.predict(validate(with_model(activation=activation)))
    chi1 = 2.0 * (1 + slope**2) / 2
    assert p.chi1 == pytest.approx(chi1, rel=1e-12) and p.predicted_factor == pytest.approx(math.sqrt(chi1), rel=1e-12)
    assert p.phase == mean_field.phase(chi1) and p.xi_grad == pytest.approx(-1 / math.log(chi1), rel=1e-9)
    assert p.q_star == math.inf and any("limits as q grows without bound" in note for note in p.notes)


def test_elu_has_its_q_to_infinity_limit():
    p = predict.predict(validate(with_model(activation="elu")))
    # E[elu'(√q z)²] = 1/2 + α² E[e^{2√q z}; z < 0] → 1/2, so χ₁ → σw²/2 = 1 (critical)
    assert p.chi1 == pytest.approx(1.0, rel=1e-12) and p.phase == "critical"


def test_the_theory_table_prints_chi1_and_phase_for_leaky_relu(tmp_path, invoke):
    result = invoke("theory", write(tmp_path, with_model(activation="leaky_relu")))
    assert result.exit_code == 0, result.output
    assert "chi1              1.0001" in result.output.splitlines() and "phase             critical" in result.output.splitlines()


# ------------------------------------------------------------------ issue 24 item 7: a sweep over a list of models


def test_a_sweep_over_whole_models_is_labelled_as_its_runs_are(tmp_path, invoke):
    from gradlab.orchestrate.sweep_plan import load_plan

    models = [
        {"depth": 10, "width": 64, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": "zeros"}},
        {"depth": 10, "width": 64, "activation": "tanh", "init": {"weight": {"name": "xavier_normal", "gain": "auto"}, "bias": "zeros"}},
        {"depth": 20, "width": 128, "activation": "sigmoid", "norm": "batchnorm", "init": {"weight": {"name": "normal", "std": 1.0}, "bias": "zeros"}},
    ]
    path = write(tmp_path, {**MLP, "sweep": {"model": models}})
    result = invoke("theory", path)
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()[1:4]
    names = [member.name for member in load_plan(path, [], []).members]
    assert [row.split()[0] for row in rows] == names
    assert max(len(name) for name in names) < 110  # (was ~170 characters of resolved settings per label)


# ------------------------------------------------------------------ issue 24 item 3: mean field at narrow widths


def test_theory_says_when_the_width_is_below_mean_fields_reach(tmp_path, invoke):
    assert predict.MIN_WIDTH == 32
    narrow = invoke("theory", write(tmp_path, with_model(width=1)))
    assert narrow.exit_code == 0, narrow.output
    assert "note: mean field is an infinite-width theory: at model.width 1 < 32 one run's layer_factor scatters" in narrow.output
    assert json.loads(invoke("theory", write(tmp_path, with_model(width=1)), "--format", "json").output)["narrow"] == "width 1 < 32"
    wide = invoke("theory", write(tmp_path, with_model(width=32)))
    assert "infinite-width" not in wide.output
    assert "narrow" not in json.loads(invoke("theory", write(tmp_path, with_model(width=32)), "--format", "json").output)


def test_compare_reads_departs_na_below_the_width_and_within_theory_fails_saying_why(tmp_path):
    from gradlab.analysis.compare import compare_runs
    from gradlab.analysis.expectations import _within_theory
    from gradlab.config.expect import Bound

    he = {"model__activation": "relu", "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}
    chain = one_run(tmp_path / "a", [0.089**2, 0.089, 1.0], name="chain", model__width=1, **he)
    wide = one_run(tmp_path / "b", [1.0, 1.0, 1.0], name="wide", model__width=256, **he)
    comparison = compare_runs([chain, wide], steps=[0], theory=True)
    table = comparison.table.set_index("label")
    assert table.loc["chain", "departs"] == "n/a (width 1 < 32)" and table.loc["wide", "departs"] == "no"
    assert any(note.startswith("chain: departs n/a: mean field is an infinite-width theory") for note in comparison.notes)
    outcome = _within_theory(chain, "layer_factor", Bound.model_validate({"within_theory": 0.05}))
    assert not outcome.passed and "which does not apply at width 1 < 32" in outcome.bound


def test_the_width_threshold_matches_the_measured_scatter(tmp_path):
    # real runs at step 0 through run's own path (benchmarks/theory_width.py, 16 seeds of ReLU with
    # He init): below MIN_WIDTH most runs are more than 5% off mean field, at twice MIN_WIDTH few are
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("theory_width", Path(__file__).parents[1] / "benchmarks" / "theory_width.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def off_share(width):
        errors = []
        for seed in range(16):
            measured, predicted = bench.measure(str(tmp_path), bench.CONFIGS["relu-he"], width, seed)
            errors.append(abs(measured - predicted) / predicted if math.isfinite(measured) else math.inf)
        return sum(e > predict.DEPARTS_TOLERANCE for e in errors) / len(errors)

    assert off_share(predict.MIN_WIDTH // 4) > 0.5
    assert off_share(2 * predict.MIN_WIDTH) <= 2 / 16


def test_a_sweep_row_below_the_width_says_so(tmp_path, invoke):
    result = invoke("theory", write(tmp_path, {**MLP, "sweep": {"model.width": [1, 64]}}))
    assert result.exit_code == 0, result.output
    assert "width=1: width 1 < 32: mean field is an infinite-width theory, these are the wide-network limit (docs/theory.md, Width)" in result.output
    assert "width=64: width" not in result.output
