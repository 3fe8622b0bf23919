"""Config differences: flattening a config to dotted keys, canonical values, which keys differ
between configs, how their values are shown, and the labels and seed groups built from them.

    flatten(config, whole=...)    the one flattening: nested mappings -> dotted keys
    flatten_config(config)        a run's config flattened, each component one value
    canonical(value)              a text that is equal exactly when two values are
    differing_keys(configs)       the experimental keys whose values are not the same everywhere
    config_columns(configs)       {differing key: each config's value as shown} (optim.lr, not optim)
    labels(configs)               a legend label per config
    applies(key, config)          whether a key acts for the config's model kind (labels skip those that do not)
    group_by_config(configs)      configs that differ only by seed, grouped; numbers in numeric order
    short_keys(keys)              the shortest trailing part of each dotted key that tells them apart
    row_labels(names, configs)    unique row labels from run names and config values

Plain Python and the config schema: no pandas, no torch (a sweep can plan its members with it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from gradlab.config.experiment import CHRONO_KINDS, component_keys
from gradlab.vocab.values import canonical as canonical_value

# Config fields that hold a component ({name: ..., params...}): one value, shown as name(params).
# Read off the config schema (which imports neither torch nor pandas), so a new component field is
# compared as one without a change here.
COMPONENT_KEYS: tuple[str, ...] = component_keys()

# Keys that do not change the experiment, only its bookkeeping; `seed` is what groups runs.
NOT_EXPERIMENTAL = ("name", "seed", "device", "log", "train.eval_every", "expect")

# Keys a run's resolved config holds that act only for some model kinds (config/experiment.py refuses a value
# elsewhere): a label leaves them out for runs of other kinds, so a GRU beside two LSTMs is not
# labelled forget_bias=null.
KIND_SPECIFIC: dict[str, tuple[str, ...]] = {"model.forget_bias": ("lstm",)}


# Keys whose mapping value is one value (shown whole), not flattened into its keys: chrono's
# {name: chrono, max_timescale: T} beside forget biases that are numbers.
WHOLE_KEYS: tuple[str, ...] = ("model.forget_bias",)


def applies(key: str, config: dict[str, Any]) -> bool:
    """Whether a dotted key acts in this config (KIND_SPECIFIC; every other key does). A chrono
    forget_bias (a mapping) acts on gru's update gate as well as on lstm's forget gate."""
    kinds = KIND_SPECIFIC.get(key)
    model = config.get("model", {})
    if key == "model.forget_bias" and isinstance(model.get("forget_bias"), dict):
        kinds = CHRONO_KINDS
    return kinds is None or model.get("kind") in kinds


class _Missing:
    """A key one config has and another lacks: a value of its own, shown as '-'."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def flatten(config: dict[str, Any], whole: Callable[[str, Any], bool] = lambda key, value: False, prefix: str = "") -> dict[str, Any]:
    """{'model': {'depth': 3, 'init': {...}}} -> {'model.depth': 3, 'model.init.weight': ...}.

    A non-empty mapping is flattened into its keys unless `whole(dotted_key, mapping)` says it is
    one value (a component); anything else is a value as it is.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not whole(dotted, value):
            flat.update(flatten(value, whole, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config as dotted keys; each component (COMPONENT_KEYS) is one value, a mapping
    with its name (a component written as a bare name becomes {'name': name})."""
    flat = flatten(config, lambda key, value: key in COMPONENT_KEYS or key in WHOLE_KEYS)
    for key in COMPONENT_KEYS:
        if isinstance(flat.get(key), str):
            flat[key] = {"name": flat[key]}
    return flat


def canonical(value: Any) -> str:
    """vocab.values.canonical, with MISSING its own value (never equal to a value a config holds)."""
    return "<missing>" if value is MISSING else canonical_value(value)


