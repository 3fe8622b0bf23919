"""Config fuzzing: malformed configs through `gradlab validate` and `gradlab run`.

The contract under attack (docs/troubleshooting.md, "When things go wrong"): bad input prints one `error: ` line
per problem naming the key, exits with code 2, shows no traceback and writes nothing.

The mutations start from real configs (configs/smoke.yaml, resolved so that every key is present,
and two variants with more component parameters and a CNN) and are applied at dotted paths found
by walking the schema itself, so a key added to the schema is attacked with no change here. What
a mutation must do is decided from the declared type and bounds of the field it hits:

- certainly invalid (a wrong type, NaN or infinity, a number beyond a declared bound, an unknown
  key, a section that is not a mapping): exit 2 and a line that starts with the full dotted key;
- huge numbers that the field's own type and bounds accept: the config is valid and keeps the
  number exactly, or a rule across fields refuses it, naming the key or its section;
- whole-file attacks (empty, binary, YAML syntax errors, a list or a scalar at the top level, a
  folder, a missing path): exit 2 and the one exact `error: config: ...` line;
- impossible sizes through `gradlab run`: refused by the memory estimate before anything is written.

A mutation goes into the YAML file or through `--set`, at random; `run` only ever gets configs
that are invalid or cannot fit, so nothing trains here.
"""

from __future__ import annotations

import math
import tempfile
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gradlab.vocab import specs
from gradlab.config.experiment import Experiment, validate
from gradlab.config.load import read_yaml
from gradlab.vocab.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"

# A warning would be one more line on a user's stderr; pytest would capture it, so it is an error.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning", "error::UserWarning")

FAST = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def resolved(**sections: Any) -> dict[str, Any]:
    """configs/smoke.yaml with some sections replaced, every default filled in (as a run stores it)."""
    data = {**read_yaml(SMOKE), **sections}
    return validate(data).model_dump(mode="json")


BASES = {
    "smoke": resolved(),
    "components": resolved(
        model={"depth": 3, "width": 32, "activation": {"name": "leaky_relu"}, "norm": {"name": "groupnorm", "groups": 4},
               "init": {"weight": {"name": "xavier_normal", "gain": "auto"}, "bias": {"name": "constant", "value": 0.1}}},
        optim={"name": "adam", "grad_clip": 1.0},
    ),  # fmt: skip
    "cnn": resolved(
        data={"name": "images", "classes": 4, "n_train": 64, "n_test": 32, "batch_size": 16},
        model={"kind": "cnn", "depth": 3, "width": 8, "kernel_size": 5, "pool_every": 2, "pool": "avg",
               "norm": {"name": "batchnorm", "placement": "post"}, "activation": {"name": "elu", "alpha": 0.5}},
        optim={"name": "sgd", "momentum": 0.9, "nesterov": True},
    ),  # fmt: skip
}

# --------------------------------------------------------------------------------------------
# The schema, walked: every mapping (a node) and every value (a leaf) of a base config
# --------------------------------------------------------------------------------------------

COMPONENTS: dict[tuple[str, ...], Registry] = {
    ("model", "activation"): specs.activations,
    ("model", "norm"): specs.norms,
    ("model", "init", "weight"): specs.initializers,
    ("model", "init", "bias"): specs.initializers,
    ("model", "init", "recurrent"): specs.initializers,
    ("optim",): specs.optimizers,
}
# Accepted beyond the declared type by a field's own validator.
EXTRA_KINDS = {("expect", "status"): {"str"}}  # a single status stands for a list of one


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]
    kinds: frozenset[str]  # of kind_of(value): none, bool, int, float, str, list; 'literal' for Literal[...]
    literals: tuple = ()
    bounds: tuple[tuple[str, Any], ...] = ()  # (('ge', 1), ('min_length', 1), ...)


@dataclass(frozen=True)
class Node:
    path: tuple[str, ...]
    allowed: frozenset[str]  # its keys
    accepts: frozenset[str]  # of kind_of(value), besides a mapping: 'none' (optional), 'str' (a component name)


