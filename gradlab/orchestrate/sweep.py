"""Sweeps: a grid of config values times several seeds, run as one command into one folder.

A config (or the command line, `--sweep model.depth=10,30`) names the axes:

    sweep: {model.activation: [sigmoid, tanh, relu, elu], model.norm: [none, batchnorm]}
    seeds: [0, 1, 2]

Values that vary together rather than in a grid (a weight std with its bias mean) are zipped:

    sweep: {model.norm: [none, batchnorm], zip: {model.init.weight.std: [0.1, 1.0, 10.0], model.init.bias.mean: [0.0, 0.1, 1.0]}}

is 2 x 3 runs (std 0.1 with mean 0.0, 1.0 with 0.1, 10.0 with 1.0), not 2 x 3 x 3; the lists of a
zip have one length; several zip groups: a list of such mappings. `claims:` beside `sweep:` states
what must hold between the configurations (claims.py), checked at the sweep's end and by
`gradlab check SWEEP_DIR`.

and `gradlab run` writes one sweep directory holding a normal run directory per combination:

    results/<name>/<YYYYmmdd-HHMMSS>-<id>/
        sweep.yaml    the sweep as planned: the config, overrides applied, with its sweep: axes
        sweep.csv     one row per combination: run, the values, status, duration_s, error
        activation=relu,norm=batchnorm,seed=1/     config.yaml, meta.json, metrics.csv, layers.csv
        ...

    plan_sweep(raw, ...)     -> SweepPlan: every combination expanded and validated, all errors at once
    create_sweep_dir(plan)   the folder, sweep.yaml and sweep.csv (every run pending)
    open_sweep(dir)          the plan and index of an existing sweep (for --resume)
    run_sweep(plan, dir)     runs what is not finished with an executor (executors.py), keeping
                             sweep.csv up to date; returns a SweepOutcome, whose runs'
                             expect: sections each member checked on its own records

The seed is an axis like any other (`seed`), always the last one, so that `gradlab compare` on the
sweep directory averages it away: one row per combination of the other axes.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import socket
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

from gradlab.analysis.configdiff import short_keys
from gradlab.orchestrate.progress import (
    Event,
    Progress,
    RunFinished,
    RunStarted,
    RunSubmitted,
    StepLogged,
    SweepEnded,
    SweepStarted,
    silent,
)
from gradlab.vocab.errors import ConfigError, RunError

SWEEP_KEY, SEEDS_KEY, SEED_AXIS = "sweep", "seeds", "seed"
ZIP_KEY = "zip"  # sweep: {zip: {a: [...], b: [...]}}: keys whose values vary together
CLAIMS_KEY = "claims"  # what must hold between the configurations of the sweep (claims.py)
SPEC_FILE, INDEX_FILE = "sweep.yaml", "sweep.csv"
INDEX_STATUSES = ("pending", "running", "completed", "diverged", "interrupted", "failed")
FINISHED = ("completed", "diverged")  # a diverged run is a result: --resume keeps it
NOT_SWEPT = ("name", "log", "log.out")  # every run of a sweep goes into one sweep directory
MAX_NAME = 200  # characters of a run directory's name (file systems allow 255 bytes)


# --------------------------------------------------------------------------------------------
# The axes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    key: str  # dotted config key; "seed" for the seeds
    values: tuple[Any, ...]
    zipped: int | None = None  # axes of one `zip:` group (the same number) advance together, not in a grid


def flow(value: Any) -> str:
    """A value as a one-line YAML flow (`{name: batchnorm, placement: post}`, `[weights]`, `0.1`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    if text.endswith("\n..."):  # a plain scalar ends its document explicitly
        text = text[: -len("\n...")].strip()
    return text


def _brief(value: Any) -> str:
    """A value for an error line: its YAML flow when short, else a cut repr; never formats more
    than it shows (a value from an alias bomb must not be dumped whole to be cut)."""
    from gradlab.vocab.registry import describe_value

    short = describe_value(value, 80)
    if short.endswith("...") or isinstance(value, str) and len(value) > 80:
        return short
    return flow(value)


def _describe(value: Any) -> str:
    from gradlab.vocab.registry import describe_value

    return describe_value(value, 80)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"{where}: {_describe(key)} is not a dotted config key such as model.depth")
    key = key.strip()
    if key in (SEED_AXIS, SEEDS_KEY):
        return SEED_AXIS
    if key in NOT_SWEPT or any(key.startswith(f"{skip}.") for skip in NOT_SWEPT if skip != "log"):
        raise ConfigError(f"{where}: {key} cannot be swept; every run of a sweep goes into one sweep directory (log.out/name)")
    if key in (SWEEP_KEY,) or key.startswith(f"{SWEEP_KEY}."):
        raise ConfigError(f"{where}: {key} cannot be swept")
    return key


