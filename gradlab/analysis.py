"""Reading runs back and putting them side by side: summaries, verdicts, comparison tables.

Everything here works on the records of `gradlab run` (records.py) with pandas alone: no torch, no
matplotlib, so `gradlab compare` starts fast and runs wherever the CSV files are.

The flow is load -> summarize -> group -> render:

    load_runs(paths)          Run objects (tables + config + meta) and one-line problems
    profile_at(run, step)     the gradient profile at one step   (PROFILE_QUANTITIES)
    final_metrics(run, ...)   losses, accuracies, steps to a target loss  (FINAL_QUANTITIES)
    compare_runs(runs, ...)   one row per configuration, seeds averaged: a `Comparison`
    to_csv / to_markdown / to_json / rich_view     displaying, kept apart from computing

The quantity names below are the words of the README (gain across the stack, per-layer factor). They are defined once and used by the
comparison columns, by `gradlab compare --explain` and by the `expect:` section of a config.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, NamedTuple, Sequence

import numpy as np
import pandas as pd

from gradlab import records
from gradlab.errors import GradlabError, RunError

# --------------------------------------------------------------------------------------------
# The words: every summary quantity, defined once
# --------------------------------------------------------------------------------------------

# Measured at one logged step (`--step`, or `step:` in an expectation).
PROFILE_QUANTITIES: dict[str, str] = {
    "first_delta_norm": "delta_norm of the first hidden layer (layer 0): the back-propagated signal where it reaches the input end of the stack",
    "last_delta_norm": "delta_norm of the last hidden layer: the signal as it enters the stack from the head",
    "gain": "gain across the stack = first_delta_norm / last_delta_norm; below 1 the signal shrinks on its way down to the input, above 1 it grows",
    "layer_factor": "per-layer factor = gain ** (1 / (depth - 1)): the average change of the signal from one layer to the next; empty when depth is 1",
    "weight_grad_gain": "weight-gradient gain = weight_grad_norm of the first hidden layer / that of the last hidden layer",
    "dead_frac": "largest dead_frac over the hidden layers: share of a layer's units whose activation derivative is below 5% of its maximum on every example of the batch",
    "saturated_frac": "largest saturated_frac over the hidden layers: share of a layer's (example, unit) pairs whose activation derivative is below 5% of its maximum",
}

# Measured over the whole run.
FINAL_QUANTITIES: dict[str, str] = {
    "final_train_loss": "train loss at the run's last logged step (on that step's training batch)",
    "final_train_accuracy": "train accuracy at the run's last logged step (on that step's training batch)",
    "final_test_loss": "loss on the test set at the run's last evaluation",
    "final_test_accuracy": "accuracy on the test set at the run's last evaluation",
    "steps_to_target": "first logged step at which the train loss is at or below the target loss; empty when it never got there",
}

SUMMARY_QUANTITIES: dict[str, str] = {**PROFILE_QUANTITIES, **FINAL_QUANTITIES}

# Columns that are not summary quantities but appear in every comparison.
OTHER_COLUMNS: dict[str, str] = {
    "label": "the run's config name; a directory id is added where two rows would share a name",
    "status": "from meta.json: running | completed | diverged | interrupted | failed (a row of several seeds counts each status)",
    "seeds": "number of runs averaged in the row: runs that share every config value but the seed form one row",
    "last_step": "largest step in layers.csv: where 'last' measurements are taken",
    "verdict": "vanishing (gain below the vanish threshold) | stable | exploding (gain above the explode threshold) | diverged (a run that diverged, at its last logged step: the last finite measurement before it blew up); 'mixed' lists the verdicts of a row's seeds when they disagree",
}

Verdict = Literal["vanishing", "stable", "exploding", "diverged"]


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


# --------------------------------------------------------------------------------------------
# Loading runs
# --------------------------------------------------------------------------------------------

Step = int | Literal["last"]


def parse_step(text: str | int) -> Step:
    """'0', 'last' or 'N' (a logged step) -> 0, 'last' or N."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str) and text.strip().lower() == "last":
        return "last"
    else:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"got {text!r}; expected 0, last or a step number") from None
    if value < 0:
        raise ValueError(f"got {value}; a step is 0 or more")
    return value


