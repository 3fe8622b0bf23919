"""The plan of a sweep: every combination of its axes expanded and validated, all errors at once.

    plan_sweep(raw, overrides, axes)   -> SweepPlan (sweep_axes.py reads the axes)
    load_plan(path, ...)               the same, from a config file

`claims:` beside `sweep:` states what must hold between the configurations (config/claims.py),
checked when the plan is made and, on the records, at the sweep's end and by `gradlab check`.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from gradlab.analysis.configdiff import flatten
from gradlab.config.claims import CLAIMS_KEY, check_measured, parse_claims
from gradlab.config.experiment import validate
from gradlab.config.load import apply_overrides, read_yaml, set_dotted
from gradlab.orchestrate.sweep_axes import SEED_AXIS, SWEEP_KEY, ZIP_KEY, Axis, check_disjoint, dimensions, has_sweep, merge_axes, overlaps, split_sweep
from gradlab.orchestrate.sweep_names import axis_labels, describe_values, run_name
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.values import canonical

@dataclass
class Member:
    """One combination: its values (axis key -> value as written), run directory name and the
    resolved config it runs (every default filled, as `config.yaml` stores it)."""

    name: str
    values: dict[str, Any]
    config: dict[str, Any]


@dataclass
class SweepPlan:
    base: dict[str, Any]  # the raw config without sweep:/seeds:, overrides applied
    axes: list[Axis]
    members: list[Member]

    @property
    def name(self) -> str:
        return str(self.members[0].config["name"])

    @property
    def out(self) -> str:
        return str(self.members[0].config["log"]["out"])

    claims: Any = None  # the `claims:` section as written (claims.py), None without one

    def spec(self) -> dict[str, Any]:
        """The plan as a config mapping (what sweep.yaml holds; `gradlab run` on it plans it again)."""
        sweep: dict[str, Any] = {axis.key: list(axis.values) for axis in self.axes if axis.zipped is None}
        groups = [{a.key: list(a.values) for a in self.axes if a.zipped == n} for n in dict.fromkeys(a.zipped for a in self.axes if a.zipped is not None)]
        if groups:
            sweep[ZIP_KEY] = groups[0] if len(groups) == 1 else groups
        spec = {**self.base, SWEEP_KEY: sweep}
        if self.claims is not None:
            spec[CLAIMS_KEY] = self.claims
        return spec

    def shape(self) -> str:
        """`model.activation (4) x model.norm (2) x seed (3)`; a zip group `zip(a, b) (3)`."""
        parts, seen = [], set()
        for axis in self.axes:
            if axis.zipped is None:
                parts.append(f"{axis.key} ({len(axis.values)})")
            elif axis.zipped not in seen:
                seen.add(axis.zipped)
                parts.append(f"zip({', '.join(a.key for a in self.axes if a.zipped == axis.zipped)}) ({len(axis.values)})")
        return " x ".join(parts)

    def axis_values(self) -> dict[str, list[Any]]:
        return {axis.key: list(axis.values) for axis in self.axes}


def plan_sweep(raw: dict[str, Any], overrides: Sequence[str] = (), axes: Sequence[Axis] = ()) -> SweepPlan:
    """Expand the grid of `raw` (a config mapping with `sweep:`/`seeds:`), the `--set` overrides
    applied to every combination and the `--sweep` axes added or replacing the config's, and
    validate every combination. ConfigError holds every problem of every combination at once,
    each line naming the values that cause it; a line that every combination shares (a problem
    of the config itself) is given once, without them."""
    base, config_axes = split_sweep(raw)
    all_axes = merge_axes(config_axes, axes)
    if not all_axes:
        what = "claims: compare the configurations of a sweep; " if CLAIMS_KEY in raw else ""
        raise ConfigError(f"{what}sweep: no axes; give sweep: {{key.path: [values]}}, seeds: [0, 1, 2] or --sweep key.path=v1,v2")
    check_disjoint(all_axes)
    claims_raw = raw.get(CLAIMS_KEY)
    claims = None
    if CLAIMS_KEY in raw:
        claims = parse_claims(claims_raw, {axis.key: list(axis.values) for axis in all_axes})  # every claim checked before anything runs
    for item in overrides:
        key = item.partition("=")[0].strip()
        for axis in all_axes:
            if key and overlaps(key, axis.key):
                raise ConfigError(f"{key}: set by --set (or --seed/--steps/...) but also swept; change the axis with --sweep {axis.key}=v1,v2")
    base = apply_overrides(base, list(overrides))
    labels = axis_labels([axis.key for axis in all_axes])

    members: list[Member] = []
    errors: list[tuple[dict[str, Any], list[str]]] = []
    for combination in itertools.product(*dimensions(all_axes)):
        values = {axis.key: next(part[axis.key] for part in combination if axis.key in part) for axis in all_axes}
        data = copy.deepcopy(base)
        try:
            for key, value in values.items():
                set_dotted(data, key, copy.deepcopy(value))  # members never share a value object
            exp = validate(data)
        except ConfigError as exc:
            errors.append((values, exc.lines))
            continue
        members.append(Member(run_name(values, labels), values, exp.model_dump(mode="json")))
    if errors:
        raise ConfigError(*error_lines(errors, all_axes))
    names: dict[str, Member] = {}
    for member in members:
        if member.name in names:
            other = names[member.name]
            raise ConfigError(f"sweep: {describe_values(other.values)} and {describe_values(member.values)} would share the run directory {member.name!r}; make the values tell apart")
        names[member.name] = member
    if claims is not None:  # a claim about time_gain of a feed-forward configuration: refused before anything runs
        check_measured(claims, [(member.values, member.config["model"]["kind"]) for member in members])
    return SweepPlan(base, all_axes, members, claims_raw)


def error_lines(errors: list[tuple[dict[str, Any], list[str]]], axes: list[Axis]) -> list[str]:
    """Error lines naming the values that cause them, and only those: a line that every value of
    an axis gives alike does not name that axis (`sweep model.norm=groupnorm, model.width=30: ...`
    whatever the activation and the seed), and a line that every combination gives names none
    (a problem of the config itself)."""
    sizes = {axis.key: len(axis.values) for axis in axes}
    having: dict[str, list[dict[str, Any]]] = {}
    for values, lines in errors:
        for line in dict.fromkeys(lines):
            having.setdefault(line, []).append(values)

    def projections(combos: list[dict[str, Any]], keys: list[str]) -> dict[str, None]:
        return dict.fromkeys(describe_values({k: c[k] for k in keys}) for c in combos)

    causes: dict[str, list[str]] = {}
    for line, combos in having.items():
        keys = [axis.key for axis in axes]
        for key in reversed([axis.key for axis in axes]):  # the seed first, then the last axes
            fewer = [k for k in keys if k != key]
            spread = math.prod(sizes[k] for k in sizes if k not in fewer)
            if len(projections(combos, fewer)) * spread == len(combos):  # every value of `key` alike
                keys = fewer
        causes[line] = keys

    out: list[str] = []
    for values, lines in errors:
        for line in lines:
            named = describe_values({k: values[k] for k in causes[line]})
            text = f"sweep {named}: {line}" if named else line
            if text not in out:
                out.append(text)
    return out


def load_plan(path: str | Path, overrides: Sequence[str] = (), axes: Sequence[Axis] = ()) -> SweepPlan:
    return plan_sweep(read_yaml(path), overrides, axes)


def load_experiments(path: str | Path) -> list:
    """Every experiment a config file stands for: one, or one per combination of its sweep."""
    raw = read_yaml(path)
    if not has_sweep(raw):
        return [validate(raw)]
    return [validate(member.config) for member in plan_sweep(raw).members]


def differing_values(plan: SweepPlan) -> list[dict[str, Any]]:
    """Per member, the resolved config values (dotted keys) that are not the same in all members."""

    # a mapping with a name is one value (a component), as written in the config
    flats = [flatten(member.config, lambda key, value: "name" in value) for member in plan.members]
    # the axes first, in their order, then what else they changed (a component's parameters)
    keys = list(dict.fromkeys([axis.key for axis in plan.axes] + [key for flat in flats for key in flat]))
    differing = [key for key in keys if len({canonical(flat.get(key)) for flat in flats}) > 1]
    return [{key: flat.get(key) for key in differing} for flat in flats]


def predictions(plan: SweepPlan, correlations: bool = True, progress: Callable[[int, int], None] | None = None) -> list[tuple[str, dict[str, Any], Any]]:
    """(combination's name, its axis values, theory's Prediction) for each combination of a sweep,
    seeds left out: the seed changes no prediction. `correlations`: with xi_c (a 2-D quadrature).

    A combination is named as its run folder is (sweep_names.run_name, the seed left out), also
    when a whole section is swept. Combinations that differ only in what theory does not read
    (the optimizer, training length, logging) share one prediction; one that theory refuses or
    cannot compute is a `none` with the reason, never an error that sinks the others
    (predict.guarded). `progress(done, total)` is called after each combination."""
    from gradlab.orchestrate.theory_limits import check_theory_fits
    from gradlab.theory import predict

    members: dict[str, Any] = {}  # one per combination of the axes other than the seed
    for member in plan.members:
        values = {key: value for key, value in member.values.items() if key != SEED_AXIS}
        members.setdefault(describe_values(values), (values, member.config))
    keys = [axis.key for axis in plan.axes if axis.key != SEED_AXIS]
    short = axis_labels(keys)
    named, shared = [], {}
    for done, (values, config) in enumerate(members.values(), 1):
        key = predict.config_key(config)
        if key not in shared:
            exp = validate(config)
            try:
                check_theory_fits(exp)  # what `gradlab run` refuses for its size: that row says so
            except ConfigError as exc:
                shared[key] = predict.none(f"`gradlab run` refuses this combination: {exc.lines[0]}")
            else:
                shared[key] = predict.guarded(exp, correlations=correlations)
        named.append((run_name(values, short), values, shared[key]))
        if progress is not None:
            progress(done, len(members))
    return named
