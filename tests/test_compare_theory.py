"""`gradlab compare --theory`: predicted_factor beside the measured layer_factor and the departs
flag, from the run's config alone; `--explain` states formula, paper and tolerance; exact output."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.compare import compare_runs, explain
from gradlab.predict import DEPARTS_TOLERANCE, departs
from run_factory import one_run

HE = {"model__activation": "relu", "model__init": {"weight": "kaiming_normal", "bias": "zeros"}}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


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


def test_cli_csv_exact(tmp_path):
    one_run(tmp_path, [4.0, 2.0, 1.0], name="grows", **HE)
    result = invoke("compare", tmp_path, "--theory", "--format", "csv", "--step", "0")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.strip().splitlines()
    assert header.endswith(",layer_factor@0,weight_grad_gain@0,dead_frac@0,saturated_frac@0,verdict@0,final_train_loss,final_train_accuracy,final_test_loss,final_test_accuracy,predicted_factor,departs")
    assert row == "grows,completed,1,10,4.0,1.0,4.0,2.0,1.0,0.0,0.0,stable,0.75,0.625,0.8,0.6,1.0,yes"


def test_explain_gives_formula_paper_and_tolerance(tmp_path):
    one_run(tmp_path, [1.0, 1.0, 1.0], **HE)
    result = invoke("compare", tmp_path, "--theory", "--explain", "--tolerance", "0.1")
    assert result.exit_code == 0, result.output
    assert "predicted_factor: the per-layer factor theory predicts at initialization" in result.output
    assert "Schoenholz et al. 2017" in result.output and "Yang et al. 2019" in result.output
    assert "(tolerance 0.1)" in result.output
    glossary = dict(explain())
    assert "with --theory" in glossary["departs"]


def test_bad_tolerance_is_one_line(tmp_path):
    one_run(tmp_path, [1.0, 1.0, 1.0], **HE)
    result = invoke("compare", tmp_path, "--theory", "--tolerance", "-1")
    assert result.exit_code == 2 and result.output == "error: --tolerance: got -1; expected a number > 0\n"
