"""gradlab.config.json_schema: the config's JSON Schema accepts what the loader accepts and rejects what it
rejects (where a schema can say it), checked with the `jsonschema` package on the shipped configs,
on every component and on typos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the dev extra (pip install -e '.[dev]')")

from gradlab.analysis import configdiff
from gradlab.vocab import specs  # noqa: E402
from gradlab.config.experiment import Experiment, validate  # noqa: E402
from gradlab.vocab.errors import ConfigError  # noqa: E402
from gradlab.config.json_schema import COMPONENT_FIELDS, config_json_schema  # noqa: E402
from gradlab.orchestrate.sweep_plan import plan_sweep  # noqa: E402

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    schema = config_json_schema()
    cls = jsonschema.validators.validator_for(schema)
    assert cls is jsonschema.Draft7Validator  # what VS Code's YAML extension reads
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(validator, config) -> list[str]:
    return [error.message for error in validator.iter_errors(config)]


def loader_accepts(config: dict) -> bool:
    try:
        if "sweep" in config or "seeds" in config:
            plan_sweep(config)
        else:
            validate(config)
    except ConfigError:
        return False
    return True


def set_key(config: dict, dotted: str, value) -> dict:
    config = json.loads(json.dumps(config))
    node = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return config


def test_the_schema_is_json(validator):
    text = json.dumps(config_json_schema())
    assert json.loads(text)["$schema"] == "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid(validator, path):
    config = yaml.safe_load(path.read_text())
    assert schema_errors(validator, config) == []


def test_shipped_configs_exist():
    assert len(CONFIGS) >= 5


def test_a_resolved_config_as_a_run_stores_it_is_valid(validator):
    assert schema_errors(validator, Experiment().model_dump(mode="json")) == []
    stored = yaml.safe_load(validate({"model": {"activation": "leaky_relu", "norm": "batchnorm"}, "expect": {"gain": {"min": 0.1}}}).to_yaml())
    assert schema_errors(validator, stored) == []


@pytest.mark.parametrize(
    "dotted, value",
    [
        ("nmae", "x"),  # a typo at the top
        ("model.dept", 3),  # in a section
        ("model.init.wieght", "zeros"),  # two levels down
        ("model.activation", {"name": "leaky_relu", "negative_slop": 0.2}),  # a component's parameter
        ("model.activation", "sigmod"),  # a component's name
        ("model.init.bias", "xavier_normal"),  # an initializer that needs a weight matrix
        ("optim", {"lr": 0.1}),  # a component mapping without its name
        ("data.name", "mnsit"),
        ("loss", "crossentropy"),
        ("model.depth", "30"),  # a quoted number
        ("model.depth", 0),  # out of range
        ("model.kind", "transformer"),
        ("log.probes", ["weights", "gradients"]),
        ("expect", {"gian": {"min": 0.1}}),
        ("expect", {"status": "done"}),
        ("sweep", {"model.activaton": ["relu", "tanh"]}),  # a typo in a swept key
        ("sweep", {"model.activation": ["relu", "sigmod"]}),  # a swept value
        ("sweep", {"name": ["a", "b"]}),  # not sweepable
        ("sweep", {"model.depth": []}),
        ("seeds", [0, "1"]),
        ("seeds", 0),  # a count of seeds is at least 1
        ("seeds", "3"),
    ],
)
def test_what_the_loader_rejects_the_schema_rejects(validator, dotted, value):
    config = set_key({"name": "typo"}, dotted, value)
    assert not loader_accepts(config)
    assert schema_errors(validator, config), f"the schema accepts {dotted}: {value!r}"


SWEEP_BASE = {"name": "ok", "model": {"activation": {"name": "leaky_relu"}}, "optim": {"name": "sgd", "lr": 0.1}}


@pytest.mark.parametrize(
    "base, dotted, value",
    [
        ({}, "model.activation", {"name": "leaky_relu", "negative_slope": 0.2}),
        ({}, "model.norm", {"name": "batchnorm", "placement": "post"}),
        ({}, "model.init.weight", {"name": "xavier_normal", "gain": "auto"}),
        ({}, "optim", {"name": "adam", "lr": 0.001, "grad_clip": None}),
        ({}, "expect", {"status": ["completed", "diverged"], "gain": {"step": 0, "between": [0.01, 100.0]}}),
        ({}, "expect", {"status": "completed"}),
        (SWEEP_BASE, "sweep", {"model.activation": ["relu", {"name": "leaky_relu", "negative_slope": 0.2}], "optim.lr": [0.1, 0.01], "seed": [0, 1]}),
        (SWEEP_BASE, "sweep", {"model.activation.negative_slope": [0.01, 0.2]}),
        ({}, "seeds", [0, 1, 2]),
        ({}, "seeds", 3),  # a count: range(3)
    ],
)
def test_what_the_loader_accepts_the_schema_accepts(validator, base, dotted, value):
    config = set_key({"name": "ok", **base}, dotted, value)
    assert loader_accepts(config)
    assert schema_errors(validator, config) == []


@pytest.mark.parametrize("dotted", list(COMPONENT_FIELDS))
def test_every_component_by_name_and_resolved(validator, dotted):
    registry, allowed = COMPONENT_FIELDS[dotted]
    checked = 0
    for component in registry:
        for spec in (component.name, *component.aliases, registry.resolve(component.name)):
            base = {"name": "c"} if dotted != "model.init.recurrent" else {"name": "c", "data": {"name": "adding"}, "model": {"kind": "rnn"}, "loss": "mse"}
            config = set_key(base, dotted, spec)
            accepted = loader_accepts(config)
            if dotted == "model.norm" and component.name == "groupnorm":
                accepted = loader_accepts(set_key(config, "model.width", 32))  # groups must divide width
            if dotted == "model.init.weight" and component.name == "fixup":  # residual branches of 2+ layers only
                accepted = loader_accepts(set_key(set_key(config, "model.residual", True), "model.branch_depth", 2))
            assert accepted == (allowed is None or allowed(component)), (dotted, spec)
            assert (schema_errors(validator, config) == []) == accepted, (dotted, spec)
            checked += 1
    assert checked >= len(list(registry)) * 2


def test_the_component_fields_are_the_configs(validator):
    # every config field holding a component has a schema listing the names (a new component field
    # would otherwise be a bare mapping that accepts anything)
    assert set(COMPONENT_FIELDS) == set(configdiff.COMPONENT_KEYS)
    bare = []

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and node.get("additionalProperties", False) is not False and "properties" not in node:
                bare.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(config_json_schema(), "#")
    assert bare == []


def test_names_come_from_the_registries():
    schema = config_json_schema()
    data = schema["$defs"]["DataConfig"]["properties"]["name"]
    assert set(specs.datasets.names()) <= set(data["enum"])
    assert set(specs.losses.names()) <= set(schema["properties"]["loss"]["enum"])
    activation = schema["$defs"]["ModelConfig"]["properties"]["activation"]
    assert activation["$ref"] == "#/$defs/activation" and activation["default"] == "relu"
    names = schema["$defs"]["activation"]["anyOf"][0]["enum"]
    assert set(names) == {n for c in specs.activations for n in (c.name, *c.aliases)}
    bias_names = schema["$defs"]["bias_initializer"]["anyOf"][0]["enum"]
    assert set(bias_names) == {n for c in specs.initializers if c.extra.get("bias_ok") for n in (c.name, *c.aliases)}


def test_the_shipped_schema_file_is_current():
    """docs/config.schema.json is what editors point at from a checkout; it must say what the
    loader says today."""
    shipped = Path(__file__).parent.parent / "docs" / "config.schema.json"
    from gradlab.config.json_schema import schema_json

    assert shipped.read_text(encoding="utf-8") == schema_json(), (
        "docs/config.schema.json is stale; regenerate it: gradlab schema -o docs/config.schema.json"
    )
