"""The `expect:` section of a config: what must hold when a run ends (a CI smoke test).

    expect:
      status: completed                           # or a list: [completed, diverged]
      gain: {step: 0, between: [0.01, 100]}       # any summary quantity of `gradlab compare`
      final_test_accuracy: {min: 0.9}
      dead_frac: {max: 0.5}                       # step defaults to last
      steps_to_target: {target_loss: 0.5, max: 200}

The quantity names are analysis.SUMMARY_QUANTITIES: the schema below is built from them, so a
quantity added there can be bounded here with no other change. A measurement is the very number
`gradlab compare` shows for a single run.

Errors are PydanticCustomErrors carrying the offending key in `ctx['key']`, the form
config._format_error turns into one line naming the dotted key (`expect.gain.betwen: ...`).
This module imports no torch (config.py does, through the component registries): `gradlab check`
validates a finished run's section here without it.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from gradlab.analysis import FINAL_QUANTITIES, PROFILE_QUANTITIES, SUMMARY_QUANTITIES
from gradlab.errors import ConfigError, GradlabError, RunError
from gradlab.records import STATUSES
from gradlab.registry import describe_value, did_you_mean, pydantic_message

# The error kind config._format_error prints as '<dotted key>: <message>'.
_ERROR_KIND = "experiment"


def _error(message: str, key: str = "") -> PydanticCustomError:
    return PydanticCustomError(_ERROR_KIND, "{message}", {"message": message, "key": key})


def _check_keys(data: Any, allowed: list[str], what: str) -> None:
    if not isinstance(data, dict):
        return
    for key in data:
        if key not in allowed:
            raise _error(f"unknown {what}{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}", str(key))


def _exact(number: float) -> str:
    """'100' for 100.0, '0.6000001' for 0.6000001: short, but never a rounded bound."""
    short = f"{number:g}"
    return short if float(short) == number else repr(number)


class Bound(BaseModel):
    """Bounds on one quantity: `min`, `max` (either or both) or `between: [low, high]`, inclusive."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    min: Optional[float] = None
    max: Optional[float] = None
    between: Optional[list[float]] = None
    step: int | Literal["last"] = Field("last", description="0, last or a logged step (gradient-profile quantities only)")
    target_loss: Optional[float] = Field(None, description="steps_to_target only: the train loss to reach")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _error(f"got {describe_value(data)}; expected a mapping such as {{min: 0.9}} or {{step: 0, between: [0.01, 100]}}")
        _check_keys(data, list(cls.model_fields), "key")
        return data

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, value: Any) -> Any:
        if value == "last" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise _error(f"got {describe_value(value)}; expected 0, last or a step number")

    @field_validator("between")
    @classmethod
    def _pair(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or value[0] > value[1]):
            raise _error(f"got {describe_value(value)}; expected [low, high] with low <= high")
        return value

    @model_validator(mode="after")
    def _one_bound(self):
        if self.between is not None and (self.min is not None or self.max is not None):
            raise _error("give either between or min/max, not both", "between")
        if self.between is None and self.min is None and self.max is None:
            raise _error("needs a bound: min, max or between")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _error(f"min {self.min:g} is above max {self.max:g}", "min")
        return self

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler):
        # The resolved config.yaml stays as short as what the user wrote (plus the step).
        return {key: value for key, value in handler(self).items() if value is not None}

    @property
    def low(self) -> float:
        return self.between[0] if self.between is not None else (self.min if self.min is not None else -math.inf)

    @property
    def high(self) -> float:
        return self.between[1] if self.between is not None else (self.max if self.max is not None else math.inf)

    def holds(self, value: float) -> bool:
        return not math.isnan(value) and self.low <= value <= self.high

    def describe(self) -> str:
        if self.between is not None:
            return f"between [{_exact(self.between[0])}, {_exact(self.between[1])}]"
        parts = [f"min {_exact(self.min)}" if self.min is not None else "", f"max {_exact(self.max)}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p)


class _ExpectationsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    status: Optional[list[str]] = Field(None, description="the run's status must be one of these")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _error(f"got {describe_value(data)}; expected a mapping of quantity: bound, such as {{gain: {{step: 0, between: [0.01, 100]}}}}")
        _check_keys(data, list(cls.model_fields), "expectation")
        return data

    @field_validator("status", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise _error(f"got {describe_value(value)}; expected a status or a list of them: {', '.join(STATUSES)}")
        for status in values:
            if status not in STATUSES:
                raise _error(f"unknown status {status!r}{did_you_mean(status, list(STATUSES))}; allowed: {', '.join(STATUSES)}")
        return values

    @field_validator(*SUMMARY_QUANTITIES, check_fields=False)
    @classmethod
    def _fits_quantity(cls, bound: Bound | None, info: ValidationInfo) -> Bound | None:
        if bound is None:
            return bound
        quantity = info.field_name
        if quantity in FINAL_QUANTITIES and bound.step != "last":
            raise _error(f"{quantity} is measured over the whole run; only the gradient-profile quantities ({', '.join(PROFILE_QUANTITIES)}) take a step", "step")
        if quantity == "steps_to_target" and bound.target_loss is None:
            raise _error("steps_to_target needs target_loss: the train loss to reach", "target_loss")
        if quantity != "steps_to_target" and bound.target_loss is not None:
            raise _error("target_loss belongs to steps_to_target only", "target_loss")
        return bound

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler):
        return {key: value for key, value in handler(self).items() if value is not None}

    def bounds(self) -> dict[str, Bound]:
        """{quantity: bound} for the quantities that are bounded, in SUMMARY_QUANTITIES order."""
        return {name: getattr(self, name) for name in SUMMARY_QUANTITIES if getattr(self, name) is not None}


# One optional Bound per summary quantity, named as in `gradlab compare`.
Expectations = create_model(
    "Expectations",
    __base__=_ExpectationsBase,
    __doc__="The `expect:` section: `status` and a Bound for any summary quantity.",
    **{name: (Optional[Bound], Field(None, description=text)) for name, text in SUMMARY_QUANTITIES.items()},
)


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


def check(run, expectations: _ExpectationsBase) -> list[Outcome]:
    """Every expectation of `expectations` against a loaded analysis.Run: status first, then the
    bounded quantities in SUMMARY_QUANTITIES order."""
    from gradlab import analysis

    outcomes = []
    if expectations.status is not None:
        outcomes.append(Outcome("status", run.status, f"one of {', '.join(expectations.status)}", run.status in expectations.status))
    for quantity, bound in expectations.bounds().items():
        if quantity in PROFILE_QUANTITIES:
            name = analysis.column_name(quantity, bound.step)
            measured = analysis.profile_at(run, bound.step)[quantity]
        else:
            name = quantity if quantity != "steps_to_target" else f"steps_to_target(loss<={bound.target_loss:g})"
            measured = analysis.final_metrics(run, bound.target_loss)[quantity]
        edges = tuple(edge for edge in (bound.low, bound.high) if math.isfinite(edge))
        outcomes.append(Outcome(name, measured, bound.describe(), bound.holds(measured), edges))
    return outcomes


def parse(section: Any, where: str = "expect") -> _ExpectationsBase:
    """Validate an `expect:` mapping outside a full config; errors name `<where>.<key>`."""
    try:
        return Expectations.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(*dict.fromkeys(_format_error(error, where) for error in exc.errors())) from None


def _format_error(error: dict[str, Any], where: str) -> str:
    # The same lines config._format_error writes for these errors (config.py imports torch).
    key = ".".join([where, *(str(part) for part in error["loc"])])
    ctx = error.get("ctx") or {}
    if ctx.get("key"):
        key = f"{key}.{ctx['key']}"
    if error["type"] == _ERROR_KIND:
        return f"{key}: {ctx['message']}"
    return f"{key}: got {describe_value(error['input'])}; {pydantic_message(error)}"


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


def _check_run_dir(run_dir: Path) -> RunCheck:
    from gradlab import analysis, records

    run_dir = analysis.shown_path(run_dir)
    section = records.read_config(run_dir).get("expect")
    if section is None:
        return RunCheck(run_dir, [], notes=(f"{run_dir}: its config has no expect section; nothing to check",))
    expectations = parse(section, where=f"{run_dir / records.CONFIG_FILE}: expect")
    run = analysis.load_run(run_dir)
    return RunCheck(run_dir, check(run, expectations), notes=tuple(run.notes))


def check_paths(paths: list[str | Path]) -> tuple[list[RunCheck], list[str]]:
    """Check every run under `paths`. A run that cannot be checked (unreadable, invalid expect
    section) is a RunCheck with an `error`; paths without runs are the returned problem lines.
    Raises RunError when no run is found at all."""
    from gradlab import analysis

    run_dirs, problems = analysis.discover_runs(paths)
    if not run_dirs:
        raise RunError(*problems, "no runs to check")
    checks = []
    for run_dir in run_dirs:
        try:
            checks.append(_check_run_dir(run_dir))
        except GradlabError as exc:
            checks.append(RunCheck(analysis.shown_path(run_dir), [], error="; ".join(exc.lines)))
    return checks, problems


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(checks), encoding="utf-8")
    return path
