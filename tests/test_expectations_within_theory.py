"""`expect: {layer_factor: {within_theory: x}}`: the measured layer_factor at step 0 within x of
theory's prediction, relative to it; the schema's errors are one line naming the key."""

from __future__ import annotations

import pytest

from gradlab.config.expect import parse_expectations
from gradlab.vocab.errors import ConfigError
from gradlab.analysis.expectations import check
from run_factory import one_run, recurrent_run

# width 64: mean field applies (predict.MIN_WIDTH; the records are written here, so the width costs nothing)
HE = {"model__activation": "relu", "model__width": 64, "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}


def test_within_theory_defaults_to_step_0_and_resolves_short():
    section = parse_expectations({"layer_factor": {"within_theory": 0.05}})
    assert section.layer_factor.step == 0
    assert section.model_dump() == {"layer_factor": {"step": 0, "within_theory": 0.05}}


@pytest.mark.parametrize("section, line", [
    ({"gain": {"within_theory": 0.05}}, "expect.gain.within_theory: within_theory belongs to layer_factor, step_factor and s2 only (theory predicts the per-layer and the per-step factor, and the Jacobian's s2)"),
    ({"layer_factor": {"within_theory": 0.05, "max": 2}}, "expect.layer_factor.within_theory: give within_theory alone, without min, max or between"),
    ({"layer_factor": {"within_theory": 0.05, "step": "last"}}, "expect.layer_factor.step: within_theory compares with theory's prediction at initialization: step must be 0"),
    ({"layer_factor": {"within_theory": -1}}, "expect.layer_factor.within_theory: got -1; must be > 0"),
])  # fmt: skip
def test_bad_within_theory_is_one_line(section, line):
    with pytest.raises(ConfigError) as caught:
        parse_expectations(section)
    assert caught.value.lines == [line]


def test_holds_when_the_measurement_is_within_tolerance_of_the_prediction(tmp_path):
    section = parse_expectations({"layer_factor": {"within_theory": 0.05}})
    near = one_run(tmp_path / "a", [1.0816, 1.04, 1.0], **HE)  # factor 1.04
    (outcome,) = check(near, section)
    assert outcome.passed and outcome.line() == "ok    layer_factor@0 = 1.04  (within 0.05 of theory's 1, relative)"
    far = one_run(tmp_path / "b", [1.21, 1.1, 1.0], **HE)
    (outcome,) = check(far, section)
    assert not outcome.passed and outcome.failure() == "layer_factor@0 = 1.1, expected within 0.05 of theory's 1, relative"


def test_fails_where_theory_has_no_prediction(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0, 1.0], model__norm="layernorm")
    (outcome,) = check(run, parse_expectations({"layer_factor": {"within_theory": 0.05}}))
    assert not outcome.passed and "no prediction with model.norm layernorm" in outcome.bound


def test_step_factor_within_theory_for_a_bound_and_without_a_prediction(tmp_path):
    import yaml

    from gradlab.records.run import load_run

    section = parse_expectations({"step_factor": {"within_theory": 0.05}})
    tanh = recurrent_run(tmp_path, "tanh", gain=0.9)  # measured ~0.85: below Pascanu's bound 0.9, so it holds
    (outcome,) = check(tanh, section)
    assert outcome.passed and outcome.bound == "at most 0.05 above Pascanu's bound 0.9, relative"
    config = yaml.safe_load((tanh.dir / "config.yaml").read_text())
    config["model"]["init"]["recurrent"]["gain"] = 0.5  # the config now claims a bound of 0.5: far exceeded
    (tanh.dir / "config.yaml").write_text(yaml.safe_dump(config))
    (outcome,) = check(load_run(tanh.dir), section)
    assert not outcome.passed and outcome.failure().endswith("expected at most 0.05 above Pascanu's bound 0.5, relative")
    lstm = recurrent_run(tmp_path, "lstm", kind="lstm", forget_bias=1.0)
    (outcome,) = check(lstm, section)
    assert not outcome.passed and "which has no prediction: no step_factor: σ(forget bias)" in outcome.bound