def kind_of(value: Any) -> str:
    for kind, types_ in (("none", type(None)), ("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, types_):
            return kind
    raise TypeError(value)


def accepted_kinds(annotation: Any) -> tuple[set[str], tuple]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return accepted_kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        literals: tuple = ()
        for arg in typing.get_args(annotation):
            more, values = accepted_kinds(arg)
            kinds |= more
            literals += values
        return kinds, literals
    if origin is typing.Literal:
        return {"literal"}, typing.get_args(annotation)
    if origin is list:
        return {"list"}, ()
    if origin is dict or annotation is dict:  # an optional component spec (model.init.head, optim's schedule)
        return {"dict", "str"}, ()
    simple = {type(None): {"none"}, bool: {"bool"}, int: {"int"}, float: {"int", "float"}, str: {"str"}}
    return set(simple[annotation]), ()


def submodel(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The pydantic model inside `annotation` (a section), and whether None is allowed too."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return (models[0] if models else None), type(None) in args


def make_leaf(path: tuple[str, ...], field) -> Leaf:
    kinds, literals = accepted_kinds(field.annotation)
    kinds |= EXTRA_KINDS.get(path, set())
    bounds = tuple((name, getattr(m, name)) for m in field.metadata for name in ("ge", "gt", "le", "lt", "min_length") if hasattr(m, name))
    return Leaf(path, frozenset(kinds), literals, bounds)


def walk(model: type[BaseModel], data: dict, path: tuple[str, ...] = (), accepts: frozenset[str] = frozenset()):
    yield Node(path, frozenset(model.model_fields), accepts)
    for name, field in model.model_fields.items():
        sub = path + (name,)
        value = data.get(name)
        if sub in COMPONENTS:
            if not isinstance(value, dict):
                continue  # left out of this resolved config (init.recurrent of a feed-forward run)
            params = COMPONENTS[sub].get(value["name"]).params
            yield Node(sub, frozenset(params.model_fields) | {"name"}, frozenset({"str"}))
            yield Leaf(sub + ("name",), frozenset({"str"}))
            for param, param_field in params.model_fields.items():
                yield make_leaf(sub + (param,), param_field)
            continue
        section, optional = submodel(field.annotation)
        if section is not None:
            if isinstance(value, dict):
                yield from walk(section, value, sub, frozenset({"none"}) if optional else frozenset())
            continue
        yield make_leaf(sub, field)


SCHEMA = {name: list(walk(Experiment, base)) for name, base in BASES.items()}
LEAVES = {name: [item for item in items if isinstance(item, Leaf)] for name, items in SCHEMA.items()}
NODES = {name: [item for item in items if isinstance(item, Node)] for name, items in SCHEMA.items()}


def test_the_walk_reaches_every_level():
    leaves = {".".join(leaf.path) for leaf in LEAVES["components"]}
    assert {"seed", "data.n_train", "model.init.weight.gain", "model.norm.groups", "optim.beta1", "log.probes", "expect.gain.step"} <= leaves
    nodes = {".".join(node.path) for node in NODES["cnn"]}
    assert {"", "data", "model", "model.init", "model.init.weight", "model.activation", "optim", "log", "expect", "expect.gain"} <= nodes


BIGGEST_FLOAT = 1.7976931348623157e308


def certainly_invalid(leaf: Leaf, value: Any) -> bool:
    """Refused by the field's own declared type and bounds, whatever the rest of the config says."""
    kind = kind_of(value)
    if kind == "str":
        ok = "str" in leaf.kinds or ("literal" in leaf.kinds and value in leaf.literals)
    else:
        ok = kind in leaf.kinds
    if not ok:
        return True
    if kind == "float" and not math.isfinite(value):
        return True
    if kind == "int" and "float" in leaf.kinds and abs(value) > BIGGEST_FLOAT:
        return True  # an int where a float goes is converted, and this one does not fit
    if kind in ("int", "float"):
        broken = {"ge": lambda b: value < b, "gt": lambda b: value <= b, "le": lambda b: value > b, "lt": lambda b: value >= b}
        return any(broken[name](bound) for name, bound in leaf.bounds if name in broken)
    if kind == "str":
        return any(name == "min_length" and len(value) < bound for name, bound in leaf.bounds)
    return False


def owner(path: tuple) -> tuple:
    """Where errors are collected as one: a component reports only its first bad parameter, and
    the expect section stops at its first unknown key."""
    if path[0] == "expect":
        return ("expect",)
    for component in COMPONENTS:
        if path[: len(component)] == component:
            return component
    return path


def dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------

IDENTIFIERS = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
HUGE_INTS = st.one_of(st.integers(10**15, 10**400), st.integers(-(10**400), -(10**15)), st.sampled_from([10**30, -(10**30), 2**63, 2**64]))
HUGE_FLOATS = st.sampled_from([1e300, -1e300, 1e308, -1e308, BIGGEST_FLOAT, 3.5e38, 5e-324])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), TEXT, HUGE_INTS, HUGE_FLOATS,
    st.sampled_from([math.nan, math.inf, -math.inf, 2.5, 0, -1, 0.0, "", "1e-3", "none"]),
)  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(IDENTIFIERS, inner, max_size=3), max_leaves=6)