def shown_path(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it: shorter messages and labels."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


@dataclass
class Run:
    """One run directory read back: its resolved config, meta.json and both tables."""

    dir: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    layers: pd.DataFrame
    metrics: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # warnings: the run is compared, with caveats

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.dir.parent.name))

    @property
    def status(self) -> str:
        return str(self.meta.get("status", "unknown"))

    @property
    def short_id(self) -> str:
        # Run directories are named <YYYYmmdd-HHMMSS>-<hex id>.
        return self.dir.name.rsplit("-", 1)[-1]

    @property
    def last_step(self) -> int | None:
        """None when nothing was logged (a run that diverged at its very first step)."""
        return None if self.layers.empty else int(self.layers["step"].max())

    def resolve_step(self, step: Step) -> int | None:
        return self.last_step if step == "last" else int(step)


def _numeric(frame: pd.DataFrame, text_columns: Sequence[str], where: str) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if column in text_columns:
            continue
        try:
            frame[column] = pd.to_numeric(frame[column])
        except (ValueError, TypeError):
            raise RunError(f"{where}: column {column} holds values that are not numbers") from None
    return frame


def _read_rows(run_dir: Path, which: str, notes: list[str]) -> pd.DataFrame:
    """One CSV of a run, with a partial last line (the run was killed mid-write) dropped."""
    frame = records.read_table(run_dir, which)
    path = run_dir / which
    with open(path, "rb") as file:
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(size - 1, 0))
        ends_cleanly = size == 0 or file.read(1) == b"\n"
    if not ends_cleanly and len(frame):
        notes.append(f"{run_dir}: {which} ends in a partial row (the run was cut off while writing it); that row is left out")
        frame = frame.iloc[:-1]
    text = ("name", "kind") if which == records.LAYERS_FILE else ("split",)
    return _numeric(frame, text, f"{run_dir}: {which}")


def load_run(run_dir: str | Path) -> Run:
    """Read one run directory. Raises RunError when it cannot be compared at all.

    Problems that leave the run usable (still marked running, interrupted, a partial last row)
    are collected in `Run.notes`, one line each, naming the run.
    """
    run_dir = shown_path(Path(run_dir))
    notes: list[str] = []
    meta = records.read_meta(run_dir)
    config = records.read_config(run_dir)
    layers = _read_rows(run_dir, records.LAYERS_FILE, notes)
    metrics = _read_rows(run_dir, records.METRICS_FILE, notes)
    if layers.empty and meta.get("status") != "diverged":
        # (a run that diverged at step 0 logged nothing, and is still a result to compare)
        raise RunError(f"{run_dir}: {records.LAYERS_FILE} has no rows (the run logged nothing)")
    if notes:
        # A cut-off write may have left the last logged step with only some of its layers.
        complete = layers.groupby("step")["layer"].nunique()
        last = complete.index.max()
        if len(complete) > 1 and complete[last] < complete.iloc[0]:
            notes.append(f"{run_dir}: step {last} of {records.LAYERS_FILE} has only {complete[last]} of {complete.iloc[0]} layers; that step is left out")
            layers = layers[layers["step"] != last]

    run = Run(run_dir, config, meta, layers.reset_index(drop=True), metrics.reset_index(drop=True), notes)
    if run.status == "running":
        notes.append(f"{run_dir}: still marked running (in progress, or killed before it could finish); compared up to step {run.last_step}")
    elif run.status == "interrupted":
        notes.append(f"{run_dir}: was interrupted; compared up to step {run.last_step}")
    elif run.status == "failed":
        notes.append(f"{run_dir}: failed; compared up to step {run.last_step}")
    elif run.status not in records.STATUSES:
        notes.append(f"{run_dir}: meta.json has status {run.status!r}, not one of {', '.join(records.STATUSES)}")
    return run


class Loaded(NamedTuple):
    runs: list[Run]
    problems: list[str]  # every line to show the user, in order: missing paths, skipped runs, caveats
    skipped: list[str]  # the problems that left a path or a run out


