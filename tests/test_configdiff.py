"""gradlab.analysis.configdiff: flattening configs, which keys differ, how values are shown, labels and seed groups."""

from __future__ import annotations

import subprocess
import sys

from gradlab.analysis import configdiff
from run_factory import resolved_config


def test_bookkeeping_keys_do_not_differ():
    a = resolved_config("a", seed=0, out="x")
    b = resolved_config("b", seed=1, out="y", device="cpu", train__eval_every=7, log__every=3)
    assert configdiff.differing_keys([a, b]) == []
    c = resolved_config("c", model__width=16)
    assert configdiff.differing_keys([a, c]) == ["model.width"]


def test_components_show_their_name_and_the_parameters_that_differ():
    relu = resolved_config(model__activation="relu")
    leaky = resolved_config(model__activation={"name": "leaky_relu", "negative_slope": 0.2})
    leakier = resolved_config(model__activation={"name": "leaky_relu", "negative_slope": 0.01})
    runs = [relu, leaky, leakier]
    assert configdiff.differing_keys(runs) == ["model.activation"]
    flat = [configdiff.flatten_config(c)["model.activation"] for c in runs]
    assert configdiff.display_values("model.activation", flat) == ["relu", "leaky_relu(negative_slope=0.2)", "leaky_relu(negative_slope=0.01)"]

    # one component, several parameter sets: only what differs
    he = resolved_config(model__init={"weight": "kaiming_normal"})
    he_out = resolved_config(model__init={"weight": {"name": "kaiming_normal", "mode": "fan_out"}})
    lecun = resolved_config(model__init={"weight": "lecun_normal"})
    weights = [configdiff.flatten_config(c)["model.init.weight"] for c in (he, he_out, lecun)]
    assert configdiff.display_values("model.init.weight", weights) == ["kaiming_normal(mode=fan_in)", "kaiming_normal(mode=fan_out)", "lecun_normal"]
    # a component used with one parameter set shows all of them
    assert configdiff.display_values("model.init.weight", [weights[0], weights[2]]) == [
        "kaiming_normal(a=0, mode=fan_in, nonlinearity=relu)",
        "lecun_normal",
    ]
    norms = [{"name": "batchnorm", "placement": "pre", "momentum": 0.1}, {"name": "batchnorm", "placement": "post", "momentum": 0.1}, {"name": "none"}]
    assert configdiff.display_values("model.norm", norms) == ["batchnorm(placement=pre)", "batchnorm(placement=post)", "none"]


