"""Checking a config's `expect:` section against a finished run (a CI smoke test), and the JUnit
report CI systems display.

The section's schema (`Bound`, `Expectations`) is vocabulary and lives in config/expect.py; the quantity
names are quantities.SUMMARY_QUANTITIES. A measurement is the very number `gradlab compare` shows
for a single run (summaries.py computes it). This module is read-and-show floor: it reads records
and may use pandas, never torch.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradlab.analysis import summaries
from gradlab.config.expect import Bound, Expectations, parse_expectations
from gradlab.records.layout import CONFIG_FILE, SWEEP_INDEX_FILE, SWEEP_SPEC_FILE, discover_runs, shown_path
from gradlab.records.read import read_config
from gradlab.records import run as records_run  # (records_run.load_run: read where a test can count the reads)
from gradlab.records.run import Run
from gradlab.vocab.errors import GradlabError, RunError
from gradlab.vocab.quantities import PROFILE_QUANTITIES, TIME_QUANTITIES
from gradlab.vocab.values import canonical

# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One expectation checked against one run."""

    name: str  # 'status', 'gain@0', 'final_test_accuracy'
    measured: float | str | None  # None: nothing was measured (the step was not logged, ...)
    bound: str  # 'between [0.01, 100]', 'min 0.9', 'one of completed'
    passed: bool
    edges: tuple[float, ...] = ()  # the bound's numbers, so a measurement is never rounded onto one

    def measured_text(self) -> str:
        if self.measured is None or (isinstance(self.measured, float) and math.isnan(self.measured)):
            return "empty"
        if isinstance(self.measured, str):
            return self.measured
        # Four significant digits, unless rounding would land on the very edge the bound tests
        # (0.89996 shown as 0.9 failing 'min 0.9'): then every digit.
        short = f"{self.measured:.4g}"
        return repr(float(self.measured)) if float(short) in self.edges and float(short) != self.measured else short

    def line(self) -> str:
        """'ok    gain@0 = 0.0123  (between [0.01, 100])', or FAIL."""
        return f"{'ok  ' if self.passed else 'FAIL'}  {self.name} = {self.measured_text()}  ({self.bound})"

    def failure(self) -> str:
        return f"{self.name} = {self.measured_text()}, expected {self.bound}"


def check(run: Run, expectations: Expectations) -> list[Outcome]:
    """Every expectation of `expectations` against a loaded run: status first, then the bounded
    quantities in SUMMARY_QUANTITIES order."""
    outcomes = []
    if expectations.status is not None:
        outcomes.append(Outcome("status", run.status, f"one of {', '.join(expectations.status)}", run.status in expectations.status))
    for quantity, bound in expectations.bounds().items():
        if bound.within_theory is not None:
            outcomes.append(_within_theory(run, quantity, bound))
            continue
        if quantity in PROFILE_QUANTITIES:
            name = summaries.column_name(quantity, bound.step)
            measured = summaries.profile_at(run, bound.step)[quantity]
        elif quantity in TIME_QUANTITIES:  # recurrent runs; empty (failing) for a feed-forward run
            name = summaries.column_name(quantity, bound.step)
            measured = summaries.time_profile_at(run, bound.step)[quantity]
        else:
            name = quantity if quantity != "steps_to_target" else f"steps_to_target(loss<={bound.target_loss:g})"
            measured = summaries.final_metrics(run, bound.target_loss)[quantity]
        edges = tuple(edge for edge in (bound.low, bound.high) if math.isfinite(edge))
        outcomes.append(Outcome(name, measured, bound.describe(), bound.holds(measured), edges))
    return outcomes


