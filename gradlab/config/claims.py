"""Claims over a sweep: what must hold *between* its configurations (the `claims:` section).

A run's `expect:` bounds one run on its own. A claim compares the configurations of a sweep, as a
lecture states them ("BatchNorm's test accuracy is above no normalization's", "lr 0.5 without
normalization diverges"):

    claims:
      - name: batchnorm learns better than none          # optional; shown in the output
        quantity: final_test_accuracy                    # any summary quantity of gradlab compare
        of: {model.norm: batchnorm}                      # the configurations it is about (swept values)
        above: {model.norm: none}                        # ... each above its partner with these values
        margin: 0.02                                     # optional: by at least this much
      - quantity: steps_to_target
        target_loss: 0.5
        of: {model.norm: batchnorm}
        below: {model.norm: none}                        # never reaching the target counts as infinitely many steps
      - of: {model.norm: none, optim.lr: 0.5}
        status: diverged                                 # every run (every seed) of these ends so
      - quantity: final_test_accuracy
        of: {model.norm: batchnorm}
        min: 0.9                                         # each configuration's value within bounds

`of` selects configurations by swept values (a key not named is free: the claim holds for every
value of it). `above`/`below` name the partner: the configuration with the same values but these.
Values are compared as written in the sweep (`batchnorm`, `{name: batchnorm, placement: post}`).
A configuration's value is its mean over seeds (the number of `gradlab compare`), its seeds' range shown.

This module is vocabulary: the schema and its validation against a sweep's axes, one line per
problem naming `claims[i].<key>`; no torch, no pandas. Checking claims against finished runs is
expectations.check_sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gradlab.vocab.errors import ConfigError
from gradlab.vocab.quantities import FINAL_QUANTITIES, PROFILE_QUANTITIES, RECURRENT_KINDS, STATUSES, SUMMARY_QUANTITIES, TIME_QUANTITIES
from gradlab.vocab.registry import describe_value, did_you_mean
from gradlab.vocab.values import canonical, flow

CLAIMS_KEY = "claims"
KEYS = ("name", "quantity", "of", "above", "below", "margin", "min", "max", "status", "step", "target_loss")
SEED = "seed"


@dataclass(frozen=True)
class Claim:
    name: str
    of: dict[str, Any]
    quantity: str | None = None  # None: a status claim
    above: dict[str, Any] | None = None
    below: dict[str, Any] | None = None
    margin: float = 0.0
    low: float = -math.inf
    high: float = math.inf
    status: tuple[str, ...] = ()
    step: int | str = "last"
    target_loss: float | None = None
    written: dict[str, Any] = field(default_factory=dict)  # as the user wrote it (sweep.yaml keeps it)

    @property
    def partner(self) -> dict[str, Any] | None:
        return self.above if self.above is not None else self.below


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: got {describe_value(value)}; expected a finite number")
    return float(value)


def _selector(value: Any, where: str, axes: dict[str, list[Any]]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: got {describe_value(value)}; expected a mapping of swept keys to values, e.g. {{model.norm: batchnorm}}")
    for key, chosen in value.items():
        if key == SEED or key == "seeds":
            raise ConfigError(f"{where}.{key}: claims compare configurations; seeds are averaged, not selected")
        if key not in axes:
            swept = [k for k in axes if k != SEED]
            raise ConfigError(f"{where}: {describe_value(key)} is not swept{did_you_mean(str(key), swept)}; swept: {', '.join(swept) or 'nothing'}")
        if canonical(chosen) not in {canonical(v) for v in axes[key]}:
            shown = ", ".join(flow(v) for v in axes[key])
            raise ConfigError(f"{where}.{key}: {describe_value(chosen)} is not one of its swept values ({shown})")
    return dict(value)


def parse_claim(raw: Any, index: int, axes: dict[str, list[Any]]) -> Claim:
    where = f"{CLAIMS_KEY}[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: got {describe_value(raw)}; expected a mapping such as {{quantity: final_test_accuracy, of: {{model.norm: batchnorm}}, above: {{model.norm: none}}}}")
    for key in raw:
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown key {describe_value(key)}{did_you_mean(str(key), list(KEYS))}; allowed: {', '.join(KEYS)}")
    if "of" not in raw:
        raise ConfigError(f"{where}: needs of: the configurations it is about, e.g. of: {{model.norm: batchnorm}} (of: {{}} for all)")
    of = _selector(raw["of"], f"{where}.of", axes)
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}.name: got {describe_value(name)}; expected a text")
    if "status" in raw:
        extra = [k for k in raw if k not in ("name", "of", "status")]
        if extra:
            raise ConfigError(f"{where}: a status claim takes name, of and status only, not {extra[0]}")
        statuses = [raw["status"]] if isinstance(raw["status"], str) else raw["status"]
        if not isinstance(statuses, list) or not statuses or not all(isinstance(s, str) for s in statuses):
            raise ConfigError(f"{where}.status: got {describe_value(raw['status'])}; expected a status or a list of them: {', '.join(STATUSES)}")
        for status in statuses:
            if status not in STATUSES:
                raise ConfigError(f"{where}.status: unknown status {describe_value(status)}{did_you_mean(status, list(STATUSES))}; allowed: {', '.join(STATUSES)}")
        return Claim(name or f"status of {_describe(of)}", of, status=tuple(statuses), written=dict(raw))

    quantity = raw.get("quantity")
    if quantity is None:
        raise ConfigError(f"{where}: needs quantity (a summary quantity such as final_test_accuracy) or status")
    if quantity not in SUMMARY_QUANTITIES:
        raise ConfigError(f"{where}.quantity: unknown quantity {describe_value(quantity)}{did_you_mean(str(quantity), list(SUMMARY_QUANTITIES))}; allowed: {', '.join(SUMMARY_QUANTITIES)}")
    kinds = [k for k in ("above", "below") if k in raw]
    bounds = [k for k in ("min", "max") if k in raw]
    if len(kinds) > 1 or (kinds and bounds) or not (kinds or bounds):
        raise ConfigError(f"{where}: give one of above or below (a partner configuration), or min and/or max")
    step = raw.get("step", "last")
    if not (step == "last" or (isinstance(step, int) and not isinstance(step, bool) and step >= 0)):
        raise ConfigError(f"{where}.step: got {describe_value(step)}; expected 0, last or a step number")
    if step != "last" and quantity not in PROFILE_QUANTITIES and quantity not in TIME_QUANTITIES:
        raise ConfigError(f"{where}.step: {quantity} is measured over the whole run; only the gradient-profile quantities take a step")
    target_loss = raw.get("target_loss")
    if (quantity == "steps_to_target") != (target_loss is not None):
        raise ConfigError(f"{where}.target_loss: " + ("steps_to_target needs target_loss: the train loss to reach" if target_loss is None else "belongs to steps_to_target only"))
    target = _number(target_loss, f"{where}.target_loss") if target_loss is not None else None
    margin = _number(raw.get("margin", 0.0), f"{where}.margin")
    if margin < 0 or (margin and not kinds):
        raise ConfigError(f"{where}.margin: " + ("must be >= 0" if margin < 0 else "belongs to above/below"))
    if kinds:
        kind = kinds[0]
        partner = _selector(raw[kind], f"{where}.{kind}", axes)
        if not partner:
            raise ConfigError(f"{where}.{kind}: name the swept values that make the partner configuration, e.g. {{model.norm: none}}")
        if all(canonical(of.get(k)) == canonical(v) for k, v in partner.items()):
            raise ConfigError(f"{where}.{kind}: the partner is the configuration itself; give a value of {', '.join(partner)} other than of's")
        text = name or f"{quantity} of {_describe(of)} {kind} {_describe(partner)}"
        return Claim(text, of, quantity, partner if kind == "above" else None, partner if kind == "below" else None, margin,
                     step=step, target_loss=target, written=dict(raw))  # fmt: skip
    low = _number(raw["min"], f"{where}.min") if "min" in raw else -math.inf
    high = _number(raw["max"], f"{where}.max") if "max" in raw else math.inf
    if low > high:
        raise ConfigError(f"{where}.min: {low:g} is above max {high:g}")
    text = name or f"{quantity} of {_describe(of)}"
    return Claim(text, of, quantity, low=low, high=high, step=step, target_loss=target, written=dict(raw))


def parse_claims(raw: Any, axes: dict[str, list[Any]]) -> list[Claim]:
    """The `claims:` list validated against the sweep's axes ({key: values as written}); one
    ConfigError line per claim that is wrong."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{CLAIMS_KEY}: got {describe_value(raw)}; expected a list of claims, e.g. - {{quantity: final_test_accuracy, of: {{model.norm: batchnorm}}, above: {{model.norm: none}}}}")
    claims, errors = [], []
    for index, item in enumerate(raw):
        try:
            claims.append(parse_claim(item, index, axes))
        except ConfigError as exc:
            errors.extend(exc.lines)
    if errors:
        raise ConfigError(*errors)
    return claims