def _axis(key: str, values: Any, where: str) -> Axis:
    if not isinstance(values, list):
        raise ConfigError(f"{where}: expected a list of values, e.g. [10, 30], got {_brief(values)}")
    if not values:
        raise ConfigError(f"{where}: the list of values is empty")
    seen: dict[str, None] = {}
    for value in values:
        if _canonical(value) in seen:
            raise ConfigError(f"{where}: {_brief(value)} is listed twice")
        seen[_canonical(value)] = None
    if key == SEED_AXIS:
        bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise ConfigError(f"{where}: got {_brief(bad[0])}; seeds are integers, e.g. [0, 1, 2]")
    return Axis(key, tuple(values))


def split_sweep(raw: dict[str, Any]) -> tuple[dict[str, Any], list[Axis]]:
    """The config mapping without `sweep:` and `seeds:`, and the axes they name (seed last)."""
    base = dict(raw)
    spec = base.pop(SWEEP_KEY, None)
    seeds = base.pop(SEEDS_KEY, None)
    base.pop(CLAIMS_KEY, None)  # claims compare the members, they configure none of them (plan_sweep checks them)
    axes: list[Axis] = []
    if SWEEP_KEY in raw:
        if not isinstance(spec, dict) or not spec:
            raise ConfigError(f"sweep: expected a mapping of dotted keys to lists of values, e.g. {{model.depth: [10, 30]}}, got {_brief(spec)}")
        for key, values in spec.items():
            if key == ZIP_KEY:
                axes.extend(_zip_axes(values, axes))
                continue
            key = _check_key(key, "sweep")
            if any(axis.key == key for axis in axes):
                raise ConfigError(f"sweep: {key} is given twice")
            axes.append(_axis(key, values, f"sweep.{key}" if key != SEED_AXIS else "sweep.seed"))
    if SEEDS_KEY in raw:
        if any(axis.key == SEED_AXIS for axis in axes):
            raise ConfigError("seeds: the seeds are given twice (seeds: and sweep: {seed: ...}); keep one")
        axes.append(_axis(SEED_AXIS, seeds, "seeds"))
    return base, _seed_last(axes)


def _zip_axes(spec: Any, before: list[Axis]) -> list[Axis]:
    """`zip: {a: [1, 2, 3], b: [x, y, z]}`: keys whose values vary together (a with b: 1 with x, 2
    with y, ...), one dimension of the grid instead of a product. Several groups: a list of such
    mappings. Every list of a group has the same length; the seed is never zipped."""
    groups = spec if isinstance(spec, list) else [spec]
    if not groups:
        raise ConfigError(f"sweep.{ZIP_KEY}: the list of zipped groups is empty")
    taken = {axis.zipped for axis in before if axis.zipped is not None}
    out: list[Axis] = []
    for n, group in enumerate(groups):
        where = f"sweep.{ZIP_KEY}" if not isinstance(spec, list) else f"sweep.{ZIP_KEY}[{n}]"
        if not isinstance(group, dict) or len(group) < 2:
            raise ConfigError(f"{where}: expected a mapping of two or more dotted keys to lists of equal length, e.g. "
                              f"{{model.init.weight.std: [0.1, 1.0], model.init.bias.mean: [0.0, 0.5]}}, got {_brief(group)}")  # fmt: skip
        number = max(taken | {a.zipped for a in out if a.zipped is not None}, default=-1) + 1
        lengths: dict[str, int] = {}
        for key, values in group.items():
            key = _check_key(key, where)
            if key == SEED_AXIS:
                raise ConfigError(f"{where}: seed cannot be zipped; the seeds are their own axis (seeds: [0, 1, 2])")
            if any(axis.key == key for axis in [*before, *out]):
                raise ConfigError(f"sweep: {key} is given twice")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}.{key}: expected a non-empty list of values, got {_brief(values)}")
            lengths[key] = len(values)
            out.append(Axis(key, tuple(values), number))
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where}: zipped lists must have the same length; got " + ", ".join(f"{k} {n}" for k, n in lengths.items()))
        rows = [tuple(_canonical(a.values[i]) for a in out if a.zipped == number) for i in range(next(iter(lengths.values())))]
        if len(set(rows)) < len(rows):
            raise ConfigError(f"{where}: a combination of values is listed twice")
    return out


