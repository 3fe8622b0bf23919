"""Summaries of one run read back: the gradient profile at a step, the final metrics, the gain
across the stack and its verdict.

    profile_at(run, step)     PROFILE_QUANTITIES at one logged step
    final_metrics(run, ...)   FINAL_QUANTITIES: losses, accuracies, steps to a target loss
    verdict(gain)             vanishing | stable | exploding, against `Thresholds`
    summarize_run(run, ...)   every summary column of one run (what a comparison row is made of)

What each quantity means is declared once, in `gradlab.vocab.quantities`; this module computes them.
pandas and numpy only: no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from gradlab.records.run import Run, Step
from gradlab.vocab.errors import RunError
from gradlab.vocab.quantities import (  # noqa: F401 (the names computed here)
    FINAL_QUANTITIES,
    PROFILE_QUANTITIES,
    SUMMARY_QUANTITIES,
    TIME_QUANTITIES,
)

Verdict = Literal["vanishing", "stable", "exploding"]


@dataclass(frozen=True)
class Thresholds:
    """Where the gain across the stack stops being 'stable'. The only place the defaults live."""

    vanish: float = 1e-2
    explode: float = 1e2

    def __post_init__(self):
        if not (0 < self.vanish < self.explode):
            raise RunError(f"thresholds: need 0 < vanish < explode, got vanish={self.vanish:g}, explode={self.explode:g}")


DEFAULT_THRESHOLDS = Thresholds()


def verdict(gain: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Verdict | None:
    """The verdict on a gain across the stack (first/last hidden layer); None when there is no gain.

    Gradients that vanish toward the input make the first layer's delta tiny, so the gain is small.
    """
    if gain is None or math.isnan(gain):
        return None
    if gain < thresholds.vanish:
        return "vanishing"
    if gain > thresholds.explode:
        return "exploding"
    return "stable"


def hidden_span(layers) -> tuple[int, int, int]:
    """(first, last, depth) of the hidden layers, taken over the whole table so that a step missing
    a layer reads as an empty value instead of silently measuring a different layer."""
    hidden = np.asarray(layers["layer"])[np.asarray(layers["kind"]) == "hidden"]
    if not hidden.size:
        return -1, -1, 0
    return int(hidden.min()), int(hidden.max()), len(np.unique(hidden))


def profile_at(run: Run, step: Step) -> dict[str, float]:
    """PROFILE_QUANTITIES of `run` at one logged step (NaN where the step or a value is missing).

    Computed on the table's numpy columns (a comparison of a thousand runs would otherwise spend
    its time selecting rows with pandas); where a layer appears twice at a step, its last row counts.
    """
    layers = run.arrays("layers")
    first, last, depth = hidden_span(layers)
    rows_in_table = len(layers["step"])
    columns = {
        c: layers[c] if c in layers else np.full(rows_in_table, np.nan)
        for c in ("step", "layer", "kind", "delta_norm", "delta_rms", "weight_grad_norm", "dead_frac", "inactive_frac", "saturated_frac")
    }
    # the gain compares like with like on delta_rms (invariant to batch size and pooling); a run
    # recorded before delta_rms existed has only delta_norm (the same gain in an MLP)
    signal = "delta_rms" if not np.all(np.isnan(columns["delta_rms"].astype(float))) else "delta_norm"
    target = run.resolve_step(step)
    rows = (columns["kind"] == "hidden") & (columns["step"] == target) if target is not None else []
    row_of = {int(layer): i for layer, i in zip(columns["layer"][rows], np.flatnonzero(rows))}

    def value(layer: int, column: str) -> float:
        return float(columns[column][row_of[layer]]) if layer in row_of else math.nan

    def ratio(column: str) -> float:
        top, bottom = value(first, column), value(last, column)
        if math.isnan(top) or math.isnan(bottom) or (top == 0 and bottom == 0):
            return math.nan
        with np.errstate(divide="ignore"):
            return float(np.float64(top) / np.float64(bottom))  # x/0 is inf: a real, if extreme, gain

    def largest(column: str) -> float:
        values = columns[column][list(row_of.values())].astype(float)
        values = values[~np.isnan(values)]
        return float(values.max()) if values.size else math.nan  # of nothing, or of empty cells: NaN, never 0

    gain = ratio(signal)
    return {
        "first_delta_norm": value(first, "delta_norm"),
        "last_delta_norm": value(last, "delta_norm"),
        "gain": gain,
        "layer_factor": gain ** (1 / (depth - 1)) if depth > 1 and not math.isnan(gain) else math.nan,
        "weight_grad_gain": ratio("weight_grad_norm"),
        "dead_frac": largest("dead_frac"),
        "inactive_frac": largest("inactive_frac"),
        "saturated_frac": largest("saturated_frac"),
    }


# --------------------------------------------------------------------------------------------
# Along time: recurrent runs (timesteps.csv)
# --------------------------------------------------------------------------------------------


def time_layer(timesteps) -> int:
    """The recurrent layer the time summaries are taken on: the last one (nearest the head), where
    the error enters and travels back through time alone when the readout is on the last step."""
    return int(timesteps["layer"].max())


def time_profile_at(run: Run, step: Step) -> dict[str, float]:
    """TIME_QUANTITIES of a recurrent run at one logged step, on its last recurrent layer (NaN where
    the run has no timesteps.csv, the step was not logged, or a value is missing)."""
    out = dict.fromkeys(TIME_QUANTITIES, math.nan)
    timesteps = run.timesteps
    target = run.resolve_step(step)
    if timesteps is None or target is None or not len(timesteps):
        return out
    rows = timesteps[(timesteps["step"].to_numpy() == target) & (timesteps["layer"].to_numpy() == time_layer(timesteps))]
    deltas = rows.sort_values("t", kind="stable").drop_duplicates("t", keep="last")["delta_norm"].to_numpy(dtype=float)
    if len(deltas) < 2 or np.isnan(deltas[[0, -1]]).any() or (deltas[0] == 0 and deltas[-1] == 0):
        return out
    with np.errstate(divide="ignore"):
        gain = float(np.float64(deltas[0]) / np.float64(deltas[-1]))
    out["time_gain"] = gain
    # the geometric mean of the T-1 ratios delta_t / delta_{t+1}: their product telescopes to the gain
    out["step_factor"] = gain ** (1 / (len(deltas) - 1))
    return out


def run_verdict(run: Run, step: Step, gain: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Verdict | None:
    """The verdict at `step`: what the gain measured at that step says, whatever happened later (a
    network healthy at initialization that diverged at step 300 is 'stable' at step 0, an exploding
    one 'exploding'); the run's fate is its status."""
    return verdict(gain, thresholds)


