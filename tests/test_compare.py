"""gradlab.analysis.compare: the comparison table (one row per configuration, seeds grouped) and what its
columns mean (`gradlab compare --explain`, from the declarations of gradlab.vocab.quantities).

Synthetic runs (written from chosen numbers) pin the exact arithmetic; real runs made by the
training loop are checked against an independent recomputation from their CSV files.
"""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from gradlab.analysis import compare
from gradlab.show import display
from gradlab.vocab import quantities
from gradlab.records import run as records
from gradlab.analysis import summaries
from run_factory import EXPLODING, STABLE, STABLE_30, VANISHING, one_run, real_run

# --------------------------------------------------------------------------------------------
# Seed groups
# --------------------------------------------------------------------------------------------


def test_runs_that_differ_only_by_seed_form_one_row(tmp_path):
    firsts = [0.125, 0.25, 0.5]
    runs = [one_run(tmp_path, [f, 1.0, 2.0], name="sig", seed=s, run_id=f"a{s}", model__activation="sigmoid")
            for s, f in enumerate(firsts)]  # fmt: skip
    runs.append(one_run(tmp_path, [1.0, 1.0, 1.0], name="relu", run_id="b0"))
    runs[2].meta["status"] = "diverged"
    comparison = compare.compare_runs(runs, steps=[0])
    table = comparison.table
    assert list(table["label"]) == ["sig", "relu"]
    assert list(table["model.activation"]) == ["sigmoid", "relu"]
    assert list(table["seeds"]) == [3, 1]
    gains = [f / 2.0 for f in firsts]  # 1/16, 1/8, 1/4: geometric mean 1/8, spread a factor of 2 (issue 11)
    assert table.at[0, "gain@0"] == pytest.approx(0.125, rel=1e-15) == math.exp(statistics.mean(map(math.log, gains)))
    assert table.at[0, "gain@0_std"] == pytest.approx(2.0, rel=1e-15)
    assert table.at[0, "first_delta_norm@0"] == pytest.approx(0.25, rel=1e-15)  # geometric too
    assert table.at[0, "final_test_loss"] == 0.8 and table.at[0, "final_test_loss_std"] == 0.0
    assert math.isnan(table.at[1, "gain@0_std"])  # one seed: no spread to speak of
    assert table.at[0, "status"] == "2 completed, 1 diverged"
    assert comparison.runs[0] == [r.dir for r in runs[:3]]
    # markdown shows a geometric mean ×/÷ its spread for gains and norms, mean ± std otherwise, at 3 digits
    assert "| sig | sigmoid | 2 completed, 1 diverged | 3 | 10 | 0.25 ×/÷ 2 | 2 ×/÷ 1 | 0.125 ×/÷ 2 |" in display.to_markdown(comparison)


def test_a_row_of_seeds_is_judged_on_its_geometric_mean_gain(tmp_path):
    # gains 1 and 1e-4: geometric mean 1e-2 (stable at the vanish threshold 1e-2); the linear mean 0.5 hid 1e-4
    # (the gain thresholds alone, depth_scale 0: in two layers a factor 0.01 is vanishing by its rate)
    gain_alone = summaries.Thresholds(depth_scale=0)
    runs = [one_run(tmp_path, [1.0, 1.0], seed=0, run_id="a"), one_run(tmp_path, [1e-4, 1.0], seed=1, run_id="b")]
    table = compare.compare_runs(runs, steps=[0], thresholds=gain_alone).table
    assert table.at[0, "gain@0"] == pytest.approx(1e-2, rel=1e-12) and table.at[0, "verdict@0"] == "stable (×0.01/layer, 1/e every 0.2 layers)"
    assert compare.compare_runs(runs, steps=[0]).table.at[0, "verdict@0"] == "vanishing (×0.01/layer, 1/e every 0.2 layers)"
    runs.append(one_run(tmp_path, [1e-6, 1.0], seed=2, run_id="c"))  # geometric mean 1e-10 ** (1/3)
    table = compare.compare_runs(runs, steps=[0], thresholds=gain_alone).table
    assert table.at[0, "gain@0"] == pytest.approx(10 ** (-10 / 3), rel=1e-12) and summaries.word_of(table.at[0, "verdict@0"]) == "vanishing"


def test_a_diverged_row_says_its_finals_are_from_before_it_diverged(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0], run_id="a")
    run.meta["status"] = "diverged"
    notes = compare.compare_runs([run], steps=[0]).notes
    assert any("final_* values are the last ones logged before it diverged (step 10)" in note for note in notes)


def test_labels_stay_unique(tmp_path):
    runs = [one_run(tmp_path, [1.0, 1.0], run_id="aaaaaa"), one_run(tmp_path, [1.0, 1.0], run_id="bbbbbb", model__width=16)]
    # built from the config values that tell the rows apart, not from folder names (issue 11)
    assert list(compare.compare_runs(runs).table["label"]) == ["exp#width=8", "exp#width=16"]


