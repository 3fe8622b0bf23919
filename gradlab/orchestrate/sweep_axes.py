"""What a sweep varies: the axes of a config's `sweep:` and `seeds:` and of `--sweep`.

    sweep: {model.activation: [sigmoid, tanh, relu, elu], model.norm: [none, batchnorm]}
    seeds: [0, 1, 2]          # or a count: `seeds: 3` is seeds 0, 1, 2 (range(3))

Values that vary together rather than in a grid (a weight std with its bias mean) are zipped:

    sweep: {model.norm: [none, batchnorm], zip: {model.init.weight.std: [0.1, 1.0, 10.0], model.init.bias.mean: [0.0, 0.1, 1.0]}}

is 2 x 3 runs (std 0.1 with mean 0.0, 1.0 with 0.1, 10.0 with 1.0), not 2 x 3 x 3; the lists of a
zip have one length; several zip groups: a list of such mappings. The seed is an axis like any
other (`seed`), always the last one, so that `gradlab compare` on the sweep directory averages it
away: one row per combination of the other axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import yaml

from gradlab.config.claims import CLAIMS_KEY
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.values import canonical, flow

SWEEP_KEY, SEEDS_KEY, SEED_AXIS = "sweep", "seeds", "seed"
ZIP_KEY = "zip"  # sweep: {zip: {a: [...], b: [...]}}: keys whose values vary together
NOT_SWEPT = ("name", "log", "log.out")  # every run of a sweep goes into one sweep directory

@dataclass(frozen=True)
class Axis:
    key: str  # dotted config key; "seed" for the seeds
    values: tuple[Any, ...]
    zipped: int | None = None  # axes of one `zip:` group (the same number) advance together, not in a grid


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
        if canonical(value) in seen:
            raise ConfigError(f"{where}: {_brief(value)} is listed twice")
        seen[canonical(value)] = None
    if key == SEED_AXIS:
        bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise ConfigError(f"{where}: got {_brief(bad[0])}; seeds are integers, e.g. [0, 1, 2]")
    return Axis(key, tuple(values))


def seed_list(seeds: Any) -> Any:
    """`seeds: 3` is range(3), seeds 0, 1, 2; a list is kept as it is (checked by _axis)."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds: a count of seeds is at least 1, got {seeds}; or list them, e.g. [0, 1, 2]")
        return list(range(seeds))
    if not isinstance(seeds, list):
        raise ConfigError(f"seeds: expected a count (3: seeds 0, 1, 2) or a list of integer seeds, e.g. [0, 1, 2], got {_brief(seeds)}")
    return seeds


def has_sweep(raw: dict[str, Any]) -> bool:
    return SWEEP_KEY in raw or SEEDS_KEY in raw or CLAIMS_KEY in raw  # (claims without a sweep: planning says so)


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
        axes.append(_axis(SEED_AXIS, seed_list(seeds), "seeds"))
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
        rows = [tuple(canonical(a.values[i]) for a in out if a.zipped == number) for i in range(next(iter(lengths.values())))]
        if len(set(rows)) < len(rows):
            raise ConfigError(f"{where}: a combination of values is listed twice")
    return out


def dimensions(axes: Sequence[Axis]) -> list[list[dict[str, Any]]]:
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
    from gradlab.config.load import load_yaml  # duplicate keys refused, nesting and expanded size bounded, as for --set
    from gradlab.vocab.yamlio import TooLarge

    try:
        values = load_yaml(f"[{raw}]")
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


def overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def check_disjoint(axes: Sequence[Axis]) -> None:
    """Two axes that set the same key (one a prefix of the other: `model.depth` and `model`) are a
    config error: the later one would overwrite what the earlier one set, and runs named after the
    overwritten values would silently be the same experiment."""
    for i, a in enumerate(axes):
        for b in axes[i + 1 :]:
            if a.key != SEED_AXIS and b.key != SEED_AXIS and overlaps(a.key, b.key):
                inner, outer = (a, b) if len(a.key) > len(b.key) else (b, a)
                raise ConfigError(
                    f"sweep: the axes {outer.key} and {inner.key} overlap ({outer.key} sets {inner.key} too); "
                    f"sweep each key once, e.g. {inner.key} alone or a list of whole {outer.key} values"
                )