def _within_theory(run: Run, quantity: str, bound) -> Outcome:
    """`layer_factor: {within_theory: x}`: the measured layer_factor at step 0 within x of theory's
    prediction from the run's config, relative to the prediction (predict.departs). A config theory
    has no prediction for fails, saying why: the expectation cannot hold. `step_factor` likewise
    along time (predict.step_departs: for Pascanu's bound, at most x above it)."""
    from gradlab.theory import predict

    prediction = predict.for_config(run.config)
    if quantity == "step_factor":
        return _within_step_theory(run, prediction, bound)
    if quantity == "s2":
        return _within_jacobian_theory(run, prediction, bound)
    measured = summaries.profile_at(run, 0)[quantity]
    name = summaries.column_name(quantity, 0)
    if prediction.layer_factor is None:
        return Outcome(name, measured, f"within {bound.within_theory:g} of theory, which has no prediction: {prediction.reason}", False)
    if prediction.narrow:  # mean field is an infinite-width theory: the expectation cannot be judged
        return Outcome(name, measured, f"within {bound.within_theory:g} of theory's {prediction.layer_factor:.4g}, which does not apply at {prediction.narrow} (docs/theory.md, Width)", False)
    departs = predict.departs(measured, prediction.layer_factor, bound.within_theory)
    return Outcome(name, measured, f"within {bound.within_theory:g} of theory's {prediction.layer_factor:.4g}, relative", departs is False)


def _within_jacobian_theory(run: Run, prediction, bound) -> Outcome:
    """`s2: {within_theory: x}`: the measured s2 of the last hidden block at step 0 within x of free
    probability's, relative to 1 + predicted s2 (predict.s2_departs: a predicted isometry, s2 = 0, still
    has a scale); a config the formula does not apply to fails, saying why."""
    from gradlab.theory import predict

    measured = summaries.jacobian_s2_at(run, 0)
    name = summaries.column_name("s2", 0)
    predicted = predict.jacobian_s2(prediction)
    if predicted is None:
        why = prediction.extra.get("jacobian_reason") or "the run's config has no log.jacobian"
        return Outcome(name, measured, f"within {bound.within_theory:g} of theory, which has no prediction: {why}", False)
    departs = predict.s2_departs(measured, predicted, bound.within_theory)
    return Outcome(name, measured, f"within {bound.within_theory:g} of theory's {predicted:.4g}, relative to 1 + s2", departs is False)


def _within_step_theory(run: Run, prediction, bound) -> Outcome:
    from gradlab.theory import predict

    measured = summaries.time_profile_at(run, 0)["step_factor"]
    name = summaries.column_name("step_factor", 0)
    if prediction.step_factor is None:
        why = prediction.reason or next((n for n in prediction.notes if n.startswith("no step_factor")), "none derived")
        return Outcome(name, measured, f"within {bound.within_theory:g} of theory, which has no prediction: {why}", False)
    departs = predict.step_departs(measured, prediction, bound.within_theory)
    if prediction.step_relation == predict.STEP_AT_MOST:
        text = f"at most {bound.within_theory:g} above Pascanu's bound {prediction.step_factor:.4g}, relative"
    else:
        text = f"within {bound.within_theory:g} of theory's {prediction.step_factor:.4g}, relative"
    return Outcome(name, measured, text, departs is False)


def parse(section: Any, where: str = "expect") -> Expectations:
    """Validate an `expect:` mapping outside a full config; errors name `<where>.<key>`."""
    return parse_expectations(section, where)


def check_run(run_dir: str | Path) -> list[Outcome]:
    """The expectations in a run's config.yaml checked against the run; [] when it states none.
    Raises ConfigError for an invalid section, RunError when the run cannot be read."""
    return _check_run_dir(Path(run_dir)).outcomes


@dataclass(frozen=True)
class RunCheck:
    """The outcomes for one run, or the reason it could not be checked."""

    run: Path
    outcomes: list[Outcome]
    error: str | None = None
    notes: tuple[str, ...] = ()  # caveats about the run (still running, cut off, no expect section)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]


NO_EXPECT = "its config has no expect section; nothing to check"


