"""Loading a config: the YAML file read (duplicate keys refused, size and nesting bounded), `--set`
overrides applied, and the result validated into an Experiment.

    load_config(path, overrides)   -> Experiment
    read_yaml(path)                the mapping in a config file, or a ConfigError saying what is wrong
    apply_overrides(data, items)   `key.path=value` items applied (values parsed as YAML)
    load_yaml(text)                a YAML value as --set and --sweep read them
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gradlab.config.experiment import Experiment, validate
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.registry import describe_value, with_article
from gradlab.vocab.yamlio import TooLarge, load_guarded, read_capped

class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader, but a key given twice in one mapping is an error: PyYAML would
    silently keep the last value, a setting the user wrote but that never applies."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    # named as written: `1:` and `true:` are one key to Python (1 == True), not "True" twice
                    written, before = _key_text(key_node), _key_text(first)
                    same = f"duplicate key {written}" if written == before else f"key {written}, the same key as {before}"
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found {same} (first given at line {first.start_mark.line + 1})", key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def _key_text(node: Any) -> str:
    text = node.value if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def load_yaml(text: str) -> Any:
    """The YAML document in `text`; yaml.YAMLError for anything that stops it being read (an alias
    bomb, a reference cycle: yamlio.load_guarded)."""
    try:
        return load_guarded(text, _Loader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's 4300-digit conversion limit
        problem = "an integer has too many digits" if "integer string conversion" in str(exc) else str(exc).splitlines()[0]
        raise yaml.YAMLError(problem) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in `path`, or a ConfigError that says what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config: {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"config: {str(path)!r} is a folder; give a YAML file")
    try:
        text = read_capped(path)  # a regular file of sane size only: never a FIFO or /dev/zero
    except ValueError as exc:
        raise ConfigError(f"config: {str(path)!r} {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except TooLarge as exc:
        raise ConfigError(f"config: {str(path)!r} {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config: {str(path)!r} is not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"config: {str(path)!r} is empty; it needs at least a mapping such as 'name: my-run'")
    if not isinstance(data, dict):
        raise ConfigError(f"config: the top level of {str(path)!r} must be a mapping of sections (name, data, model, ...), got {with_article(type(data).__name__)}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides; the value is parsed as YAML (`[weights]`, `{name: bn}`)."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {describe_value(item)}: expected key.path=value, e.g. model.depth=30")
        try:
            value = load_yaml(raw) if raw.strip() else None
        except TooLarge as exc:
            raise ConfigError(f"--set {key}: the value {exc.problem}") from None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {describe_value(raw)} is not a valid YAML value") from None
        if key.split(".")[0] in ("seeds", "sweep"):
            # a sweep is not a config value: say where it is given instead of "unknown key (did you mean 'seed'?)"
            raise ConfigError(
                f"--set {key}: {key.split('.')[0]} makes a sweep, not a config value; sweep from the command line with "
                f"--sweep (e.g. --sweep seed=0,1,2 or --sweep model.depth=10,30), or write {key.split('.')[0]}: in the config file"
            )
        set_dotted(data, key, value, where=f"--set {key}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str | None = None) -> None:
    """Set `a.b.c` in nested mappings, copying each mapping on the way (the caller's stay intact).

    Missing levels are created, and a component given by name (`model.activation: relu`) becomes
    `{name: relu}` when a parameter is set below it (`model.activation.negative_slope=0.2`).
    """
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if isinstance(child, str) and depth >= 1:
            child = {"name": child}
        elif child is None:
            child = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{where or key}: {'.'.join(parts[: depth + 1])} is {describe_value(child)}, not a mapping")
        else:
            child = dict(child)
        node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    return validate(apply_overrides(read_yaml(path), overrides or []))
