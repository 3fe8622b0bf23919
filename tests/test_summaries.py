"""gradlab.analysis.summaries: the profile at a step, final metrics, gains, factors and verdicts.

Synthetic runs (written from chosen numbers) pin the exact arithmetic; test_compare.py checks the
summaries of real runs against an independent recomputation from their CSV files.
"""

from __future__ import annotations

import csv
import io
import math

import pytest

from gradlab.analysis import summaries
from gradlab.vocab.errors import RunError
from gradlab.records.run import load_runs
from run_factory import one_run


def test_profile_matches_the_definitions(tmp_path):
    run = one_run(tmp_path, [1 / 8, 1 / 4, 1 / 2, 1.0], weight_grad=[2.0, 1.0, 1.0, 0.5],
                  dead=[0.0, 0.25, 0.5, 0.0], saturated=[0.75, 0.125, 0.0, 0.0])  # fmt: skip
    assert summaries.profile_at(run, 0) == {
        "first_delta_norm": 0.125,
        "last_delta_norm": 1.0,  # the last *hidden* layer; the head's 99.0 is not it
        "gain": 0.125,
        "layer_factor": 0.5,  # 0.125 ** (1/3)
        "weight_grad_gain": 4.0,
        "dead_frac": 0.5,
        "inactive_frac": math.nan,  # not recorded by this run: NaN, never 0
        "saturated_frac": 0.75,
        "bn_stat_distance": math.nan,  # no BatchNorm: NaN
        **dict.fromkeys(("first_gsnr", "last_gsnr", "first_grad_noise_scale", "last_grad_noise_scale"), math.nan),  # no noise group
        "s2": math.nan,  # no log.jacobian
        "alpha_min": math.nan, "alpha_max": math.nan,  # no spectrum group
    }


def test_inactive_frac_is_the_largest_over_the_hidden_layers_at_the_step(tmp_path):
    from run_factory import layer_rows, resolved_config, write_run

    layers = []
    for step, inactive in ((0, [0.5, 0.75, 0.25]), (5, [0.125, 0.375, 0.625])):
        rows = layer_rows(step, [1.0, 1.0, 1.0])
        for row in rows:
            row["inactive_frac"] = inactive[row["layer"]] if row["kind"] == "hidden" else 0.99  # the head's is no hidden layer's
        layers += rows
    write_run(tmp_path, resolved_config("relu", 0, depth=3, model__activation="relu"), layers, [], run_id="relu0")
    [run] = load_runs([tmp_path]).runs
    assert summaries.profile_at(run, 0)["inactive_frac"] == 0.75
    assert summaries.profile_at(run, "last")["inactive_frac"] == 0.625


def test_the_profile_computes_every_declared_profile_quantity(tmp_path):
    from gradlab.vocab.quantities import PROFILE_QUANTITIES

    assert list(summaries.profile_at(one_run(tmp_path, [1.0, 2.0]), 0)) == list(PROFILE_QUANTITIES)


def test_last_step_is_the_largest_step_in_layers_csv(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0, 1.0], last=[1.0, 2.0, 4.0])
    assert run.last_step == 10
    assert summaries.profile_at(run, "last")["gain"] == 0.25
    assert summaries.profile_at(run, 10) == summaries.profile_at(run, "last")


def test_empty_values_stay_empty_never_zero(tmp_path):
    from gradlab.analysis import compare
    from gradlab.show import display

    run = one_run(tmp_path, [math.nan, 1.0, 2.0], dead=[math.nan] * 3)
    profile = summaries.profile_at(run, 0)
    assert math.isnan(profile["first_delta_norm"]) and math.isnan(profile["gain"]) and math.isnan(profile["layer_factor"])
    assert math.isnan(profile["dead_frac"])
    assert profile["last_delta_norm"] == 2.0
    assert summaries.verdict(profile["gain"]) is None
    row = next(csv.DictReader(io.StringIO(display.to_csv(compare.compare_runs([run], steps=[0])))))
    assert row["gain@0"] == "" and row["dead_frac@0"] == "" and row["verdict@0"] == ""


