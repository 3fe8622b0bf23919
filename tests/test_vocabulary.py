"""The vocabulary floor (errors, registry, specs, quantities, config) imports neither torch nor
pandas, and it agrees with the modules that implement it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

from gradlab.config import experiment as config
from gradlab.vocab import quantities
from gradlab.vocab import specs
from gradlab.config.expect import Expectations
from gradlab.config.experiment import LogConfig, component_keys, validate

ROOT = Path(__file__).resolve().parents[1]


def modules_loaded_by(code: str) -> dict[str, bool]:
    """Run `code` in a fresh interpreter; which heavy modules it left in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in ('torch', 'pandas', 'matplotlib')}}))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_loading_and_validating_a_config_loads_neither_torch_nor_pandas():
    loaded = modules_loaded_by(
        "import gradlab.config.experiment as c, gradlab.config.expect as e, gradlab.config.load as l\n"
        "for path in ['configs/smoke.yaml', 'configs/example.yaml']:  # (the shipped configs without a sweep)\n"
        "    exp = l.load_config(path, ['model.activation={name: leaky_relu}', 'expect={gain: {min: 0.01}}'])\n"
        "    exp.to_yaml()\n"
        "e.parse_expectations({'status': 'completed', 'dead_frac': {'max': 0.5}})\n"
        "try:\n"
        "    l.load_config('configs/smoke.yaml', ['model.activation=relo'])\n"
        "except l.ConfigError as exc:\n"
        "    assert 'did you mean' in str(exc)\n"
        "c.component_keys()"
    )
    assert loaded == {"torch": False, "pandas": False, "matplotlib": False}


def test_every_component_with_its_parameters_is_listable_without_torch():
    loaded = modules_loaded_by(
        "from gradlab.vocab.specs import REGISTRIES\n"
        "from gradlab.vocab.registry import param_table\n"
        "rows = [(c.name, c.doc, c.aliases, param_table(c.params)) for r in REGISTRIES.values() for c in r]\n"
        "assert len(rows) > 40"
    )
    assert loaded["torch"] is False and loaded["pandas"] is False


def test_activation_records_and_initializer_variances_need_no_torch():
    # what the torch-free theory module reads: numpy forms, gains, moments, initializer variances
    loaded = modules_loaded_by(
        "from gradlab.theory import activations, initializers\n"
        "activations.gaussian_moments('tanh', 1.0); activations.gain('elu'); activations.max_derivative('silu')\n"
        "activations.forward('gelu', [0.5]); activations.derivative('gelu', [0.5])\n"
        "initializers.variance({'name': 'xavier_normal', 'gain': 'auto'}, 64, 64, 'elu'); initializers.mean('default')"
    )
    assert loaded["torch"] is False and loaded["pandas"] is False


def test_component_keys_are_the_mappings_with_a_name_in_a_resolved_config():
    resolved = validate({}).model_dump(mode="json")

    def with_name(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from ([prefix + key] if "name" in value else with_name(value, f"{prefix}{key}."))

    # model.init.head is optional: absent from a resolved config unless set; init.recurrent is written for the recurrent kinds only
    assert set(component_keys()) - {"model.init.head", "model.init.recurrent"} == set(with_name(resolved)) - {"data"}  # data.name is a dataset, not a component spec
    assert component_keys() == ("model.activation", "model.norm", "model.init.weight", "model.init.bias", "model.init.recurrent", "model.init.head", "optim")


def test_probe_choices_and_expect_keys_come_from_the_quantities():
    (choice,) = get_args(LogConfig.model_fields["probes"].annotation)
    assert get_args(choice) == quantities.GROUPS
    assert config.PROBES == quantities.GROUPS
    assert list(Expectations.model_fields) == ["status", "coordcheck", *quantities.SUMMARY_QUANTITIES]  # coordcheck: gradlab coordcheck's verdicts


def test_every_name_of_the_vocabulary_is_implemented():
    from gradlab.theory import activations
    from gradlab.build import components
    from gradlab.theory import initializers

    assert set(activations.ACTIVATIONS) == set(specs.activations.names())
    assert set(components.INITIALIZERS) == set(initializers._VARIANCES) == set(specs.initializers.names())
    assert set(components.NORMS) == set(specs.norms.names())
    assert set(components.LOSSES) == set(specs.losses.names())
    assert set(components.OPTIMIZERS) == set(specs.optimizers.names())