def _states_claims(sweep_dir: Path) -> bool:
    try:
        from gradlab.config.load import read_yaml

        return "claims" in read_yaml(sweep_dir / SWEEP_SPEC_FILE)
    except GradlabError:
        return False


def _check_run_dir(run_dir: Path) -> RunCheck:
    run_dir = shown_path(run_dir)
    config = read_config(run_dir)
    section = config.get("expect")
    if section is None:
        return RunCheck(run_dir, [], notes=(f"{run_dir}: {NO_EXPECT}",))
    expectations = parse(section, where=f"{run_dir / CONFIG_FILE}: expect")
    run = records_run.load_run(run_dir, config)  # (config.yaml read once: a thousand runs pay it a thousand times)
    return RunCheck(run_dir, check(run, expectations), notes=tuple(run.notes))


def check_paths(paths: list[str | Path]) -> tuple[list[RunCheck], list[str]]:
    """Check every run under `paths`, and the claims of every sweep directory among them (after
    its runs). A run or sweep that cannot be checked (unreadable, invalid section) is a RunCheck
    with an `error`; paths without runs are the returned problem lines. Raises RunError when no
    run is found at all."""
    run_dirs, problems = discover_runs(paths)
    if not run_dirs:
        raise RunError(*problems, "no runs to check")
    checks = []
    sweeps = dict.fromkeys(d.parent for d in run_dirs if (d.parent / SWEEP_SPEC_FILE).is_file() and (d.parent / SWEEP_INDEX_FILE).is_file())
    with_claims = {d for d in sweeps if _states_claims(d)}
    for run_dir in run_dirs:
        try:
            item = _check_run_dir(run_dir)
        except GradlabError as exc:
            checks.append(RunCheck(shown_path(run_dir), [], error="; ".join(exc.lines)))
            continue
        if run_dir.parent in with_claims and not item.outcomes:
            # a member of a sweep whose claims are its expectations: "no expect section" is no news
            item = RunCheck(item.run, [], notes=tuple(n for n in item.notes if not n.endswith(NO_EXPECT)))
        checks.append(item)
    for sweep_dir in sweeps:
        try:
            outcomes = check_sweep(sweep_dir)
        except GradlabError as exc:
            checks.append(RunCheck(shown_path(sweep_dir), [], error="; ".join(exc.lines)))
            continue
        if outcomes is not None:
            checks.append(RunCheck(shown_path(sweep_dir), outcomes))
        try:
            verdicts = check_coordcheck(sweep_dir)  # a gradlab coordcheck folder: its expect.coordcheck
        except GradlabError as exc:
            checks.append(RunCheck(shown_path(sweep_dir), [], error="; ".join(exc.lines)))
            continue
        if verdicts:
            checks.append(RunCheck(shown_path(sweep_dir), verdicts))
    return checks, problems


# --------------------------------------------------------------------------------------------
# A coordinate check's verdicts (`expect: {coordcheck: ...}`, gradlab coordcheck)
# --------------------------------------------------------------------------------------------


def coordcheck_outcomes(table, variant: str, expectation) -> list[Outcome]:
    """One variant's `expect: {coordcheck: ...}` against its slopes (analysis.coordcheck.slopes of
    the expectation's quantity and tolerance): one outcome per (verdict asked, layer, step)."""
    from gradlab.analysis.coordcheck import judged_steps, verdict

    rows = table[table["variant"] == variant]
    names = list(dict.fromkeys(rows.sort_values("layer")["name"]))
    prefix = f"{variant}: " if variant else ""
    tolerance = expectation.tolerance
    outcomes = []
    for want, layers in expectation.required().items():
        if want == "width-stable":
            bound = f"width-stable (|slope| <= {tolerance:g})"
        else:
            bound = f"{want} (slope {'>' if want == 'grows' else '<'} {'' if want == 'grows' else '-'}{tolerance:g})"
        for name in names if layers == "all" else layers:
            for step in judged_steps(rows, expectation.steps):
                label = f"{prefix}coordcheck {expectation.quantity} slope {name}@{step}"
                hit = rows[(rows["name"] == name) & (rows["step"] == step)]
                if hit.empty:
                    outcomes.append(Outcome(label, None, f"{bound}; no layer {name} at step {step}", False))
                    continue
                slope = float(hit["slope"].iloc[0])
                outcomes.append(Outcome(label, slope, bound, verdict(slope, tolerance) == want, (tolerance, -tolerance)))
    return outcomes