def _dimensions(axes: Sequence[Axis]) -> list[list[dict[str, Any]]]:
    """The grid's dimensions: one per plain axis (its values) and one per zip group (its rows)."""
    dimensions: list[list[dict[str, Any]]] = []
    seen: set[int] = set()
    for axis in axes:
        if axis.zipped is None:
            dimensions.append([{axis.key: value} for value in axis.values])
        elif axis.zipped not in seen:
            seen.add(axis.zipped)
            group = [a for a in axes if a.zipped == axis.zipped]
            dimensions.append([{a.key: a.values[i] for a in group} for i in range(len(axis.values))])
    return dimensions


def parse_axis(item: str) -> Axis:
    """`--sweep key.path=v1,v2,...`: the values are a YAML flow list without its brackets, so that
    `model.norm=none,{name: batchnorm, placement: post}` is two values."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--sweep {_describe(item)}: expected key.path=v1,v2,..., e.g. model.depth=10,30")
    key = _check_key(key, f"--sweep {key.strip()}")
    from gradlab.config.experiment import (
        _load_yaml,  # duplicate keys refused, nesting and expanded size bounded, as for --set
    )
    from gradlab.vocab.yamlio import TooLarge

    try:
        values = _load_yaml(f"[{raw}]")
    except TooLarge as exc:
        raise ConfigError(f"--sweep {key}: the values {exc.problem}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        why = f" ({problem})" if problem and ("duplicate" in problem or "same key" in problem or "nested" in problem) else ""
        raise ConfigError(f"--sweep {key}: {_brief(raw)} is not a comma-separated list of YAML values{why}") from None
    return _axis(key, values, f"--sweep {key}")


def merge_axes(axes: list[Axis], extra: Sequence[Axis]) -> list[Axis]:
    """Command-line axes replace the config's axis of the same key, or are added. One key given
    twice on the command line (`--sweep k=a --sweep k=b`) is refused, not merged: whether the
    second meant to add values or to correct the first cannot be told, and keeping the last
    silently dropped values."""
    given: dict[str, Axis] = {}
    for axis in extra:
        if axis.key in given:
            values = ",".join(flow(v) for v in (*given[axis.key].values, *axis.values))
            raise ConfigError(f"--sweep {axis.key}: given twice; give all its values in one, e.g. --sweep {axis.key}={values}")
        given[axis.key] = axis
    axes = list(axes)
    for axis in extra:
        keys = [a.key for a in axes]
        if axis.key in keys and axes[keys.index(axis.key)].zipped is not None:
            partners = [a.key for a in axes if a.zipped == axes[keys.index(axis.key)].zipped and a.key != axis.key]
            raise ConfigError(f"--sweep {axis.key}: zipped with {', '.join(partners)} in the config's sweep.zip; change the zip in the config file")
        if axis.key in keys:
            axes[keys.index(axis.key)] = axis
        else:
            axes.append(axis)
    return _seed_last(axes)


def _seed_last(axes: list[Axis]) -> list[Axis]:
    return [a for a in axes if a.key != SEED_AXIS] + [a for a in axes if a.key == SEED_AXIS]


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def check_disjoint(axes: Sequence[Axis]) -> None:
    """Two axes that set the same key (one a prefix of the other: `model.depth` and `model`) are a
    config error: the later one would overwrite what the earlier one set, and runs named after the
    overwritten values would silently be the same experiment."""
    for i, a in enumerate(axes):
        for b in axes[i + 1 :]:
            if a.key != SEED_AXIS and b.key != SEED_AXIS and _overlaps(a.key, b.key):
                inner, outer = (a, b) if len(a.key) > len(b.key) else (b, a)
                raise ConfigError(
                    f"sweep: the axes {outer.key} and {inner.key} overlap ({outer.key} sets {inner.key} too); "
                    f"sweep each key once, e.g. {inner.key} alone or a list of whole {outer.key} values"
                )


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------


def axis_labels(keys: Sequence[str]) -> dict[str, str]:
    """The shortest trailing part of each axis key that tells the axes apart (configdiff.short_keys)."""
    return short_keys(keys)


def _safe(text: str) -> str:
    """Letters, digits and . _ + - only; anything else becomes _ (no / or spaces in a folder name)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_"


