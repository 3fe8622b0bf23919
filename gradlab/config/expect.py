"""The `expect:` section of a config: what must hold when a run ends (a CI smoke test).

    expect:
      status: completed                           # or a list: [completed, diverged]
      gain: {step: 0, between: [0.01, 100]}       # any summary quantity of `gradlab compare`
      final_test_accuracy: {min: 0.9}
      dead_frac: {max: 0.5}                       # step defaults to last
      steps_to_target: {target_loss: 0.5, max: 200}

The quantity names are quantities.SUMMARY_QUANTITIES: the schema below is built from them, so a
quantity declared there can be bounded here with no other change. Checking a run against the
section is analysis/expectations.py; the `claims:` of a sweep are config/claims.py. Errors are
PydanticCustomErrors of kind "experiment" carrying the offending key in ctx['key']: one line
naming the dotted key (`expect.gain.betwen: ...`). No torch, no pandas.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)  # fmt: skip
from pydantic_core import PydanticCustomError

from gradlab.config.messages import format_error
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.quantities import COORDCHECK_QUANTITIES, COORDCHECK_TOLERANCE, FINAL_QUANTITIES, PROFILE_QUANTITIES, STATUSES, SUMMARY_QUANTITIES, TIME_QUANTITIES
from gradlab.vocab.registry import describe_value, did_you_mean

# The error kind messages.format_error prints as '<dotted key>: <message>'.
_ERROR_KIND = "experiment"


def _expect_error(message: str, key: str = "") -> PydanticCustomError:
    return PydanticCustomError(_ERROR_KIND, "{message}", {"message": message, "key": key})


def _check_keys(data: Any, allowed: list[str], what: str) -> None:
    if not isinstance(data, dict):
        return
    for key in data:
        if key not in allowed:
            raise _expect_error(f"unknown {what}{did_you_mean(str(key), allowed)}; allowed: {', '.join(allowed)}", str(key))


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
    within_theory: Optional[float] = Field(
        None, gt=0, description="layer_factor, step_factor and s2 only: at most this far from theory's prediction at initialization, relative to it "
                                "(s2: to 1 + s2; step 0; for a bound, such as Pascanu's on step_factor, at most this far above it)"
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _expect_error(f"got {describe_value(data)}; expected a mapping such as {{min: 0.9}} or {{step: 0, between: [0.01, 100]}}")
        _check_keys(data, list(cls.model_fields), "key")
        if "within_theory" in data and "step" not in data:
            data = {**data, "step": 0}  # theory predicts the network at initialization
        return data

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, value: Any) -> Any:
        if value == "last" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise _expect_error(f"got {describe_value(value)}; expected 0, last or a step number")

    @field_validator("between")
    @classmethod
    def _pair(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (len(value) != 2 or value[0] > value[1]):
            raise _expect_error(f"got {describe_value(value)}; expected [low, high] with low <= high")
        return value

    @model_validator(mode="after")
    def _one_bound(self):
        if self.within_theory is not None:
            if self.between is not None or self.min is not None or self.max is not None:
                raise _expect_error("give within_theory alone, without min, max or between", "within_theory")
            if self.step != 0:
                raise _expect_error("within_theory compares with theory's prediction at initialization: step must be 0", "step")
            return self
        if self.between is not None and (self.min is not None or self.max is not None):
            raise _expect_error("give either between or min/max, not both", "between")
        if self.between is None and self.min is None and self.max is None:
            raise _expect_error("needs a bound: min, max or between")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _expect_error(f"min {self.min:g} is above max {self.max:g}", "min")
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
        if self.within_theory is not None:
            return f"within {_exact(self.within_theory)} of theory, relative"
        if self.between is not None:
            return f"between [{_exact(self.between[0])}, {_exact(self.between[1])}]"
        parts = [f"min {_exact(self.min)}" if self.min is not None else "", f"max {_exact(self.max)}" if self.max is not None else ""]
        return " and ".join(p for p in parts if p)


VERDICTS = ("width-stable", "grows", "shrinks")


class CoordcheckExpectation(BaseModel):
    """`expect: {coordcheck: ...}`: the verdicts `gradlab coordcheck` must reach on this config
    (ignored by a plain run). A layer is a module name (blocks.0, head) or `all`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    width_stable: Optional[list[str] | Literal["all"]] = Field(None, description="these layers are width-stable at every judged step")
    grows: Optional[list[str] | Literal["all"]] = Field(None, description="these layers grow with width at every judged step")
    shrinks: Optional[list[str] | Literal["all"]] = Field(None, description="these layers shrink with width at every judged step")
    steps: Optional[list[int]] = Field(None, description="the steps judged (default: every measured step from 1 on, as mup's test)")
    quantity: Literal[COORDCHECK_QUANTITIES] = Field("act_l1", description="the coordinate judged (coordcheck.csv's columns)")
    tolerance: float = Field(COORDCHECK_TOLERANCE, gt=0, description="width-stable when |log-log slope| <= this (mup's test: log 1.2 / log 4)")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _expect_error(f"got {describe_value(data)}; expected a mapping such as {{width_stable: all, steps: [1, 2, 3]}}")
        _check_keys(data, list(cls.model_fields), "coordcheck expectation")
        if not any(data.get(key) is not None for key in ("width_stable", "grows", "shrinks")):
            raise _expect_error("say which layers must be width_stable, grow or shrink (a list of names such as [head], or all)")
        return data

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 0):
            raise _expect_error(f"got {value}; expected a non-empty list of steps >= 0", "steps")
        return value

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler):
        data = {key: value for key, value in handler(self).items() if value is not None}
        if self.quantity == "act_l1":
            data.pop("quantity", None)
        if self.tolerance == COORDCHECK_TOLERANCE:
            data.pop("tolerance", None)
        return data

    def required(self) -> dict[str, list[str] | str]:
        """{verdict: layers} for the verdicts given."""
        return {verdict: getattr(self, verdict.replace("-", "_")) for verdict in VERDICTS if getattr(self, verdict.replace("-", "_")) is not None}


