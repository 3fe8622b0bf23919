"""log.probes presets: `cheap` and `all` expand to the groups they name, `all` to those the model
can measure; a config with a preset records the list; an unknown preset is one line, exit 2."""

from __future__ import annotations

import pytest
import yaml

from gradlab.config.experiment import validate
from gradlab.vocab.quantities import GROUPS


def test_cheap_is_weights_and_deltas():
    assert validate({"log": {"probes": "cheap"}}).log.probes == ["weights", "deltas"]


def test_all_is_every_group_for_an_mlp():
    assert validate({"log": {"probes": "all"}}).log.probes == list(GROUPS)


def test_all_leaves_out_what_the_model_cannot_measure():
    lstm = validate({"model": {"kind": "lstm"}, "data": {"name": "adding", "seq_len": 10}, "loss": "mse", "log": {"probes": "all"}})
    assert lstm.log.probes == [group for group in GROUPS if group != "coordinates"]
    batchnorm = validate({"model": {"norm": "batchnorm"}, "log": {"probes": "all"}})
    assert batchnorm.log.probes == [group for group in GROUPS if group != "noise"]


def test_a_preset_is_recorded_as_its_list():
    written = yaml.safe_load(validate({"log": {"probes": "cheap"}}).to_yaml())
    assert written["log"]["probes"] == ["weights", "deltas"]
    assert validate(written).log.probes == ["weights", "deltas"]


def test_an_unknown_preset_is_one_line_and_exit_2(tmp_path, invoke):
    config = tmp_path / "c.yaml"
    config.write_text("log:\n  probes: fast\n")
    result = invoke("validate", config)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == ["error: log.probes: got 'fast'; allowed: a preset (cheap, all) or a list of " + ", ".join(GROUPS)]


def test_the_json_schema_takes_a_preset_or_a_list():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (the dev extra) checks configs against the schema")
    from gradlab.config.json_schema import config_json_schema

    checker = jsonschema.Draft202012Validator(config_json_schema())
    for probes in ("cheap", "all", ["weights"], list(GROUPS)):
        assert not list(checker.iter_errors({"log": {"probes": probes}})), probes
    for probes in ("fast", ["fast"], 3):
        assert list(checker.iter_errors({"log": {"probes": probes}})), probes