def test_zero_deltas_are_extreme_gains_not_errors(tmp_path):
    assert summaries.profile_at(one_run(tmp_path / "a", [0.0, 1.0, 1.0]), 0)["gain"] == 0.0
    assert summaries.profile_at(one_run(tmp_path / "b", [1.0, 1.0, 0.0]), 0)["gain"] == math.inf
    assert math.isnan(summaries.profile_at(one_run(tmp_path / "c", [0.0, 1.0, 0.0]), 0)["gain"])
    assert summaries.verdict(0.0) == "vanishing" and summaries.verdict(math.inf) == "exploding"


def test_one_hidden_layer_has_no_per_layer_factor(tmp_path):
    profile = summaries.profile_at(one_run(tmp_path, [3.0]), 0)
    assert profile["gain"] == 1.0 and math.isnan(profile["layer_factor"])


def test_verdict_thresholds_are_strict_inequalities_with_defaults_in_one_place():
    assert summaries.DEFAULT_THRESHOLDS == summaries.Thresholds(vanish=1e-2, explode=1e2)
    assert summaries.verdict(0.0099) == "vanishing"
    assert summaries.verdict(0.01) == "stable"
    assert summaries.verdict(100.0) == "stable"
    assert summaries.verdict(100.1) == "exploding"
    assert summaries.verdict(0.5, summaries.Thresholds(vanish=0.9, explode=10)) == "vanishing"
    with pytest.raises(RunError, match="vanish < explode"):
        summaries.Thresholds(vanish=10, explode=1)


def test_a_step_that_was_not_logged_is_empty_and_said(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0])
    assert all(math.isnan(v) for v in summaries.profile_at(run, 7).values())
    assert summaries.missing_step_notes([run], [7]) == [f"{run.dir}: step 7 was not logged (logged: 0, 10); its cells are empty"]


def test_final_metrics_and_steps_to_target(tmp_path):
    from gradlab.vocab.quantities import FINAL_QUANTITIES

    run = one_run(tmp_path, [1.0, 1.0])
    finals = summaries.final_metrics(run, target_loss=1.5)
    assert finals == {"final_train_loss": 0.75, "final_train_accuracy": 0.625, "final_test_loss": 0.8,
                      "final_test_accuracy": 0.6, "final_test_batch_stats_accuracy": math.nan, "steps_to_target": 5.0}  # fmt: skip
    assert list(finals) == list(FINAL_QUANTITIES)
    assert math.isnan(summaries.final_metrics(run, target_loss=0.1)["steps_to_target"])  # never reached
    assert math.isnan(summaries.final_metrics(run)["steps_to_target"])


def test_a_diverged_run_is_judged_on_its_gain_at_each_step(tmp_path):
    # issue 11: verdict@0 describes step 0; the run's fate is its status
    run = one_run(tmp_path, [1.0, 1.0], status="diverged")
    row = summaries.summarize_run(run, steps=[0, "last"])
    assert row["verdict@0"] == "stable (×1/layer)" and row["verdict@last"] == "stable (×1/layer)" and row["status"] == "diverged"
    exploding = one_run(tmp_path / "x", [1e6, 1.0], status="diverged")
    assert summaries.summarize_run(exploding, steps=[0])["verdict@0"] == "exploding (×1e+06/layer, ×e every 0.1 layers)"


def test_the_gain_is_taken_on_delta_rms_when_recorded(tmp_path):
    import pandas as pd

    run = one_run(tmp_path, [1.0, 1.0, 1.0])
    layers = run.layers.copy()
    hidden = layers["kind"] == "hidden"
    layers["delta_rms"] = float("nan")
    layers.loc[hidden, "delta_rms"] = layers.loc[hidden, "layer"].map({0: 0.5, 1: 1.0, 2: 2.0})
    run.layers = pd.DataFrame(layers)
    profile = summaries.profile_at(run, 0)
    assert profile["gain"] == 0.25 and profile["first_delta_norm"] == 1.0  # delta_norm's ratio would be 1