def near_bounds(leaf: Leaf):
    """Numbers on and just beyond each declared bound, of the leaf's own number type."""
    numbers = []
    for name, bound in leaf.bounds:
        if name in ("ge", "gt", "le", "lt"):
            step = 1 if "float" not in leaf.kinds else abs(bound) * 1e-9 + 1e-12
            numbers += [bound - step, bound, bound + step, bound - 10**30, bound + 10**30]
    if "float" not in leaf.kinds:
        numbers = [int(n) for n in numbers]
    else:
        numbers += [float(n) for n in numbers]
    return st.sampled_from(numbers) if numbers else st.nothing()


# --------------------------------------------------------------------------------------------
# Mutations and how they reach gradlab
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    path: tuple  # where the value goes
    value: Any
    unknown_key: bool = False

    @property
    def key(self) -> str:
        return dotted(self.path)


def leaf_values(leaf: Leaf):
    return st.one_of(SCALARS, SCALARS, near_bounds(leaf), VALUES)  # mostly scalars: lists and mappings are one kind each


@st.composite
def invalid_mutations(draw, base: str) -> Mutation:
    what = draw(st.sampled_from(["value", "value", "unknown key", "not a mapping"]))
    if what == "value":
        leaf = draw(st.sampled_from(LEAVES[base]))
        return Mutation(leaf.path, draw(leaf_values(leaf).filter(lambda v: certainly_invalid(leaf, v))))
    node = draw(st.sampled_from(NODES[base]))
    if what == "unknown key":
        key = draw(IDENTIFIERS.filter(lambda k: k not in node.allowed) | st.integers(0, 99))
        return Mutation(node.path + (key,), draw(VALUES), unknown_key=isinstance(key, str))
    if not node.path:  # the whole file: test_whole_file_attacks
        return draw(invalid_mutations(base))
    return Mutation(node.path, draw(st.one_of(SCALARS, VALUES).filter(lambda v: kind_of(v) != "dict" and kind_of(v) not in node.accepts)))


def compatible(mutations: list[Mutation]) -> bool:
    """Each mutation is reported on its own: different owners, and none inside another."""
    for i, a in enumerate(mutations):
        for b in mutations[i + 1 :]:
            if owner(a.path) == owner(b.path) or a.path[: len(b.path)] == b.path or b.path[: len(a.path)] == a.path:
                return False
    return True


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def flow_yaml(value: Any) -> str | None:
    """`value` as the text after `--set key=`, or None when that would not read back the same."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").removesuffix("\n")
    if "\n" in text or not text.strip() or not same(yaml.safe_load(text), value):
        return None
    return text


def set_path(data: dict, path: tuple, value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def prepare(folder: Path, base: str, mutations: list[Mutation], channels: list[str]) -> tuple[Path, list[str]]:
    """The mutated config file and the --set options that carry the other mutations. Its log.out
    is `folder/out` (not `run --out`, which would replace a mutated log section)."""
    data = yaml.safe_load(yaml.safe_dump(BASES[base]))  # a deep copy
    data["log"]["out"] = str(folder / "out")
    sets: list[str] = []
    for mutation, channel in zip(mutations, channels):
        text = flow_yaml(mutation.value) if channel == "set" and all(isinstance(p, str) for p in mutation.path) else None
        if text is None:
            set_path(data, mutation.path, mutation.value)
        else:
            sets += ["--set", f"{mutation.key}={text}"]
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert same(yaml.safe_load(config.read_text(encoding="utf-8")), data)  # the harness wrote what it meant
    return config, sets


def refused(result) -> list[str]:
    """Exit 2 through SystemExit, 'error: ' lines only, nothing on stdout, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    assert len(set(lines)) == len(lines), lines
    return lines