class _ExpectationsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    status: Optional[list[str]] = Field(None, description="the run's status must be one of these")
    coordcheck: Optional[CoordcheckExpectation] = Field(None, description="gradlab coordcheck: the verdicts it must reach (ignored by gradlab run)")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _expect_error(f"got {describe_value(data)}; expected a mapping of quantity: bound, such as {{gain: {{step: 0, between: [0.01, 100]}}}}")
        _check_keys(data, list(cls.model_fields), "expectation")
        return data

    @field_validator("status", mode="before")
    @classmethod
    def _statuses(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise _expect_error(f"got {describe_value(value)}; expected a status or a list of them: {', '.join(STATUSES)}")
        for status in values:
            if status not in STATUSES:
                raise _expect_error(f"unknown status {describe_value(status)}{did_you_mean(status, list(STATUSES))}; allowed: {', '.join(STATUSES)}")
        return values

    @field_validator(*SUMMARY_QUANTITIES, check_fields=False)
    @classmethod
    def _fits_quantity(cls, bound: Bound | None, info: ValidationInfo) -> Bound | None:
        if bound is None:
            return bound
        quantity = info.field_name
        if quantity in FINAL_QUANTITIES and bound.step != "last":
            raise _expect_error(f"{quantity} is measured over the whole run; only the gradient-profile quantities ({', '.join([*PROFILE_QUANTITIES, *TIME_QUANTITIES])}) take a step", "step")
        if quantity == "steps_to_target" and bound.target_loss is None:
            raise _expect_error("steps_to_target needs target_loss: the train loss to reach", "target_loss")
        if quantity != "steps_to_target" and bound.target_loss is not None:
            raise _expect_error("target_loss belongs to steps_to_target only", "target_loss")
        if quantity not in ("layer_factor", "step_factor", "s2") and bound.within_theory is not None:
            raise _expect_error("within_theory belongs to layer_factor, step_factor and s2 only (theory predicts the per-layer and the per-step factor, "
                                "and the Jacobian's s2)", "within_theory")
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


def parse_expectations(section: Any, where: str = "expect") -> Expectations:
    """Validate an `expect:` mapping outside a full config (`gradlab check` reads it from a run's
    config.yaml); the error lines are those of a full config, with keys under `where`."""
    try:
        return Expectations.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(*dict.fromkeys(format_error(error, Expectations, where) for error in exc.errors())) from None