def discover_runs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Run directories named in `paths` or found below them (recursively), and one line per path
    that does not exist or holds no runs."""
    missing: list[str] = []
    run_dirs: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            missing.append(f"{path}: does not exist")
            continue
        found = records.find_run_dirs([path])
        if not found:
            missing.append(f"{path}: no runs found (a run directory holds {records.META_FILE})")
        for run_dir in found:
            run_dirs.setdefault(run_dir, None)
    return list(run_dirs), missing


def load_runs(paths: Iterable[str | Path]) -> Loaded:
    """The runs found under `paths` (run directories or folders holding runs, searched recursively).

    A path without runs and a run that cannot be read are reported and left out; a run that can
    be read with caveats (still running, cut off) is reported and kept. Raises RunError, with
    every problem, only when no run at all could be read.
    """
    paths = list(paths)
    run_dirs, skipped = discover_runs(paths)
    problems = list(skipped)
    runs: list[Run] = []
    for run_dir in run_dirs:
        try:
            run = load_run(run_dir)
        except GradlabError as exc:
            lines = [f"{line}; skipped" for line in exc.lines]
            skipped.extend(lines)
            problems.extend(lines)
            continue
        problems.extend(run.notes)
        runs.append(run)
    if not runs:
        raise RunError(*(problems or [f"no runs found in {', '.join(map(str, paths)) or 'no paths'}"]), "no run could be read")
    return Loaded(runs, problems, skipped)


# --------------------------------------------------------------------------------------------
# Summaries of one run
# --------------------------------------------------------------------------------------------


def hidden_span(layers: pd.DataFrame) -> tuple[int, int, int]:
    """(first, last, depth) of the hidden layers, taken over the whole table so that a step missing
    a layer reads as an empty value instead of silently measuring a different layer."""
    hidden = layers.loc[layers["kind"] == "hidden", "layer"]
    if hidden.empty:
        return -1, -1, 0
    return int(hidden.min()), int(hidden.max()), int(hidden.nunique())


def profile_at(run: Run, step: Step) -> dict[str, float]:
    """PROFILE_QUANTITIES of `run` at one logged step (NaN where the step or a value is missing)."""
    first, last, depth = hidden_span(run.layers)
    at = run.layers[(run.layers["step"] == run.resolve_step(step)) & (run.layers["kind"] == "hidden")]
    at = at.drop_duplicates("layer", keep="last").set_index("layer")

    def value(layer: int, column: str) -> float:
        return float(at.at[layer, column]) if layer in at.index else math.nan

    def ratio(column: str) -> float:
        top, bottom = value(first, column), value(last, column)
        if math.isnan(top) or math.isnan(bottom) or (top == 0 and bottom == 0):
            return math.nan
        with np.errstate(divide="ignore"):
            return float(np.float64(top) / np.float64(bottom))  # x/0 is inf: a real, if extreme, gain

    gain = ratio("delta_norm")
    return {
        "first_delta_norm": value(first, "delta_norm"),
        "last_delta_norm": value(last, "delta_norm"),
        "gain": gain,
        "layer_factor": gain ** (1 / (depth - 1)) if depth > 1 and not math.isnan(gain) else math.nan,
        "weight_grad_gain": ratio("weight_grad_norm"),
        # max() of an all-empty column is NaN, never 0.
        "dead_frac": float(at["dead_frac"].max()) if len(at) else math.nan,
        "saturated_frac": float(at["saturated_frac"].max()) if len(at) else math.nan,
    }


def run_verdict(run: Run, step: Step, gain: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Verdict | None:
    """The verdict at `step`. A diverged run is 'diverged' at its last logged step: the records
    stop at the last finite measurement, and the story of the run is that it blew up next."""
    if run.status == "diverged" and run.resolve_step(step) == run.last_step:
        return "diverged"
    return verdict(gain, thresholds)


def final_metrics(run: Run, target_loss: float | None = None) -> dict[str, float]:
    """FINAL_QUANTITIES of `run`; steps_to_target is NaN without a target or when never reached."""
    out: dict[str, float] = {}
    for split in ("train", "test"):
        rows = run.metrics[run.metrics["split"] == split].sort_values("step", kind="stable")
        last = rows.iloc[-1] if len(rows) else None
        for metric in ("loss", "accuracy"):
            out[f"final_{split}_{metric}"] = float(last[metric]) if last is not None else math.nan
    out["steps_to_target"] = math.nan
    if target_loss is not None:
        train = run.metrics[run.metrics["split"] == "train"].sort_values("step", kind="stable")
        reached = train.loc[train["loss"] <= target_loss, "step"]
        if len(reached):
            out["steps_to_target"] = float(reached.iloc[0])
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
    finals = final_metrics(run, target_loss)
    if target_loss is None:
        del finals["steps_to_target"]
    row.update(finals)
    return row


def missing_step_notes(runs: Sequence[Run], steps: Sequence[Step]) -> list[str]:
    notes = []
    for run in runs:
        logged = set(run.layers["step"].unique())
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


# --------------------------------------------------------------------------------------------
# Config differences
# --------------------------------------------------------------------------------------------

# Config fields that hold a component ({name: ..., params...}): one value, shown as name(params).
# These are the component fields of config.Experiment (a test keeps the two in step); config.py is
# not imported here because it pulls in torch through the component registries.
COMPONENT_KEYS = ("model.activation", "model.norm", "model.init.weight", "model.init.bias", "optim")

# Keys that do not change the experiment, only its bookkeeping; `seed` is what groups runs.
NOT_EXPERIMENTAL = ("name", "seed", "device", "log", "train.eval_every", "expect")

_MISSING = object()


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'depth': 3, 'activation': {...}}} -> {'model.depth': 3, 'model.activation': {...}}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted in COMPONENT_KEYS:
            flat[dotted] = {"name": value} if isinstance(value, str) else value
        elif isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _is_experimental(key: str) -> bool:
    return not any(key == skip or key.startswith(f"{skip}.") for skip in NOT_EXPERIMENTAL)


def _canonical(value: Any) -> str:
    return "<missing>" if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values are not the same in every config (a missing key counts as a value)."""
    flats = [flatten_config(config) for config in configs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [
        key for key in keys
        if _is_experimental(key) and len({_canonical(flat.get(key, _MISSING)) for flat in flats}) > 1
    ]  # fmt: skip


def format_value(value: Any) -> str:
    """A config value as YAML would write it, numbers kept short."""
    if value is _MISSING:
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(format_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def display_values(key: str, values: Sequence[Any]) -> list[str]:
    """How each run's value of `key` is shown.

    A component shows its name and parameters, `leaky_relu(negative_slope=0.2)`; where the runs
    use one component with different parameters, only the parameters that differ, so
    `batchnorm(placement=pre)` and `batchnorm(placement=post)` are not buried in momentum and eps.
    The run's config.yaml has every parameter.
    """
    if key not in COMPONENT_KEYS:
        return [format_value(value) for value in values]
    specs: dict[str, list[dict[str, Any]]] = {}
    for value in values:
        if isinstance(value, dict):
            specs.setdefault(str(value.get("name", "?")), []).append(value)
    shown_params: dict[str, list[str]] = {}
    for name, same_name in specs.items():
        params = list(dict.fromkeys(p for spec in same_name for p in spec if p != "name"))
        varying = [p for p in params if len({_canonical(spec.get(p, _MISSING)) for spec in same_name}) > 1]
        shown_params[name] = varying if varying else params
    shown = []
    for value in values:
        if not isinstance(value, dict):
            shown.append(format_value(value))
            continue
        name = str(value.get("name", "?"))
        args = ", ".join(f"{p}={format_value(value[p])}" for p in shown_params[name] if p in value)
        shown.append(f"{name}({args})" if args else name)
    return shown


def config_columns(runs: Sequence[Run]) -> dict[str, list[str]]:
    """{differing key: the displayed value of every run}, keys in config order."""
    flats = [flatten_config(run.config) for run in runs]
    return {
        key: display_values(key, [flat.get(key, _MISSING) for flat in flats])
        for key in differing_keys([run.config for run in runs])
    }


def describe_run(config: dict[str, Any]) -> str:
    """A one-line description of a config's model, for titles where no other run is around."""
    model = config.get("model", {})
    flat = flatten_config(config)
    parts = [f"{model.get('kind', '?')} depth {model.get('depth', '?')} x {model.get('width', '?')}"]
    for key, word in (("model.activation", "activation"), ("model.norm", "norm"), ("model.init.weight", "init")):
        if key in flat:
            spec = flat[key]
            args = ", ".join(f"{p}={format_value(v)}" for p, v in spec.items() if p != "name")
            parts.append(f"{word} {spec.get('name')}" + (f"({args})" if args else ""))
    return f"{config.get('name', 'run')}: " + ", ".join(parts)


def group_by_config(runs: Sequence[Run]) -> list[list[int]]:
    """Indices of runs that share every experimental config value but the seed, in first-seen order."""
    keys = differing_keys([run.config for run in runs])
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, run in enumerate(runs):
        flat = flatten_config(run.config)
        groups.setdefault(tuple(_canonical(flat.get(key, _MISSING)) for key in keys), []).append(index)
    return list(groups.values())


def run_labels(runs: Sequence[Run]) -> list[str]:
    """A legend label per run: its differing config values, or its description when nothing differs."""
    columns = config_columns(runs)
    if not columns:
        return [describe_run(run.config) for run in runs]
    return [", ".join(f"{key}={values[i]}" for key, values in columns.items()) for i in range(len(runs))]


# --------------------------------------------------------------------------------------------
# The comparison: one row per configuration
# --------------------------------------------------------------------------------------------

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
    order = {status: i for i, status in enumerate(records.STATUSES)}
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda item: order.get(item[0], 99)))


