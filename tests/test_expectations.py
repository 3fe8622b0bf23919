"""gradlab.analysis.expectations: the expect: schema, its error lines, checking runs, the JUnit report."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
import yaml

from gradlab.analysis import expectations
from gradlab.vocab import quantities
from gradlab.config.experiment import validate
from gradlab.vocab.errors import ConfigError
from run_factory import STABLE, VANISHING, layer_rows, metric_rows, real_run, resolved_config, write_run

METRICS = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (0.75, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})


def synthetic_run(tmp_path, expect=None, status="completed", run_id="000000"):
    """gain@0 = 0.125, gain@last = 0.5, dead_frac 0.25 at every step, final test accuracy 0.6."""
    config = resolved_config("exp", depth=3)
    if expect is not None:
        config["expect"] = expect
    layers = layer_rows(0, [0.25, 1.0, 2.0], dead=[0.0, 0.25, 0.0]) + layer_rows(10, [1.0, 1.0, 2.0], dead=[0.0, 0.25, 0.0])
    return write_run(tmp_path, config, layers, METRICS, status=status, run_id=run_id)


# --------------------------------------------------------------------------------------------
# The schema, through the config's own error lines
# --------------------------------------------------------------------------------------------


def config_error(expect) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate({"expect": expect})
    return info.value.lines


def test_the_issue_example_validates_and_round_trips():
    section = yaml.safe_load("""
        status: completed
        gain: {step: 0, between: [0.01, 100]}
        final_test_accuracy: {min: 0.9}
        dead_frac: {max: 0.5}
    """)
    exp = validate({"expect": section})
    bounds = exp.expect.bounds()
    assert list(bounds) == ["gain", "dead_frac", "final_test_accuracy"]
    assert (bounds["gain"].step, bounds["gain"].low, bounds["gain"].high) == (0, 0.01, 100)
    assert bounds["dead_frac"].step == "last" and bounds["dead_frac"].low == -math.inf
    assert exp.expect.status == ["completed"]
    stored = yaml.safe_load(exp.to_yaml())["expect"]  # what a run directory keeps: no nulls
    assert stored == {"status": ["completed"], "gain": {"between": [0.01, 100.0], "step": 0},
                      "dead_frac": {"max": 0.5, "step": "last"}, "final_test_accuracy": {"min": 0.9, "step": "last"}}  # fmt: skip
    assert validate({"expect": stored}) == exp


def test_every_summary_quantity_can_be_bounded():
    assert set(expectations.Expectations.model_fields) == {"status", "coordcheck", *quantities.SUMMARY_QUANTITIES}  # coordcheck: gradlab coordcheck's verdicts


@pytest.mark.parametrize(
    "expect, line",
    [
        ({"gain": {"betwen": [1, 2]}}, "expect.gain.betwen: unknown key (did you mean 'between'?); allowed: min, max, between, step, target_loss, within_theory"),
        ({"gian": {"min": 1}}, "expect.gian: unknown expectation (did you mean 'gain'?); allowed: status, coordcheck, " + ", ".join(quantities.SUMMARY_QUANTITIES)),
        ({"gain": {"between": [2, 1]}}, "expect.gain.between: got [2.0, 1.0]; expected [low, high] with low <= high"),
        ({"gain": {"min": "a"}}, "expect.gain.min: got 'a'; expected a number"),
        ({"gain": {"step": "first", "min": 1}}, "expect.gain.step: got 'first'; expected 0, last or a step number"),
        ({"gain": {}}, "expect.gain: needs a bound: min, max or between"),
        ({"gain": 3}, "expect.gain: got 3; expected a mapping such as {min: 0.9} or {step: 0, between: [0.01, 100]}"),
        ({"gain": {"min": 2, "max": 1}}, "expect.gain.min: min 2 is above max 1"),
        ({"gain": {"min": 1, "between": [0, 2]}}, "expect.gain.between: give either between or min/max, not both"),
        ({"final_test_accuracy": {"min": 0.9, "step": 0}}, "expect.final_test_accuracy.step: final_test_accuracy is measured over the whole run; only the gradient-profile quantities "
         f"({', '.join([*quantities.PROFILE_QUANTITIES, *quantities.TIME_QUANTITIES])}) take a step"),
        ({"steps_to_target": {"max": 10}}, "expect.steps_to_target.target_loss: steps_to_target needs target_loss: the train loss to reach"),
        ({"status": "complete"}, "expect.status: unknown status 'complete' (did you mean 'completed'?); allowed: running, completed, diverged, interrupted, failed"),
        (5, "expect: got 5; expected a mapping of quantity: bound, such as {gain: {step: 0, between: [0.01, 100]}}"),
    ],
)
def test_an_invalid_section_is_one_line_naming_the_dotted_key(expect, line):
    assert config_error(expect) == [line]
    # `gradlab check` validates without config.py and writes the same line
    with pytest.raises(ConfigError) as info:
        expectations.parse(expect)
    assert info.value.lines == [line]


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


def test_outcomes_pass_and_fail_on_known_numbers(tmp_path):
    expect = {
        "status": "completed",
        "gain": {"step": 0, "between": [0.125, 1]},  # 0.125: bounds are inclusive
        "layer_factor": {"step": "last", "min": 0.75},  # 0.5 ** 0.5 = 0.707...
        "dead_frac": {"max": 0.25},
        "final_test_accuracy": {"min": 0.9},  # 0.6
        "steps_to_target": {"target_loss": 1.5, "max": 5},
    }
    outcomes = expectations.check_run(synthetic_run(tmp_path, expect))
    assert [(o.name, o.measured, o.bound, o.passed) for o in outcomes] == [
        ("status", "completed", "one of completed", True),
        ("gain@0", 0.125, "between [0.125, 1]", True),
        ("layer_factor@last", 0.5 ** 0.5, "min 0.75", False),
        ("dead_frac@last", 0.25, "max 0.25", True),
        ("final_test_accuracy", 0.6, "min 0.9", False),
        ("steps_to_target(loss<=1.5)", 5.0, "max 5", True),
    ]
    assert outcomes[2].line() == "FAIL  layer_factor@last = 0.7071  (min 0.75)"
    assert outcomes[4].failure() == "final_test_accuracy = 0.6, expected min 0.9"
    assert outcomes[1].line() == "ok    gain@0 = 0.125  (between [0.125, 1])"


def test_nothing_measured_fails_and_says_empty(tmp_path):
    outcomes = expectations.check_run(synthetic_run(tmp_path, {"gain": {"step": 7, "min": 0}, "steps_to_target": {"target_loss": 0.1, "max": 100}}))
    assert [(o.name, o.passed, o.measured_text()) for o in outcomes] == [("gain@7", False, "empty"), ("steps_to_target(loss<=0.1)", False, "empty")]


def test_numbers_in_messages_are_short_but_never_rounded_onto_a_bound(tmp_path):
    outcome = expectations.Outcome("final_test_accuracy", 0.89996, "min 0.9", False, edges=(0.9,))
    assert outcome.failure() == "final_test_accuracy = 0.89996, expected min 0.9"
    assert expectations.Outcome("gain@0", 0.0123456, "min 0.01", True, edges=(0.01,)).measured_text() == "0.01235"
    # the bound is written as given, however many digits that takes (the run's accuracy is 0.6)
    outcomes = expectations.check_run(synthetic_run(tmp_path, {"final_test_accuracy": {"min": 0.6000001}, "gain": {"max": 100.0}}))
    assert [o.failure() for o in outcomes] == ["gain@last = 0.5, expected max 100", "final_test_accuracy = 0.6, expected min 0.6000001"]


def test_status_expectation(tmp_path):
    outcomes = expectations.check_run(synthetic_run(tmp_path, {"status": ["completed", "diverged"]}, status="interrupted"))
    assert [(o.measured, o.bound, o.passed) for o in outcomes] == [("interrupted", "one of completed, diverged", False)]


def test_a_run_without_expectations_has_nothing_to_check(tmp_path):
    assert expectations.check_run(synthetic_run(tmp_path)) == []


def test_a_real_run_checked_at_the_end(tmp_path):
    expect = {"status": "completed", "gain": {"step": 0, "between": [0.01, 100]}, "dead_frac": {"step": 0, "max": 0.9}}
    stable = real_run(tmp_path, "stable", STABLE, expect=expect)
    assert [o.passed for o in expectations.check_run(stable)] == [True, True, True]
    vanishing = real_run(tmp_path, "vanishing", VANISHING, expect=expect)
    assert [(o.name, o.passed) for o in expectations.check_run(vanishing)] == [("status", True), ("gain@0", False), ("dead_frac@0", True)]


# --------------------------------------------------------------------------------------------
# JUnit XML
# --------------------------------------------------------------------------------------------


def test_junit_has_one_test_case_per_expectation(tmp_path):
    good = synthetic_run(tmp_path, {"status": "completed", "gain": {"step": 0, "max": 1}, "final_test_accuracy": {"min": 0.9}}, run_id="aaaaaa")
    broken = synthetic_run(tmp_path, {"gain": {"min": 0}}, run_id="bbbbbb")
    (broken / "layers.csv").unlink()
    checks, problems = expectations.check_paths([tmp_path])
    assert problems == []
    path = expectations.write_junit(checks, tmp_path / "reports" / "junit.xml")

    root = ET.parse(path).getroot()  # valid XML, or this raises
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    good_suite, broken_suite = root.findall("testsuite")
    assert good_suite.get("name") == str(good)
    cases = good_suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["status one of completed", "gain@0 max 1", "final_test_accuracy min 0.9"]
    assert [c.find("failure") is not None for c in cases] == [False, False, True]
    assert cases[2].find("failure").get("message") == "final_test_accuracy = 0.6, expected min 0.9"
    (error_case,) = broken_suite.findall("testcase")
    assert error_case.find("error").get("message") == f"{broken}: no layers.csv"
