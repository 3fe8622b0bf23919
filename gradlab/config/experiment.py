"""The experiment config's schema, and validating a mapping against it.

The schema is the user's contract (docs/config.md). Every section forbids unknown keys and is
strict about types, so a typo or a quoted number is an error that names the key instead of a
silently ignored setting. Components (activation, norm, init, optim) are validated by their
registries and come out fully resolved: `{name: leaky_relu, negative_slope: 0.01}`, never `relu`
with hidden defaults. `Experiment.to_yaml()` is what a run directory stores as `config.yaml`.

The `expect:` section's schema is config/expect.py; reading a config file and `--set` overrides
are config/load.py. This module imports neither torch nor pandas (a test checks it): the component
names come from specs.py, the quantity names from quantities.py.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)  # fmt: skip
from pydantic_core import PydanticCustomError

from gradlab.config.expect import Expectations
from gradlab.config.messages import format_error
from gradlab.vocab import specs
from gradlab.vocab.datasets import (
    FILE_DATASETS,
    IMAGE_DATASETS,
    MIN_SEQ_LEN,
    MNIST_SEQ_LENS,
    SEQUENCE_CLASSES,
    SEQUENCE_DATASETS,
    SEQUENCE_LOSSES,
    SEQUENCE_READOUT,
)
from gradlab.vocab.errors import ConfigError
from gradlab.vocab.parametrizations import BASE_WIDTH, PARAMETRIZATIONS, WIDTH_SCALED_KINDS, optimizers_defined
from gradlab.vocab.quantities import (
    DEFAULT_GROUPS, GROUPS, NOISE_SUMMARIES, PROBE_PRESETS, RECURRENT_KINDS, SATURATION_THRESHOLD, SUMMARY_QUANTITIES, TIME_QUANTITIES,
)  # fmt: skip
from gradlab.vocab.registry import Registry, SpecError, describe_value


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True)


@dataclass(frozen=True)
class ComponentField:
    """Marks a field that holds a component spec (see `component_keys`)."""

    registry: Registry


def _component(registry: Registry, resolve=None):
    """A field type holding a component spec, resolved through `registry` to a full mapping."""
    resolve = resolve or registry.resolve

    def validate(value: Any) -> dict[str, Any]:
        try:
            return resolve(value)
        except SpecError as exc:
            raise PydanticCustomError("component", "{message}", {"message": exc.message, "subpath": exc.subpath}) from None

    return Annotated[dict[str, Any], BeforeValidator(validate), ComponentField(registry)]


ActivationSpec = _component(specs.activations)
NormSpec = _component(specs.norms)
WeightInitSpec = _component(specs.initializers)
BiasInitSpec = _component(specs.initializers, specs.resolve_bias_init)
OptimSpec = _component(specs.optimizers, specs.resolve_optim)


def _name_in(registry: Registry, value: str) -> str:
    try:
        return registry.get(value).name
    except SpecError as exc:
        raise PydanticCustomError("component", "{message}", {"message": exc.message, "subpath": ""}) from None


PROBES = GROUPS  # the `log.probes` choices: the probe groups of quantities.py (DEFAULT_GROUPS unless listed)


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
    seq_len: Optional[int] = Field(None, ge=1, description="sequence datasets: time steps T (default adding 50, copy 30, sequential_mnist 28; sequential_mnist takes 28 or 784)")
    permute: bool = Field(False, description="sequential_mnist: read the pixels in a fixed order drawn from the seed (permuted MNIST)")

    @field_validator("name", mode="before")
    @classmethod
    def _known(cls, value: Any) -> Any:
        return _name_in(specs.datasets, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.name in FILE_DATASETS:
            if self.path is None:
                raise PydanticCustomError("data", "{message}", {"message": f"data.name {self.name} needs data.path", "key": "path"})
            path = Path(self.path).expanduser()
            want_dir = self.name in ("mnist", "sequential_mnist")  # the folder of the IDX files
            if not path.exists():
                # a relative path is read from the working directory (not the config file's folder): say which that was
                where = "" if path.is_absolute() else f" (relative to the working directory {describe_value(str(Path.cwd()), 200)})"
                raise PydanticCustomError("data", "{message}", {"message": f"{describe_value(self.path, 200)} does not exist{where}", "key": "path"})
            if want_dir and not path.is_dir():
                raise PydanticCustomError("data", "{message}", {"message": f"{describe_value(self.path, 200)} is not a folder (mnist needs the folder holding the IDX files)", "key": "path"})
            if not want_dir and not path.is_file():
                raise PydanticCustomError("data", "{message}", {"message": f"{describe_value(self.path, 200)} is not a file", "key": "path"})
        if self.batch_size > self.n_train:
            raise PydanticCustomError(
                "data", "{message}", {"message": f"batch_size {self.batch_size} is larger than n_train {self.n_train}", "key": "batch_size"}
            )
        self._sequence_keys()
        return self

    @model_serializer(mode="wrap")
    def _sequence_keys_only_for_sequences(self, handler):
        # seq_len and permute are written to config.yaml for the sequence datasets only
        data = handler(self)
        if self.name not in SEQUENCE_DATASETS:
            data.pop("seq_len", None)
            data.pop("permute", None)
        if self.name in SEQUENCE_CLASSES:  # adding and copy fix their outputs: no classes to write
            data.pop("classes", None)
        return data

    def _sequence_keys(self) -> None:
        def error(message: str, key: str) -> PydanticCustomError:
            return PydanticCustomError("data", "{message}", {"message": message, "key": key})

        if self.name not in SEQUENCE_DATASETS:
            for key in ("seq_len", "permute"):
                if key in self.model_fields_set and getattr(self, key) not in (None, False):
                    raise error(f"applies to the sequence datasets ({', '.join(SEQUENCE_DATASETS)}) only, not {self.name}", key)
            return
        if self.permute and self.name != "sequential_mnist":
            raise error(f"applies to sequential_mnist only, not {self.name}", "permute")
        if self.seq_len is not None:
            if self.name == "sequential_mnist" and self.seq_len not in MNIST_SEQ_LENS:
                raise error(f"sequential_mnist reads rows (28) or pixels (784), got {self.seq_len}", "seq_len")
            if self.seq_len < MIN_SEQ_LEN.get(self.name, 1):
                raise error(f"{self.name} needs at least {MIN_SEQ_LEN[self.name]} steps, got {self.seq_len}", "seq_len")
        fixed = SEQUENCE_CLASSES.get(self.name, 10)
        if "classes" in self.model_fields_set and self.classes != fixed:
            raise error(f"{self.name} has {fixed} output{'s' if fixed > 1 else ''} fixed by the task, got {self.classes}; leave data.classes out", "classes")


class InitConfig(Section):
    weight: WeightInitSpec = Field("default", description="initializer of every linear/conv weight, head included unless head is set")
    bias: BiasInitSpec = Field("default", description="initializer of every linear/conv bias (recurrent kinds: both bias vectors)")
    recurrent: WeightInitSpec = Field("default", description="recurrent kinds: initializer of the hidden-to-hidden weights, applied to each gate's block (orthogonal, identity, ...)")
    head: Optional[WeightInitSpec] = Field(
        None, description="initializer of the head's weight (null: weight's); a constant weight makes the head symmetric and its gradients equal"
    )

    @model_serializer(mode="wrap")
    def _head_only_when_set(self, handler):
        data = handler(self)  # written only when set: every other run's config.yaml is unchanged
        if self.head is None:
            data.pop("head", None)
        return data


RECURRENT_ONLY = ("readout", "forget_bias")  # model keys (besides init.recurrent) of the recurrent kinds
CHRONO = "chrono"
# The kinds whose memory gate chrono initialization sets: lstm's forget gate, gru's update gate.
CHRONO_KINDS = ("lstm", "gru")


def _finite(number: int | float) -> bool:
    """Whether a number is a finite float (an int beyond float's range is not)."""
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False


def _forget_bias(value: Any) -> float | dict[str, Any] | None:
    """model.forget_bias: a number (lstm's total forget bias), or {name: chrono, max_timescale: T}
    (Tallec & Ollivier 2018), resolved to {name: chrono, max_timescale: float}."""
    allowed = "a number, or {name: chrono, max_timescale: T} with T > 2"
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not _finite(value):
            raise PydanticCustomError("forget_bias", "{message}", {"message": "must be a finite number (not nan or inf)"})
        return float(value)
    if not isinstance(value, dict):
        raise PydanticCustomError("forget_bias", "{message}", {"message": f"allowed: {allowed}"})
    if value.get("name") != CHRONO:
        raise PydanticCustomError("forget_bias", "{message}", {"message": f"unknown name; allowed: {allowed}"})
    unknown = sorted(set(value) - {"name", "max_timescale"})
    if unknown:
        raise PydanticCustomError("forget_bias", "{message}", {"message": f"chrono takes max_timescale only, not {', '.join(map(str, unknown))}"})
    t = value.get("max_timescale")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not _finite(t) or t <= 2:
        # b ~ log U(1, T - 1) needs T - 1 > 1
        raise PydanticCustomError("forget_bias", "{message}", {"message": "chrono needs max_timescale, a number > 2 (the longest memory in steps)"})
    return {"name": CHRONO, "max_timescale": float(t)}


CHRONO_SCHEMA = {
    "type": "object",
    "properties": {"name": {"const": CHRONO}, "max_timescale": {"type": "number", "exclusiveMinimum": 2}},
    "required": ["name", "max_timescale"],
    "additionalProperties": False,
}
ForgetBias = Annotated[
    Optional[typing.Union[float, dict[str, Any]]],
    BeforeValidator(_forget_bias),
    WithJsonSchema({"anyOf": [{"type": "number"}, CHRONO_SCHEMA, {"type": "null"}]}),
]


class ModelConfig(Section):
    kind: Literal["mlp", "cnn", "rnn", "lstm", "gru"] = "mlp"
    depth: int = Field(20, ge=1, description="hidden layers (mlp) or conv layers (cnn)")
    width: int = Field(256, ge=1, description="units (mlp) or channels (cnn)")
    activation: ActivationSpec = "relu"
    norm: NormSpec = "none"
    bias: bool = True
    init: InitConfig = InitConfig()
    kernel_size: int = Field(3, ge=1, description="cnn: odd kernel size, 'same' padding")
    pool_every: int = Field(0, ge=0, description="cnn: 2x2 pooling after every k-th block (0: none)")
    pool: Literal["max", "avg"] = "max"
    # Residual networks (models.ResidualBlock): x_{l+1} = x_l + residual_scale * branch(x_l). Written to
    # a run's config.yaml only when residual is true, so every other run's resolved config is unchanged.
    residual: bool = Field(False, description="x_(l+1) = x_l + residual_scale * branch(x_l), the branch being the block")
    branch_depth: int = Field(1, ge=1, description="residual: layers (linear/conv, norm, activation) per branch")
    residual_scale: float = Field(1.0, ge=0, description="residual: the branch's multiplier alpha (0 or small: SkipInit, De & Smith 2020)")
    # Recurrent kinds (recurrent.py). Written to config.yaml only for them: every other run's resolved
    # config is unchanged.
    readout: Literal["last", "every"] = Field("last", description="recurrent kinds: the head reads the last step's hidden state (last) or every step's (every)")
    forget_bias: ForgetBias = Field(
        None, description="lstm: the forget gate's total bias at initialization (set in bias_ih; bias_hh's forget slice 0); null keeps init.bias's; "
        "{name: chrono, max_timescale: T} (lstm and gru): chrono initialization (Tallec & Ollivier 2018), the memory gate's bias per unit log U(1, T - 1)",
    )  # fmt: skip
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate after each block's activation (and its post norm), before pooling; 0: none")
    # Width scaling (build/parametrization.py, docs/coordcheck.md). Written to config.yaml only when
    # not standard: every other run's resolved config is unchanged.
    parametrization: Literal[PARAMETRIZATIONS] = Field(
        "standard", description="how initializer variances, the head's multiplier and per-layer learning rates scale with width: standard | ntk | mup (Yang & Hu 2021)"
    )
    base_width: int = Field(BASE_WIDTH, ge=1, description="ntk, mup: the width at which every layer is exactly as configured (width_mult = width / base_width)")

    @model_serializer(mode="wrap")
    def _residual_keys_only_when_residual(self, handler):
        data = handler(self)
        if self.dropout == 0:
            data.pop("dropout", None)  # written only when set: every other run's config.yaml is unchanged
        if self.parametrization == "standard":
            data.pop("parametrization", None)
            if "base_width" not in self.model_fields_set:  # (one that is given is kept, as given)
                data.pop("base_width", None)
        if not self.residual:
            for key in ("residual", "branch_depth", "residual_scale"):
                data.pop(key, None)
        if self.kind not in RECURRENT_KINDS:
            for key in RECURRENT_ONLY:
                data.pop(key, None)
            if isinstance(data.get("init"), dict):
                data["init"].pop("recurrent", None)
        return data

    @model_validator(mode="after")
    def _consistent(self):
        self._recurrent_keys()
        self._parametrization_keys()
        if self.init.weight["name"] == "fixup" and not (self.residual and self.branch_depth >= 2):
            raise PydanticCustomError(
                "model", "{message}",
                {"message": "fixup initializes residual branches of two or more layers: set residual: true and branch_depth >= 2", "key": "init.weight"},
            )  # fmt: skip
        if not self.residual:
            for key, default in (("branch_depth", 1), ("residual_scale", 1.0)):
                if getattr(self, key) != default:
                    raise PydanticCustomError("model", "{message}", {"message": f"{key} applies to residual: true only", "key": key})
        if self.kind == "cnn" and self.kernel_size % 2 == 0:
            raise PydanticCustomError("model", "{message}", {"message": f"kernel_size must be odd for 'same' padding, got {self.kernel_size}", "key": "kernel_size"})
        if self.kind == "mlp" and self.pool_every:
            raise PydanticCustomError("model", "{message}", {"message": "pooling applies to kind cnn only", "key": "pool_every"})
        if self.kind in RECURRENT_KINDS and self.norm["name"] != "none":
            raise PydanticCustomError("model", "{message}", {"message": f"kind {self.kind} takes no normalization; allowed: none", "key": "norm"})
        if self.norm["name"] == "groupnorm" and self.width % self.norm["groups"]:
            raise PydanticCustomError(
                "model", "{message}", {"message": f"groups={self.norm['groups']} does not divide width={self.width}", "key": "norm.groups"}
            )
        return self

    def _parametrization_keys(self) -> None:
        def error(message: str, key: str) -> PydanticCustomError:
            return PydanticCustomError("model", "{message}", {"message": message, "key": key})

        if self.parametrization == "standard":  # (a base_width is kept out of config.yaml: standard does not read it)
            return
        if self.kind not in WIDTH_SCALED_KINDS:
            raise error(f"{self.parametrization} is defined for kinds {' and '.join(WIDTH_SCALED_KINDS)}, not {self.kind}; allowed for {self.kind}: standard", "parametrization")
        if self.residual:
            raise error(f"{self.parametrization} is defined for plain stacks here, not residual: true; allowed with residual: standard", "parametrization")
        if self.init.weight["name"] == "fixup":
            raise error(f"fixup initializes residual branches; with parametrization {self.parametrization} use another init.weight", "init.weight")

    def _recurrent_keys(self) -> None:
        def error(message: str, key: str) -> PydanticCustomError:
            return PydanticCustomError("model", "{message}", {"message": message, "key": key})

        if self.kind not in RECURRENT_KINDS:
            for key in RECURRENT_ONLY:
                if key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default:
                    raise error(f"applies to the recurrent kinds ({', '.join(RECURRENT_KINDS)}) only, not {self.kind}", key)
            if "recurrent" in self.init.model_fields_set and self.init.recurrent["name"] != "default":
                raise error(f"applies to the recurrent kinds ({', '.join(RECURRENT_KINDS)}) only, not {self.kind}", "init.recurrent")
            return
        if isinstance(self.forget_bias, dict) and self.kind not in CHRONO_KINDS:
            raise error(f"chrono applies to lstm (the forget gate) and gru (the update gate), not {self.kind}", "forget_bias")
        if isinstance(self.forget_bias, float) and self.kind != "lstm":
            raise error(f"applies to kind lstm only (the forget gate), not {self.kind}", "forget_bias")
        if self.pool_every:
            raise error("pooling applies to kind cnn only", "pool_every")
        if self.residual:
            raise error(f"applies to kinds mlp and cnn, not {self.kind}", "residual")
        if self.dropout:
            raise error(f"applies to kinds mlp and cnn, not {self.kind}", "dropout")
        if "activation" not in self.model_fields_set:
            self.activation = {"name": "tanh"}  # nn.RNN's default; lstm and gru: their cell nonlinearity
        elif self.kind != "rnn" and self.activation["name"] != "tanh":
            raise error(f"{self.kind}'s nonlinearities are fixed (sigmoid gates, tanh); allowed: tanh, or leave it out", "activation")


class TrainConfig(Section):
    steps: int = Field(500, ge=0, description="optimizer steps")
    eval_every: int = Field(100, ge=1, description="test-set evaluation every k steps (and at the end)")
    fixed_batch: bool = Field(False, description="every step trains on the first training batch (a coordinate check, as microsoft/mup's)")

    @model_serializer(mode="wrap")
    def _fixed_batch_only_when_set(self, handler):
        data = handler(self)  # written only when set: every other run's config.yaml is unchanged
        if not self.fixed_batch:
            data.pop("fixed_batch", None)
        return data


class JacobianConfig(Section):
    """log.jacobian: the input-output Jacobian's spectrum (jacobian.csv; docs/jacobian.md)."""

    every: int = Field(..., ge=1, description="measure at every k-th step (a multiple of log.every), at step 0 and at the last step")
    probes: int = Field(16, ge=1, description="Hutchinson probes v ~ N(0, I) per example")
    power_iterations: int = Field(20, ge=1, description="power-iteration steps on J^T J for sv_max")
    examples: Optional[int] = Field(8, ge=1, description="the first k examples of the training batch (null: all of it)")

    @model_validator(mode="before")
    @classmethod
    def _every_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and "every" not in data:
            raise PydanticCustomError("model", "{message}", {"message": "needs every: a multiple of log.every", "key": "every"})
        return data


def _list_or_preset(schema: dict[str, Any]) -> None:
    """log.probes in the JSON Schema: a list of groups, or a preset's name."""
    schema["anyOf"] = [{"type": "array", "items": schema.pop("items")}, {"enum": list(PROBE_PRESETS)}]
    schema.pop("type")


class LogConfig(Section):
    every: int = Field(10, ge=1, description="probe every k steps (and at step 0 and the last step)")
    probes: list[Literal[GROUPS]] = Field(
        list(DEFAULT_GROUPS),
        description="the probe groups measured at logged steps, or a preset: cheap (weights, deltas), all (every group the model can measure)",
        json_schema_extra=_list_or_preset,
    )
    out: str = Field("results", min_length=1, description="folder that run directories are created in")
    saturation_threshold: float = Field(
        SATURATION_THRESHOLD, gt=0, lt=1, description="saturated_frac counts |f'(u)| < this times sup |f'| in a flat tail (activations.Regions)"
    )

    test_batch_stats: bool = Field(
        False, description="also evaluate the test set with each batch's own BatchNorm statistics (metrics.csv split test_batch_stats)"
    )
    jacobian: Optional[JacobianConfig] = Field(None, description="the input-output Jacobian's spectrum (jacobian.csv; docs/jacobian.md): {every: N, a multiple of log.every; probes: 16; power_iterations: 20; examples: 8, or null for the whole batch}; null: off")
    _every_group: bool = PrivateAttr(False)  # probes: all, narrowed by the experiment to what its model can measure

    @field_validator("probes", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value not in PROBE_PRESETS:
            raise PydanticCustomError(
                "experiment", "{message}", {"message": f"got {describe_value(value)}; allowed: a preset ({', '.join(PROBE_PRESETS)}) or a list of {', '.join(GROUPS)}"}
            )
        return list(PROBE_PRESETS[value])

    @model_validator(mode="wrap")
    @classmethod
    def _remember_all(cls, data: Any, handler):
        log = handler(data)
        if isinstance(data, dict) and data.get("probes") == "all":
            log._every_group = True
        return log

    @model_validator(mode="after")
    def _jacobian_on_logged_steps(self):
        if self.jacobian is not None and self.jacobian.every % self.every:
            raise PydanticCustomError(
                "model", "{message}",
                {"message": f"{self.jacobian.every} is not a multiple of log.every {self.every}: the Jacobian is measured on logged steps only", "key": "jacobian.every"},
            )  # fmt: skip
        return self

    @model_serializer(mode="wrap")
    def _threshold_only_when_set(self, handler):
        # written to config.yaml only when not the default, so runs recorded before these existed
        # and runs at the default compare as equal
        data = handler(self)
        if self.saturation_threshold == SATURATION_THRESHOLD:
            data.pop("saturation_threshold", None)
        if not self.test_batch_stats:
            data.pop("test_batch_stats", None)
        if self.jacobian is None:
            data.pop("jacobian", None)
        return data


class Experiment(Section):
    name: str = Field("experiment", description="run folder name under log.out")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    # Written to a run's config.yaml only when a number: every run with the default is unchanged.
    threads: int | Literal["auto"] = Field(
        "auto", description="torch intra-op threads: auto (one unless the largest layer is large; docs/performance.md, Threads) or a number"
    )
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
            raise PydanticCustomError("name", "{message}", {"message": f"got {describe_value(value)}; use letters, digits, '.', '_' and '-' (a folder name)"})
        return value

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise PydanticCustomError("experiment", "{message}", {"message": f"got {describe_value(value)}; allowed: auto, or a whole number of threads >= 1"})

    @model_serializer(mode="wrap")
    def _threads_only_when_set(self, handler):
        data = handler(self)
        if self.threads == "auto":
            data.pop("threads", None)
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda|cuda:\d+|mps", value):
            raise PydanticCustomError("device", "{message}", {"message": f"got {describe_value(value)}; allowed: auto, cpu, cuda, cuda:N, mps"})
        return value

    @field_validator("loss", mode="before")
    @classmethod
    def _loss(cls, value: Any) -> Any:
        return _name_in(specs.losses, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _all_probes_the_model_can_measure(self):
        # defined before the validators that refuse a group for a model, which run after it
        if self.log._every_group:
            refused = {"coordinates": self.model.kind not in WIDTH_SCALED_KINDS, "noise": self.model.norm["name"] == "batchnorm"}
            self.log.probes = [group for group in self.log.probes if not refused.get(group)]
        return self

    @model_validator(mode="after")
    def _data_fits_model(self):
        self._sequences_fit_model()
        if "coordinates" in self.log.probes and self.model.kind not in WIDTH_SCALED_KINDS:
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": f"coordinates are measured for kinds {' and '.join(WIDTH_SCALED_KINDS)}, not {self.model.kind}", "key": "log.probes"},
            )  # fmt: skip
        parametrization = self.model.parametrization
        if parametrization != "standard" and self.optim["name"] not in optimizers_defined(parametrization):
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": f"model.parametrization {parametrization} defines learning rates for {', '.join(optimizers_defined(parametrization))}, "
                            f"not {self.optim['name']}; allowed: {', '.join(optimizers_defined(parametrization))}, or parametrization standard", "key": "optim.name"},
            )  # fmt: skip
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

    @model_validator(mode="after")
    def _jacobian_fits_model(self):
        if self.log.jacobian is not None and self.model.kind in RECURRENT_KINDS:
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": f"the input-output Jacobian is measured on the mlp and cnn stacks; model.kind {self.model.kind} "
                            "feeds one input per time step, so there is no single block output to map the input to: use kind mlp or cnn, or leave it out",
                 "key": "log.jacobian"},
            )  # fmt: skip
        if self.log.jacobian is None and self.expect is not None and self.expect.s2 is not None:
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": "s2 is measured by log.jacobian (jacobian.csv), which this config leaves off: set log.jacobian: {every: N}", "key": "expect.s2"},
            )  # fmt: skip
        return self

    @model_validator(mode="after")
    def _noise_has_per_example_gradients(self):
        if "noise" in self.log.probes and self.model.norm["name"] == "batchnorm":
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": "the noise group needs per-example gradients, and with batchnorm in training each example's output depends on "
                            "the whole batch, so they do not exist: leave noise out, or use model.norm layernorm, groupnorm or none",
                 "key": "log.probes"},
            )  # fmt: skip
        bounded = [q for q in (self.expect.bounds() if self.expect is not None else ()) if q in NOISE_SUMMARIES]
        if bounded and ("noise" not in self.log.probes or self.model.kind in RECURRENT_KINDS):
            why = (f"model.kind {self.model.kind} leaves the noise columns empty (quantities.NOISE_QUANTITIES says why)"
                   if "noise" in self.log.probes else "this config leaves it off: add noise to log.probes")  # fmt: skip
            raise PydanticCustomError(
                "experiment", "{message}", {"message": f"{bounded[0]} is measured by the noise group, and {why}", "key": f"expect.{bounded[0]}"}
            )
        return self

    @model_validator(mode="after")
    def _expected_steps_are_logged(self):
        # A bound at a step that is never measured could only fail after training: refuse it up front.
        if self.expect is None:
            return self
        steps, every = self.train.steps, self.log.every
        for quantity in self.expect.bounds():  # time_gain of a feed-forward run could only crash or fail after training
            if quantity in TIME_QUANTITIES and self.model.kind not in RECURRENT_KINDS:
                allowed = ", ".join(q for q in SUMMARY_QUANTITIES if q not in TIME_QUANTITIES)
                raise PydanticCustomError(
                    "experiment", "{message}",
                    {"message": f"{quantity} is measured along time on a recurrent layer, and model.kind {self.model.kind} has no time steps; "
                                f"allowed for it: {allowed}", "key": f"expect.{quantity}"},
                )  # fmt: skip
        for quantity, bound in self.expect.bounds().items():
            step = bound.step
            if step == "last" or step == 0 or step == steps or (step % every == 0 and step < steps):
                continue
            logged = f"0, {every}, {2 * every}, ..." if every < steps else "0"
            raise PydanticCustomError(
                "experiment", "{message}",
                {"message": f"step {step} is never logged (log.every {every}, train.steps {steps}: logged are {logged} and {steps}); "
                            f"give a multiple of log.every up to {steps}, or last", "key": f"expect.{quantity}.step"},
            )  # fmt: skip
        return self

    def _sequences_fit_model(self) -> None:
        def error(message: str, key: str) -> PydanticCustomError:
            return PydanticCustomError("experiment", "{message}", {"message": message, "key": key})

        kind, data = self.model.kind, self.data.name
        if kind in RECURRENT_KINDS and data not in SEQUENCE_DATASETS:
            raise error(f"model.kind {kind} needs sequence data ({', '.join(SEQUENCE_DATASETS)}), got {data}", "data.name")
        if data in SEQUENCE_DATASETS and kind not in RECURRENT_KINDS:
            raise error(f"{data} is sequence data for the recurrent kinds ({', '.join(RECURRENT_KINDS)}), not model.kind {kind}", "model.kind")
        if data not in SEQUENCE_DATASETS:
            return
        if self.model.readout != SEQUENCE_READOUT[data]:
            why = "a label at every step" if data == "copy" else "one target per sequence"
            raise error(f"{data} has {why}: it needs model.readout {SEQUENCE_READOUT[data]}, got {self.model.readout}", "model.readout")
        if self.loss not in SEQUENCE_LOSSES[data]:
            raise error(f"{data} needs loss {' or '.join(SEQUENCE_LOSSES[data])}, got {self.loss}", "loss")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


def validate(data: dict[str, Any]) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = format_error(error, Experiment)
            if line not in lines:
                lines.append(line)
        raise ConfigError(*lines) from None


def component_keys(model: type[BaseModel] | None = None, prefix: str = "") -> tuple[str, ...]:
    """The dotted config keys that hold a component spec ({name: ..., params...}), found in the
    schema itself: ('model.activation', 'model.norm', 'model.init.weight', 'model.init.bias', 'optim')."""
    keys: list[str] = []
    for name, field in (model or Experiment).model_fields.items():
        # an optional component (model.init.head) is Optional[Annotated[..., ComponentField]]
        nested = [meta for arg in typing.get_args(field.annotation) for meta in getattr(arg, "__metadata__", ())]
        if any(isinstance(meta, ComponentField) for meta in [*field.metadata, *nested]):
            keys.append(prefix + name)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys.extend(component_keys(field.annotation, f"{prefix}{name}."))
    return tuple(keys)