def test_a_step_that_was_not_logged_is_empty_and_said(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0])
    comparison = compare.compare_runs([run], steps=[7])
    assert comparison.notes == [f"{run.dir}: step 7 was not logged (logged: 0, 10); its cells are empty"]
    assert comparison.table["gain@7"].isna().all()


# --------------------------------------------------------------------------------------------
# What the columns mean
# --------------------------------------------------------------------------------------------


def test_explain_describes_every_column(tmp_path):
    runs = [one_run(tmp_path, [1.0, 1.0], run_id="a"), one_run(tmp_path, [1.0, 1.0], run_id="b", seed=1)]
    comparison = compare.compare_runs(runs, target_loss=0.5)
    explained = dict(compare.explain(comparison))
    assert set(comparison.value_columns()) <= set(explained)
    assert "<column>_std" in explained
    assert "target loss 0.5" in explained["steps_to_target"]
    assert "at step 0" in explained["gain@0"] and "gain across the stack" in explained["gain@0"]
    generic = dict(compare.explain())
    for quantity in quantities.PROFILE_QUANTITIES:
        assert f"{quantity}@<step>" in generic
    for quantity in quantities.FINAL_QUANTITIES:
        assert quantity in generic


def test_explain_says_what_the_declarations_say(tmp_path, invoke):
    """`gradlab compare --explain` prints each quantity's declared meaning, word for word."""
    generic = dict(compare.explain())
    for quantity, meaning in quantities.PROFILE_QUANTITIES.items():
        assert generic[f"{quantity}@<step>"] == meaning
    for quantity, meaning in quantities.FINAL_QUANTITIES.items():
        assert generic[quantity] == meaning
    run = one_run(tmp_path, [1.0, 2.0])
    explained = dict(compare.explain(compare.compare_runs([run], steps=[0, "last"])))
    for quantity, meaning in quantities.PROFILE_QUANTITIES.items():
        if quantity in quantities.OPTIONAL_SUMMARIES:  # (a run without BatchNorm: no column; tests/test_batchnorm_summaries.py)
            assert f"{quantity}@0" not in explained
            continue
        assert explained[f"{quantity}@0"] == f"{meaning} (at step 0: the network at initialization)"
        assert explained[f"{quantity}@last"] == f"{meaning} (at each run's last logged step)"

    # and at the command line, one line per column
    printed = invoke("compare", "--explain", terminal_width=1000)
    assert printed.exit_code == 0
    lines = printed.stdout.splitlines()
    for quantity, meaning in quantities.PROFILE_QUANTITIES.items():
        assert f"{quantity}@<step>: {meaning}" in lines
    for quantity, meaning in quantities.FINAL_QUANTITIES.items():
        assert f"{quantity}: {meaning}" in lines


def test_every_summary_column_is_declared(tmp_path):
    row = summaries.summarize_run(one_run(tmp_path, [1.0, 2.0]), steps=[0], target_loss=1.0)
    computed = {column.partition("@")[0] for column in row} - {"status", "last_step", "verdict"}
    assert computed == set(quantities.SUMMARY_QUANTITIES) - set(quantities.TIME_QUANTITIES)  # a feed-forward run: no time axis


# --------------------------------------------------------------------------------------------
# Real runs of the training loop, recomputed from their CSV files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    runs = {}
    for name, model in (("vanishing", VANISHING), ("stable", STABLE)):
        runs[name] = [real_run(out, name, model, seed=seed) for seed in (0, 1)]
    runs["exploding"] = [real_run(out, "exploding", EXPLODING, steps=10)]
    runs["stable30"] = [real_run(out, "stable30", STABLE_30, steps=10)]
    return out, runs