def test_component_keys_are_the_component_fields_of_the_config():
    config = resolved_config()
    flat = configdiff.flatten_config(config)
    keys = [key for key in configdiff.COMPONENT_KEYS if key != "model.init.recurrent"]  # recurrent kinds only
    for key in keys:
        if key == "model.init.head" and key not in flat:
            continue  # optional: written only when set
        assert isinstance(flat[key], dict) and "name" in flat[key], key

    def mappings_with_name(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                if "name" in value:
                    yield f"{prefix}{key}"
                yield from mappings_with_name(value, f"{prefix}{key}.")

    # Every {name: ...} mapping of the resolved config is a component, except the data section.
    assert set(mappings_with_name(config)) - {"data"} == set(keys) - {"model.init.head"}  # optional


def test_one_flattening_with_a_rule_for_what_stays_whole():
    config = {"name": "x", "model": {"depth": 3, "activation": "relu", "init": {"weight": {"name": "normal", "std": 1.0}, "bias": "zeros"}},
              "data": {"name": "gaussian", "dim": 4}, "log": {}}  # fmt: skip
    assert configdiff.flatten(config) == {
        "name": "x", "model.depth": 3, "model.activation": "relu", "model.init.weight.name": "normal",
        "model.init.weight.std": 1.0, "model.init.bias": "zeros", "data.name": "gaussian", "data.dim": 4, "log": {},
    }  # fmt: skip
    # a run's config: components are one value each, a bare name becomes {name: ...}
    assert configdiff.flatten_config(config) == {
        "name": "x", "model.depth": 3, "model.activation": {"name": "relu"},
        "model.init.weight": {"name": "normal", "std": 1.0}, "model.init.bias": {"name": "zeros"},
        "data.name": "gaussian", "data.dim": 4, "log": {},
    }  # fmt: skip
    # any other rule: every mapping with a name stays whole (what a sweep names its members by)
    whole = configdiff.flatten(config, whole=lambda key, value: "name" in value)
    assert whole["data"] == {"name": "gaussian", "dim": 4} and whole["model.init.weight"] == {"name": "normal", "std": 1.0}


def test_canonical_values_ignore_key_order_and_tell_missing_from_null():
    assert configdiff.canonical({"a": 1, "b": [1, 2]}) == configdiff.canonical({"b": [1, 2], "a": 1})
    assert configdiff.canonical(1) != configdiff.canonical("1")
    assert configdiff.canonical(configdiff.MISSING) != configdiff.canonical(None)
    a, b = {"model": {"depth": 3}}, {"model": {"depth": 3, "extra": None}}
    assert configdiff.differing_keys([a, b]) == ["model.extra"]
    assert configdiff.config_columns([a, b]) == {"model.extra": ["-", "null"]}


def test_a_component_of_one_name_is_named_by_the_parameter_that_differs():
    # issue 24: sweeping optim.lr gave a column `optim` holding sgd(lr=0.3)
    fast, slow = (resolved_config(optim={"name": "sgd", "lr": lr}) for lr in (0.3, 0.1))
    assert configdiff.config_columns([fast, slow]) == {"optim.lr": ["0.3", "0.1"]}
    assert configdiff.differing_keys([fast, slow]) == ["optim.lr"]
    assert configdiff.labels([fast, slow]) == ["optim.lr=0.3", "optim.lr=0.1"]
    # two parameters: a column each; different components: one column, name(parameters)
    both = resolved_config(optim={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    assert configdiff.config_columns([fast, both]) == {"optim.lr": ["0.3", "0.1"], "optim.momentum": ["0", "0.9"]}
    adam = resolved_config(optim={"name": "adam", "lr": 0.1})
    assert list(configdiff.config_columns([slow, adam])) == ["optim"]
    assert configdiff.config_columns([slow, adam])["optim"][1].startswith("adam(")


def test_labels_and_seed_groups():
    sig = [resolved_config("sig", seed=s, model__activation="sigmoid") for s in (0, 1)]
    relu = resolved_config("relu", seed=0)
    configs = [sig[0], relu, sig[1]]
    assert configdiff.group_by_config(configs) == [[0, 2], [1]]
    assert configdiff.labels(configs) == ["model.activation=sigmoid", "model.activation=relu", "model.activation=sigmoid"]
    # nothing differs: the description of the model
    assert configdiff.labels([relu]) == [configdiff.describe_config(relu)]
    assert configdiff.describe_config(relu).startswith("relu: mlp depth 3 x 8, activation relu")


def test_config_differences_import_neither_pandas_nor_torch():
    code = "import sys, gradlab.analysis.configdiff; print('pandas' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False False"


def test_row_labels_come_from_config_values_not_folder_names():
    # issue 11: `--sweep data.path=data/set-a.csv,data/run-a.csv` labelled both rows `...#a.csv`
    # (folder names split on their last '-'); values with brackets gave `#1.0))`.
    a = {"name": "sweep", "data": {"path": "data/set-a.csv"}}
    b = {"name": "sweep", "data": {"path": "data/run-a.csv"}}
    assert configdiff.row_labels(["sweep", "sweep"], [a, b]) == ["sweep#path=data/set-a.csv", "sweep#path=data/run-a.csv"]
    c = {"name": "s", "model": {"norm": {"name": "batchnorm", "momentum": 0.1}}}
    d = {"name": "s", "model": {"norm": {"name": "batchnorm", "momentum": 0.5}}}
    assert configdiff.row_labels(["s", "s"], [c, d]) == ["s#momentum=0.1", "s#momentum=0.5"]  # model.norm.momentum
    # distinct names stay as they are; rows of one name and one config are numbered
    assert configdiff.row_labels(["x", "y"], [a, b]) == ["x", "y"]
    assert configdiff.row_labels(["x", "x"], [a, a]) == ["x#1", "x#2"]


def test_numbers_sort_numerically_strings_keep_first_seen_order():
    # issue 11: widths came out 1, 1024, 128, 16 (the text order of folder names)
    configs = [{"model": {"width": w, "activation": act}} for act in ("tanh", "relu") for w in (1, 1024, 128, 16)]
    order = [(configs[g[0]]["model"]["width"], configs[g[0]]["model"]["activation"]) for g in configdiff.group_by_config(configs)]
    assert order == [(1, "tanh"), (1, "relu"), (16, "tanh"), (16, "relu"), (128, "tanh"), (128, "relu"), (1024, "tanh"), (1024, "relu")]
    # the legend of plots follows the same order
    labels = configdiff.labels([configs[g[0]] for g in configdiff.group_by_config(configs)])
    assert labels[:3] == ["model.width=1, model.activation=tanh", "model.width=1, model.activation=relu", "model.width=16, model.activation=tanh"]
