"""Claims attacked (issue 23, item 5): a claim about a quantity that the sweep's configurations do
not measure (time_gain, step_factor of a feed-forward sweep) is refused by `validate` in one line
naming the key and what is allowed; a sweep.yaml that states one anyway (edited, or written by
another version), or a quantity gradlab does not know, is a failed claim with its reason in
`gradlab check`, never a traceback."""

from __future__ import annotations

import pytest
import yaml

from gradlab.analysis.expectations import check_sweep
from gradlab.orchestrate import sweep_plan
from gradlab.orchestrate.sweep_index import SWEEP_SPEC_FILE
from gradlab.vocab.errors import ConfigError
from test_claims import CLAIMS, raw, write_sweep

GRID = {"model.norm": ["none", "batchnorm"], "optim.lr": [0.1, 0.5]}
ALLOWED_FEED_FORWARD = "allowed for it: first_delta_norm, last_delta_norm, gain, layer_factor"


@pytest.mark.parametrize("quantity", ["time_gain", "step_factor"])
def test_a_time_claim_on_a_feed_forward_sweep_is_refused_in_one_line(quantity):
    claim = {"quantity": quantity, "of": {"model.norm": "none"}, "min": 0.0}
    with pytest.raises(ConfigError) as caught:
        sweep_plan.plan_sweep(raw(sweep=GRID, claims=[CLAIMS[0], claim]))
    [line] = caught.value.lines
    assert line.startswith(f"claims[1].quantity: {quantity} is measured along time on a recurrent layer, and model.norm=none has model.kind mlp (no time steps); {ALLOWED_FEED_FORWARD}")
    assert "time_gain" not in line.partition("allowed for it:")[2]


def test_validate_refuses_it_with_exit_code_2(tmp_path, invoke):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw(sweep=GRID, claims=[{"quantity": "time_gain", "of": {}, "above": {"model.norm": "none"}}])))
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip().splitlines()[0]]
    assert "claims[0].quantity: time_gain is measured along time on a recurrent layer" in result.output


def test_a_time_claim_takes_a_step_like_the_profile_quantities():
    from gradlab.config.claims import parse_claim

    claim = parse_claim({"quantity": "step_factor", "of": {}, "step": 0, "max": 1.0}, 0, {"model.kind": ["rnn"]})
    assert claim.step == 0


def test_check_reports_unmeasured_and_unknown_quantities_as_failed_claims(tmp_path, invoke):
    sweep_dir = write_sweep(tmp_path, CLAIMS[:1])
    spec_path = sweep_dir / SWEEP_SPEC_FILE
    spec = yaml.safe_load(spec_path.read_text())
    spec["claims"] += [{"quantity": "time_gain", "of": {"model.norm": "none", "optim.lr": 0.1}, "min": 0.0},
                       {"quantity": "flux_capacity", "of": {}, "min": 0.0}]  # fmt: skip
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    lines = [o.line() for o in check_sweep(sweep_dir)]
    assert lines[0].startswith("FAIL  claims[2] (flux_capacity) = empty  (not checked: unknown quantity 'flux_capacity'")
    assert lines[1:3] == [
        "ok    batchnorm beats none [optim.lr=0.1] = 0.85  (above model.norm=none's 0.6 by more than 0.15; mean of 2 seeds)",
        "ok    batchnorm beats none [optim.lr=0.5] = 0.925  (above model.norm=none's 0.1 by more than 0.15; mean of 2 seeds)",
    ]
    assert lines[3].startswith("FAIL  time_gain of model.norm=none, optim.lr=0.1 = empty  (not checked: time_gain is measured along time on a recurrent layer; run ")
    assert lines[3].endswith("(model.kind mlp) has no time steps)")
    result = invoke("check", str(sweep_dir))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "4 expectations on 9 runs: 2 passed, 2 failed" in result.stdout


@pytest.mark.parametrize("quantity", ["time_gain", "step_factor"])
def test_expect_refuses_a_time_quantity_of_a_feed_forward_run_too(quantity):
    from gradlab.config.experiment import validate

    with pytest.raises(ConfigError) as caught:
        validate({**raw(), "expect": {quantity: {"min": 0.0}}})
    [line] = caught.value.lines
    assert line.startswith(f"expect.{quantity}: {quantity} is measured along time on a recurrent layer, and model.kind mlp has no time steps; {ALLOWED_FEED_FORWARD}")