def unknown_quantity(raw: Any) -> str:
    """Why a claim as written names a quantity no gradlab summary has ('' when it names a known one,
    or none): `gradlab check` reports such a claim of a sweep.yaml as failed with this reason."""
    if not isinstance(raw, dict) or "status" in raw or "quantity" not in raw or raw["quantity"] in SUMMARY_QUANTITIES:
        return ""
    quantity = raw["quantity"]
    return f"unknown quantity {describe_value(quantity)}{did_you_mean(str(quantity), list(SUMMARY_QUANTITIES))}; allowed: {', '.join(SUMMARY_QUANTITIES)}"


def measured_by(kind: str) -> list[str]:
    """The summary quantities a run of this model.kind measures: the time quantities only on a
    recurrent stack (a feed-forward run has no time steps)."""
    return [*PROFILE_QUANTITIES, *(TIME_QUANTITIES if kind in RECURRENT_KINDS else ()), *FINAL_QUANTITIES]


def check_measured(claims: list[Claim], configurations: list[tuple[dict[str, Any], str]]) -> None:
    """Refuse a claim about a quantity that a configuration it compares does not measure: time_gain
    or step_factor of a feed-forward configuration. `configurations`: (swept values as written,
    model.kind) of each combination. One ConfigError line per such claim, naming the key and what
    is allowed."""
    errors = []
    for index, claim in enumerate(claims):
        if claim.quantity not in TIME_QUANTITIES:
            continue
        selections = [claim.of] + ([{**claim.of, **claim.partner}] if claim.partner is not None else [])
        kinds = [kind for values, kind in configurations for chosen in selections
                 if all(canonical(values.get(k)) == canonical(v) for k, v in chosen.items()) and kind not in RECURRENT_KINDS]  # fmt: skip
        if kinds:
            errors.append(f"{CLAIMS_KEY}[{index}].quantity: {claim.quantity} is measured along time on a recurrent layer, and {_describe(claim.of)} "
                          f"has model.kind {kinds[0]} (no time steps); allowed for it: {', '.join(measured_by(kinds[0]))}")  # fmt: skip
    if errors:
        raise ConfigError(*errors)


def _describe(values: dict[str, Any]) -> str:
    if not values:
        return "every configuration"
    return ", ".join(f"{key}={flow(v)}" for key, v in values.items())


def describe_selection(values: dict[str, Any]) -> str:
    """`model.norm=batchnorm, optim.lr=0.5`: how output lines name a configuration."""
    return _describe(values)
