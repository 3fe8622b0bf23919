"""The verdict's wording and rule (gradlab.analysis.summaries: Thresholds, judge, stack_judgement,
time_judgement), through `gradlab compare` and the Python API (gradlab.comparison).

    dead        delta_norm exactly 0 at the first hidden layer (or along time at t = 0): names the
                layer (time step) through which nothing passes, with a note
    the rate    the per-layer (per-step) factor and the depth scale xi = -1/ln(factor) in every
                verdict; a fast rate over a stack of several depth scales is not `stable` though
                its gain is within the thresholds (a 15-layer net growing 1.24x per layer, a
                50-step tanh RNN with time_gain 0.024)

The runs are written from chosen numbers (run_factory.write_run), so each verdict is known by hand;
one real ReLU run with init.bias constant -1 checks `dead` on what `gradlab run` writes.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import yaml
from run_factory import METRICS, layer_rows, one_run, real_run, resolved_config

import gradlab
from gradlab.analysis import compare, summaries
from gradlab.records.run import load_run
from gradlab.records.write import RunRecords
from gradlab.vocab.errors import RunError


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --------------------------------------------------------------------------------------------
# dead
# --------------------------------------------------------------------------------------------


def test_a_dead_network_is_dead_naming_the_layer_through_which_nothing_passes(tmp_path, invoke):
    # ReLU with init.bias constant -1: every unit dead, delta_norm exactly 0 everywhere (gain 0/0)
    one_run(tmp_path, [0.0, 0.0, 0.0, 0.0], dead=[1.0] * 4, name="dead", model__activation="relu")
    result = invoke("compare", tmp_path, "-f", "csv", "--step", "0")
    assert result.exit_code == 0, result.output
    [row] = csv_rows(result.stdout)
    assert row["verdict@0"] == "dead (no gradient through layer 3, blocks.3)"
    assert row["gain@0"] == "" and row["layer_factor@0"] == ""
    assert ("warning: dead: dead at step 0: delta_norm is exactly 0 from layer 3 (blocks.3) down to layer 0 (dead_frac 1 there: a unit "
            "passes no gradient when f'(u) = 0 on every example): no gradient passes back through it, so nothing below it learns; "
            "gain and layer_factor are empty (0/0)") in result.stderr.splitlines()  # fmt: skip
    # the API says the same, the note in .notes
    comparison = gradlab.comparison([tmp_path], steps=[0])
    assert comparison.table.at[0, "verdict@0"] == "dead (no gradient through layer 3, blocks.3)"
    assert any(note.startswith("dead: dead at step 0: delta_norm is exactly 0 from layer 3") for note in comparison.notes)


def test_dead_from_a_layer_down_names_that_layer(tmp_path):
    # the signal reaches layers 3 and 2, nothing passes back through layer 1: gain 0, dead at layer 1
    run = one_run(tmp_path, [0.0, 0.0, 0.5, 1.0], dead=[0.0, 1.0, 0.0, 0.0])
    judgement = summaries.stack_judgement(run, 0)
    assert str(judgement) == "dead (no gradient through layer 1, blocks.1)"
    assert "from layer 1 (blocks.1) down to layer 0" in judgement.note and "gain and layer_factor are 0" in judgement.note
    # a signal that is only small is not dead: norms are exact, a 0 is no gradient at all
    assert summaries.word_of(str(summaries.stack_judgement(one_run(tmp_path / "small", [1e-30, 1e-20, 1e-10, 1.0]), 0))) == "vanishing"


def test_seeds_that_are_all_dead_or_some_dead(tmp_path):
    runs = [one_run(tmp_path, [0.0, 0.0, 0.0], seed=s, run_id=f"d{s}") for s in (0, 1)]
    assert compare.compare_runs(runs, steps=[0]).table.at[0, "verdict@0"] == "dead (no gradient through layer 2, blocks.2)"
    runs.append(one_run(tmp_path, [1.0, 1.0, 1.0], seed=2, run_id="a2"))
    comparison = compare.compare_runs(runs, steps=[0])
    assert comparison.table.at[0, "verdict@0"] == "mixed: 2 dead, 1 stable"
    assert [note.split(":")[0] for note in comparison.notes] == ["exp (seed 0)", "exp (seed 1)"]


def test_a_real_relu_network_with_bias_minus_one_is_dead(tmp_path, invoke):
    run_dir = real_run(tmp_path, "bias-1", {"depth": 6, "activation": "relu", "init": {"weight": "kaiming_normal", "bias": {"name": "constant", "value": -1.0}}}, steps=5)
    result = invoke("compare", run_dir, "-f", "csv", "--step", "0")
    [row] = csv_rows(result.stdout)
    assert row["verdict@0"].startswith("dead (no gradient through layer ")
    layer = int(row["verdict@0"].split("layer ")[1].split(",")[0])
    layers = load_run(run_dir).layers
    at_0 = layers[(layers["step"] == 0) & (layers["kind"] == "hidden")].set_index("layer")
    assert (at_0.loc[:layer, "delta_norm"] == 0).all() and (layer == at_0.index.max() or at_0.loc[layer + 1, "delta_norm"] > 0)
    assert "warning: bias-1: dead at step 0: delta_norm is exactly 0 from layer" in result.stderr


# --------------------------------------------------------------------------------------------
# the rate and its depth scale
# --------------------------------------------------------------------------------------------


def test_every_verdict_says_its_rate_and_depth_scale():
    judge = summaries.judge
    assert str(judge(0.235**19, 19)) == "vanishing (×0.235/layer, 1/e every 0.7 layers)"
    assert str(judge(1.24**14, 14)) == "exploding (×1.24/layer, ×e every 4.6 layers)"
    assert str(judge(0.998**19, 19)) == "stable (×0.998/layer, 1/e every 499 layers)"
    assert str(judge(1.0, 5)) == "stable (×1/layer)"
    assert str(judge(2.0, 0)) == "stable"  # one hidden layer: no rate
    assert str(judge(0.024, 49, unit="step")) == "vanishing (×0.927/step, 1/e every 13 steps)"
    assert str(summaries.Judgement(None)) == "" and str(judge(math.nan, 3)) == ""


def test_a_fast_rate_is_judged_against_the_depth_not_only_the_gain():
    # 15 layers growing 1.24x per layer: gain 21, within (1e-2, 1e2), but xi = 4.6 layers, 3 of them in the stack
    assert summaries.verdict(1.24**14) == "stable"  # the gain alone (no length given)
    assert summaries.verdict(1.24**14, length=14) == "exploding"
    # a 3-layer net at 0.5 per layer (gain 0.25): a fast rate in a stack too short to show it
    assert summaries.verdict(0.25, length=2) == "stable"
    # a slow rate, 0.97 per layer (xi 33 layers) over 100 layers: gain 0.049, stable; over 200: below 1e-2
    assert summaries.verdict(0.97**99, length=99) == "stable" and summaries.verdict(0.97**199, length=199) == "vanishing"
    # settable: depth_scale 0 is the gain thresholds alone, more scales ask for a longer stack
    assert summaries.verdict(1.24**14, summaries.Thresholds(depth_scale=0), length=14) == "stable"
    assert summaries.verdict(1.24**14, summaries.Thresholds(scales=4), length=14) == "stable"
    with pytest.raises(RunError, match="depth_scale >= 0"):
        summaries.Thresholds(depth_scale=-1)


def test_a_15_layer_net_growing_1_24_per_layer_is_exploding(tmp_path, invoke):
    one_run(tmp_path, [1.24 ** (14 - i) for i in range(15)], name="grow")
    [row] = csv_rows(invoke("compare", tmp_path, "-f", "csv", "--step", "0").stdout)
    assert float(row["gain@0"]) == pytest.approx(20.3, rel=1e-2)
    assert row["verdict@0"] == "exploding (×1.24/layer, ×e every 4.6 layers)"
    assert gradlab.comparison([tmp_path], steps=[0]).table.at[0, "verdict@0"] == row["verdict@0"]
    # with the rate off, the gain alone calls it stable, as before
    [row] = csv_rows(invoke("compare", tmp_path, "-f", "csv", "--step", "0", "--depth-scale", "0").stdout)
    assert row["verdict@0"] == "stable (×1.24/layer, ×e every 4.6 layers)"


def recurrent_records(out: Path, name: str, deltas: list[float], run_id: str = "000000") -> Path:
    """A one-layer tanh RNN's run directory, its timesteps.csv holding `deltas` (t = 0 .. T-1) at step 0."""
    config = resolved_config(name, 0, depth=1, model__kind="rnn", model__activation="tanh",
                             data__name="adding", data__seq_len=len(deltas), loss="mse")  # fmt: skip
    run_dir = out / name / f"20240101-000000-{run_id}"
    run_dir.mkdir(parents=True)
    records = RunRecords(run_dir, yaml.safe_dump(config, sort_keys=False), {"seed": 0, "device": "cpu"}, timesteps=True)
    records.layers.write(layer_rows(0, [1.0]))
    records.timesteps.write([{"step": 0, "layer": 0, "name": "blocks.0", "t": t, "delta_norm": d} for t, d in enumerate(deltas)])
    records.metrics.write(METRICS[:1])
    records.close("completed", steps_done=0)
    return run_dir