def check_coordcheck(sweep_dir: str | Path) -> list[Outcome] | None:
    """The `expect: {coordcheck: ...}` of every variant of a coordcheck folder against its
    coordcheck.csv (each variant's section read from one of its runs' config.yaml); None for a
    folder without coordcheck.csv. What `gradlab coordcheck` prints and `gradlab check` checks."""
    from gradlab.analysis import coordcheck

    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / coordcheck.COORDCHECK_FILE).is_file():
        return None
    coords = coordcheck.read_coords(sweep_dir)
    _, members = _sweep_members(sweep_dir)
    seen: set[str] = set()
    tables: dict[tuple[str, float], Any] = {}
    outcomes = []
    for run, values, _status in members:
        variant = coordcheck.variant_of(values)
        if variant in seen or not (sweep_dir / run / CONFIG_FILE).is_file():
            continue
        seen.add(variant)
        section = read_config(sweep_dir / run).get("expect")
        expectation = parse(section, where=f"{sweep_dir / run / CONFIG_FILE}: expect").coordcheck if section else None
        if expectation is None:
            continue
        key = (expectation.quantity, expectation.tolerance)
        if key not in tables:
            tables[key] = coordcheck.slopes(coords, *key)
        outcomes.extend(coordcheck_outcomes(tables[key], variant, expectation))
    return outcomes


# --------------------------------------------------------------------------------------------
# Claims over a sweep: comparisons between its configurations (claims.py)
# --------------------------------------------------------------------------------------------

# Gains and ratios are averaged over seeds geometrically (a linear mean of 1e-9 and 5e-8 says
# nothing about either), as gradlab compare averages them (compare.GEOMETRIC, _geometric_mean_spread).
GEOMETRIC = ("gain", "layer_factor", "weight_grad_gain", "first_delta_norm", "last_delta_norm")
SWEEP_COLUMNS_AFTER = ("status", "duration_s", "error")