# --------------------------------------------------------------------------------------------
# The attacks
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(FAST, max_examples=250)
@given(data=st.data(), base=st.sampled_from(list(BASES)))
def test_invalid_values_and_unknown_keys_exit_2_naming_every_key(data, base, invoke):
    mutations = data.draw(st.lists(invalid_mutations(base), min_size=1, max_size=3).filter(compatible), label="mutations")
    channels = data.draw(st.lists(st.sampled_from(["file", "set"]), min_size=len(mutations), max_size=len(mutations)), label="channels")
    with tempfile.TemporaryDirectory() as tmp:
        config, sets = prepare(Path(tmp), base, mutations, channels)
        lines = refused(invoke("validate", config, *sets))
        for mutation in mutations:
            named = [line for line in lines if line.startswith(f"error: {mutation.key}: ")]
            assert named, (mutation, lines)
            if mutation.unknown_key:
                assert all(": unknown " in line for line in named), named
        assert refused(invoke("run", config, *sets)) == lines
        assert [p.name for p in Path(tmp).iterdir()] == ["config.yaml"]  # nothing written, log.out included


@pytest.mark.slow
@settings(FAST, max_examples=150)
@given(data=st.data(), base=st.sampled_from(list(BASES)), channel=st.sampled_from(["file", "set"]))
def test_huge_numbers_are_kept_exactly_or_refused_by_name(data, base, channel, invoke):
    leaf = data.draw(st.sampled_from([leaf for leaf in LEAVES[base] if leaf.kinds & {"int", "float"}]), label="leaf")
    value = data.draw(HUGE_INTS | HUGE_FLOATS, label="value")
    with tempfile.TemporaryDirectory() as tmp:
        config, sets = prepare(Path(tmp), base, [Mutation(leaf.path, value)], [channel])
        result = invoke("validate", config, *sets)
    key = dotted(leaf.path)
    if certainly_invalid(leaf, value):
        assert any(line.startswith(f"error: {key}: ") for line in refused(result))
    elif result.exit_code == 0:
        kept = yaml.safe_load(result.stdout)
        for part in leaf.path:
            kept = kept[part]
        # as given (an int where a float goes becomes that float), not clipped or turned into text
        assert kind_of(kept) in ("int", "float") and kept == (float(value) if "float" in leaf.kinds else value)
    else:
        # A rule across fields (batch_size <= n_train, groups divide width, an odd kernel_size)
        # may name the other key of the rule: it lies in the same section.
        section = dotted(owner(leaf.path) if owner(leaf.path) != leaf.path else leaf.path[:-1])
        lines = refused(result)
        assert any(line.startswith(f"error: {key}: ") or (section and line.startswith(f"error: {section}.")) for line in lines), lines


SYNTAX_ERRORS = [
    "{a}: [{b}\n",  # unclosed flow sequence
    "{a}: {{{b}: 1\n",  # unclosed flow mapping
    "{a}:\n\t{b}: 1\n",  # a tab for indentation
    "{a}: 1\n {b}: 2\n",  # a mapping value where none may be
    "{a}: '{b}\n",  # unclosed quote
    "- {a}\n{b}: 1\n",  # a sequence, then a mapping
    "{a}: *{b}\n",  # an undefined alias
    "{a}: !!python/object:os.system {b}\n",  # a tag safe YAML does not construct
    "{a}: 1\n{a}: 2\n{b}: 3\n",  # a key given twice (gradlab refuses it; PyYAML alone keeps the last)
    "{a}: {b}\nseed: " + "9" * 5000 + "\n",  # beyond Python's 4300-digit int conversion
]
TOP_LEVEL_SCALARS = st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)


