"""gradlab.analysis: summaries, verdicts, config differences, seed groups, loading and rendering.

Synthetic runs (written from chosen numbers) pin the exact arithmetic; real runs made by the
training loop are checked against an independent recomputation from their CSV files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from gradlab import analysis
from gradlab.errors import RunError
from run_factory import EXPLODING, STABLE, STABLE_30, VANISHING, layer_rows, metric_rows, real_run, resolved_config, write_run

METRICS = metric_rows({0: (2.0, 0.25), 5: (1.5, 0.5), 10: (0.75, 0.625)}, {0: (2.1, 0.2), 10: (0.8, 0.6)})


def one_run(tmp_path, delta, *, weight_grad=None, dead=None, saturated=None, last=None, status="completed", name="exp", seed=0, run_id="000000", **config):
    """A run with the profile `delta` (and friends) at step 0 and `last` (default: the same) at step 10."""
    layers = layer_rows(0, delta, weight_grad, dead, saturated) + layer_rows(10, last or delta, weight_grad, dead, saturated)
    cfg = resolved_config(name, seed, depth=len(delta), **config)
    return analysis.load_run(write_run(tmp_path, cfg, layers, METRICS, status=status, run_id=run_id))


# --------------------------------------------------------------------------------------------
# The quantities on numbers chosen by hand
# --------------------------------------------------------------------------------------------


def test_profile_matches_the_definitions(tmp_path):
    run = one_run(tmp_path, [1 / 8, 1 / 4, 1 / 2, 1.0], weight_grad=[2.0, 1.0, 1.0, 0.5],
                  dead=[0.0, 0.25, 0.5, 0.0], saturated=[0.75, 0.125, 0.0, 0.0])  # fmt: skip
    assert analysis.profile_at(run, 0) == {
        "first_delta_norm": 0.125,
        "last_delta_norm": 1.0,  # the last *hidden* layer; the head's 99.0 is not it
        "gain": 0.125,
        "layer_factor": 0.5,  # 0.125 ** (1/3)
        "weight_grad_gain": 4.0,
        "dead_frac": 0.5,
        "saturated_frac": 0.75,
    }


def test_last_step_is_the_largest_step_in_layers_csv(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0, 1.0], last=[1.0, 2.0, 4.0])
    assert run.last_step == 10
    assert analysis.profile_at(run, "last")["gain"] == 0.25
    assert analysis.profile_at(run, 10) == analysis.profile_at(run, "last")


def test_empty_values_stay_empty_never_zero(tmp_path):
    run = one_run(tmp_path, [math.nan, 1.0, 2.0], dead=[math.nan] * 3)
    profile = analysis.profile_at(run, 0)
    assert math.isnan(profile["first_delta_norm"]) and math.isnan(profile["gain"]) and math.isnan(profile["layer_factor"])
    assert math.isnan(profile["dead_frac"])
    assert profile["last_delta_norm"] == 2.0
    assert analysis.verdict(profile["gain"]) is None
    row = next(csv.DictReader(io.StringIO(analysis.to_csv(analysis.compare_runs([run], steps=[0])))))
    assert row["gain@0"] == "" and row["dead_frac@0"] == "" and row["verdict@0"] == ""


def test_zero_deltas_are_extreme_gains_not_errors(tmp_path):
    assert analysis.profile_at(one_run(tmp_path / "a", [0.0, 1.0, 1.0]), 0)["gain"] == 0.0
    assert analysis.profile_at(one_run(tmp_path / "b", [1.0, 1.0, 0.0]), 0)["gain"] == math.inf
    assert math.isnan(analysis.profile_at(one_run(tmp_path / "c", [0.0, 1.0, 0.0]), 0)["gain"])
    assert analysis.verdict(0.0) == "vanishing" and analysis.verdict(math.inf) == "exploding"


def test_one_hidden_layer_has_no_per_layer_factor(tmp_path):
    profile = analysis.profile_at(one_run(tmp_path, [3.0]), 0)
    assert profile["gain"] == 1.0 and math.isnan(profile["layer_factor"])


def test_verdict_thresholds_are_strict_inequalities_with_defaults_in_one_place():
    assert analysis.DEFAULT_THRESHOLDS == analysis.Thresholds(vanish=1e-2, explode=1e2)
    assert analysis.verdict(0.0099) == "vanishing"
    assert analysis.verdict(0.01) == "stable"
    assert analysis.verdict(100.0) == "stable"
    assert analysis.verdict(100.1) == "exploding"
    assert analysis.verdict(0.5, analysis.Thresholds(vanish=0.9, explode=10)) == "vanishing"
    with pytest.raises(RunError, match="vanish < explode"):
        analysis.Thresholds(vanish=10, explode=1)


def test_a_step_that_was_not_logged_is_empty_and_said(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0])
    assert all(math.isnan(v) for v in analysis.profile_at(run, 7).values())
    comparison = analysis.compare_runs([run], steps=[7])
    assert comparison.notes == [f"{run.dir}: step 7 was not logged (logged: 0, 10); its cells are empty"]


def test_final_metrics_and_steps_to_target(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0])
    finals = analysis.final_metrics(run, target_loss=1.5)
    assert finals == {"final_train_loss": 0.75, "final_train_accuracy": 0.625, "final_test_loss": 0.8,
                      "final_test_accuracy": 0.6, "steps_to_target": 5.0}  # fmt: skip
    assert math.isnan(analysis.final_metrics(run, target_loss=0.1)["steps_to_target"])  # never reached
    assert math.isnan(analysis.final_metrics(run)["steps_to_target"])


def test_a_diverged_run_is_diverged_at_its_last_step_only(tmp_path):
    run = one_run(tmp_path, [1.0, 1.0], status="diverged")
    row = analysis.summarize_run(run, steps=[0, "last"])
    assert row["verdict@0"] == "stable" and row["verdict@last"] == "diverged"


# --------------------------------------------------------------------------------------------
# Config differences
# --------------------------------------------------------------------------------------------


def test_bookkeeping_keys_do_not_differ():
    a = resolved_config("a", seed=0, out="x")
    b = resolved_config("b", seed=1, out="y", device="cpu", train__eval_every=7, log__every=3)
    assert analysis.differing_keys([a, b]) == []
    c = resolved_config("c", model__width=16)
    assert analysis.differing_keys([a, c]) == ["model.width"]


def test_components_show_their_name_and_the_parameters_that_differ():
    relu = resolved_config(model__activation="relu")
    leaky = resolved_config(model__activation={"name": "leaky_relu", "negative_slope": 0.2})
    leakier = resolved_config(model__activation={"name": "leaky_relu", "negative_slope": 0.01})
    runs = [relu, leaky, leakier]
    assert analysis.differing_keys(runs) == ["model.activation"]
    flat = [analysis.flatten_config(c)["model.activation"] for c in runs]
    assert analysis.display_values("model.activation", flat) == ["relu", "leaky_relu(negative_slope=0.2)", "leaky_relu(negative_slope=0.01)"]

    # one component, several parameter sets: only what differs
    he = resolved_config(model__init={"weight": "kaiming_normal"})
    he_out = resolved_config(model__init={"weight": {"name": "kaiming_normal", "mode": "fan_out"}})
    lecun = resolved_config(model__init={"weight": "lecun_normal"})
    weights = [analysis.flatten_config(c)["model.init.weight"] for c in (he, he_out, lecun)]
    assert analysis.display_values("model.init.weight", weights) == ["kaiming_normal(mode=fan_in)", "kaiming_normal(mode=fan_out)", "lecun_normal"]
    # a component used with one parameter set shows all of them
    assert analysis.display_values("model.init.weight", [weights[0], weights[2]]) == [
        "kaiming_normal(a=0, mode=fan_in, nonlinearity=relu)",
        "lecun_normal",
    ]
    norms = [{"name": "batchnorm", "placement": "pre", "momentum": 0.1}, {"name": "batchnorm", "placement": "post", "momentum": 0.1}, {"name": "none"}]
    assert analysis.display_values("model.norm", norms) == ["batchnorm(placement=pre)", "batchnorm(placement=post)", "none"]


def test_component_keys_are_the_component_fields_of_the_config():
    config = resolved_config()
    flat = analysis.flatten_config(config)
    for key in analysis.COMPONENT_KEYS:
        assert isinstance(flat[key], dict) and "name" in flat[key], key

    def mappings_with_name(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                if "name" in value:
                    yield f"{prefix}{key}"
                yield from mappings_with_name(value, f"{prefix}{key}.")

    # Every {name: ...} mapping of the resolved config is a component, except the data section.
    assert set(mappings_with_name(config)) - {"data"} == set(analysis.COMPONENT_KEYS)


# --------------------------------------------------------------------------------------------
# Seed groups
# --------------------------------------------------------------------------------------------


def test_runs_that_differ_only_by_seed_form_one_row(tmp_path):
    firsts = [0.125, 0.25, 0.5]
    runs = [one_run(tmp_path, [f, 1.0, 2.0], name="sig", seed=s, run_id=f"a{s}", model__activation="sigmoid")
            for s, f in enumerate(firsts)]  # fmt: skip
    runs.append(one_run(tmp_path, [1.0, 1.0, 1.0], name="relu", run_id="b0"))
    runs[2].meta["status"] = "diverged"
    comparison = analysis.compare_runs(runs, steps=[0])
    table = comparison.table
    assert list(table["label"]) == ["sig", "relu"]
    assert list(table["model.activation"]) == ["sigmoid", "relu"]
    assert list(table["seeds"]) == [3, 1]
    gains = [f / 2.0 for f in firsts]
    assert table.at[0, "gain@0"] == statistics.mean(gains) == 0.875 / 6
    assert table.at[0, "gain@0_std"] == pytest.approx(math.sqrt(sum((g - 0.875 / 6) ** 2 for g in gains) / 2), rel=1e-15)
    assert table.at[0, "final_test_loss"] == 0.8 and table.at[0, "final_test_loss_std"] == 0.0
    assert math.isnan(table.at[1, "gain@0_std"])  # one seed: no spread to speak of
    assert table.at[0, "status"] == "2 completed, 1 diverged"
    assert comparison.runs[0] == [r.dir for r in runs[:3]]
    # markdown shows mean ± std at 3 digits
    assert "| sig | sigmoid | 2 completed, 1 diverged | 3 | 10 | 0.292 ± 0.191 | 2 ± 0 | 0.146 ± 0.0955 |" in analysis.to_markdown(comparison)


def test_seeds_with_different_verdicts_are_mixed(tmp_path):
    runs = [one_run(tmp_path, [1.0, 1.0], seed=0, run_id="a"), one_run(tmp_path, [1e-4, 1.0], seed=1, run_id="b")]
    assert analysis.compare_runs(runs, steps=[0]).table.at[0, "verdict@0"] == "mixed: 1 stable, 1 vanishing"


def test_labels_stay_unique(tmp_path):
    runs = [one_run(tmp_path, [1.0, 1.0], run_id="aaaaaa"), one_run(tmp_path, [1.0, 1.0], run_id="bbbbbb", model__width=16)]
    assert list(analysis.compare_runs(runs).table["label"]) == ["exp#aaaaaa", "exp#bbbbbb"]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_runs_are_named_and_the_rest_compared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = one_run(Path("runs"), [1.0, 1.0], run_id="good00").dir
    no_layers = one_run(Path("runs"), [1.0, 1.0], run_id="nolayr").dir
    (no_layers / "layers.csv").unlink()
    header_only = one_run(Path("runs"), [1.0, 1.0], run_id="header").dir
    (header_only / "layers.csv").write_text(",".join(analysis.records.LAYERS_COLUMNS) + "\n")
    cut = one_run(Path("runs"), [1.0, 2.0], run_id="cutoff").dir
    text = (cut / "layers.csv").read_text()
    (cut / "layers.csv").write_text(text[: text.rindex("\n") - 5])  # the head row at step 10, half written
    running = one_run(Path("runs"), [1.0, 1.0], status="running", run_id="runnin").dir
    Path("empty").mkdir()

    loaded = analysis.load_runs(["runs", "empty", "nowhere"])
    assert [run.dir for run in loaded.runs] == [cut, good, running]
    assert loaded.problems == [
        "empty: no runs found (a run directory holds meta.json)",
        "nowhere: does not exist",
        f"{cut}: layers.csv ends in a partial row (the run was cut off while writing it); that row is left out",
        f"{cut}: step 10 of layers.csv has only 2 of 3 layers; that step is left out",
        f"{header_only}: layers.csv has no rows (the run logged nothing); skipped",
        f"{no_layers}: no layers.csv; skipped",
        f"{running}: still marked running (in progress, or killed before it could finish); compared up to step 10",
    ]
    assert loaded.runs[0].last_step == 0


def test_nothing_readable_is_an_error_naming_every_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("empty").mkdir()
    with pytest.raises(RunError) as info:
        analysis.load_runs(["empty"])
    assert info.value.lines == ["empty: no runs found (a run directory holds meta.json)", "no run could be read"]
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def test_csv_and_json_keep_full_precision_and_empty_cells(tmp_path):
    runs = [one_run(tmp_path, [1 / 3, 1.0, 3.0], run_id="a"), one_run(tmp_path, [1.0, 1.0, 0.0], run_id="b", model__width=4)]
    comparison = analysis.compare_runs(runs, steps=[0], target_loss=1.0)
    rows = list(csv.DictReader(io.StringIO(analysis.to_csv(comparison))))
    assert float(rows[0]["gain@0"]) == (1 / 3) / 3.0
    assert rows[1]["gain@0"] == "inf" and rows[1]["steps_to_target"] == "10"
    document = json.loads(analysis.to_json(comparison))
    assert document["rows"][0]["gain@0"] == (1 / 3) / 3.0
    assert document["rows"][1]["gain@0"] == "inf"
    assert document["rows"][0]["runs"] == [str(runs[0].dir)]
    assert document["thresholds"] == {"vanish": 0.01, "explode": 100.0}
    assert document["config_keys"] == ["model.width"]


def test_explain_describes_every_column(tmp_path):
    runs = [one_run(tmp_path, [1.0, 1.0], run_id="a"), one_run(tmp_path, [1.0, 1.0], run_id="b", seed=1)]
    comparison = analysis.compare_runs(runs, target_loss=0.5)
    explained = dict(analysis.explain(comparison))
    assert set(comparison.value_columns()) <= set(explained)
    assert "<column>_std" in explained
    assert "target loss 0.5" in explained["steps_to_target"]
    assert "at step 0" in explained["gain@0"] and "gain across the stack" in explained["gain@0"]
    generic = dict(analysis.explain())
    for quantity in analysis.PROFILE_QUANTITIES:
        assert f"{quantity}@<step>" in generic
    for quantity in analysis.FINAL_QUANTITIES:
        assert quantity in generic


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
    gain = float(first["delta_norm"]) / float(last["delta_norm"])
    return {
        "first_delta_norm": float(first["delta_norm"]),
        "last_delta_norm": float(last["delta_norm"]),
        "gain": gain,
        "layer_factor": gain ** (1 / (depth - 1)),
        "weight_grad_gain": float(first["weight_grad_norm"]) / float(last["weight_grad_norm"]),
        "dead_frac": max(float(r["dead_frac"]) for r in at.values()),
        "saturated_frac": max(float(r["saturated_frac"]) for r in at.values()),
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
    comparison = analysis.compare_runs(analysis.load_runs([out]).runs)
    table = comparison.table.set_index("label")
    assert sorted(table.index) == ["exploding", "stable", "stable30", "vanishing"]
    assert comparison.config_keys == ["model.depth", "model.activation", "model.norm", "model.init.weight", "train.steps"]
    for label, run_dirs in runs.items():
        assert table.at[label, "seeds"] == len(run_dirs)
        for step in (0, "last"):
            per_seed = [recompute(d, step) for d in run_dirs]
            for quantity in analysis.PROFILE_QUANTITIES:
                values = [seed[quantity] for seed in per_seed]
                column = analysis.column_name(quantity, step)
                assert table.at[label, column] == pytest.approx(statistics.mean(values), rel=1e-12, abs=1e-300), (label, column)
                if len(values) > 1:
                    assert table.at[label, f"{column}_std"] == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-300)
        finals = [recompute_finals(d) for d in run_dirs]
        for quantity in ("final_train_loss", "final_train_accuracy", "final_test_loss", "final_test_accuracy"):
            assert table.at[label, quantity] == pytest.approx(statistics.mean(f[quantity] for f in finals), rel=1e-12)


def test_verdicts_of_the_three_regimes_at_initialization(real_runs):
    out, runs = real_runs
    comparison = analysis.compare_runs(analysis.load_runs([out]).runs, steps=[0])
    verdicts = dict(zip(comparison.table["label"], comparison.table["verdict@0"]))
    assert verdicts == {"vanishing": "vanishing", "stable": "stable", "exploding": "exploding", "stable30": "stable"}
    gains = dict(zip(comparison.table["label"], comparison.table["gain@0"]))
    # Well clear of the thresholds, not borderline: sigmoid ~1e-6, BatchNorm ~200x.
    assert gains["vanishing"] < 1e-4 and gains["exploding"] > 150 and 0.1 < gains["stable"] < 10


def test_reading_records_never_imports_torch():
    code = "import sys, gradlab.analysis, gradlab.expectations, gradlab.plots, gradlab.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