def render_value(value: Any) -> str:
    """A value as a compact, file-system-safe part of a folder name:
    relu, 30, 0.001, batchnorm(placement=post), (weight=orthogonal,bias=zeros), [weights+deltas]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _safe(repr(value))
    if isinstance(value, str):
        return _safe(value)
    if isinstance(value, dict):
        args = ",".join(f"{_safe(str(k))}={render_value(v)}" for k, v in value.items() if k != "name")
        name = render_value(value["name"]) if "name" in value else ""
        return f"{name}({args})" if args or not name else name
    if isinstance(value, (list, tuple)):
        return "[" + "+".join(render_value(v) for v in value) + "]"
    return _safe(str(value))


def run_name(values: dict[str, Any], labels: dict[str, str]) -> str:
    """`activation=relu,norm=batchnorm,seed=1`; cut with a hash when it would be too long."""
    name = ",".join(f"{_safe(labels[key])}={render_value(value)}" for key, value in values.items()) or "run"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 10]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def describe_values(values: dict[str, Any]) -> str:
    """`model.norm=groupnorm, model.width=30`: how error lines and listings name a combination."""
    return ", ".join(f"{key}={flow(value)}" for key, value in values.items())


# --------------------------------------------------------------------------------------------
# The plan: every combination expanded and validated
# --------------------------------------------------------------------------------------------


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


def has_sweep(raw: dict[str, Any]) -> bool:
    return SWEEP_KEY in raw or SEEDS_KEY in raw or CLAIMS_KEY in raw  # (claims without a sweep: planning says so)


def plan_sweep(raw: dict[str, Any], overrides: Sequence[str] = (), axes: Sequence[Axis] = ()) -> SweepPlan:
    """Expand the grid of `raw` (a config mapping with `sweep:`/`seeds:`), the `--set` overrides
    applied to every combination and the `--sweep` axes added or replacing the config's, and
    validate every combination. ConfigError holds every problem of every combination at once,
    each line naming the values that cause it; a line that every combination shares (a problem
    of the config itself) is given once, without them."""
    from gradlab.config.experiment import apply_overrides, set_dotted, validate

    base, config_axes = split_sweep(raw)
    all_axes = merge_axes(config_axes, axes)
    if not all_axes:
        what = "claims: compare the configurations of a sweep; " if CLAIMS_KEY in raw else ""
        raise ConfigError(f"{what}sweep: no axes; give sweep: {{key.path: [values]}}, seeds: [0, 1, 2] or --sweep key.path=v1,v2")
    check_disjoint(all_axes)
    claims_raw = raw.get(CLAIMS_KEY)
    if CLAIMS_KEY in raw:
        from gradlab.config.claims import parse_claims

        parse_claims(claims_raw, {axis.key: list(axis.values) for axis in all_axes})  # every claim checked before anything runs
    for item in overrides:
        key = item.partition("=")[0].strip()
        for axis in all_axes:
            if key and _overlaps(key, axis.key):
                raise ConfigError(f"{key}: set by --set (or --seed/--steps/...) but also swept; change the axis with --sweep {axis.key}=v1,v2")
    base = apply_overrides(base, list(overrides))
    labels = axis_labels([axis.key for axis in all_axes])

    members: list[Member] = []
    errors: list[tuple[dict[str, Any], list[str]]] = []
    for combination in itertools.product(*_dimensions(all_axes)):
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
        raise ConfigError(*_error_lines(errors, all_axes))
    names: dict[str, Member] = {}
    for member in members:
        if member.name in names:
            other = names[member.name]
            raise ConfigError(f"sweep: {describe_values(other.values)} and {describe_values(member.values)} would share the run directory {member.name!r}; make the values tell apart")
        names[member.name] = member
    return SweepPlan(base, all_axes, members, claims_raw)


def _error_lines(errors: list[tuple[dict[str, Any], list[str]]], axes: list[Axis]) -> list[str]:
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


def check_resources(plan: SweepPlan, jobs: int = 1) -> None:
    """The checks a run makes before it starts (the device exists, the run fits in memory), for
    every combination up front; ConfigError with every problem, naming the combinations. With
    `jobs` runs at once, the `jobs` largest of them must also fit together, in host memory (and
    on each device they share)."""
    from gradlab.build.memory import (
        available_bytes,
        check_fits,
        human,
        known_input_shape,
    )
    from gradlab.config.experiment import validate
    from gradlab.orchestrate.runner import resolve_device
    from gradlab.vocab.errors import GradlabError

    errors: list[tuple[dict[str, Any], list[str]]] = []
    needs: dict[str, list[tuple[int, Member]]] = {}  # device type -> (bytes at the peak, member)
    for member in plan.members:
        exp = validate(member.config)
        try:
            device = resolve_device(exp.device)
            shape = known_input_shape(exp)
            if shape is not None:
                need = check_fits(exp, shape, exp.data.classes, device.type)
                on_device = max(need.peak_training, need.peak_evaluation) - need.data
                if device.type == "cpu":
                    needs.setdefault("cpu", []).append((max(need.total, on_device + need.data), member))
                else:
                    needs.setdefault("cpu", []).append((need.data + need.generation, member))
                    needs.setdefault(device.type, []).append((on_device, member))
        except GradlabError as exc:
            errors.append((member.values, exc.lines))
    if errors:
        raise ConfigError(*_error_lines(errors, plan.axes))
    if jobs <= 1:
        return
    for device_type, sizes in needs.items():
        largest = sorted(sizes, key=lambda item: item[0], reverse=True)[:jobs]
        together = sum(size for size, _ in largest)
        free = available_bytes(device_type)
        if len(largest) > 1 and free is not None and together > free:
            fits = max(1, sum(1 for _ in itertools.takewhile(lambda n: sum(s for s, _ in largest[:n]) <= free, range(1, len(largest) + 1))))
            raise ConfigError(
                f"--jobs {jobs}: {len(largest)} runs at once need up to {human(together)} of {device_type} memory together "
                f"(the largest: {describe_values(largest[0][1].values)} needs {human(largest[0][0])}) but {human(free)} is available; "
                f"use --jobs {fits} or fewer"
            )


def load_plan(path: str | Path, overrides: Sequence[str] = (), axes: Sequence[Axis] = ()) -> SweepPlan:
    from gradlab.config.experiment import read_yaml

    return plan_sweep(read_yaml(path), overrides, axes)


def load_experiments(path: str | Path) -> list:
    """Every experiment a config file stands for: one, or one per combination of its sweep."""
    from gradlab.config.experiment import read_yaml, validate

    raw = read_yaml(path)
    if not has_sweep(raw):
        return [validate(raw)]
    return [validate(member.config) for member in plan_sweep(raw).members]


def differing_values(plan: SweepPlan) -> list[dict[str, Any]]:
    """Per member, the resolved config values (dotted keys) that are not the same in all members."""

    def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for key, value in config.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value and "name" not in value:
                flat.update(flatten(value, f"{dotted}."))
            else:
                flat[dotted] = value
        return flat

    flats = [flatten(member.config) for member in plan.members]
    # the axes first, in their order, then what else they changed (a component's parameters)
    keys = list(dict.fromkeys([axis.key for axis in plan.axes] + [key for flat in flats for key in flat]))
    differing = [key for key in keys if len({_canonical(flat.get(key)) for flat in flats}) > 1]
    return [{key: flat.get(key) for key in differing} for flat in flats]


# --------------------------------------------------------------------------------------------
# The sweep directory and its index
# --------------------------------------------------------------------------------------------


@dataclass
class IndexRow:
    run: str
    values: dict[str, Any]
    status: str = "pending"
    duration_s: float | None = None
    error: str = ""


def _float_or_none(text: Any) -> float | None:
    """A duration as sweep.csv stores it; anything else (edited by hand, damaged) is unknown."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class SweepIndex:
    """sweep.csv: one row per combination in plan order. Rewritten whole (a temporary file,
    then a rename) on every change, so it is never seen half written."""

    def __init__(self, sweep_dir: Path, plan: SweepPlan, rows: list[IndexRow]):
        self.path = Path(sweep_dir) / INDEX_FILE
        self.keys = [axis.key for axis in plan.axes]
        self.rows = rows
        self.by_name = {row.run: row for row in rows}

    @classmethod
    def fresh(cls, sweep_dir: Path, plan: SweepPlan) -> "SweepIndex":
        return cls(sweep_dir, plan, [IndexRow(m.name, dict(m.values)) for m in plan.members])

    @classmethod
    def read(cls, sweep_dir: Path, plan: SweepPlan) -> "SweepIndex":
        path = Path(sweep_dir) / INDEX_FILE
        try:
            with open(path, newline="", encoding="utf-8") as file:
                stored = {row.get("run"): row for row in csv.DictReader(file)}
        except FileNotFoundError:
            raise RunError(f"{sweep_dir}: no {INDEX_FILE}; not a sweep directory") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise RunError(f"{path}: cannot be read ({exc})") from None
        index = cls.fresh(sweep_dir, plan)
        unknown = [name for name in stored if name not in index.by_name]
        if unknown:
            raise RunError(f"{path}: run {unknown[0]!r} is not a combination of {SPEC_FILE}; the two files do not belong together")
        for row in index.rows:
            if row.run in stored:
                old = stored[row.run]
                row.status = old.get("status") if old.get("status") in INDEX_STATUSES else "pending"
                row.duration_s = _float_or_none(old.get("duration_s"))
                row.error = old.get("error") or ""
        return index

    def write(self) -> None:
        from gradlab.records.write import write_text_atomic

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["run", *self.keys, "status", "duration_s", "error"])
        for row in self.rows:
            duration = "" if row.duration_s is None else f"{row.duration_s:.2f}"
            writer.writerow([row.run, *(flow(row.values[key]) for key in self.keys), row.status, duration, row.error])
        write_text_atomic(self.path, text.getvalue())

    def counts(self) -> Counter:
        return Counter(row.status for row in self.rows)