def recompute(run_dir: Path, step) -> dict[str, float]:
    """The profile from layers.csv with the csv module and plain arithmetic (no gradlab code)."""
    with open(run_dir / "layers.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    if step == "last":
        step = max(int(r["step"]) for r in rows)
    hidden = [r for r in rows if r["kind"] == "hidden"]
    depth = len({r["layer"] for r in hidden})
    at = {int(r["layer"]): r for r in hidden if int(r["step"]) == step}
    first, last = at[0], at[depth - 1]
    gain = float(first["delta_rms"]) / float(last["delta_rms"])  # issue 11: the gain is on delta_rms

    def largest(column):
        values = [float(r[column]) for r in at.values() if r[column] != ""]
        return max(values) if values else math.nan

    return {
        "first_delta_norm": float(first["delta_norm"]),
        "last_delta_norm": float(last["delta_norm"]),
        "gain": gain,
        "layer_factor": gain ** (1 / (depth - 1)),
        "weight_grad_gain": float(first["weight_grad_norm"]) / float(last["weight_grad_norm"]),
        "dead_frac": largest("dead_frac"),
        "inactive_frac": largest("inactive_frac"),  # empty for sigmoid and tanh
        "saturated_frac": largest("saturated_frac"),  # empty for the ReLU family
        "bn_stat_distance": largest("bn_stat_distance") if "bn_stat_distance" in first else math.nan,  # BatchNorm runs only
        **{f"{end}_{column}": float(row[column]) if row.get(column) else math.nan  # noise group runs only
           for end, row in (("first", first), ("last", last)) for column in ("gsnr", "grad_noise_scale")},
        "s2": math.nan,  # jacobian.csv's (these runs have no log.jacobian)
        # the spectrum group's (runs without it: empty)
        "alpha_min": min((float(r["weight_alpha"]) for r in at.values() if r.get("weight_alpha")), default=math.nan),
        "alpha_max": max((float(r["weight_alpha"]) for r in at.values() if r.get("weight_alpha")), default=math.nan),
    }


def recompute_finals(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    out = {}
    for split in ("train", "test"):
        last = max((r for r in rows if r["split"] == split), key=lambda r: int(r["step"]))
        out[f"final_{split}_loss"], out[f"final_{split}_accuracy"] = float(last["loss"]), float(last["accuracy"])
    return out


def test_compare_on_real_runs_matches_a_recomputation_from_the_csvs(real_runs):
    out, runs = real_runs
    comparison = compare.compare_runs(records.load_runs([out]).runs)
    table = comparison.table.set_index("label")
    assert sorted(table.index) == ["exploding", "stable", "stable30", "vanishing"]
    assert comparison.config_keys == ["model.depth", "model.activation", "model.norm", "model.init.weight", "train.steps"]
    for label, run_dirs in runs.items():
        assert table.at[label, "seeds"] == len(run_dirs)
        for step in (0, "last"):
            per_seed = [recompute(d, step) for d in run_dirs]
            for quantity in quantities.PROFILE_QUANTITIES:
                values = [seed[quantity] for seed in per_seed]
                column = summaries.column_name(quantity, step)
                if column not in table and quantity in quantities.OPTIONAL_SUMMARIES:  # no run has it: left out
                    assert all(math.isnan(v) for v in values), (label, column)
                    continue
                if any(math.isnan(v) for v in values):
                    assert math.isnan(table.at[label, column]), (label, column)
                    continue
                geometric = quantity in compare.GEOMETRIC  # gains and ratios: mean and spread of the log
                logs = [math.log(v) for v in values] if geometric else values
                mean = math.exp(statistics.mean(logs)) if geometric else statistics.mean(values)
                assert table.at[label, column] == pytest.approx(mean, rel=1e-12, abs=1e-300), (label, column)
                if len(values) > 1:
                    spread = math.exp(statistics.stdev(logs)) if geometric else statistics.stdev(values)
                    assert table.at[label, f"{column}_std"] == pytest.approx(spread, rel=1e-9, abs=1e-300)
        finals = [recompute_finals(d) for d in run_dirs]
        for quantity in ("final_train_loss", "final_train_accuracy", "final_test_loss", "final_test_accuracy"):
            assert table.at[label, quantity] == pytest.approx(statistics.mean(f[quantity] for f in finals), rel=1e-12)


def test_verdicts_of_the_three_regimes_at_initialization(real_runs):
    out, runs = real_runs
    comparison = compare.compare_runs(records.load_runs([out]).runs, steps=[0])
    verdicts = dict(zip(comparison.table["label"], comparison.table["verdict@0"].map(summaries.word_of)))
    assert verdicts == {"vanishing": "vanishing", "stable": "stable", "exploding": "exploding", "stable30": "stable"}
    gains = dict(zip(comparison.table["label"], comparison.table["gain@0"]))
    # Well clear of the thresholds, not borderline: sigmoid ~1e-6, BatchNorm ~200x.
    assert gains["vanishing"] < 1e-4 and gains["exploding"] > 150 and 0.1 < gains["stable"] < 10


def test_reading_and_showing_records_never_imports_torch():
    modules = "gradlab.records.run, gradlab.analysis.summaries, gradlab.analysis.configdiff, gradlab.analysis.compare, gradlab.show.display, gradlab.analysis.expectations, gradlab.show.plots, gradlab.cli.app"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_geometric_means_at_the_edges():
    assert compare._geometric_mean_spread([0.0, 1.0])[0] == 0.0
    assert compare._geometric_mean_spread([math.inf, 1.0])[0] == math.inf
    assert math.isnan(compare._geometric_mean_spread([0.0, math.inf])[0])
    assert math.isnan(compare._geometric_mean_spread([-1.0, 1.0])[0]) and math.isnan(compare._geometric_mean_spread([math.nan, 1.0])[0])
    mean, spread = compare._geometric_mean_spread([1e-9, 1e-7])
    assert mean == pytest.approx(1e-8, rel=1e-12) and spread == pytest.approx(10 ** math.sqrt(2), rel=1e-12)
    one = compare._geometric_mean_spread([0.5])
    assert one[0] == 0.5 and math.isnan(one[1])
