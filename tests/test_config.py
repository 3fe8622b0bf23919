"""The config contract: defaults, resolution of components, overrides, and one clear line per error."""

from __future__ import annotations

import pytest
import yaml

from gradlab.config.experiment import validate
from gradlab.config.load import apply_overrides, load_config, read_yaml
from gradlab.vocab.errors import ConfigError


def errors_of(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(data)
    return info.value.lines


def test_defaults_are_filled_and_components_resolved():
    exp = validate({"model": {"activation": {"name": "leaky_relu"}, "norm": "bn"}})
    assert exp.model.activation == {"name": "leaky_relu", "negative_slope": 0.01}
    assert exp.model.norm == {"name": "batchnorm", "placement": "pre", "momentum": 0.1, "eps": 1e-5, "affine": True}
    assert exp.optim == {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "grad_clip": None, "momentum": 0.0, "nesterov": False}
    assert exp.log.probes == ["weights", "deltas", "activations", "updates"]


def test_resolved_yaml_round_trips_to_the_same_experiment():
    exp = validate({"model": {"activation": "prelu", "init": {"weight": {"name": "xavier_normal", "gain": "auto"}}}})
    again = validate(yaml.safe_load(exp.to_yaml()))
    assert again == exp


@pytest.mark.parametrize(
    "alias, name",
    [("he_normal", "kaiming_normal"), ("Glorot-Uniform", "xavier_uniform"), ("zero", "zeros")],
)
def test_initializer_aliases(alias, name):
    assert validate({"model": {"init": {"weight": alias}}}).model.init.weight["name"] == name


@pytest.mark.parametrize(
    "data, line",
    [
        ({"model": {"depth": 0}}, "model.depth: got 0; must be >= 1"),
        ({"model": {"width": -3}}, "model.width: got -3; must be >= 1"),
        ({"optim": {"name": "sgd", "lr": -0.1}}, "optim.lr: got -0.1; must be >= 0"),
        ({"data": {"batch_size": 0}}, "data.batch_size: got 0; must be >= 1"),
        ({"model": {"init": {"weight": {"name": "normal", "std": -1}}}}, "model.init.weight.std: got -1; must be >= 0"),
        ({"model": {"depth": "deep"}}, "model.depth: got 'deep'; expected an integer"),
        ({"model": {"depth": 2.5}}, "model.depth: got 2.5; expected an integer"),
        ({"optim": {"name": "adam", "lr": float("inf")}}, "optim.lr: got inf; must be a finite number (not nan or inf)"),
        ({"model": {"kind": "transformer"}}, "model.kind: got 'transformer'; allowed: mlp, cnn, rnn, lstm, gru"),
        ({"model": {"kind": "cnnn"}}, "model.kind: got 'cnnn' (did you mean 'cnn'?); allowed: mlp, cnn, rnn, lstm, gru"),
        (
            {"model": {"widht": 3}},
            "model.widht: unknown key (did you mean 'width'?); allowed here: kind, depth, width, activation, norm, "
            "bias, init, kernel_size, pool_every, pool, residual, branch_depth, residual_scale, readout, forget_bias, dropout, parametrization, base_width",
        ),
        (
            {"modle": {}},
            "modle: unknown key (did you mean 'model'?); allowed here: name, seed, device, threads, data, model, loss, "
            "optim, train, log, expect",
        ),
        (
            {"model": {"activation": "rleu"}},
            "model.activation: unknown activation 'rleu' (did you mean 'relu'?); allowed: sigmoid, tanh, relu, "
            "leaky_relu, prelu, rrelu, elu, selu, gelu, silu, softplus, hardtanh, identity",
        ),
        (
            {"model": {"norm": {"name": "batchnorm", "momentun": 0.1}}},
            "model.norm.momentun: unknown parameter of normalization 'batchnorm' (did you mean 'momentum'?); "
            "allowed: placement, momentum, eps, affine",
        ),
        (
            {"model": {"activation": {"name": "leaky_relu", "negative_slope": "big"}}},
            "model.activation.negative_slope: got 'big'; expected a number",
        ),
        (
            {"model": {"init": {"bias": "xavier_normal"}}},
            "model.init.bias.name: xavier_normal needs a weight matrix; allowed for biases: normal, uniform, constant, zeros, default",
        ),
        ({"loss": "hinge"}, "loss: unknown loss 'hinge'; allowed: cross_entropy, bce, mse"),
        ({"data": {"name": "mnist"}}, "data.path: data.name mnist needs data.path"),
        ({"data": {"name": "npz", "path": "/no/such/file.npz"}}, "data.path: '/no/such/file.npz' does not exist"),
        ({"data": {"batch_size": 512, "n_train": 100}}, "data.batch_size: batch_size 512 is larger than n_train 100"),
        ({"model": {"kind": "cnn"}}, "data.name: model.kind cnn needs image data (images, mnist, npz), got gaussian"),
        ({"model": {"width": 30, "norm": {"name": "groupnorm", "groups": 4}}}, "model.norm.groups: groups=4 does not divide width=30"),
        ({"device": "tpu"}, "device: got 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
        ({"name": "a/b"}, "name: got 'a/b'; use letters, digits, '.', '_' and '-' (a folder name)"),
        ({"log": {"probes": ["weight"]}}, "log.probes.0: got 'weight' (did you mean 'weights'?); allowed: weights, deltas, activations, updates, noise, coordinates, spectrum"),
        ({"optim": {"name": "sgd", "nesterov": True}}, "optim: got {'nesterov': True}; nesterov needs momentum > 0"),
        ({"data": 3}, "data: got 3; expected a mapping"),
    ],
)
def test_one_clear_line_per_error(data, line):
    assert errors_of(data) == [line]


def test_several_errors_are_all_reported():
    assert errors_of({"model": {"depth": 0, "width": 0}, "seed": "x"}) == [
        "seed: got 'x'; expected an integer",
        "model.depth: got 0; must be >= 1",
        "model.width: got 0; must be >= 1",
    ]


def test_overrides_parse_values_as_yaml():
    data = apply_overrides(
        {"model": {"activation": "relu"}},
        ["model.depth=30", "model.norm={name: batchnorm, placement: post}", "log.probes=[weights]", "model.activation.negative_slope=0.2"],
    )
    assert data["model"]["depth"] == 30
    assert data["model"]["norm"] == {"name": "batchnorm", "placement": "post"}
    assert data["log"]["probes"] == ["weights"]
    assert data["model"]["activation"] == {"name": "relu", "negative_slope": 0.2}  # then rejected by validation


@pytest.mark.parametrize(
    "item, line",
    [
        ("model.depth", "--set 'model.depth': expected key.path=value, e.g. model.depth=30"),
        ("=3", "--set '=3': expected key.path=value, e.g. model.depth=30"),
        ("model..depth=3", "--set 'model..depth=3': expected key.path=value, e.g. model.depth=30"),
        ("seed.x=1", "--set seed.x: seed is 0, not a mapping"),
        ("model.norm={a: [", "--set model.norm: '{a: [' is not a valid YAML value"),
    ],
)
def test_bad_overrides(item, line):
    with pytest.raises(ConfigError) as info:
        apply_overrides({"seed": 0}, [item])
    assert info.value.lines == [line]


@pytest.mark.parametrize(
    "content, line",
    [
        ("", "is empty; it needs at least a mapping such as 'name: my-run'"),
        ("# only a comment\n", "is empty; it needs at least a mapping such as 'name: my-run'"),
        ("- a\n- b\n", "the top level of {path} must be a mapping of sections (name, data, model, ...), got a list"),
        ("name: [unclosed\n", "is not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'"),
        ("model:\n  depth: 3\n depth: 4\n", "is not valid YAML at line 3, column 2: expected <block end>, but found '<block mapping start>'"),
    ],
)
def test_bad_files(tmp_path, content, line):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    [message] = info.value.lines
    expected = line.format(path=repr(str(path)))
    assert message.endswith(expected) and message.startswith("config: ")


def test_binary_garbage_missing_file_and_folder(tmp_path):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)))
    cases = {garbage: "is not a UTF-8 text file", tmp_path / "missing.yaml": "does not exist", tmp_path: "is a folder; give a YAML file"}
    for path, ending in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.lines == [f"config: {str(path)!r} {ending}"]