def final_metrics(run: Run, target_loss: float | None = None) -> dict[str, float]:
    """FINAL_QUANTITIES of `run`; steps_to_target is NaN without a target or when never reached.

    "Last" is the row of the largest step (of equal steps, the last written)."""
    metrics = run.arrays("metrics")
    split, steps, losses = metrics["split"], metrics["step"], metrics["loss"]

    def in_step_order(which: str) -> np.ndarray:
        rows = np.flatnonzero(split == which)
        return rows[np.argsort(steps[rows], kind="stable")]

    out: dict[str, float] = {}
    for which in ("train", "test"):
        rows = in_step_order(which)
        for metric in ("loss", "accuracy"):
            out[f"final_{which}_{metric}"] = float(metrics[metric][rows[-1]]) if len(rows) else math.nan
    out["steps_to_target"] = math.nan
    if target_loss is not None:
        train = in_step_order("train")
        reached = train[losses[train] <= target_loss]
        if len(reached):
            out["steps_to_target"] = float(steps[reached[0]])
    return out


def step_label(step: Step) -> str:
    return str(step)


def column_name(quantity: str, step: Step) -> str:
    """'gain@0', 'gain@last': a profile quantity at a step."""
    return f"{quantity}@{step_label(step)}"


def summarize_run(
    run: Run,
    steps: Sequence[Step] = (0, "last"),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    target_loss: float | None = None,
) -> dict[str, Any]:
    """Every summary column of one run: the profile and verdict at each step, then the finals."""
    row: dict[str, Any] = {"status": run.status, "last_step": run.last_step}
    for step in steps:
        profile = profile_at(run, step)
        for quantity, number in profile.items():
            row[column_name(quantity, step)] = number
        row[column_name("verdict", step)] = run_verdict(run, step, profile["gain"], thresholds)
        if run.timesteps is not None:  # a recurrent run: the same along time (feed-forward rows unchanged)
            along_time = time_profile_at(run, step)
            for quantity, number in along_time.items():
                row[column_name(quantity, step)] = number
            row[column_name("time_verdict", step)] = run_verdict(run, step, along_time["time_gain"], thresholds)
    finals = final_metrics(run, target_loss)
    if target_loss is None:
        del finals["steps_to_target"]
    row.update(finals)
    return row


def missing_step_notes(runs: Sequence[Run], steps: Sequence[Step]) -> list[str]:
    """One line per run and requested step that was not logged (its cells will be empty)."""
    notes = []
    for run in runs:
        logged = set(np.unique(run.arrays("layers")["step"]))
        if not logged:
            notes.append(f"{run.dir}: nothing was logged (the run {run.status} at its first step); its cells are empty")
            continue
        for step in steps:
            if step != "last" and step not in logged:
                notes.append(f"{run.dir}: step {step} was not logged (logged: {_describe_steps(sorted(logged))}); its cells are empty")
    return notes


def _describe_steps(steps: list[int]) -> str:
    if len(steps) <= 6:
        return ", ".join(map(str, steps))
    return f"{', '.join(map(str, steps[:3]))}, ..., {steps[-1]}"
