"""`gradlab compare --theory`: predicted_factor beside the measured layer_factor and the departs
flag, from the run's config alone; `--explain` states formula, paper and tolerance; exact output."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from gradlab.analysis.compare import compare_runs, explain
from gradlab.theory.predict import DEPARTS_TOLERANCE, departs
from run_factory import one_run, recurrent_run

# width 64: mean field applies (predict.MIN_WIDTH; the records are written here, so the width costs nothing)
HE = {"model__activation": "relu", "model__width": 64, "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}


def test_departs_is_relative_to_the_prediction():
    assert departs(1.04, 1.0, 0.05) is False and departs(1.06, 1.0, 0.05) is True and departs(0.94, 1.0, 0.05) is True
    assert departs(math.nan, 1.0) is None and departs(1.0, None) is None


def test_compare_puts_the_prediction_beside_the_measurement(tmp_path):
    # ReLU with He init: mean field predicts a factor of exactly 1 per layer
    flat = one_run(tmp_path / "a", [1.0, 1.0, 1.0], name="flat", **HE)
    grows = one_run(tmp_path / "b", [4.0, 2.0, 1.0], name="grows", **HE)  # measured factor 2
    nothing = one_run(tmp_path / "a", [1.0, 1.0, 1.0], name="ln", model__norm="layernorm")
    comparison = compare_runs([flat, nothing], steps=[0], theory=True)
    table = comparison.table.set_index("label")
    assert table.loc["flat", "predicted_factor"] == pytest.approx(1.0) and table.loc["flat", "departs"] == "no"
    assert math.isnan(table.loc["ln", "predicted_factor"]) and pd.isna(table.loc["ln", "departs"])
    assert any(note.startswith("ln: no predicted_factor: no prediction with model.norm layernorm") for note in comparison.notes)
    assert comparison.tolerance == DEPARTS_TOLERANCE
    assert compare_runs([grows], steps=[0], theory=True).table["departs"][0] == "yes"
    assert "predicted_factor" not in compare_runs([flat], steps=[0]).table  # only when asked


def test_seeds_are_averaged_before_the_comparison(tmp_path):
    # two seeds of one configuration: measured factors 1 and 1.08, mean 1.04 (within 5% of 1)
    runs = [one_run(tmp_path, [1.0, 1.0, 1.0], seed=0, run_id="000000", **HE), one_run(tmp_path, [1.1664, 1.08, 1.0], seed=1, run_id="000001", **HE)]
    table = compare_runs(runs, [0], theory=True).table
    assert table["seeds"][0] == 2 and table["departs"][0] == "no"


def test_the_tolerance_decides(tmp_path):
    run = one_run(tmp_path, [1.21, 1.1, 1.0], **HE)  # measured factor 1.1
    assert compare_runs([run], [0], theory=True, tolerance=0.05).table["departs"][0] == "yes"
    assert compare_runs([run], [0], theory=True, tolerance=0.2).table["departs"][0] == "no"


def test_cli_csv_exact(tmp_path, invoke):
    one_run(tmp_path, [4.0, 2.0, 1.0], name="grows", **HE)
    result = invoke("compare", tmp_path, "--theory", "--format", "csv", "--step", "0")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert header.endswith(",layer_factor@0,weight_grad_gain@0,dead_frac@0,inactive_frac@0,saturated_frac@0,verdict@0,final_train_loss,final_train_accuracy,final_test_loss,final_test_accuracy,predicted_factor,departs")
    assert row == "grows,completed,1,10,4.0,1.0,4.0,2.0,1.0,0.0,,0.0,\"stable (×2/layer, ×e every 1.4 layers)\",0.75,0.625,0.8,0.6,1.0000000000000002,yes"  # He init's σw² is 2.0000000000000004: √(σw²/2)


def test_explain_gives_formula_paper_and_tolerance(tmp_path, invoke):
    one_run(tmp_path, [1.0, 1.0, 1.0], **HE)
    result = invoke("compare", tmp_path, "--theory", "--explain", "--tolerance", "0.1")
    assert result.exit_code == 0, result.output
    assert "predicted_factor: the per-layer factor theory predicts at initialization" in result.output
    assert "Schoenholz et al. 2017" in result.output and "Yang et al. 2019" in result.output
    assert "(tolerance 0.1)" in result.output
    glossary = dict(explain())
    assert "with --theory" in glossary["departs"]


def test_bad_tolerance_is_one_line(tmp_path, invoke):
    one_run(tmp_path, [1.0, 1.0, 1.0], **HE)
    result = invoke("compare", tmp_path, "--theory", "--tolerance", "-1")
    assert result.exit_code == 2 and result.output == "error: --tolerance: got -1; expected a number > 0\n"


# ---------------------------------------------------------------- along time: recurrent runs


def test_step_departs_for_a_prediction_and_for_a_bound():
    from gradlab.theory.predict import STEP_AT_MOST, STEP_EQUALS, Prediction, step_departs

    exact = Prediction("recurrent", step_factor=0.8, step_relation=STEP_EQUALS)
    assert step_departs(0.83, exact, 0.05) is False and step_departs(0.85, exact, 0.05) is True and step_departs(0.75, exact, 0.05) is True
    bound = Prediction("recurrent", step_factor=0.8, step_relation=STEP_AT_MOST)
    # far below Pascanu's bound agrees with it; only above (1 + tolerance) * bound departs
    assert step_departs(0.1, bound, 0.05) is False and step_departs(0.839, bound, 0.05) is False and step_departs(0.841, bound, 0.05) is True
    assert step_departs(math.nan, bound) is None and step_departs(0.5, Prediction("recurrent")) is None


def test_compare_sets_the_step_factor_beside_its_theory(tmp_path):
    import numpy as np

    linear = recurrent_run(tmp_path, "linear", activation="identity", gain=0.8)
    # tanh with tiny input weights: every pre-activation is near 0 where tanh' = 1, so the measured
    # factor reaches Pascanu's bound gamma * lambda_1 = 0.9 from below
    tight = recurrent_run(tmp_path, "tight", weight={"name": "normal", "std": 1e-4}, gain=0.9)
    loose = recurrent_run(tmp_path, "loose", gain=0.9)
    lstm = recurrent_run(tmp_path, "lstm", kind="lstm", forget_bias=1.0)
    comparison = compare_runs([linear, tight, loose, lstm], steps=[0], theory=True)
    table = comparison.table.set_index("label")
    assert list(comparison.table.columns[-9:-5]) == ["predicted_factor", "departs", "predicted_step_factor", "step_departs"]
    # the gates' columns follow where a row is an lstm or gru (tests/test_theory_gates.py checks their numbers)
    assert list(comparison.table.columns[-5:]) == ["direct_factor", "predicted_direct_factor", "h_second_moment", "predicted_h_second_moment", "gate_departs"]
    assert math.isnan(table.loc["linear", "predicted_direct_factor"]) and pd.isna(table.loc["linear", "gate_departs"])
    # (these runs log deltas only: no gate means to set beside it)
    assert table.loc["lstm", "predicted_direct_factor"] > 0 and pd.isna(table.loc["lstm", "gate_departs"])
    assert "lstm: no gate means measured at step 0 (timesteps.csv has them with log.probes activations)" in comparison.notes
    # the linear rnn: the prediction is lambda and the measurement is lambda (geometric mean of the
    # recorded ratios, computed here from timesteps.csv)
    deltas = linear.timesteps.sort_values("t")["delta_norm"].to_numpy(float)
    assert float(np.exp(np.mean(np.log(deltas[:-1] / deltas[1:])))) == pytest.approx(0.8, rel=1e-5)
    assert table.loc["linear", "predicted_step_factor"] == 0.8 and table.loc["linear", "step_factor@0"] == pytest.approx(0.8, rel=1e-5)
    assert table.loc["linear", "step_departs"] == "no"
    assert table.loc["tight", "predicted_step_factor"] == 0.9 and 0.9 * (1 - 1e-3) < table.loc["tight", "step_factor@0"] <= 0.9
    assert table.loc["loose", "predicted_step_factor"] == 0.9 and table.loc["loose", "step_factor@0"] < 0.9 and table.loc["loose", "step_departs"] == "no"
    assert math.isnan(table.loc["lstm", "predicted_step_factor"]) and pd.isna(table.loc["lstm", "step_departs"])
    notes = comparison.notes
    assert "tight: predicted_step_factor 0.9 is Pascanu's upper bound gamma * lambda_1 = 1 * 0.9, not an estimate: step_departs only when step_factor@0 exceeds it" in notes
    assert not any(note.startswith("linear: predicted_step_factor") for note in notes)  # a prediction, not a bound
    assert any(note.startswith("lstm: no predicted_step_factor: σ(forget bias) is the direct cell path's factor alone") for note in notes)
    assert "linear: no predicted_factor: a recurrent stack is predicted along time only (predicted_step_factor)" in notes
    # feed-forward comparisons keep their columns
    assert "predicted_step_factor" not in compare_runs([one_run(tmp_path / "ff", [1.0, 1.0, 1.0], **HE)], [0], theory=True).table


def test_a_run_above_the_bound_departs(tmp_path):
    import yaml

    run = recurrent_run(tmp_path, "tampered", activation="identity", gain=1.1)  # measured 1.1
    config = yaml.safe_load((run.dir / "config.yaml").read_text())
    config["model"]["activation"] = {"name": "tanh"}
    config["model"]["init"]["recurrent"]["gain"] = 1.0  # the config now claims a bound of 1 * 1.0
    (run.dir / "config.yaml").write_text(yaml.safe_dump(config))
    from gradlab.records.run import load_run

    table = compare_runs([load_run(run.dir)], [0], theory=True).table
    assert table["predicted_step_factor"][0] == 1.0 and table["step_departs"][0] == "yes"
    assert compare_runs([load_run(run.dir)], [0], theory=True, tolerance=0.2).table["step_departs"][0] == "no"


def test_explain_says_a_bound_departs_only_above_it(tmp_path):
    glossary = dict(explain())
    assert "Pascanu, Mikolov & Bengio 2013's bound gamma * lambda_1" in glossary["predicted_step_factor"]
    assert "yes only when step_factor@0 exceeds it" in glossary["step_departs"] and "default tolerance 0.05" in glossary["step_departs"]


def test_the_terminal_table_shows_the_theory_beside_step_0(tmp_path, invoke):
    one_run(tmp_path, [4.0, 2.0, 1.0], name="grows", **HE)
    result = invoke("compare", tmp_path, "--theory", "--step", "0")
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines[lines.index("  verdict                      stable (×2/layer, ×e every 1.4 layers)"):lines.index("  training")] == [
        "  verdict                      stable (×2/layer, ×e every 1.4 layers)",
        "",
        "  theory (at step 0)",
        "  predicted_factor             1",
        "  departs                      yes",
        "",
    ]