def _group_verdict(verdicts: list[str | None]) -> str | None:
    counts = Counter(v or "n/a" for v in verdicts)
    if len(counts) == 1:
        return verdicts[0]
    return "mixed: " + ", ".join(f"{n} {v}" for v, n in counts.most_common())


def _group_id(group: list[Run]) -> str:
    """The first run's id; a sweep member's id is its values (`activation=relu,seed=1`), and a
    row averaging several seeds is named without the seed."""
    run_id = group[0].short_id
    if len(group) > 1:
        run_id = re.sub(r"(^|,)seed=[^,]*", "", run_id).strip(",") or run_id
    return run_id


def _unique_labels(groups: list[list[Run]]) -> list[str]:
    labels = ["+".join(dict.fromkeys(run.name for run in group)) for group in groups]
    counts = Counter(labels)
    return [f"{label}#{_group_id(group)}" if counts[label] > 1 else label for label, group in zip(labels, groups)]


def compare_runs(
    runs: Sequence[Run],
    steps: Sequence[Step] = (0, "last"),
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    target_loss: float | None = None,
) -> Comparison:
    """One row per configuration: differing config values, status, the summaries at each step
    and the finals; runs that differ only by seed are averaged (mean, sample std, count)."""
    if not runs:
        raise RunError("no runs to compare")
    steps = list(dict.fromkeys(steps))
    summaries = [summarize_run(run, steps, thresholds, target_loss) for run in runs]
    columns = config_columns(runs)
    groups = group_by_config(runs)
    averaged = [c for c in summaries[0] if c not in ("status", "last_step") and not c.startswith("verdict@")]
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
            if column.startswith("verdict@"):
                row[column] = _group_verdict(values)
                continue
            if column == "last_step":
                # Not a measurement to average: seeds that stopped early (diverged) say so.
                logged = [v for v in values if v is not None]
                row[column] = max(logged) if logged else None
                if len(set(values)) > 1:
                    notes.append(f"{label}: its seeds stopped at different steps ({', '.join(map(str, values))}); 'last' is each seed's own last step")
                continue
            mean, std = _mean_std([float(v) for v in values])
            row[column] = mean
            if grouped:
                row[f"{column}_std"] = std
        rows.append(row)

    order = ["label", *columns, "status", "seeds"]
    for column in summaries[0]:
        if column == "status":
            continue
        order.append(column)
        if grouped and column in averaged:
            order.append(f"{column}_std")
    table = pd.DataFrame(rows, columns=order)
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
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, correctly rounded (the statistics module sums
    exactly: three seeds at 0.8 average to 0.8 with spread 0, not 0.8000000000000002 ± 1e-16).
    A mean over seeds where one is empty would claim what was not measured: it is empty too."""
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    if any(math.isinf(v) for v in values):
        return statistics.mean(values), math.nan  # inf (or nan for inf - inf); no finite spread
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _all_integral(series: pd.Series) -> bool:
    values = series.dropna().astype(float)
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


# --------------------------------------------------------------------------------------------
# Explaining and displaying
# --------------------------------------------------------------------------------------------


def describe_column(column: str, comparison: Comparison | None = None) -> str:
    """What a comparison column means, from the definitions above."""
    if column.endswith("_std"):
        return f"sample standard deviation of {column[:-4]} over the row's seeds (empty for one seed)"
    base, _, step = column.partition("@")
    where = ""
    if step:
        where = " (at step 0: the network at initialization)" if step == "0" else (
            " (at each run's last logged step)" if step == "last" else f" (at step {step})"
        )  # fmt: skip
    if base == "verdict":
        thresholds = comparison.thresholds if comparison else DEFAULT_THRESHOLDS
        return f"{OTHER_COLUMNS['verdict']}; thresholds vanish={thresholds.vanish:g}, explode={thresholds.explode:g}{where}"
    if base in SUMMARY_QUANTITIES:
        text = SUMMARY_QUANTITIES[base]
        if base == "steps_to_target" and comparison and comparison.target_loss is not None:
            text += f" (target loss {comparison.target_loss:g})"
        return text + where
    if base in OTHER_COLUMNS:
        return OTHER_COLUMNS[base]
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
    generic += [(q, text) for q, text in FINAL_QUANTITIES.items()]
    generic.append(("<column>_std", "sample standard deviation over the row's seeds (present when some row averages several seeds)"))
    generic.append(("<step>", "0 (initialization), last (each run's last logged step) or a step number; chosen with --step"))
    return generic


def format_number(value: Any, integer: bool = False) -> str:
    """A number as shown to a person: 3 significant digits, empty for a missing value."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    value = float(value)
    if integer and value.is_integer():
        return str(int(value))
    return f"{value:.3g}"