def _sweep_members(sweep_dir: Path) -> tuple[dict[str, list[Any]], list[tuple[str, dict[str, Any], str]]]:
    """From sweep.csv: the axes ({key: values in first-seen order}) and per run (name, values as
    written, status)."""
    import csv

    import yaml

    path = sweep_dir / SWEEP_INDEX_FILE
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.reader(file)
            header = next(reader)
            rows = list(reader)
    except (OSError, StopIteration, csv.Error, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: cannot be read ({exc or 'empty'})") from None
    keys = [k for k in header[1:] if k not in SWEEP_COLUMNS_AFTER]
    axes: dict[str, list[Any]] = {key: [] for key in keys}
    members = []
    for row in rows:
        cells = dict(zip(header, row))
        try:
            values = {key: yaml.safe_load(cells.get(key, "")) for key in keys}
        except yaml.YAMLError:
            raise RunError(f"{path}: run {cells.get('run')!r} has a value that is not YAML") from None
        for key, value in values.items():
            if all(_same(value, v) is False for v in axes[key]):
                axes[key].append(value)
        members.append((cells.get("run", ""), values, cells.get("status", "")))
    return axes, members


def _same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


class _NotMeasured(Exception):
    """A claim's quantity that a run does not measure (time_gain of a feed-forward run, a quantity
    this gradlab does not know): the claim fails with this reason."""


def _run_value(run: Run, claim) -> float:
    if claim.quantity in PROFILE_QUANTITIES:
        value = summaries.profile_at(run, claim.step)[claim.quantity]
    elif claim.quantity in TIME_QUANTITIES:
        if run.timesteps is None:
            kind = (run.config.get("model") or {}).get("kind", "?") if isinstance(run.config, dict) else "?"
            raise _NotMeasured(f"{claim.quantity} is measured along time on a recurrent layer; run {run.name} (model.kind {kind}) has no time steps")
        value = summaries.time_profile_at(run, claim.step)[claim.quantity]
    else:
        values = summaries.final_metrics(run, claim.target_loss)
        if claim.quantity not in values:
            raise _NotMeasured(f"{claim.quantity} is not a quantity these runs have")
        value = values[claim.quantity]
    value = math.nan if value is None else float(value)
    if claim.quantity == "steps_to_target" and math.isnan(value):
        return math.inf  # never reached the target: slower than any run that did
    return value


def check_sweep(sweep_dir: str | Path) -> list[Outcome] | None:
    """The `claims:` of a sweep directory's sweep.yaml checked against its runs; None when it
    states none. Raises ConfigError for an invalid section, RunError when the sweep cannot be read."""
    from gradlab.config.claims import CLAIMS_KEY, SEED, describe_selection, parse_claims, unknown_quantity
    from gradlab.config.load import read_yaml

    sweep_dir = Path(sweep_dir)
    spec = read_yaml(sweep_dir / SWEEP_SPEC_FILE)
    if CLAIMS_KEY not in spec:
        return None
    axes, members = _sweep_members(sweep_dir)
    raw_claims = spec[CLAIMS_KEY]
    # a claim naming a quantity this gradlab does not know (a sweep.yaml edited, or written by
    # another version) is a failed claim with the reason; the others are checked
    unknown = [(i, why) for i, item in enumerate(raw_claims) if (why := unknown_quantity(item))] if isinstance(raw_claims, list) else []
    skipped = {i for i, _ in unknown}
    kept = [item for i, item in enumerate(raw_claims) if i not in skipped] if unknown else raw_claims
    claims = parse_claims(kept, axes) if kept else []
    config_keys = [k for k in axes if k != SEED]
    configs: dict[str, dict[str, Any]] = {}  # one per configuration: its values and runs
    for name, values, status in members:
        config_values = {k: values[k] for k in config_keys}
        entry = configs.setdefault(canonical(config_values), {"values": config_values, "runs": []})
        entry["runs"].append((name, status))
    loaded: dict[str, Run | None] = {}

    def run_of(name: str) -> Run | None:
        if name not in loaded:
            try:
                loaded[name] = records_run.load_run(sweep_dir / name)
            except GradlabError:
                loaded[name] = None
        return loaded[name]

    def value_of(entry: dict[str, Any], claim) -> tuple[float, int]:
        runs = [run_of(name) for name, status in entry["runs"]]
        if any(run is None for run in runs):
            return math.nan, len(runs)
        values = [_run_value(run, claim) for run in runs]
        if any(math.isnan(v) for v in values):
            return math.nan, len(values)
        if claim.quantity in GEOMETRIC:  # the limits compare takes: a seed at 0 makes 0, at inf inf, both none
            if any(v < 0 for v in values) or (0.0 in values and math.inf in values):
                return math.nan, len(values)
            if 0.0 in values or math.inf in values:
                return (0.0 if 0.0 in values else math.inf), len(values)
            return math.exp(sum(math.log(v) for v in values) / len(values)), len(values)
        return sum(values) / len(values), len(values)

    outcomes: list[Outcome] = [Outcome(raw_claims[i].get("name") or f"{CLAIMS_KEY}[{i}] ({raw_claims[i]['quantity']})", None, f"not checked: {why}", False)
                                for i, why in unknown]  # fmt: skip
    for claim in claims:
        chosen = [e for e in configs.values() if all(_same(e["values"][k], v) for k, v in claim.of.items())]
        if not chosen:
            outcomes.append(Outcome(claim.name, None, f"no configuration with {describe_selection(claim.of)} in this sweep", False))
            continue
        for entry in chosen:
            free = {k: v for k, v in entry["values"].items() if k not in claim.of and len(axes[k]) > 1}
            name = claim.name + (f" [{describe_selection(free)}]" if free else "")
            if claim.quantity is None:
                runs = [(run_name, (run_of(run_name).status if run_of(run_name) is not None else status)) for run_name, status in entry["runs"]]
                statuses = [status for _, status in runs]
                shown = statuses[0] if len(set(statuses)) == 1 else ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
                outcomes.append(Outcome(name, shown, f"one of {', '.join(claim.status)}, every seed", all(s in claim.status for s in statuses)))
                continue
            try:
                measured, seeds = value_of(entry, claim)
            except _NotMeasured as exc:
                outcomes.append(Outcome(name, None, f"not checked: {exc}", False))
                continue
            kind = "geometric mean" if claim.quantity in GEOMETRIC else "mean"
            per = f"{kind} of {seeds} seeds" if seeds > 1 else "one seed"
            if claim.partner is None:
                bound = Bound.model_validate({k: v for k, v in (("min", claim.low), ("max", claim.high)) if math.isfinite(v)})
                edges = tuple(e for e in (claim.low, claim.high) if math.isfinite(e))
                outcomes.append(Outcome(name, measured, f"{bound.describe()}; {per}", bound.holds(measured), edges))
                continue
            partner_values = {**entry["values"], **claim.partner}
            partner = configs.get(canonical(partner_values))
            word = "above" if claim.above is not None else "below"
            if partner is None:
                outcomes.append(Outcome(name, measured, f"{word} {describe_selection(claim.partner)}, which this sweep does not have with the other values", False))
                continue
            try:
                other, _ = value_of(partner, claim)
            except _NotMeasured as exc:
                outcomes.append(Outcome(name, measured, f"not checked: {exc}", False))
                continue
            margin = f" by more than {claim.margin:g}" if claim.margin else ""
            holds = (measured > other + claim.margin) if word == "above" else (measured < other - claim.margin)
            bound = f"{word} {describe_selection(claim.partner)}'s {_short(other)}{margin}; {per}"
            outcomes.append(Outcome(name, measured, bound, bool(holds) and not math.isnan(other)))
    return outcomes


def _short(value: float) -> str:
    return "empty" if math.isnan(value) else f"{value:.4g}"


# --------------------------------------------------------------------------------------------
# JUnit XML: what CI systems display as test results
# --------------------------------------------------------------------------------------------


def junit_xml(checks: list[RunCheck]) -> str:
    """One <testsuite> per run, one <testcase> per expectation; a violated expectation is a
    <failure>, a run that could not be read a single <testcase> with an <error>."""
    suites = ET.Element("testsuites", name="gradlab check")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for item in checks:
        run = str(item.run)
        failures = sum(not o.passed for o in item.outcomes)
        counts = {"tests": len(item.outcomes) + (item.error is not None), "failures": failures, "errors": int(item.error is not None)}
        suite = ET.SubElement(suites, "testsuite", name=run, **{k: str(v) for k, v in counts.items()})
        for key in totals:
            totals[key] += counts[key]
        if item.error is not None:
            case = ET.SubElement(suite, "testcase", classname=run, name="read run")
            ET.SubElement(case, "error", message=item.error).text = item.error
            continue
        for outcome in item.outcomes:
            case = ET.SubElement(suite, "testcase", classname=run, name=f"{outcome.name} {outcome.bound}")
            if not outcome.passed:
                ET.SubElement(case, "failure", message=outcome.failure()).text = outcome.failure()
    suites.attrib.update({k: str(v) for k, v in totals.items()})
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(checks: list[RunCheck], path: str | Path) -> Path:
    from gradlab.records.output import output_error, write_output

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, path, "--junit") from None
    return write_output(path, junit_xml(checks), "--junit")  # whole or not at all, never over a record
