"""The experiment config: schema, YAML loading, `--set` overrides, and readable errors.

The schema is the user's contract (its names are documented in README.md). Every section forbids unknown keys and
is strict about types, so a typo or a quoted number is an error that names the key instead of a
silently ignored setting. Components (activation, norm, init, optim) are validated by their
registries and come out fully resolved: `{name: leaky_relu, negative_slope: 0.01}`, never `relu`
with hidden defaults. `Experiment.to_yaml()` is what a run directory stores as `config.yaml`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from gradlab import components
from gradlab.errors import ConfigError
from gradlab.expectations import Expectations
from gradlab.registry import Registry, SpecError, describe_value, did_you_mean, pydantic_message, with_article


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True)


def _component(registry: Registry, resolve=None):
    """A field type holding a component spec, resolved through `registry` to a full mapping."""
    resolve = resolve or registry.resolve

    def validate(value: Any) -> dict[str, Any]:
        try:
            return resolve(value)
        except SpecError as exc:
            raise PydanticCustomError("component", "{message}", {"message": exc.message, "subpath": exc.subpath}) from None

    return Annotated[dict[str, Any], BeforeValidator(validate)]


ActivationSpec = _component(components.activations)
NormSpec = _component(components.norms)
WeightInitSpec = _component(components.initializers)
BiasInitSpec = _component(components.initializers, components.resolve_bias_init)
OptimSpec = _component(components.optimizers)


def _name_in(registry: Registry, value: str) -> str:
    try:
        return registry.get(value).name
    except SpecError as exc:
        raise PydanticCustomError("component", "{message}", {"message": exc.message, "subpath": ""}) from None


PROBES = ("weights", "deltas", "activations", "updates")
FILE_DATASETS = ("mnist", "npz", "csv")
IMAGE_DATASETS = ("images", "mnist", "npz")


class DataConfig(Section):
    name: str = "gaussian"
    dim: int = Field(64, ge=1, description="input dimension of the synthetic vector datasets")
    classes: int = Field(10, ge=2)
    n_train: int = Field(4096, ge=1, description="training examples (the first n of a file dataset)")
    n_test: int = Field(1024, ge=1, description="test examples (the first n of a file dataset)")
    path: str | None = Field(None, description="mnist: folder of IDX files; npz/csv: the file")
    batch_size: int = Field(128, ge=1)
    noise: float = Field(1.0, ge=0, description="spread of the synthetic datasets")
    target: str = Field("label", description="csv: the column holding the labels")

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        return _name_in(components.datasets, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.name in FILE_DATASETS:
            if self.path is None:
                raise PydanticCustomError("data", "{message}", {"message": f"data.name {self.name} needs data.path", "key": "path"})
            path = Path(self.path).expanduser()
            want_dir = self.name == "mnist"
            if not path.exists():
                raise PydanticCustomError("data", "{message}", {"message": f"{self.path!r} does not exist", "key": "path"})
            if want_dir and not path.is_dir():
                raise PydanticCustomError("data", "{message}", {"message": f"{self.path!r} is not a folder (mnist needs the folder holding the IDX files)", "key": "path"})
            if not want_dir and not path.is_file():
                raise PydanticCustomError("data", "{message}", {"message": f"{self.path!r} is not a file", "key": "path"})
        if self.batch_size > self.n_train:
            raise PydanticCustomError(
                "data", "{message}", {"message": f"batch_size {self.batch_size} is larger than n_train {self.n_train}", "key": "batch_size"}
            )
        return self


class InitConfig(Section):
    weight: WeightInitSpec = Field("default", description="initializer of every linear/conv weight, head included")
    bias: BiasInitSpec = Field("default", description="initializer of every linear/conv bias")


class ModelConfig(Section):
    kind: Literal["mlp", "cnn"] = "mlp"
    depth: int = Field(20, ge=1, description="hidden layers (mlp) or conv layers (cnn)")
    width: int = Field(256, ge=1, description="units (mlp) or channels (cnn)")
    activation: ActivationSpec = "relu"
    norm: NormSpec = "none"
    bias: bool = True
    init: InitConfig = InitConfig()
    kernel_size: int = Field(3, ge=1, description="cnn: odd kernel size, 'same' padding")
    pool_every: int = Field(0, ge=0, description="cnn: 2x2 pooling after every k-th block (0: none)")
    pool: Literal["max", "avg"] = "max"

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "cnn" and self.kernel_size % 2 == 0:
            raise PydanticCustomError("model", "{message}", {"message": f"kernel_size must be odd for 'same' padding, got {self.kernel_size}", "key": "kernel_size"})
        if self.kind == "mlp" and self.pool_every:
            raise PydanticCustomError("model", "{message}", {"message": "pooling applies to kind cnn only", "key": "pool_every"})
        if self.norm["name"] == "groupnorm" and self.width % self.norm["groups"]:
            raise PydanticCustomError(
                "model", "{message}", {"message": f"groups={self.norm['groups']} does not divide width={self.width}", "key": "norm.groups"}
            )
        return self


class TrainConfig(Section):
    steps: int = Field(500, ge=0, description="optimizer steps")
    eval_every: int = Field(100, ge=1, description="test-set evaluation every k steps (and at the end)")


class LogConfig(Section):
    every: int = Field(10, ge=1, description="probe every k steps (and at step 0 and the last step)")
    probes: list[Literal["weights", "deltas", "activations", "updates"]] = Field(list(PROBES))
    out: str = Field("results", min_length=1, description="folder that run directories are created in")


class Experiment(Section):
    name: str = Field("experiment", description="run folder name under log.out")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: str = "cross_entropy"
    optim: OptimSpec = "sgd"
    train: TrainConfig = TrainConfig()
    log: LogConfig = LogConfig()
    expect: Expectations | None = Field(None, description="what must hold when the run ends (checked by gradlab run and gradlab check)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", value):
            raise PydanticCustomError("name", "{message}", {"message": f"got {value!r}; use letters, digits, '.', '_' and '-' (a folder name)"})
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|mps", value):
            raise PydanticCustomError("device", "{message}", {"message": f"got {value!r}; allowed: auto, cpu, cuda, cuda:N, mps"})
        return value

    @field_validator("loss", mode="before")
    @classmethod
    def _loss(cls, value: Any) -> Any:
        return _name_in(components.losses, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _data_fits_model(self):
        if self.model.kind == "cnn" and self.data.name not in IMAGE_DATASETS:
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": f"model.kind cnn needs image data ({', '.join(IMAGE_DATASETS)}), got {self.data.name}", "key": "data.name"},
            )
        if self.model.kind == "mlp" and self.model.norm["name"] == "batchnorm" and self.data.batch_size < 2:
            # (a CNN's BatchNorm averages over positions too: memory.check_shapes, once the image size is known)
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": "batchnorm needs at least 2 examples per batch (the statistics of one example are undefined)", "key": "data.batch_size"},
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


# --------------------------------------------------------------------------------------------
# Loading, overrides, errors
# --------------------------------------------------------------------------------------------


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
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first given at line {first.line + 1})", key_node.start_mark,
                    )
        return super().construct_mapping(node, deep)


def _load_yaml(text: str) -> Any:
    """The YAML document in `text`; yaml.YAMLError for anything that stops it being read."""
    try:
        return yaml.load(text, Loader=_Loader)
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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config: {str(path)!r} is not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"config: cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        data = _load_yaml(text)
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
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. model.depth=30")
        try:
            value = _load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {describe_value(raw)} is not a valid YAML value") from None
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


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names of the section at `loc` (for 'unknown key' errors)."""
    model: type[BaseModel] = Experiment
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def _format_error(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    ctx = error.get("ctx") or {}
    key = ".".join(str(part) for part in loc)
    extra_key = ctx.get("key") or ctx.get("subpath")
    if extra_key:
        key = f"{key}.{extra_key}" if key else extra_key
    key = key or "config"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"{key}: unknown key{did_you_mean(str(loc[-1]), allowed)}; allowed here: {', '.join(allowed)}"
    if kind in ("component", "data", "model", "experiment", "name", "device"):
        return f"{key}: {ctx['message']}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = did_you_mean(str(error["input"]), expected) if isinstance(error["input"], str) else ""
        return f"{key}: got {describe_value(error['input'])}{hint}; allowed: {', '.join(expected)}"
    return f"{key}: got {describe_value(error['input'])}; {pydantic_message(error)}"


def validate(data: dict[str, Any]) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = _format_error(error)
            if line not in lines:
                lines.append(line)
        raise ConfigError(*lines) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    return validate(apply_overrides(read_yaml(path), overrides or []))