def is_experimental(key: str) -> bool:
    """Whether a dotted key changes the experiment (not bookkeeping such as name, seed or log)."""
    return not any(key == skip or key.startswith(f"{skip}.") for skip in NOT_EXPERIMENTAL)


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values are not the same in every config (a missing key counts as a value),
    named as config_columns names them: `optim.lr` where only the learning rate of one optimizer
    differs, `optim` where the optimizers differ."""
    return list(config_columns(configs))


def _differing(flats: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [
        key for key in keys
        if is_experimental(key) and len({canonical(flat.get(key, MISSING)) for flat in flats}) > 1
    ]  # fmt: skip


def format_value(value: Any) -> str:
    """A config value as YAML would write it, numbers kept short."""
    if value is MISSING:
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
    """How each config's value of `key` is shown.

    A component shows its name and parameters, `leaky_relu(negative_slope=0.2)`; where the configs
    use one component with different parameters, only the parameters that differ, so
    `batchnorm(placement=pre)` and `batchnorm(placement=post)` are not buried in momentum and eps.
    The run's config.yaml has every parameter.
    """
    if key not in COMPONENT_KEYS and key not in WHOLE_KEYS:
        return [format_value(value) for value in values]
    specs: dict[str, list[dict[str, Any]]] = {}
    for value in values:
        if isinstance(value, dict):
            specs.setdefault(str(value.get("name", "?")), []).append(value)
    shown_params: dict[str, list[str]] = {}
    for name, same_name in specs.items():
        params = list(dict.fromkeys(p for spec in same_name for p in spec if p != "name"))
        varying = [p for p in params if len({canonical(spec.get(p, MISSING)) for spec in same_name}) > 1]
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


def config_columns(configs: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """{differing key: the displayed value of every config}, keys in config order.

    A component whose name is the same in every config is named by the parameters that differ:
    sweeping the learning rate gives a column `optim.lr` holding 0.3, 0.1, ..., not `optim` holding
    sgd(lr=0.3); one column per differing parameter. Where the names differ (sgd and adam), the
    component is one column, `optim`, shown as display_values shows it."""
    flats = [flatten_config(config) for config in configs]
    columns: dict[str, list[str]] = {}
    for key in _differing(flats):
        values = [flat.get(key, MISSING) for flat in flats]
        params = _differing_params(key, values)
        if params:
            for param in params:
                columns[f"{key}.{param}"] = [format_value(value.get(param, MISSING)) for value in values]
        else:
            columns[key] = display_values(key, values)
    return columns


def _differing_params(key: str, values: Sequence[Any]) -> list[str]:
    """The parameters that differ when every value of component `key` is one component (one name);
    [] otherwise (a plain key, a component missing somewhere, or different components)."""
    if key not in COMPONENT_KEYS or not all(isinstance(value, dict) for value in values):
        return []
    if len({str(value.get("name")) for value in values}) > 1:
        return []
    params = list(dict.fromkeys(p for value in values for p in value if p != "name"))
    return [p for p in params if len({canonical(value.get(p, MISSING)) for value in values}) > 1]


def describe_config(config: dict[str, Any]) -> str:
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def group_by_config(configs: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of configs that share every experimental value but the seed. The groups are ordered
    by their differing values, key by key: numbers numerically (width 1, 16, 128, 1024, never the
    text order 1, 1024, 128, 16 of folder names), other values in first-seen order."""
    flats = [flatten_config(config) for config in configs]
    keys = _differing(flats)
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, flat in enumerate(flats):
        groups.setdefault(tuple(canonical(flat.get(key, MISSING)) for key in keys), []).append(index)
    # ordered as the columns are named: one component's differing parameters (optim.lr) are values of their own
    for key in list(keys):
        params = _differing_params(key, [flat.get(key, MISSING) for flat in flats])
        if params:
            for flat in flats:
                flat.update({f"{key}.{p}": flat[key].get(p, MISSING) for p in params})
            keys[keys.index(key) : keys.index(key) + 1] = [f"{key}.{p}" for p in params]
    first_seen: dict[str, dict[str, int]] = {key: {} for key in keys}
    for flat in flats:
        for key in keys:
            first_seen[key].setdefault(canonical(flat.get(key, MISSING)), len(first_seen[key]))

    def order(group: list[int]) -> tuple:
        flat = flats[group[0]]
        return tuple(
            (0, float(flat[key]), 0) if _is_number(flat.get(key, MISSING)) else (1, 0.0, first_seen[key][canonical(flat.get(key, MISSING))])
            for key in keys
        )  # fmt: skip

    return sorted(groups.values(), key=order)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The shortest trailing part of each dotted key that tells the keys apart, a component's
    `.name` left out: model.activation -> activation, data.name -> data, model.norm.name -> norm;
    model.init.weight and optim.weight_decay stay apart, model.depth and data.depth -> model.depth, data.depth."""

    def trimmed(key: str) -> list[str]:
        parts = key.split(".")
        return parts[:-1] if len(parts) > 1 and parts[-1] == "name" else parts

    shown: dict[str, str] = {}
    for key in keys:
        parts = trimmed(key)
        for n in range(1, len(parts) + 1):
            label = ".".join(parts[-n:])
            others = [".".join(trimmed(k)) for k in keys if k != key]
            if not any(other == label or other.endswith(f".{label}") for other in others):
                break
        shown[key] = label
    counts = Counter(shown.values())
    return {key: key if counts[label] > 1 else label for key, label in shown.items()}


def row_labels(names: Sequence[str], configs: Sequence[dict[str, Any]]) -> list[str]:
    """A unique label per row (a group of runs): its run name, and where rows share a name, the
    config values that tell them apart (`sweep#path=data/set-a.csv`, `exp#width=16`), built from
    the configs themselves, never parsed back out of folder names (which a value containing '-',
    '/' or brackets would garble). Rows that share name and config get `#2`, `#3`, ... in order."""
    counts = Counter(names)
    labels = list(names)
    for name in [n for n in counts if counts[n] > 1]:
        rows = [i for i, n in enumerate(names) if n == name]
        columns = config_columns([configs[i] for i in rows])
        keys = short_keys(list(columns))
        for position, i in enumerate(rows):
            values = ",".join(f"{keys[key]}={shown[position]}" for key, shown in columns.items() if applies(key, configs[i]))
            labels[i] = f"{name}#{values}" if values else name
    seen: Counter = Counter()
    totals = Counter(labels)
    for i, label in enumerate(list(labels)):
        if totals[label] > 1:
            seen[label] += 1
            labels[i] = f"{label}#{seen[label]}"
    return labels


def labels(configs: Sequence[dict[str, Any]]) -> list[str]:
    """A legend label per config: its differing values, or its description when nothing differs."""
    columns = config_columns(configs)
    if not columns:
        return [describe_config(config) for config in configs]
    return [
        ", ".join(f"{key}={values[i]}" for key, values in columns.items() if applies(key, configs[i])) or describe_config(configs[i])
        for i in range(len(configs))
    ]  # fmt: skip