def test_a_50_step_rnn_with_time_gain_0_024_is_vanishing(tmp_path, invoke):
    factor = 0.024 ** (1 / 49)
    recurrent_records(tmp_path, "rnn50", [factor ** (49 - t) for t in range(50)])
    [row] = csv_rows(invoke("compare", tmp_path, "-f", "csv", "--step", "0").stdout)
    assert float(row["time_gain@0"]) == pytest.approx(0.024, rel=1e-9)
    assert row["time_verdict@0"] == "vanishing (×0.927/step, 1/e every 13 steps)"
    assert gradlab.comparison([tmp_path], steps=[0]).table.at[0, "time_verdict@0"] == row["time_verdict@0"]


def test_a_recurrent_gradient_exactly_zero_from_a_time_step_back_is_dead(tmp_path, invoke):
    recurrent_records(tmp_path, "cut", [0.0] * 8 + [0.5, 1.0])
    result = invoke("compare", tmp_path, "-f", "csv", "--step", "0")
    [row] = csv_rows(result.stdout)
    assert row["time_verdict@0"] == "dead (no gradient back through t=7)"
    assert ("warning: cut: dead along time at step 0: the gradient of recurrent layer 0 is exactly 0 from t = 7 back to t = 0: "
            "nothing reaches those inputs; time_gain and step_factor are 0") in result.stderr.splitlines()  # fmt: skip
    recurrent_records(tmp_path, "none", [0.0] * 10)
    table = gradlab.comparison([tmp_path / "none"], steps=[0]).table
    assert table.at[0, "time_verdict@0"] == "dead (no gradient at any time step)"


@pytest.mark.slow
def test_the_report_takes_the_same_thresholds(tmp_path, invoke):
    one_run(tmp_path / "runs", [1.24 ** (14 - i) for i in range(15)], name="grow")
    for options, verdict in (([], "exploding (×1.24/layer, ×e every 4.6 layers)"), (["--depth-scale", "0"], "stable (×1.24/layer, ×e every 4.6 layers)")):
        page = tmp_path / f"report{len(options)}.html"
        result = invoke("report", tmp_path / "runs", "-o", page, "--step", "0", *options)
        assert result.exit_code == 0, result.output
        assert f">{verdict}</td>" in page.read_text(encoding="utf-8")
