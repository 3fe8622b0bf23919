"""The JSON Schema of an experiment config (`gradlab schema`), so that editors complete and check
config files as they are typed.

    config_json_schema()   the schema as a dict (JSON Schema draft 7)
    schema_json()          the same as the text `gradlab schema` prints (and docs/config.schema.json holds)

It starts from the pydantic model that validates configs (`config.Experiment`), so every section,
key, type, range, default and description is the one the loader enforces, and adds what pydantic
cannot see: a component field (`model.activation`, `model.norm`, `model.init.weight`,
`model.init.bias`, `optim`) takes a name or `{name: ..., <parameters>}`, and the schema lists the
allowed names with each one's parameters (from the registries in `specs`); `data.name` and `loss`
list their names; a config may hold a `sweep:` (its keys: every config key that may be swept) and
`seeds:`.

What the schema cannot say, the loader still checks (`gradlab validate`): values that depend on
each other (batch_size <= n_train, groups divides width, an odd kernel, a data path that exists,
low <= high), names written in another case or with dashes (the loader accepts `Leaky-ReLU`; the
schema offers the canonical spelling), and PyYAML's YAML 1.1 reading of `1e-3` as text (write
`1.0e-3`), which an editor reading YAML 1.2 takes for a number.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

from gradlab.vocab import specs
from gradlab.vocab.quantities import STATUSES, SUMMARY_QUANTITIES
from gradlab.vocab.registry import Registry

# Draft 7, the newest draft VS Code's YAML extension (yaml-language-server) validates with; pydantic's
# output uses nothing later (`$defs` is reached by a plain JSON pointer in a `$ref`).
SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"

# Config fields that hold a component: (registry, which of its components are allowed there).
COMPONENT_FIELDS: dict[str, tuple[Registry, Any]] = {
    "model.activation": (specs.activations, None),
    "model.norm": (specs.norms, None),
    "model.init.weight": (specs.initializers, None),
    "model.init.bias": (specs.initializers, lambda component: component.extra.get("bias_ok", False)),
    "model.init.recurrent": (specs.initializers, None),
    "model.init.head": (specs.initializers, None),
    "optim": (specs.optimizers, None),
}
# Config fields that hold a bare name from a registry.
NAME_FIELDS: dict[str, Registry] = {"data.name": specs.datasets, "loss": specs.losses}

# Keys a sweep may not vary (sweep.NOT_SWEPT: every run of a sweep goes into one folder), and the
# sweep's own keys.
NOT_SWEPT = ("name", "log", "sweep", "seeds")
SEED_AXIS = "seed"


def _names(component) -> list[str]:
    return [component.name, *component.aliases]


def component_schema(registry: Registry, allowed=None) -> dict[str, Any]:
    """A component field: one of the names, or a mapping with `name` and that component's parameters."""
    components = [c for c in registry if allowed is None or allowed(c)]
    by_name = {
        "type": "string",
        "enum": [name for c in components for name in _names(c)],
        "description": f"{registry.kind} name (a mapping with name and parameters sets the parameters)",
    }
    mappings = []
    for component in components:
        params = component.params.model_json_schema()
        properties = {"name": {"enum": _names(component), "description": component.doc}}
        for key, value in params.get("properties", {}).items():
            if registry is specs.optimizers and key == "schedule":  # a component inside a component
                value = {"anyOf": [component_schema(specs.schedules), {"type": "null"}], "description": value.get("description", "")}
            properties[key] = value
        mappings.append({
            "type": "object",
            "title": component.name,
            "description": component.doc,
            "properties": properties,
            "required": ["name"],
            "additionalProperties": False,
        })  # fmt: skip
    names = ", ".join(c.name for c in components)
    return {"anyOf": [by_name, *mappings], "description": f"{registry.kind}: {names}"}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node` with a `$ref` (or an `anyOf` of a `$ref` and null, pydantic's Optional) followed."""
    if "$ref" in node:
        return schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    for option in node.get("anyOf", ()):
        if "$ref" in option:
            return schema["$defs"][option["$ref"].rsplit("/", 1)[-1]]
    return node


def _definition(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or the definition its `$ref` names."""
    return schema["$defs"][node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node


def _property(schema: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    """(the properties mapping holding the field `dotted`, its last key)."""
    node = schema
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = _resolve(schema, node["properties"][part])
    if leaf not in node.get("properties", {}):
        raise KeyError(f"{dotted} is not a field of the config schema")
    return node["properties"], leaf


def _keys(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted key, its schema) of every section and field below `node`, depth first."""
    for key, value in node.get("properties", {}).items():
        dotted = f"{prefix}{key}"
        yield dotted, value
        if dotted == "expect":  # sweeping a bound is no experiment: the section as a whole only
            continue
        target = _resolve(schema, value)
        if target.get("properties"):
            yield from _keys(schema, target, f"{dotted}.")
        for option in _definition(schema, value).get("anyOf", ()):  # a component's parameters: model.activation.negative_slope
            if option.get("type") == "object" and "properties" in option:
                for param, param_schema in option["properties"].items():
                    if param != "name":
                        yield f"{dotted}.{param}", param_schema


def _sweep_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`sweep:` maps a dotted config key to the list of its values; each key is listed with the
    schema of its values, so an editor completes the keys and checks the values."""
    properties: dict[str, Any] = {}
    for dotted, value in _keys(schema, schema):
        if dotted.split(".")[0] in NOT_SWEPT:
            continue
        if dotted in properties:  # a parameter several components share (optim.lr): one entry
            properties[dotted] = {"type": "array", "minItems": 1}
            continue
        properties[dotted] = {"type": "array", "minItems": 1, "items": copy.deepcopy(value)}
    properties[SEED_AXIS] = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 0}}
    group = {"type": "object", "minProperties": 2, "properties": {k: v for k, v in properties.items() if k != SEED_AXIS}, "additionalProperties": False}
    properties["zip"] = {
        "anyOf": [group, {"type": "array", "minItems": 1, "items": group}],
        "description": "keys whose values vary together, lists of one length: {a: [...], b: [...]} (or a list of such groups)",
    }  # fmt: skip
    return {
        "type": "object",
        "description": "one run per combination of these values: {dotted.key: [value, ...]}; see gradlab run --sweep",
        "minProperties": 1,
        "properties": properties,
        "additionalProperties": False,
    }


def _claims_schema() -> dict[str, Any]:
    """`claims:` (claims.py): comparisons between a sweep's configurations."""
    from gradlab.config.claims import KEYS

    selector = {"type": "object", "description": "swept keys and their values, as written in sweep:"}
    number = {"type": "number"}
    statuses = {"enum": list(STATUSES)}
    claim = {
        "type": "object",
        "required": ["of"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"}, "quantity": {"enum": list(SUMMARY_QUANTITIES)}, "of": selector, "above": selector,
            "below": selector, "margin": {"type": "number", "minimum": 0}, "min": number, "max": number,
            "status": {"anyOf": [statuses, {"type": "array", "items": statuses, "minItems": 1}]},
            "step": {"anyOf": [{"type": "integer", "minimum": 0}, {"const": "last"}]}, "target_loss": number,
        },
    }  # fmt: skip
    assert set(claim["properties"]) == set(KEYS)
    return {"type": "array", "minItems": 1, "items": claim, "description": "what must hold between the configurations of the sweep (gradlab check SWEEP_DIR)"}


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of an experiment config file (draft 7)."""
    from gradlab.config.experiment import (
        Experiment,  # the model the loader validates with
    )

    schema = Experiment.model_json_schema()
    for dotted, (registry, allowed) in COMPONENT_FIELDS.items():
        # One definition per kind of component, referred to by the field and by sweep: below.
        properties, leaf = _property(schema, dotted)
        old = properties[leaf]
        definition = f"{leaf}_initializer" if dotted.startswith("model.init.") else registry.kind
        schema["$defs"][definition] = component_schema(registry, allowed)
        new = {"$ref": f"#/$defs/{definition}", "description": schema["$defs"][definition]["description"]}
        if old.get("description"):
            new["description"] = f"{old['description']}. {new['description']}"
        if "default" in old:
            new["default"] = old["default"]
        if {"type": "null"} in old.get("anyOf", []):  # an optional component (model.init.head): null allowed
            new = {"anyOf": [{"$ref": new.pop("$ref")}, {"type": "null"}], **new}
        properties[leaf] = new
    for dotted, registry in NAME_FIELDS.items():
        properties, leaf = _property(schema, dotted)
        properties[leaf]["enum"] = [name for c in registry for name in _names(c)]
    statuses = {"enum": list(STATUSES)}
    expectations = _resolve(schema, schema["properties"]["expect"])
    expectations["properties"]["status"] = {
        "anyOf": [statuses, {"type": "array", "items": statuses, "minItems": 1}, {"type": "null"}],
        "description": expectations["properties"]["status"].get("description", ""),
    }
    schema["properties"]["sweep"] = _sweep_schema(schema)
    schema["properties"]["claims"] = _claims_schema()
    schema["properties"]["seeds"] = {
        "anyOf": [
            {"type": "integer", "minimum": 1, "description": "a count n: seeds 0, 1, ..., n - 1 (range(n))"},
            {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 0}, "description": "the seeds themselves"},
        ],
        "description": "run every configuration once per seed (the seed axis of a sweep): a count (3: seeds 0, 1, 2) or a list ([0, 1, 2])",
    }  # fmt: skip
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "gradlab experiment config",
        "description": "A gradlab experiment: gradlab run CONFIG.yaml. Written by gradlab schema; see docs/config.md.",
        **{key: value for key, value in schema.items() if key not in ("title", "description")},
    }


def schema_json() -> str:
    """The schema as JSON text: what `gradlab schema` prints and docs/config.schema.json holds."""
    import json

    return json.dumps(config_json_schema(), indent=2, ensure_ascii=False) + "\n"
