"""Summaries of one run read back: the gradient profile at a step, the final metrics, the gain
across the stack and its verdict.

    profile_at(run, step)     PROFILE_QUANTITIES at one logged step
    final_metrics(run, ...)   FINAL_QUANTITIES: losses, accuracies, steps to a target loss
    verdict(gain, length)     vanishing | stable | exploding, against `Thresholds`
    judge(gain, length, ...)  a `Judgement`: the verdict with its rate, as the tables show it
    stack_judgement(run, s)   the judgement across the stack at a step, `dead` included
    time_judgement(run, s)    the same along time (recurrent runs)
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
    ALPHA_RANGE,
    FINAL_QUANTITIES,
    PROFILE_QUANTITIES,
    SUMMARY_QUANTITIES,
    TIME_QUANTITIES,
)

Verdict = Literal["vanishing", "stable", "exploding", "dead"]
VERDICTS: tuple[str, ...] = ("vanishing", "stable", "exploding", "dead")


@dataclass(frozen=True)
class Thresholds:
    """When the signal stops being 'stable'. The only place the defaults live.

    Over a stack of n steps (n = depth - 1 layer-to-layer steps, or T - 1 time steps) the gain g
    and the per-step factor f = g^(1/n) say the same with the depth taken out: the depth scale
    xi = -1/ln f is the number of steps over which the signal changes by a factor e, and n / |xi|
    = |ln g|. The signal is judged on both:

    - across the stack: g below `vanish` is vanishing, above `explode` exploding, whatever the rate;
    - by its rate: a factor that changes the signal by e in fewer than `depth_scale` steps (|xi| <
      depth_scale) is vanishing (f < 1) or exploding (f > 1) once the stack is at least `scales`
      depth scales long (n >= scales * |xi|, i.e. the signal changed by e^scales, 7.4x at 2).
      A fast rate in a stack too short to show it (a 3-layer net at 0.5 per layer) stays stable;
      the same rate in a 15-layer stack is not, though its gain is within (vanish, explode).

    depth_scale = 0 turns the rate off (gain thresholds alone)."""

    vanish: float = 1e-2
    explode: float = 1e2
    depth_scale: float = 20.0  # steps (layers or time steps)
    scales: float = 2.0

    def __post_init__(self):
        if not (0 < self.vanish < self.explode):
            raise RunError(f"thresholds: need 0 < vanish < explode, got vanish={self.vanish:g}, explode={self.explode:g}")
        if not (self.depth_scale >= 0 and self.scales > 0):
            raise RunError(f"thresholds: need depth_scale >= 0 and scales > 0, got depth_scale={self.depth_scale:g}, scales={self.scales:g}")

    def describe(self) -> str:
        """The rule in one line (under compare's table, in --explain)."""
        rate = (f"; or the rate: the signal changes by e in fewer than {self.depth_scale:g} steps (per-step factor outside "
                f"[{math.exp(-1 / self.depth_scale):.3g}, {math.exp(1 / self.depth_scale):.3g}]) over a stack of at least "
                f"{self.scales:g} such scales") if self.depth_scale > 0 else ""  # fmt: skip
        return f"vanishing below gain {self.vanish:g}, exploding above {self.explode:g}{rate}; dead: exactly no gradient reaches the input end"


DEFAULT_THRESHOLDS = Thresholds()


def verdict(gain: float, thresholds: Thresholds = DEFAULT_THRESHOLDS, length: int | None = None) -> Verdict | None:
    """The verdict on a gain across a stack of `length` steps (depth - 1 layers, T - 1 time steps;
    None: the gain alone), see `Thresholds`; None when there is no gain.

    Gradients that vanish toward the input make the first layer's delta tiny, so the gain is small.
    """
    if gain is None or math.isnan(gain):
        return None
    if gain < thresholds.vanish:
        return "vanishing"
    if gain > thresholds.explode:
        return "exploding"
    if length and length > 0 and thresholds.depth_scale > 0 and 0 < gain < math.inf:
        log_gain = math.log(gain)
        scale = length / abs(log_gain) if log_gain else math.inf  # |xi| = n / |ln g|
        if abs(log_gain) >= thresholds.scales and scale < thresholds.depth_scale:
            return "vanishing" if log_gain < 0 else "exploding"
    return "stable"


@dataclass(frozen=True)
class Judgement:
    """A verdict with what it rests on; str() is the text the tables show:

        vanishing (×0.235/layer, 1/e every 0.7 layers)
        exploding (×1.24/layer, ×e every 4.6 layers)
        stable (×0.998/layer, 1/e every 500 layers)
        dead (no gradient through layer 9, blocks.9)
    """

    word: Verdict | None
    factor: float = math.nan  # per layer / per time step
    unit: str = "layer"  # "layer" | "step"
    dead_at: str = ""  # dead: the layer (or time step) through which nothing passes
    note: str = ""  # dead: the explanation compare prints

    @property
    def scale(self) -> float:
        """The depth scale xi = -1/ln(factor), in units (negative: growth; inf: no change)."""
        if math.isnan(self.factor) or self.factor <= 0 or math.isinf(self.factor):
            return math.nan
        return -1 / math.log(self.factor) if self.factor != 1 else math.inf

    def __str__(self) -> str:
        if self.word is None:
            return ""
        if self.word == "dead":
            return f"dead ({self.dead_at})"
        scale = self.scale
        if math.isnan(scale):
            return self.word
        digits = 4 if abs(self.factor - 1) < 0.05 else 3  # (1.0026 is not ×1)
        rate = f"×{self.factor:.{digits}g}/{self.unit}"
        if math.isinf(scale):
            return f"{self.word} ({rate})"
        steps = _scale_text(abs(scale))
        units = self.unit if steps == "1" else f"{self.unit}s"
        return f"{self.word} ({rate}, {'1/e' if scale > 0 else '×e'} every {steps} {units})"


def _scale_text(scale: float) -> str:
    if scale >= 10:
        return f"{scale:.0f}"
    if scale >= 0.05:
        return f"{scale:.1f}".removesuffix(".0")
    return f"{scale:.2g}"


def judge(gain: float, length: int, thresholds: Thresholds = DEFAULT_THRESHOLDS, unit: str = "layer") -> Judgement:
    """The judgement on a gain over `length` steps (0: one layer, no rate)."""
    word = verdict(gain, thresholds, length)
    factor = gain ** (1 / length) if length > 0 and gain is not None and not math.isnan(gain) else math.nan
    return Judgement(word, factor, unit)


def word_of(text: str | None) -> str:
    """The verdict's first word ('vanishing' of 'vanishing (×0.235/layer, ...)'; 'mixed' of a row of seeds that disagree)."""
    return (text or "").split(" ", 1)[0].rstrip(":")


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
        for c in ("step", "layer", "kind", "delta_norm", "delta_rms", "weight_grad_norm", "dead_frac", "inactive_frac", "saturated_frac", "bn_stat_distance",
                  "gsnr", "grad_noise_scale", "weight_alpha")
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

    def optional(layer: int, column: str) -> float:
        found = value(layer, column)
        return math.nan if math.isnan(found) else found  # a column some runs lack: one NaN, as `largest` gives

    def largest(column: str, smallest: bool = False) -> float:
        values = columns[column][list(row_of.values())].astype(float)
        values = values[~np.isnan(values)]
        if not values.size:
            return math.nan  # of nothing, or of empty cells: NaN, never 0
        return float(values.min() if smallest else values.max())

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
        "bn_stat_distance": largest("bn_stat_distance"),  # (BatchNorm runs only; empty for the others)
        # the noise group's (empty for runs without it)
        "first_gsnr": optional(first, "gsnr"),
        "last_gsnr": optional(last, "gsnr"),
        "first_grad_noise_scale": optional(first, "grad_noise_scale"),
        "last_grad_noise_scale": optional(last, "grad_noise_scale"),
        "s2": jacobian_s2_at(run, target),  # (runs with log.jacobian; empty for the others)
        "alpha_min": largest("weight_alpha", smallest=True),  # the spectrum group's (empty for runs without it)
        "alpha_max": largest("weight_alpha"),
    }