def display_cells(comparison: Comparison) -> pd.DataFrame:
    """The table as text cells, `mean ± std` where a row averages seeds."""
    table = comparison.table
    cells = pd.DataFrame(index=table.index)
    for column in comparison.value_columns():
        integer = column in INTEGER_COLUMNS
        texts = []
        for i in table.index:
            value = table.at[i, column]
            text = format_number(value, integer)
            std_column = f"{column}_std"
            if std_column in table and text and table.at[i, "seeds"] > 1:
                std = format_number(table.at[i, std_column])
                if std:
                    text = f"{text} ± {std}"
            texts.append(text)
        cells[column] = texts
    return cells


def to_csv(comparison: Comparison) -> str:
    """Machine-readable: every number at full precision, empty cells empty."""
    return comparison.table.to_csv(index=False, na_rep="", lineterminator="\n")


def _json_value(value: Any) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"  # JSON has no infinity; a gain can be one
        return value
    return value


def to_json(comparison: Comparison) -> str:
    rows = []
    for i, record in enumerate(comparison.table.to_dict(orient="records")):
        row = {key: _json_value(value) for key, value in record.items()}
        row["runs"] = [str(path) for path in comparison.runs[i]]
        rows.append(row)
    document = {
        "steps": [step_label(s) for s in comparison.steps],
        "thresholds": {"vanish": comparison.thresholds.vanish, "explode": comparison.thresholds.explode},
        "target_loss": comparison.target_loss,
        "config_keys": comparison.config_keys,
        "rows": rows,
    }
    return json.dumps(document, indent=2) + "\n"


