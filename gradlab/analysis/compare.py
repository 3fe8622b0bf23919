"""The comparison table: one row per configuration, runs that differ only by seed grouped.

    compare_runs(runs, ...)    a `Comparison`: the differing config values, status, the summaries
                               at each step and the finals; seeds averaged (mean, sample std, count)
    explain(comparison)        (column, meaning) for every column, from `gradlab.vocab.quantities`

Rendering the table (terminal, csv, markdown, json) is display.py's job.
pandas only: no torch.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gradlab.analysis import configdiff
from gradlab.analysis.summaries import (
    DEFAULT_THRESHOLDS,
    alpha_warning,
    Thresholds,
    column_name,
    jacobian_s2_at,
    missing_step_notes,
    profile_at,
    summarize_run,
    group_verdict,
    stack_judgement,
    stack_length,
    time_judgement,
    time_length,
    time_profile_at,
    gate_profile_at,
    word_of,
)
from gradlab.records.run import STATUSES, Run, Step
from gradlab.vocab.errors import RunError
from gradlab.vocab.quantities import (
    FINAL_QUANTITIES,
    OPTIONAL_SUMMARIES,
    PROFILE_QUANTITIES,
    SUMMARY_QUANTITIES,
    THEORY_QUANTITIES,
    TIME_QUANTITIES,
)

# Columns that are not summary quantities but appear in every comparison.
OTHER_COLUMNS: dict[str, str] = {
    "label": "the run's config name; where rows share a name, #, then the config values that tell them apart (name#width=16)",
    "status": "from meta.json: running | completed | diverged | interrupted | failed (a row of several seeds counts each status)",
    "seeds": "number of runs averaged in the row: runs that share every config value but the seed form one row",
    "last_step": "largest step in layers.csv: where 'last' measurements are taken",
    "time_verdict": "recurrent runs: the verdict along time, on time_gain over T - 1 time steps, by the same rule as verdict "
                    "(vanishing | stable | exploding | dead, with the per-step factor and its depth scale in steps; "
                    "dead: the gradient is exactly 0 from some time step back to t = 0, named)",
    "alpha_warning": "spectrum group runs: WeightWatcher's per-layer warning on the hidden layers' weight_alpha (averaged over the row's "
                     "seeds): over-trained for alpha < 2 (a very heavy-tailed spectrum), under-trained for alpha > 6 (random-like), each "
                     "naming its layers with their alpha; none when every fitted layer is within [2, 6]; empty for a run without the group",
    "verdict": "vanishing | stable | exploding | dead, with its rate: the per-layer factor and the depth scale xi = -1/ln(factor) in layers "
               "(vanishing (×0.235/layer, 1/e every 0.7 layers)). vanishing: gain below the vanish threshold, or the signal falls by e in "
               "fewer than depth_scale layers over a stack at least `scales` such depth scales deep; exploding: the same, growing; "
               "dead: delta_norm is exactly 0 at the first hidden layer, naming the layer through which no gradient passes back. "
               "On the signal measured at that step (a run that diverged later is judged there; its fate is its status); "
               "a row of several seeds is judged on the geometric mean of its gains (mixed: ... where some seeds are dead)",
}

# Gains and ratios are averaged over seeds geometrically: the mean of their logarithms, and as spread
# the geometric standard deviation exp(sd(ln x)) (the `_std` column of these quantities; the table
# shows it as `mean ×/÷ spread`). A linear mean of 1e-9 and 5e-8 says nothing about either.
GEOMETRIC = ("gain", "layer_factor", "weight_grad_gain", "first_delta_norm", "last_delta_norm", "time_gain", "step_factor")
VERDICT_PREFIXES = ("verdict@", "time_verdict@")  # columns holding verdicts (text), judged on the row's gain


def _is_verdict(column: str) -> bool:
    return column.startswith(VERDICT_PREFIXES)

INTEGER_COLUMNS = ("seeds", "last_step", "steps_to_target")


@dataclass
class Comparison:
    """A comparison table and what it was computed with. `table` holds numbers (NaN = empty);
    `<column>_std` columns exist when some row averages several seeds."""

    table: pd.DataFrame
    config_keys: list[str]
    steps: list[Step]
    thresholds: Thresholds
    target_loss: float | None
    runs: list[list[Path]]  # the run directories behind each row
    notes: list[str]
    tolerance: float | None = None  # relative tolerance of `departs`; None: theory columns not requested

    @property
    def grouped(self) -> bool:
        return bool((self.table["seeds"] > 1).any())

    def value_columns(self) -> list[str]:
        """The columns a person reads; the `_std` ones are shown inside them as `mean ± std`."""
        return [c for c in self.table.columns if not c.endswith("_std")]


def _group_status(statuses: list[str]) -> str:
    counts = Counter(statuses)
    if len(counts) == 1:
        return statuses[0]
    order = {status: i for i, status in enumerate(STATUSES)}
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda item: order.get(item[0], 99)))


def _unique_labels(groups: list[list[Run]]) -> list[str]:
    # (configdiff.row_labels: the values that tell rows of one name apart, from their configs)
    names = ["+".join(dict.fromkeys(run.name for run in group)) for group in groups]
    return configdiff.row_labels(names, [group[0].config for group in groups])


def compare_runs(
    runs: Sequence[Run],
    steps: Sequence[Step] = (0, "last"),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    target_loss: float | None = None,
    theory: bool = False,
    tolerance: float | None = None,
) -> Comparison:
    """One row per configuration: differing config values, status, the summaries at each step
    and the finals; runs that differ only by seed are averaged (mean, sample std, count).

    theory: add `predicted_factor` (theory's layer_factor at initialization, from the config) and
    `departs` (the measured layer_factor at step 0, averaged over seeds, off by more than
    `tolerance` relative to it; default predict.DEPARTS_TOLERANCE), with a note per row that has
    no prediction saying why."""
    if not runs:
        raise RunError("no runs to compare")
    steps = list(dict.fromkeys(steps))
    summaries = [summarize_run(run, steps, thresholds, target_loss) for run in runs]
    # recurrent runs add the time columns: the widest summary gives the order, and a feed-forward
    # row in a mixed comparison leaves them empty
    summary_columns = list(dict.fromkeys([*max(summaries, key=len), *(c for summary in summaries for c in summary)]))
    summaries = [{c: summary.get(c, None if _is_verdict(c) else math.nan) for c in summary_columns} for summary in summaries]
    configs = [run.config for run in runs]
    columns = configdiff.config_columns(configs)
    groups = configdiff.group_by_config(configs)
    averaged = [c for c in summaries[0] if c not in ("status", "last_step") and not _is_verdict(c)]
    grouped = any(len(members) > 1 for members in groups)

    rows, notes = [], missing_step_notes(runs, steps)
    for label, members in zip(_unique_labels([[runs[i] for i in g] for g in groups]), groups):
        row: dict[str, Any] = {"label": label}
        row.update({key: values[members[0]] for key, values in columns.items()})
        row["status"] = _group_status([summaries[i]["status"] for i in members])
        row["seeds"] = len(members)
        for column in summaries[0]:
            if column == "status":
                continue
            values = [summaries[i][column] for i in members]
            if _is_verdict(column):
                continue  # judged below, on the row's (geometric) mean gain
            if column == "last_step":
                # Not a measurement to average: seeds that stopped early (diverged) say so.
                logged = [v for v in values if v is not None]
                row[column] = max(logged) if logged else None
                if len(set(values)) > 1:
                    notes.append(f"{label}: its seeds stopped at different steps ({', '.join(map(str, values))}); 'last' is each seed's own last step")
                continue
            geometric = column.partition("@")[0] in GEOMETRIC
            mean, std = (_geometric_mean_spread if geometric else _mean_std)([float(v) for v in values])
            row[column] = mean
            if grouped:
                row[f"{column}_std"] = std
        for step in steps:
            for kind, gain_column, judging in (("verdict", "gain", stack_judgement), ("time_verdict", "time_gain", time_judgement)):
                column = column_name(kind, step)
                if column not in summaries[0]:  # (time_verdict: recurrent runs only)
                    continue
                texts = [summaries[i][column] for i in members]
                judgements = {i: judging(runs[i], step, thresholds) for i, text in zip(members, texts) if word_of(text) == "dead"}
                for i, judgement in judgements.items():  # what `dead` rests on, said once per run
                    seed = f" (seed {runs[i].config.get('seed')})" if len(members) > 1 else ""
                    notes.append(f"{label}{seed}: {judgement.note}")
                if len(members) == 1:
                    row[column] = texts[0]
                    continue
                run = runs[members[0]]  # (the seeds of a row share the config: one depth, one sequence length)
                length, unit = (stack_length(run), "layer") if kind == "verdict" else (time_length(run, step), "step")
                row[column] = group_verdict(texts, row.get(column_name(gain_column, step), math.nan), length, thresholds, unit)
        diverged = [runs[i] for i in members if runs[i].status == "diverged"]
        if diverged:
            steps_before = ", ".join(str(run.last_step) for run in diverged)
            notes.append(f"{label}: diverged; its final_* values are the last ones logged before it diverged (step {steps_before})")
        rows.append(row)

    order = ["label", *columns, "status", "seeds"]
    for column in summaries[0]:
        if column == "status":
            continue
        order.append(column)
        if grouped and column in averaged:
            order.append(f"{column}_std")
    if any("weight_alpha" in run.layers for run in runs):  # the spectrum group: WeightWatcher's warning per step
        for step in steps:
            column = column_name("alpha_warning", step)
            for row, members in zip(rows, groups):
                row[column] = alpha_warning([runs[i] for i in members], step)
            order.insert(order.index(column_name("alpha_max", step)) + 1 + grouped, column)
    if theory:
        from gradlab.theory import predict

        tolerance = predict.DEPARTS_TOLERANCE if tolerance is None else tolerance
        for row, members in zip(rows, groups):
            prediction = predict.for_config(configs[members[0]])
            measured, _ = _geometric_mean_spread([profile_at(runs[i], 0)["layer_factor"] for i in members])
            row["predicted_factor"] = math.nan if prediction.layer_factor is None else prediction.layer_factor
            flag = predict.departs(measured, prediction.layer_factor, tolerance)
            row["departs"] = None if flag is None else ("yes" if flag else "no")
            if prediction.narrow and prediction.layer_factor is not None:  # mean field is an infinite-width theory
                row["departs"] = f"n/a ({prediction.narrow})"
                notes.append(f"{row['label']}: departs n/a: mean field is an infinite-width theory, and at {prediction.narrow} one run's "
                             f"layer_factor scatters around it by more than {predict.DEPARTS_TOLERANCE:.0%} too often (docs/theory.md, Width)")  # fmt: skip
            if prediction.layer_factor is None:
                along_time = any(runs[i].timesteps is not None for i in members)
                why = "a recurrent stack is predicted along time only (predicted_step_factor)" if along_time else prediction.reason
                notes.append(f"{row['label']}: no predicted_factor: {why}")
        order += ["predicted_factor", "departs"]
        recurrent = [any(runs[i].timesteps is not None for i in members) for members in groups]
        if any(recurrent):  # along time: the measured step_factor@0 beside its prediction or bound
            for row, members, is_recurrent in zip(rows, groups, recurrent):
                if not is_recurrent:
                    row["predicted_step_factor"], row["step_departs"] = math.nan, None
                    continue
                row.update(_step_theory(row, [runs[i] for i in members], predict.for_config(configs[members[0]]), tolerance, notes))
            order += ["predicted_step_factor", "step_departs"]
        gated = [any(configs[i].get("model", {}).get("kind") in ("lstm", "gru") for i in members) for members in groups]
        if any(gated):  # the gates' mean field beside the gate means of timesteps.csv at step 0
            for row, members, is_gated in zip(rows, groups, gated):
                row.update(_gate_theory(row, [runs[i] for i in members], predict.for_config(configs[members[0]]), tolerance, notes) if is_gated else
                           dict.fromkeys(GATE_THEORY_COLUMNS[:-1], math.nan) | {"gate_departs": None})  # fmt: skip
            order += GATE_THEORY_COLUMNS
        measured_jacobian = [any(runs[i].jacobian is not None for i in members) for members in groups]
        if any(measured_jacobian):  # log.jacobian: the measured s2@0 beside free probability's
            for row, members, measured in zip(rows, groups, measured_jacobian):
                prediction = predict.for_config(configs[members[0]]) if measured else None
                row.update(_jacobian_theory(row, [runs[i] for i in members], prediction, tolerance, notes))
            order += ["predicted_s2", "s2_departs"]
    else:
        tolerance = None
    table = pd.DataFrame(rows, columns=order)
    # bn_stat_distance and final_test_batch_stats_accuracy where some run has them (BatchNorm, log.test_batch_stats)
    table = table.drop(columns=[c for c in table.columns if c.partition("@")[0].removesuffix("_std") in OPTIONAL_SUMMARIES and table[c].isna().all()])
    for column in INTEGER_COLUMNS:
        if column in table and _all_integral(table[column]):
            table[column] = table[column].astype("Int64")
    return Comparison(
        table=table,
        config_keys=list(columns),
        steps=steps,
        thresholds=thresholds,
        target_loss=target_loss,
        runs=[[runs[i].dir for i in members] for members in groups],
        notes=notes,
        tolerance=tolerance,
    )


def _step_theory(row: dict[str, Any], members: list[Run], prediction: Any, tolerance: float, notes: list[str]) -> dict[str, Any]:
    """predicted_step_factor and step_departs of a recurrent row (seeds: the geometric mean of
    their step_factor@0), with a note saying when the number is a bound or why there is none."""
    from gradlab.theory import predict

    label = row["label"]
    if prediction.step_factor is None:
        why = prediction.reason or next((n.removeprefix("no step_factor: ") for n in prediction.notes if n.startswith("no step_factor")), "none derived")
        notes.append(f"{label}: no predicted_step_factor: {why}")
        return {"predicted_step_factor": math.nan, "step_departs": None}
    measured, _ = _geometric_mean_spread([time_profile_at(run, 0)["step_factor"] for run in members])
    if prediction.step_relation == predict.STEP_AT_MOST:
        gamma, lambda1 = prediction.inputs["gamma"], prediction.inputs["lambda1"]
        notes.append(f"{label}: predicted_step_factor {prediction.step_factor:.4g} is Pascanu's upper bound gamma * lambda_1 = {gamma:g} * {lambda1:g}, "
                     "not an estimate: step_departs only when step_factor@0 exceeds it")  # fmt: skip
    flag = predict.step_departs(measured, prediction, tolerance)
    return {"predicted_step_factor": prediction.step_factor, "step_departs": None if flag is None else ("yes" if flag else "no")}


def _jacobian_theory(row: dict[str, Any], members: list[Run], prediction: Any, tolerance: float, notes: list[str]) -> dict[str, Any]:
    """predicted_s2 and s2_departs of a row (seeds: the mean of their s2@0); empty for a row without
    jacobian.csv, and a note saying why where the formula does not apply."""
    from gradlab.theory import predict

    if prediction is None:
        return {"predicted_s2": math.nan, "s2_departs": None}
    predicted = predict.jacobian_s2(prediction)
    if predicted is None:
        notes.append(f"{row['label']}: no predicted_s2: {prediction.extra.get('jacobian_reason', 'none derived')}")
        return {"predicted_s2": math.nan, "s2_departs": None}
    measured, _ = _mean_std([jacobian_s2_at(run, 0) for run in members])
    flag = predict.s2_departs(measured, predicted, tolerance)
    return {"predicted_s2": predicted, "s2_departs": None if flag is None else ("yes" if flag else "no")}


GATE_THEORY_COLUMNS = ["direct_factor", "predicted_direct_factor", "h_second_moment", "predicted_h_second_moment", "gate_departs"]


def _gate_theory(row: dict[str, Any], members: list[Run], prediction: Any, tolerance: float, notes: list[str]) -> dict[str, Any]:
    """The gates' measurement at step 0 (summaries.gate_profile_at, seeds averaged) beside their
    mean field (prediction.gates' over_sequence), with a note giving every gate's pair."""
    from gradlab.theory import predict

    label = row["label"]
    measured_runs = [gate_profile_at(run, 0) for run in members]
    keys = set.intersection(*(set(m) for m in measured_runs)) if all(measured_runs) else set()
    measured = {key: statistics.mean(m[key] for m in measured_runs) for key in keys}
    out = {"direct_factor": measured.get("direct_factor", math.nan), "h_second_moment": measured.get("h_second_moment", math.nan)}
    window = prediction.gates.get("over_sequence") if prediction.gates else None
    if not window:
        why = prediction.reason or next((n for n in prediction.notes if n.startswith("no gate prediction")), "none derived")
        notes.append(f"{label}: no gate prediction: {why.removeprefix('no gate prediction: ')}")
        return out | {"predicted_direct_factor": math.nan, "predicted_h_second_moment": math.nan, "gate_departs": None}
    predicted = {"predicted_direct_factor": window["direct_factor"], "predicted_h_second_moment": window["h_second_moment"]}
    if math.isnan(out["direct_factor"]):
        notes.append(f"{label}: no gate means measured at step 0 (timesteps.csv has them with log.probes activations)")
        return out | predicted | {"gate_departs": None}
    flag, why = predict.gate_departs(measured, prediction, tolerance)
    first, last = window["steps"]
    pairs = ", ".join(f"{gate} {measured.get(f'{gate}_mean', math.nan):.4g}/{value:.4g}" for gate, value in window["gates"].items())
    notes.append(f"{label}: gate means at step 0 over t = {first}..{last}, measured/predicted: {pairs}; timescale "
                 f"{predict.gate_theory.timescale(out['direct_factor']):.4g}/{window['timescale']:.4g}" + (f"; departs: {'; '.join(why)}" if why else ""))  # fmt: skip
    return out | predicted | {"gate_departs": None if flag is None else ("yes" if flag else "no")}


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, correctly rounded (the statistics module sums
    exactly: three seeds at 0.8 average to 0.8 with spread 0, not 0.8000000000000002 ± 1e-16).
    A mean over seeds where one is empty would claim what was not measured: it is empty too."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    if any(math.isinf(v) for v in values):
        return statistics.mean(values), math.nan  # inf (or nan for inf - inf); no finite spread
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _geometric_mean_spread(values: list[float]) -> tuple[float, float]:
    """exp(mean(ln x)) and exp(sample sd(ln x)) over seeds (GEOMETRIC): empty where a value is empty
    or negative; 0 where a seed's is 0 and inf where one is inf (the limits of the log's mean; both
    at once have none), without a spread."""
    if any(math.isnan(v) or v < 0 for v in values):
        return math.nan, math.nan
    zero, infinite = 0.0 in values, math.inf in values
    if zero or infinite:
        return (math.nan if zero and infinite else 0.0 if zero else math.inf), math.nan
    logs = [math.log(v) for v in values]
    if len(values) == 1:
        return values[0], math.nan
    return math.exp(statistics.mean(logs)), math.exp(statistics.stdev(logs))


def _all_integral(series: pd.Series) -> bool:
    values = series.dropna().astype(float)
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


# --------------------------------------------------------------------------------------------
# What the columns mean: `gradlab compare --explain`
# --------------------------------------------------------------------------------------------


def describe_column(column: str, comparison: Comparison | None = None) -> str:
    """What a comparison column means, from the declarations in gradlab.vocab.quantities."""
    if column.endswith("_std"):
        if column[:-4].partition("@")[0] in GEOMETRIC:
            return f"geometric standard deviation exp(sd(ln x)) of {column[:-4]} over the row's seeds, a factor: shown as mean ×/÷ it (empty for one seed)"
        return f"sample standard deviation of {column[:-4]} over the row's seeds (empty for one seed)"
    base, _, step = column.partition("@")
    where = ""
    if step:
        where = " (at step 0: the network at initialization)" if step == "0" else (
            " (at each run's last logged step)" if step == "last" else f" (at step {step})"
        )  # fmt: skip
    if base in ("verdict", "time_verdict"):
        thresholds = comparison.thresholds if comparison else DEFAULT_THRESHOLDS
        return (f"{OTHER_COLUMNS[base]}; thresholds vanish={thresholds.vanish:g}, explode={thresholds.explode:g}, "
                f"depth_scale={thresholds.depth_scale:g}, scales={thresholds.scales:g}{where}")
    if base in SUMMARY_QUANTITIES:
        text = SUMMARY_QUANTITIES[base]
        if base == "steps_to_target" and comparison and comparison.target_loss is not None:
            text += f" (target loss {comparison.target_loss:g})"
        return text + where
    if base in OTHER_COLUMNS:
        return OTHER_COLUMNS[base]
    if base in THEORY_QUANTITIES:
        text = THEORY_QUANTITIES[base]
        if base in ("departs", "step_departs") and comparison is not None and comparison.tolerance is not None:
            text += f" (tolerance {comparison.tolerance:g})"
        return text
    return "config value that differs between the compared runs"


def explain(comparison: Comparison | None = None) -> list[tuple[str, str]]:
    """(column, meaning) for every column of `comparison`, or for every possible column."""
    if comparison is not None:
        rows = [(c, describe_column(c, comparison)) for c in comparison.value_columns()]
        if comparison.grouped:
            rows.append(("<column>_std", "sample standard deviation of <column> over the row's seeds (empty for one seed)"))
        return rows
    generic = [
        ("label", OTHER_COLUMNS["label"]),
        ("<config key>", "a config value that differs between the runs (e.g. model.activation); components show their name and the parameters that differ"),
        ("status", OTHER_COLUMNS["status"]),
        ("seeds", OTHER_COLUMNS["seeds"]),
        ("last_step", OTHER_COLUMNS["last_step"]),
    ]
    generic += [(f"{q}@<step>", text) for q, text in PROFILE_QUANTITIES.items()]
    generic.append(("verdict@<step>", describe_column("verdict")))
    generic.append(("alpha_warning@<step>", OTHER_COLUMNS["alpha_warning"]))
    generic += [(f"{q}@<step>", text) for q, text in TIME_QUANTITIES.items()]
    generic.append(("time_verdict@<step>", describe_column("time_verdict")))
    generic += [(q, text) for q, text in FINAL_QUANTITIES.items()]
    from gradlab.theory.predict import DEPARTS_TOLERANCE

    generic += [(q, f"{text} (with --theory{f'; default tolerance {DEPARTS_TOLERANCE:g}' if q in ('departs', 'step_departs') else ''})") for q, text in THEORY_QUANTITIES.items()]
    generic.append(("<column>_std", "sample standard deviation over the row's seeds (present when some row averages several seeds)"))
    generic.append(("<step>", "0 (initialization), last (each run's last logged step) or a step number; chosen with --step"))
    return generic