def jacobian_s2_at(run: Run, step: int | None) -> float:
    """s2 of the last hidden block in jacobian.csv at `step` (NaN without jacobian.csv or that step)."""
    table = run.jacobian
    if table is None or step is None or not len(table):
        return math.nan
    rows = table[(table["step"].to_numpy() == step) & table["s2"].notna().to_numpy()]
    return float(rows["s2"].iloc[-1]) if len(rows) else math.nan


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


def gate_profile_at(run: Run, step: Step) -> dict[str, float]:
    """What gate theory is set beside (compare --theory): on the last recurrent layer at `step`,
    averaged over the second half of the sequence (t >= T//2, as predict.gate_prediction's
    over_sequence), each `<gate>_mean` column, the direct-path factor (forget_mean for lstm,
    update_mean for gru) and E[h²] = hidden_norm² / (batch_size · width), hidden_norm being the norm
    of h_t over the batch. {} where the run has none of these."""
    timesteps = run.timesteps
    target = run.resolve_step(step)
    model, data = run.config.get("model", {}), run.config.get("data", {})
    direct = {"lstm": "forget_mean", "gru": "update_mean"}.get(model.get("kind"))
    if timesteps is None or target is None or direct is None or not len(timesteps) or direct not in timesteps:
        return {}
    rows = timesteps[(timesteps["step"].to_numpy() == target) & (timesteps["layer"].to_numpy() == time_layer(timesteps))]
    rows = rows.sort_values("t", kind="stable").drop_duplicates("t", keep="last")
    if not len(rows):
        return {}
    window = rows[rows["t"].to_numpy() >= (int(rows["t"].max()) + 1) // 2]
    out = {column: float(window[column].astype(float).mean()) for column in rows.columns if column.endswith("_mean") and rows[column].notna().any()}
    out["direct_factor"] = out.get(direct, math.nan)
    examples = data.get("batch_size")
    width = model.get("width")
    hidden = window["hidden_norm"].astype(float).to_numpy() if "hidden_norm" in window else np.array([math.nan])
    out["h_second_moment"] = float(np.mean(hidden**2) / (examples * width)) if examples and width else math.nan
    return out


def stack_judgement(run: Run, step: Step, thresholds: Thresholds = DEFAULT_THRESHOLDS, gain: float | None = None) -> Judgement:
    """The judgement across the stack at `step`: `dead` where delta_norm is exactly 0 at the first
    hidden layer (norms are exact: a 0 is no gradient at all, never an underflow), naming the
    highest layer of the run of zeros that reaches it, the layer through which nothing passes back;
    otherwise the verdict on the gain over depth - 1 layer-to-layer steps (`gain`: profile_at's,
    where the caller has it already)."""
    layers = run.arrays("layers")
    first, last, depth = hidden_span(layers)
    target = run.resolve_step(step)
    if target is not None and depth:
        rows = np.flatnonzero((np.asarray(layers["kind"]) == "hidden") & (layers["step"] == target))
        by_layer = {int(layers["layer"][i]): i for i in rows}  # (a layer written twice: its last row)
        order = sorted(by_layer)
        deltas = [float(layers["delta_norm"][by_layer[k]]) for k in order]
        if deltas and order[0] == first and deltas[0] == 0:
            zeros = next((n for n, d in enumerate(deltas) if d != 0), len(deltas))  # (NaN != 0: a run of zeros ends there too)
            layer = order[zeros - 1]
            name = str(layers["name"][by_layer[layer]]) if "name" in layers else ""
            where = f"layer {layer}, {name}" if name and name != str(layer) else f"layer {layer}"
            dead = layers["dead_frac"][by_layer[layer]] if "dead_frac" in layers else math.nan
            why = f" (dead_frac {float(dead):.3g} there: a unit passes no gradient when f'(u) = 0 on every example)" if not math.isnan(float(dead)) else ""
            below = f"down to layer {first}" if layer != first else "the first hidden layer"
            rest = "; gain and layer_factor are empty (0/0)" if layer == last else "; gain and layer_factor are 0"
            note = (f"dead at step {target}: delta_norm is exactly 0 from layer {layer} ({name or layer}) {below}{why}: no gradient passes back "
                    f"through it, so nothing below it learns{rest}")  # fmt: skip
            return Judgement("dead", 0.0 if layer != last else math.nan, "layer", f"no gradient through {where}", note)
    gain = profile_at(run, step)["gain"] if gain is None else gain
    return judge(gain, depth - 1 if depth > 1 else 0, thresholds, "layer")


def time_judgement(run: Run, step: Step, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Judgement:
    """The judgement along time at `step`, on the last recurrent layer: `dead` where the gradient
    is exactly 0 at t = 0 (naming the last time step of the run of zeros from t = 0: from there
    back, nothing arrives), otherwise the verdict on time_gain over T - 1 time steps."""
    timesteps = run.timesteps
    target = run.resolve_step(step)
    if timesteps is None or target is None or not len(timesteps):
        return Judgement(None)
    layer = time_layer(timesteps)
    rows = timesteps[(timesteps["step"].to_numpy() == target) & (timesteps["layer"].to_numpy() == layer)]
    rows = rows.sort_values("t", kind="stable").drop_duplicates("t", keep="last")
    deltas, ts = rows["delta_norm"].to_numpy(dtype=float), rows["t"].to_numpy()
    if len(deltas) and deltas[0] == 0:
        zeros = next((n for n, d in enumerate(deltas) if d != 0), len(deltas))
        if zeros == len(deltas):
            where, when = "no gradient at any time step", f"at every time step (t = {ts[0]} to {ts[-1]})"
        else:
            where, when = f"no gradient back through t={ts[zeros - 1]}", f"from t = {ts[zeros - 1]} back to t = {ts[0]}"
        note = (f"dead along time at step {target}: the gradient of recurrent layer {layer} is exactly 0 {when}: "
                f"nothing reaches those inputs; time_gain and step_factor are {'empty (0/0)' if zeros == len(deltas) else '0'}")  # fmt: skip
        return Judgement("dead", math.nan, "step", where, note)
    gain = time_profile_at(run, step)["time_gain"]
    return judge(gain, len(deltas) - 1 if len(deltas) > 1 else 0, thresholds, "step")


def stack_length(run: Run) -> int:
    """The layer-to-layer steps the gain spans: depth - 1 hidden layers (0 for one)."""
    return max(hidden_span(run.arrays("layers"))[2] - 1, 0)


def time_length(run: Run, step: Step) -> int:
    """The time steps time_gain spans at `step`: T - 1 on the last recurrent layer (0 without)."""
    timesteps, target = run.timesteps, run.resolve_step(step)
    if timesteps is None or target is None or not len(timesteps):
        return 0
    rows = timesteps[(timesteps["step"].to_numpy() == target) & (timesteps["layer"].to_numpy() == time_layer(timesteps))]
    return max(rows["t"].nunique() - 1, 0)


def group_verdict(texts: Sequence[str | None], gain: float, length: int, thresholds: Thresholds = DEFAULT_THRESHOLDS, unit: str = "layer") -> str | None:
    """The verdict of a row of several seeds: on the row's (geometric mean) gain, unless some seed
    is dead: all dead, `dead` (its place where the seeds agree); some, `mixed: 1 dead, 2 stable`."""
    words = [word_of(text) for text in texts]
    dead = words.count("dead")
    if dead == len(words):
        return texts[0] if len(set(texts)) == 1 else f"dead (in all {dead} seeds, at different places)"
    if dead:
        counts: dict[str, int] = {}
        for word in words:
            counts[word or "no verdict"] = counts.get(word or "no verdict", 0) + 1
        return "mixed: " + ", ".join(f"{n} {word}" for word, n in counts.items())
    return str(judge(gain, length, thresholds, unit)) or None


def run_verdict(run: Run, step: Step, gain: float | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> str:
    """The verdict at `step` as the tables show it (str of stack_judgement): what the signal measured
    at that step says, whatever happened later (a network healthy at initialization that diverged
    at step 300 is 'stable' at step 0, an exploding one 'exploding'); the run's fate is its status.
    (`gain` is read from the run; the argument is kept for callers that pass it.)"""
    return str(stack_judgement(run, step, thresholds))


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
    batch_stats = in_step_order("test_batch_stats")  # (log.test_batch_stats only; empty for the others)
    out["final_test_batch_stats_accuracy"] = float(metrics["accuracy"][batch_stats[-1]]) if len(batch_stats) else math.nan
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
        row[column_name("verdict", step)] = str(stack_judgement(run, step, thresholds, profile["gain"])) or None
        if run.timesteps is not None:  # a recurrent run: the same along time (feed-forward rows unchanged)
            along_time = time_profile_at(run, step)
            for quantity, number in along_time.items():
                row[column_name(quantity, step)] = number
            row[column_name("time_verdict", step)] = str(time_judgement(run, step, thresholds)) or None
    finals = final_metrics(run, target_loss)
    if target_loss is None:
        del finals["steps_to_target"]
    row.update(finals)
    return row


def alpha_warning(runs: Sequence[Run], step: Step) -> str | None:
    """WeightWatcher's warning on the hidden layers of `runs` (the seeds of one row) at `step`: each
    layer's weight_alpha, averaged over the runs that fitted it, named where it is outside
    ALPHA_RANGE: `over-trained: blocks.3 (1.84); under-trained: blocks.0 (6.52)`, `none` when every
    fitted layer is inside, None when no layer has a weight_alpha there."""
    fitted: dict[tuple[int, str], list[float]] = {}
    for run in runs:
        layers = run.layers
        target = run.resolve_step(step)
        if "weight_alpha" not in layers or target is None:
            continue
        rows = layers[(layers["step"] == target) & (layers["kind"] == "hidden") & layers["weight_alpha"].notna()]
        for layer, name, alpha in zip(rows["layer"], rows["name"], rows["weight_alpha"]):
            fitted.setdefault((int(layer), str(name)), []).append(float(alpha))
    if not fitted:
        return None
    low, high = ALPHA_RANGE
    means = {key: sum(values) / len(values) for key, values in sorted(fitted.items())}
    parts = []
    for word, outside in (("over-trained", lambda a: a < low), ("under-trained", lambda a: a > high)):
        names = [f"{name} ({alpha:.3g})" for (_, name), alpha in means.items() if outside(alpha)]
        if names:
            parts.append(f"{word}: {', '.join(names)}")
    return "; ".join(parts) if parts else "none"


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