@st.composite
def whole_file_attacks(draw) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["empty", "binary", "syntax", "list", "scalar", "folder", "missing"]))
    if kind == "empty":
        return kind, draw(st.sampled_from(["", "\n", "   \n", "# nothing here\n", "---\n", "~\n", "null\n"]))
    if kind == "binary":
        raw = draw(st.binary(max_size=64))
        at = draw(st.integers(0, len(raw)))
        return kind, raw[:at] + b"\xff" + raw[at:]  # 0xff never occurs in UTF-8
    if kind == "syntax":
        template = draw(st.sampled_from(SYNTAX_ERRORS))
        return kind, template.format(a=draw(IDENTIFIERS), b=draw(IDENTIFIERS))
    if kind == "list":
        return kind, yaml.safe_dump(draw(st.lists(VALUES, max_size=4)))
    if kind == "scalar":
        return kind, draw(TOP_LEVEL_SCALARS)
    return kind, None


def expected_line(kind: str, path: Path, content: Any) -> str:
    p = repr(str(path))
    if kind in ("list", "scalar"):
        got = "a list" if kind == "list" else {"bool": "a bool", "int": "an int", "float": "a float", "str": "a str"}[kind_of(content)]
        return f"error: config: the top level of {p} must be a mapping of sections (name, data, model, ...), got {got}"
    return {
        "empty": f"error: config: {p} is empty; it needs at least a mapping such as 'name: my-run'",
        "binary": f"error: config: {p} is not a UTF-8 text file",
        "syntax": f"error: config: {p} is not valid YAML",  # then where and what: a prefix
        "folder": f"error: config: {p} is a folder; give a YAML file",
        "missing": f"error: config: {p} does not exist",
    }[kind]


@pytest.mark.slow
@settings(FAST, max_examples=120)
@given(attack=whole_file_attacks())
def test_whole_file_attacks_exit_2_with_one_line_about_the_file(attack, invoke):
    kind, content = attack
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        if kind == "folder":
            path.mkdir()
        elif kind == "scalar":
            path.write_text(yaml.safe_dump(content), encoding="utf-8")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content, encoding="utf-8")
        out = Path(tmp) / "out"
        for args in (["validate", path], ["run", path, "--out", out]):
            [line] = refused(invoke(*args))
            expected = expected_line(kind, path, content)
            assert line.startswith(expected) if kind == "syntax" else line == expected, (line, expected)
        assert not out.exists()


SIZES = {  # keys that size the data or the model, per base
    "smoke": ["model.depth", "model.width", "data.dim", "data.classes", "data.n_train", "data.n_test"],
    "cnn": ["model.width", "model.kernel_size", "data.classes", "data.n_train", "data.n_test"],
}


@settings(FAST, max_examples=30)
@given(data=st.data(), base=st.sampled_from(list(SIZES)), size=st.integers(10**15, 10**60))
def test_impossible_sizes_are_refused_before_anything_is_written(data, base, size, invoke):
    key = data.draw(st.sampled_from(SIZES[base]), label="key")
    sets = ["--set", f"{key}={size | 1}"]  # odd: a CNN kernel must be
    if data.draw(st.booleans(), label="with lrn"):
        sets += ["--set", f"model.norm={{name: lrn, size: {size}}}"]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(BASES[base]), encoding="utf-8")
        out = Path(tmp) / "out"
        [line] = refused(invoke("run", config, *sets, "--out", out))
        if line.startswith("error: data: the dataset alone needs "):  # checked first, before the model is built
            assert line.endswith("reduce data.n_train, data.n_test"), line
        else:
            assert line.startswith("error: model: this experiment needs "), line
            assert line.endswith("data.batch_size, data.classes or data.n_train"), line
        assert not out.exists()