def create_sweep_dir(plan: SweepPlan) -> Path:
    """`log.out/<name>/<timestamp>-<id>/` with sweep.yaml and sweep.csv (every run pending)."""
    from gradlab.records.layout import new_run_dir
    from gradlab.records.write import disk_full, is_disk_full
    from gradlab.vocab.errors import DiskFull

    sweep_dir = new_run_dir(plan.out, plan.name)
    header = "# The sweep as planned by gradlab run (overrides applied); gradlab run --resume on this folder reads it.\n"
    try:
        (sweep_dir / SPEC_FILE).write_text(header + yaml.safe_dump(plan.spec(), sort_keys=False, default_flow_style=None, width=100), encoding="utf-8")
        SweepIndex.fresh(sweep_dir, plan).write()
    except (OSError, DiskFull) as exc:
        shutil.rmtree(sweep_dir, ignore_errors=True)  # a sweep directory without its plan is no sweep
        if is_disk_full(exc) or isinstance(exc, DiskFull):
            raise disk_full(sweep_dir, f"{SPEC_FILE} and {INDEX_FILE}") from None
        raise
    return sweep_dir


def open_sweep(sweep_dir: str | Path) -> tuple[SweepPlan, SweepIndex]:
    """The plan (from sweep.yaml, validated again) and the index of an existing sweep directory."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise RunError(f"--resume: {str(sweep_dir)!r} is not a folder")
    if not (sweep_dir / SPEC_FILE).is_file():
        raise RunError(f"--resume: {str(sweep_dir)!r} has no {SPEC_FILE}; give a sweep directory (results/<name>/<timestamp>-<id>)")
    plan = load_plan(sweep_dir / SPEC_FILE)
    return plan, SweepIndex.read(sweep_dir, plan)


# --------------------------------------------------------------------------------------------
# One owner per sweep directory
# --------------------------------------------------------------------------------------------

LOCK_FILE = ".gradlab.lock"  # flock()ed by the command that runs the sweep; says who that is
_HELD: dict[Path, int] = {}  # sweep directories this process holds: the lock file's descriptor


class SweepLocked(RunError):
    """Another command holds the sweep directory (exit 2: nothing was touched)."""


def _lock_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8")[:1000])
        return f"pid {int(holder['pid'])} on host {str(holder['host'])[:100]} since {str(holder['since'])[:40]}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@contextmanager
def sweep_lock(sweep_dir: str | Path):
    """The sweep directory held by this process for the block: an OS lock (flock) on its lock file,
    which the kernel releases when the process ends however it ends (SIGKILL, a crash, a closed
    terminal), so a lock never outlives its owner. A second command gets SweepLocked naming the
    holder (pid, host, since). Re-entrant within one process. Where flock does not exist (not a
    POSIX system) nothing is locked."""
    key = Path(sweep_dir).resolve()
    if key in _HELD:
        yield
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = key / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunError(f"{sweep_dir}: cannot create its lock file {LOCK_FILE}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SweepLocked(
            f"{sweep_dir}: in use by another gradlab command ({_lock_holder(path)}); "
            "wait for it to end or stop it, then run gradlab run --resume again"
        ) from None
    try:
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
    except OSError:
        pass  # a full disk: the lock holds all the same; the second command cannot say who
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiting command)


def _recorded_status(run_dir: Path) -> str | None:
    """The status a run directory's own meta.json records (None: no readable meta.json). A run's
    own records outrank sweep.csv, which a killed command may have left behind them."""
    from gradlab.records.layout import LAYERS_FILE, META_FILE, METRICS_FILE

    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not ((run_dir / LAYERS_FILE).is_file() and (run_dir / METRICS_FILE).is_file()):
        return None  # records that lost a table are no finished run, whatever meta.json says
    status = meta.get("status") if isinstance(meta, dict) else None
    return status if isinstance(status, str) else None


ORPHANS_SETTLE_S = 12.0  # > 2 x executors.ORPHAN_GRACE_S: how long a killed sweep's workers may still write


def _let_orphans_finish(sweep_dir: Path, names: list[str]) -> None:
    """Wait, when a folder about to be removed was written in the last ORPHANS_SETTLE_S seconds,
    until that long has passed: the workers of a sweep killed a moment ago stop on their own
    (executors: parent-death signal) and close their records; removing the folders under them
    would have them re-create the folder as a stub."""
    newest = 0.0
    for name in names:
        folder = sweep_dir / name
        if _recorded_status(folder) != "running" and (folder / "meta.json").exists():
            continue  # closed (interrupted, failed): nobody writes there any more
        try:
            newest = max([newest, *(path.stat().st_mtime for path in folder.iterdir())])
        except OSError:
            continue
    wait = newest + ORPHANS_SETTLE_S - time.time()
    if wait > 0:
        time.sleep(min(wait, ORPHANS_SETTLE_S))


def _recorded_duration(run_dir: Path) -> float | None:
    from gradlab.records.layout import META_FILE

    try:
        meta = json.loads((run_dir / META_FILE).read_text(encoding="utf-8"))
        start, end = datetime.fromisoformat(meta["started"]), datetime.fromisoformat(meta["ended"])
        return max((end - start).total_seconds(), 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    sweep_dir: Path
    rows: list[IndexRow]
    ran: int  # runs started by this command
    signum: int | None = None  # the signal that stopped the sweep
    checks: dict[str, list] = field(default_factory=dict)  # run -> expect: outcomes, as its member checked them

    @property
    def counts(self) -> Counter:
        return Counter(row.status for row in self.rows)

    @property
    def exit_code(self) -> int:
        if self.signum is not None:
            return 128 + self.signum  # 130 for Ctrl-C, as for a single run
        return 1 if self.counts["failed"] else 0

    def summary(self) -> str:
        counts = self.counts
        text = f"{len(self.rows)} runs: " + ", ".join(f"{counts[s]} {s}" for s in ("completed", "diverged", "failed", "interrupted"))
        left = counts["pending"] + counts["running"]
        return text + (f", {left} not run" if left else "")

    def finished(self) -> list[Path]:
        """The run directories of the completed and diverged runs, in plan order."""
        return [self.sweep_dir / row.run for row in self.rows if row.status in FINISHED]

    def failed_expectations(self) -> list[str]:
        """'expectation failed: <run>: <failure>' for every violated expectation of a finished run,
        in plan order. A run that finished before this command (--resume), or whose member could
        not read its records back, is checked here."""
        from gradlab.analysis.expectations import check_run

        lines = []
        for path in self.finished():
            outcomes = self.checks.get(path.name)
            if outcomes is None:
                outcomes = check_run(path)
            lines.extend(f"expectation failed: {path.name}: {o.failure()}" for o in outcomes if not o.passed)
        return lines

    def plot(self) -> list[str]:
        """The figures of every finished run, together, drawn into the sweep directory; returns the
        warnings of reading them back (runs cut off, skipped)."""
        from gradlab.records.run import load_runs
        from gradlab.show import plots

        finished = self.finished()
        if not finished:
            return []
        loaded = load_runs(finished)
        plots.save_figures(plots.build_figures(loaded.runs), self.sweep_dir)
        return loaded.problems


def run_sweep(
    plan: SweepPlan,
    sweep_dir: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    progress: Progress | None = None,
    index: SweepIndex | None = None,
) -> SweepOutcome:
    """Run every combination of `plan` whose status in sweep.csv is not completed or diverged.

    The sweep directory is held for the whole call (sweep_lock): a second command on it is refused.
    A run whose own meta.json says completed or diverged is kept, whatever sweep.csv says. A run
    that is not finished and left a folder behind (interrupted, failed, killed) has that folder
    removed and runs again in a fresh one. Runs that fail or diverge do not stop the sweep.
    SIGINT/SIGTERM stop it: runs in flight end as interrupted at their next step, runs not started
    stay pending, and the outcome carries the signal.

    `progress` (a view such as progress.SweepLines) gets SweepStarted, the events of the runs in
    flight, RunFinished of each run that was started, and SweepEnded.
    """
    with sweep_lock(sweep_dir):
        return _run_sweep_locked(plan, Path(sweep_dir), jobs, threads, executor, ray_address, progress, index)


def _run_sweep_locked(plan, sweep_dir: Path, jobs, threads, executor, ray_address, progress, index) -> SweepOutcome:
    from gradlab.orchestrate import executors

    display = progress or silent
    index = index or SweepIndex.read(sweep_dir, plan)
    members = {member.name: member for member in plan.members}

    def threads_of(config: dict) -> int:
        """--threads; else the run's own `threads:` when it is a number; else one per run (auto in a
        sweep: records the same whatever --jobs)."""
        own = config.get("threads")
        return threads or (own if isinstance(own, int) and not isinstance(own, bool) else executors.default_threads())

    _let_orphans_finish(sweep_dir, [row.run for row in index.rows if row.status not in FINISHED])
    todo = []
    for row in index.rows:
        if row.status in FINISHED:
            continue
        folder = sweep_dir / row.run
        recorded = _recorded_status(folder) if folder.exists() else None
        if recorded in FINISHED:  # the run finished; only the index (its command killed) did not hear of it
            row.status, row.duration_s, row.error = recorded, _recorded_duration(folder), ""
            continue
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete attempt: the combination runs again from scratch
        row.status, row.duration_s, row.error = "pending", None, ""
        todo.append(row)
    index.write()

    todo_names = {row.run for row in todo}
    tasks = [
        executors.MemberTask(i, row.run, str(sweep_dir / row.run), members[row.run].config, threads_of(members[row.run].config))
        for i, row in enumerate(index.rows) if row.run in todo_names
    ]  # fmt: skip
    rows = index.rows
    outcome = SweepOutcome(sweep_dir, rows, 0)

    def on_event(event: Event) -> None:
        row = rows[event.index]
        if isinstance(event, RunSubmitted):
            row.status = "running"
            index.write()
        elif isinstance(event, RunStarted | StepLogged) and row.status == "running":
            display(event)  # (a late event of a run already finished is dropped)
        elif isinstance(event, RunFinished):
            result = event.result
            if result.started:
                outcome.ran += 1
            row.status = result.status if result.started else "pending"
            row.duration_s = result.duration_s if result.started else None
            row.error = result.error
            if result.outcomes is not None:
                outcome.checks[row.run] = result.outcomes
            index.write()
            display(event)

    display(SweepStarted(tuple(row.run for row in rows), len(tasks)))
    try:
        outcome.signum = executors.execute(tasks, on_event, executor=executor, jobs=jobs, ray_address=ray_address)
    finally:
        # whatever happened, no row claims a run is going on when this command is over; a run
        # whose own records say it finished (its result lost on the way here) is what they say
        for row in rows:
            if row.status == "running":
                recorded = _recorded_status(sweep_dir / row.run)
                row.status = recorded if recorded in FINISHED else "interrupted"
        index.write()
        display(SweepEnded())
    return outcome
