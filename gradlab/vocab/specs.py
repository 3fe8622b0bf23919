"""The names a config may use for its components, with their parameters: activations,
initializers, normalizations, losses, optimizers and datasets.

Each kind is a `Registry` (registry.py): a name, aliases, a one-line description and a pydantic
`Params` model that declares the parameters' types, ranges and defaults once. `resolve` turns
`relu` or `{name: leaky_relu, negative_slope: 0.2}` into the full mapping a run stores in its
config.yaml. What each name *builds* lives on the next floor: the torch modules in components.py
and activations.py, looked up by these names.

This module imports neither torch nor pandas: `gradlab validate` and `gradlab components` load it
without them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from gradlab.vocab.datasets import DATASETS
from gradlab.vocab.registry import (
    FLOAT32_MAX,
    Component,
    NoParams,
    Params,
    Registry,
    SpecError,
)

# The statuses a run can end in (meta.json's `status`; an `expect: status` may name them).

# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

activations = Registry("activation")


class LeakyReLUParams(Params):
    negative_slope: float = Field(0.01, ge=0, description="slope for negative inputs")


class PReLUParams(Params):
    init: float = Field(0.25, description="initial slope for negative inputs (learned)")
    shared: bool = Field(True, description="one slope for the layer (true) or one per unit/channel (false)")


class RReLUParams(Params):
    lower: float = Field(1 / 8, ge=0, description="lower bound of the random negative slope")
    upper: float = Field(1 / 3, ge=0, description="upper bound; evaluation uses (lower+upper)/2")

    @model_validator(mode="after")
    def _ordered(self):
        if self.lower > self.upper:
            raise ValueError(f"lower ({self.lower}) must be <= upper ({self.upper})")
        return self


class ELUParams(Params):
    alpha: float = Field(1.0, gt=0, description="value the negative side saturates to is -alpha")


class GELUParams(Params):
    approximate: Literal["none", "tanh"] = Field("none", description="exact erf form or tanh approximation")


class SoftplusParams(Params):
    beta: float = Field(1.0, gt=0)
    threshold: float = Field(20.0, gt=0, description="linear above beta*x > threshold")


class HardtanhParams(Params):
    min_val: float = -1.0
    max_val: float = 1.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_val >= self.max_val:
            raise ValueError(f"min_val ({self.min_val}) must be < max_val ({self.max_val})")
        return self


for _component in [
    Component("sigmoid", "logistic 1/(1+e^-x); derivative peaks at 1/4", NoParams, ("logistic",)),
    Component("tanh", "hyperbolic tangent", NoParams),
    Component("relu", "max(0, x)", NoParams),
    Component("leaky_relu", "x for x > 0, negative_slope * x otherwise", LeakyReLUParams, ("leakyrelu", "lrelu")),
    Component("prelu", "leaky ReLU with learned negative slope(s)", PReLUParams),
    Component("rrelu", "leaky ReLU with a random slope in [lower, upper] while training, the mean slope in evaluation", RReLUParams),
    Component("elu", "x for x > 0, alpha (e^x - 1) otherwise", ELUParams),
    Component("selu", "scaled ELU with the self-normalizing constants", NoParams),
    Component("gelu", "x * Phi(x)", GELUParams),
    Component("silu", "x * sigmoid(x)", NoParams, ("swish",)),
    Component("softplus", "log(1 + e^(beta x)) / beta", SoftplusParams),
    Component("hardtanh", "x clipped to [min_val, max_val]", HardtanhParams),
    Component("identity", "no nonlinearity (a deep linear network)", NoParams, ("linear", "none")),
]:
    activations.add(_component)

# --------------------------------------------------------------------------------------------
# Initializers (what each draws from: initializers.py; filling a tensor: components.py)
# --------------------------------------------------------------------------------------------

initializers = Registry("initializer")

Gain = float | Literal["auto"]


class NormalParams(Params):
    mean: float = 0.0
    std: float = Field(1.0, ge=0)


class UniformParams(Params):
    a: float = -1.0
    b: float = 1.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.a > self.b:
            raise ValueError(f"a ({self.a}) must be <= b ({self.b})")
        if self.b - self.a > FLOAT32_MAX:  # torch draws a + (b - a) * u in float32
            raise ValueError(f"b - a ({self.b - self.a:g}) must be at most 3.4e+38, float32's largest number")
        return self


class GainParams(Params):
    gain: Gain = Field(1.0, description="a number, or auto for the gain that suits the activation")


class KaimingParams(Params):
    a: float = Field(0.0, ge=0, description="negative slope of the rectifier that follows")
    mode: Literal["fan_in", "fan_out"] = "fan_in"
    nonlinearity: Literal["relu", "leaky_relu", "linear", "sigmoid", "tanh", "selu"] = Field(
        "relu", description="the gain: relu sqrt(2); leaky_relu uses a"
    )


class VarianceScalingParams(Params):
    scale: float = Field(1.0, gt=0)
    mode: Literal["fan_in", "fan_out", "fan_avg"] = "fan_in"
    distribution: Literal["normal", "uniform", "truncated_normal"] = "truncated_normal"


class ConstantParams(Params):
    value: float = 0.0


# `bias_ok`: the initializer needs no fan-in/fan-out, so it can fill a bias vector.
for _component in [
    Component("normal", "N(mean, std^2)", NormalParams, ("gaussian",), {"bias_ok": True}),
    Component("uniform", "U(a, b)", UniformParams, (), {"bias_ok": True}),
    Component("xavier_normal", "Glorot: N(0, gain^2 * 2/(fan_in+fan_out))", GainParams, ("glorot_normal",)),
    Component("xavier_uniform", "Glorot: U(+-gain * sqrt(6/(fan_in+fan_out)))", GainParams, ("glorot_uniform",)),
    Component("kaiming_normal", "He: N(0, gain^2/fan), gain from nonlinearity and a", KaimingParams, ("he_normal",)),
    Component("kaiming_uniform", "He: U(+-gain * sqrt(3/fan))", KaimingParams, ("he_uniform",)),
    Component("lecun_normal", "LeCun: N(0, 1/fan_in)", NoParams),
    Component("orthogonal", "(semi-)orthogonal matrix times gain (Saxe et al.)", GainParams),
    Component("identity", "identity matrix times gain (IRNN: Le, Jaitly & Hinton 2015); ones on the main diagonal of a non-square matrix", GainParams, ("eye",)),
    Component("variance_scaling", "variance scale/n, n = fan_in, fan_out or their mean (Keras/JAX)", VarianceScalingParams),
    Component("constant", "every entry = value", ConstantParams, (), {"bias_ok": True}),
    Component("zeros", "every entry 0", NoParams, ("zero",), {"bias_ok": True}),
    Component("default", "leave PyTorch's own layer initialization", NoParams, (), {"bias_ok": True}),
    Component("fixup", "Zhang et al. 2019, residual models with branch_depth >= 2: He normal, scaled by L^(-1/(2m-2)) inside branches; each branch's last layer, the head and every bias zero", NoParams),
]:
    initializers.add(_component)


def resolve_bias_init(spec: Any) -> dict[str, Any]:
    """An initializer for a bias vector: one that needs no fan-in/fan-out."""
    resolved = initializers.resolve(spec)
    if not initializers.get(resolved["name"]).extra.get("bias_ok"):
        allowed = [c.name for c in initializers if c.extra.get("bias_ok")]
        raise SpecError(f"{resolved['name']} needs a weight matrix; allowed for biases: {', '.join(allowed)}", "name")
    return resolved


# --------------------------------------------------------------------------------------------
# Normalizations
# --------------------------------------------------------------------------------------------

norms = Registry("normalization")

Placement = Literal["pre", "post"]


class BatchNormParams(Params):
    placement: Placement = Field("pre", description="pre: between linear map and nonlinearity; post: after it")
    momentum: float = Field(0.1, ge=0, le=1, description="PyTorch's: the weight of the new batch, running = (1 - momentum) running + momentum batch (TensorFlow's decay is 1 - momentum)")
    eps: float = Field(1e-5, gt=0)
    affine: bool = True


class LayerNormParams(Params):
    placement: Placement = "pre"
    eps: float = Field(1e-5, gt=0)
    affine: bool = True


class GroupNormParams(Params):
    placement: Placement = "pre"
    groups: int = Field(32, ge=1, description="must divide width")
    eps: float = Field(1e-5, gt=0)
    affine: bool = True


class LRNParams(Params):
    placement: Placement = Field("post", description="AlexNet normalizes after the ReLU")
    size: int = Field(5, ge=1, description="neighbouring channels (units in an MLP) summed over")
    alpha: float = Field(1e-4, ge=0, description="PyTorch's convention, divided by size: AlexNet's alpha 1e-4 (n = 5) is 5e-4 here; the default is PyTorch's")
    beta: float = Field(0.75, ge=0)
    k: float = Field(2.0, ge=0, description="AlexNet's k=2 (PyTorch's default is 1)")


for _component in [
    Component("none", "no normalization", NoParams, ("identity",)),
    Component("batchnorm", "Ioffe & Szegedy: per unit (MLP) or per channel over batch x h x w (CNN); momentum is PyTorch's, the weight of the new batch (TensorFlow's decay = 1 - momentum)", BatchNormParams, ("bn", "batch_norm")),
    Component("layernorm", "per example over all units (MLP) or channels x h x w (CNN)", LayerNormParams, ("ln", "layer_norm")),
    Component("groupnorm", "Wu & He: per example over groups of units/channels", GroupNormParams, ("gn", "group_norm")),
    Component("lrn", "Local Response Normalization across channels (CNN) or units (MLP), PyTorch's: a / (k + alpha/size * sum a^2)^beta, so AlexNet's alpha 1e-4 is alpha 5e-4 here", LRNParams, ("local_response_norm",)),
]:
    norms.add(_component)

# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------

losses = Registry("loss")
for _component in [
    Component("cross_entropy", "softmax cross-entropy, PyTorch's, averaged over the batch", NoParams, ("ce", "xent")),
    Component("bce", "sigmoid outputs vs one-hot targets; summed over units, averaged over the batch", NoParams),
    Component("mse", "squared error of raw outputs vs one-hot targets (vs the target itself for a regression: adding), without a 1/2; summed over units, averaged over the batch", NoParams, ("l2",)),
]:
    losses.add(_component)

# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------

optimizers = Registry("optimizer")


# Learning-rate schedules (optim.schedule): the factor the optimizer's lr is multiplied by before
# update k (k = 0 for the first update); components.schedule_factor computes it.
schedules = Registry("schedule")


class StepScheduleParams(Params):
    step_size: int = Field(100, ge=1, description="updates between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="factor per decay: lr * gamma^floor(k / step_size)")


class ExponentialScheduleParams(Params):
    gamma: float = Field(0.99, gt=0, le=1, description="factor per update: lr * gamma^k")


class CosineScheduleParams(Params):
    steps: int | None = Field(None, ge=1, description="updates of the half cosine (null: train.steps)")
    min_factor: float = Field(0.0, ge=0, le=1, description="the factor it ends at")


class WarmupScheduleParams(Params):
    warmup_steps: int = Field(100, ge=1, description="updates of the linear ramp: lr * min(1, (k + 1) / warmup_steps)")


for _component in [
    Component("step", "lr * gamma^floor(k / step_size), k the updates before this one (PyTorch's StepLR)", StepScheduleParams),
    Component("exponential", "lr * gamma^k (PyTorch's ExponentialLR)", ExponentialScheduleParams),
    Component("cosine", "lr * (min_factor + (1 - min_factor)(1 + cos(pi min(k, steps) / steps)) / 2) (PyTorch's CosineAnnealingLR)", CosineScheduleParams),
    Component("warmup", "lr * min(1, (k + 1) / warmup_steps): a linear ramp, then the lr", WarmupScheduleParams),
]:
    schedules.add(_component)


class OptimParams(Params):
    lr: float = Field(0.1, ge=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")
    schedule: dict | None = Field(None, description="learning-rate schedule: step, exponential, cosine or warmup (null: constant)")

    @model_validator(mode="before")
    @classmethod
    def _resolve_schedule(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("schedule") is not None:
            try:
                data = {**data, "schedule": schedules.resolve(data["schedule"])}
            except SpecError as exc:
                raise ValueError(f"schedule: {exc.message}") from None
        return data


def resolve_optim(spec: Any) -> dict[str, Any]:
    """An optimizer spec, resolved; `schedule` is written only when set, so the resolved optim of a
    run without a schedule is what it was before schedules existed."""
    if isinstance(spec, dict) and spec.get("schedule") is not None:
        try:
            spec = {**spec, "schedule": schedules.resolve(spec["schedule"])}
        except SpecError as exc:  # named where it is: optim.schedule.<key>
            raise SpecError(exc.message, "schedule" + (f".{exc.subpath}" if exc.subpath else "")) from None
    resolved = optimizers.resolve(spec)
    if resolved.get("schedule") is None:
        resolved.pop("schedule", None)
    return resolved


class SGDParams(OptimParams):
    momentum: float = Field(0.0, ge=0)
    nesterov: bool = False

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class AdamParams(OptimParams):
    lr: float = Field(1e-3, ge=0, description="learning rate")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


class AdamWParams(AdamParams):
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay")


class RMSpropParams(OptimParams):
    lr: float = Field(1e-2, ge=0, description="learning rate")
    alpha: float = Field(0.99, ge=0, lt=1, description="smoothing of the squared-gradient average")
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.0, ge=0)


for _component in [
    Component("sgd", "stochastic gradient descent (momentum, nesterov)", SGDParams),
    Component("adam", "Adam (L2 weight decay added to the gradient)", AdamParams),
    Component("adamw", "Adam with decoupled weight decay", AdamWParams),
    Component("rmsprop", "RMSprop", RMSpropParams),
]:
    optimizers.add(_component)

# --------------------------------------------------------------------------------------------
# Datasets (declared in vocab/datasets.py; the loaders live in build/data.py)
# --------------------------------------------------------------------------------------------

datasets = Registry("dataset")
for _name, _doc in DATASETS.items():
    datasets.add(Component(_name, _doc, NoParams))

# What `gradlab components` lists, under these titles.
REGISTRIES: dict[str, Registry] = {
    "activations": activations,
    "initializers": initializers,
    "normalizations": norms,
    "datasets": datasets,
    "losses": losses,
    "optimizers": optimizers,
}