def to_markdown(comparison: Comparison) -> str:
    cells = display_cells(comparison)
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, cells.columns)) + " |", "|" + "|".join("---" for _ in cells.columns) + "|"]
    for _, row in cells.iterrows():
        lines.append("| " + " | ".join(escape(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def render(comparison: Comparison, fmt: str) -> str:
    renderers = {"csv": to_csv, "markdown": to_markdown, "json": to_json}
    return renderers[fmt](comparison)


VERDICT_STYLES = {"vanishing": "bold blue", "stable": "green", "exploding": "bold red", "diverged": "bold magenta"}


def rich_view(comparison: Comparison):
    """The comparison for a terminal, turned: one column per configuration, the quantities down
    the side in sections (config, step 0, last step, training), then the verdict thresholds.
    A row per run would be two dozen columns wide; csv, markdown and json keep one row per run."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cells = display_cells(comparison)
    thresholds = comparison.thresholds
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    table.add_column("", no_wrap=True)
    for label in cells["label"]:
        table.add_column(label, overflow="fold")

    def add(name: str, column: str, end_section: bool = False) -> None:
        texts = []
        for text in cells[column]:
            style = VERDICT_STYLES.get(text, "yellow" if text.startswith("mixed") else "") if column.startswith("verdict@") else ""
            texts.append(Text(text, style=style))
        table.add_row(name, *texts, end_section=end_section)

    for key in comparison.config_keys:
        add(key, key)
    add("status", "status")
    add("seeds", "seeds")
    add("last_step", "last_step", end_section=True)
    for step in comparison.steps:
        table.add_row(Text(_step_heading(comparison, step), style="bold"))
        for quantity in PROFILE_QUANTITIES:
            add(quantity, column_name(quantity, step))
        add("verdict", column_name("verdict", step), end_section=True)
    table.add_row(Text("training", style="bold"))
    for quantity in FINAL_QUANTITIES:
        if quantity in cells:
            add(quantity, quantity)
    return Group(table, Text(f"verdict: vanishing below gain {thresholds.vanish:g}, exploding above {thresholds.explode:g}"))


def _step_heading(comparison: Comparison, step: Step) -> str:
    if step == 0:
        return "at step 0 (initialization)"
    if step != "last":
        return f"at step {step}"
    last_steps = set(comparison.table["last_step"].dropna().astype(int))
    return f"at the last step ({last_steps.pop()})" if len(last_steps) == 1 else "at each run's last step"
