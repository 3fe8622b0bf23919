"""The named building blocks a config can ask for: activations, initializers, normalizations,
losses and optimizers, each with its parameters and defaults.

Every activation also knows its derivative as a function of its input, which the probes use for
`saturated_frac` and `dead_frac` ("the activation's derivative is below 5% of its maximum").
Closed forms are used where they exist; they are checked against autograd in the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from gradlab.registry import Component, NoParams, Params, Registry, SpecError

# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

activations = Registry("activation")


@dataclass(frozen=True)
class Calculus:
    """What the probes need to know about an activation module `act`, besides calling it.

    derivative(act, u, y): act'(u) elementwise, given the input u and the output y = act(u) of
        the same forward pass (for rrelu the output is the only record of the random slopes).
    maximum(act): sup |act'|, a float, or one value per unit for prelu with per-unit slopes.
    """

    derivative: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    maximum: Callable[[nn.Module], float | torch.Tensor]


def _autograd_derivative(act: nn.Module, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # the activation is elementwise, so the gradient of the sum is the elementwise derivative
    with torch.enable_grad():
        leaf = u.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(act(leaf).sum(), leaf)
    return grad


def _piecewise_linear(slope_of_negatives) -> Callable:
    """Derivative 1 for u > 0 and a slope for u <= 0 (the ReLU family)."""

    def derivative(act, u, y):
        return torch.where(u > 0, torch.ones_like(u), slope_of_negatives(act, u, y))

    return derivative


def _unit_slopes(act: nn.PReLU, u: torch.Tensor) -> torch.Tensor:
    # one slope (shape (1,)) or one per unit/channel (C,) -> broadcastable over (B, C[, H, W])
    weight = act.weight.detach()
    return weight if weight.numel() == 1 else weight.reshape(1, -1, *([1] * (u.dim() - 2)))


def _rrelu_slopes(act: nn.RReLU, u, y):
    # in training the slope of each element was drawn at random: read it back as y / u
    safe = torch.where(u < 0, u, torch.ones_like(u))
    return torch.where(u < 0, y / safe, torch.full_like(u, (act.lower + act.upper) / 2))


_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT2PI = 1 / math.sqrt(2 * math.pi)


def _gelu_max() -> float:
    # GELU'(u) = Phi(u) + u phi(u) peaks at u = sqrt(2)
    u = math.sqrt(2.0)
    return 0.5 * (1 + math.erf(u * _INV_SQRT2)) + u * math.exp(-u * u / 2) * _INV_SQRT2PI


def _silu_max() -> float:
    # SiLU'(u) = s(u)(1 + u(1 - s(u))) peaks near u = 2.3994; found on a fine grid
    u = torch.linspace(0, 6, 600001, dtype=torch.float64)
    s = torch.sigmoid(u)
    return float((s * (1 + u * (1 - s))).max())


def _silu_derivative(act, u, y):
    s = torch.sigmoid(u)
    return s * (1 + u * (1 - s))


def _gelu_derivative(act, u, y):
    if act.approximate == "tanh":
        return _autograd_derivative(act, u, y)
    return 0.5 * (1 + torch.erf(u * _INV_SQRT2)) + u * torch.exp(-0.5 * u * u) * _INV_SQRT2PI


CALCULUS: dict[str, Calculus] = {
    "sigmoid": Calculus(lambda a, u, y: y * (1 - y), lambda a: 0.25),
    "tanh": Calculus(lambda a, u, y: 1 - y * y, lambda a: 1.0),
    "relu": Calculus(_piecewise_linear(lambda a, u, y: torch.zeros_like(u)), lambda a: 1.0),
    "leaky_relu": Calculus(
        _piecewise_linear(lambda a, u, y: torch.full_like(u, a.negative_slope)), lambda a: max(1.0, abs(a.negative_slope))
    ),
    "prelu": Calculus(
        _piecewise_linear(lambda a, u, y: _unit_slopes(a, u).expand_as(u)), lambda a: a.weight.detach().abs().clamp(min=1.0)
    ),
    "rrelu": Calculus(_piecewise_linear(_rrelu_slopes), lambda a: max(1.0, a.upper)),
    "elu": Calculus(lambda a, u, y: torch.where(u > 0, torch.ones_like(u), y + a.alpha), lambda a: max(1.0, a.alpha)),
    "selu": Calculus(
        lambda a, u, y: torch.where(u > 0, torch.full_like(u, _SELU_SCALE), y + _SELU_SCALE * _SELU_ALPHA),
        lambda a: _SELU_SCALE * _SELU_ALPHA,
    ),
    "gelu": Calculus(_gelu_derivative, lambda a: _gelu_max() if a.approximate == "none" else 1.1289),
    "silu": Calculus(_silu_derivative, lambda a: _silu_max()),
    "softplus": Calculus(
        lambda a, u, y: torch.where(u * a.beta > a.threshold, torch.ones_like(u), torch.sigmoid(a.beta * u)), lambda a: 1.0
    ),
    "hardtanh": Calculus(lambda a, u, y: ((u > a.min_val) & (u < a.max_val)).to(u.dtype), lambda a: 1.0),
    "identity": Calculus(lambda a, u, y: torch.ones_like(u), lambda a: 1.0),
}


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


@activations.register("sigmoid", "logistic 1/(1+e^-x); derivative peaks at 1/4", aliases=("logistic",))
def _sigmoid(p: NoParams, width: int) -> nn.Module:
    return nn.Sigmoid()


@activations.register("tanh", "hyperbolic tangent")
def _tanh(p: NoParams, width: int) -> nn.Module:
    return nn.Tanh()


@activations.register("relu", "max(0, x)")
def _relu(p: NoParams, width: int) -> nn.Module:
    return nn.ReLU()


@activations.register("leaky_relu", "x for x > 0, negative_slope * x otherwise", LeakyReLUParams, aliases=("leakyrelu", "lrelu"))
def _leaky_relu(p: LeakyReLUParams, width: int) -> nn.Module:
    return nn.LeakyReLU(p.negative_slope)


@activations.register("prelu", "leaky ReLU with learned negative slope(s)", PReLUParams)
def _prelu(p: PReLUParams, width: int) -> nn.Module:
    return nn.PReLU(num_parameters=1 if p.shared else width, init=p.init)


@activations.register("rrelu", "leaky ReLU with a random slope in [lower, upper] while training, the mean slope in evaluation", RReLUParams)
def _rrelu(p: RReLUParams, width: int) -> nn.Module:
    return nn.RReLU(p.lower, p.upper)


@activations.register("elu", "x for x > 0, alpha (e^x - 1) otherwise", ELUParams)
def _elu(p: ELUParams, width: int) -> nn.Module:
    return nn.ELU(p.alpha)


@activations.register("selu", "scaled ELU with the self-normalizing constants")
def _selu(p: NoParams, width: int) -> nn.Module:
    return nn.SELU()


@activations.register("gelu", "x * Phi(x)", GELUParams)
def _gelu(p: GELUParams, width: int) -> nn.Module:
    return nn.GELU(approximate=p.approximate)


@activations.register("silu", "x * sigmoid(x)", aliases=("swish",))
def _silu(p: NoParams, width: int) -> nn.Module:
    return nn.SiLU()


@activations.register("softplus", "log(1 + e^(beta x)) / beta", SoftplusParams)
def _softplus(p: SoftplusParams, width: int) -> nn.Module:
    return nn.Softplus(p.beta, p.threshold)


@activations.register("hardtanh", "x clipped to [min_val, max_val]", HardtanhParams)
def _hardtanh(p: HardtanhParams, width: int) -> nn.Module:
    return nn.Hardtanh(p.min_val, p.max_val)


@activations.register("identity", "no nonlinearity (a deep linear network)", aliases=("linear", "none"))
def _identity(p: NoParams, width: int) -> nn.Module:
    return nn.Identity()


def build_activation(spec: dict[str, Any], width: int) -> nn.Module:
    component = activations.get(spec["name"])
    return component.build(activations.params_of(spec), width)


def saturation_mask(name: str, act: nn.Module, u: torch.Tensor, y: torch.Tensor, threshold: float) -> torch.Tensor:
    """Where |act'(u)| < threshold * max |act'| (bool, shape of u)."""
    calculus = CALCULUS[name]
    maximum = calculus.maximum(act)
    if isinstance(maximum, torch.Tensor) and maximum.numel() > 1:
        maximum = maximum.reshape(1, -1, *([1] * (u.dim() - 2)))  # per unit/channel
    return calculus.derivative(act, u, y).abs() < threshold * maximum


def activity_counts(name: str, act: nn.Module, u: torch.Tensor, y: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(unsaturated (example, unit) pairs, units not dead) as 0-d tensors, for u and y of shape
    (B, C[, H, W]): the complements of the saturated and dead counts, which the host takes.

    A unit is dim 1 (a channel in a CNN, whose pairs are all its positions); it is dead when
    saturated at every position of every example. Counting what is active lets ReLU skip the mask.
    """
    unit_dims = (0, *range(2, u.dim()))
    if name == "relu":
        # relu' is 1 exactly where y = relu(u) > 0: read it off y, skipping the derivative. (Timed in
        # the forward pass on the CPU, `(y > 0).sum()` beats both the general mask and count_nonzero.)
        return (y > 0).sum(), (y.amax(dim=unit_dims) > 0).sum()
    active = ~saturation_mask(name, act, u, y, threshold)
    alive = active.any(dim=0)  # (C[, H, W]): active on some example
    if alive.dim() > 1:
        alive = alive.flatten(1).any(dim=1)  # (C,): ... at some position
    return active.sum(), alive.sum()


def activation_gain(spec: dict[str, Any]) -> float:
    """The init gain that suits an activation (`gain: auto`).

    PyTorch's `calculate_gain` values where it defines one (relu sqrt 2, tanh 5/3, selu 3/4,
    leaky ReLUs sqrt(2 / (1 + a^2)) with the slope, or rrelu's mean slope; sigmoid and identity 1).
    For the rest (elu, gelu, silu, softplus, hardtanh) it is `variance_preserving_gain`.
    """
    name = spec["name"]
    table = {"sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0), "selu": 0.75, "identity": 1.0}
    if name in table:
        return table[name]
    slopes = {"leaky_relu": lambda: spec["negative_slope"], "prelu": lambda: spec["init"], "rrelu": lambda: (spec["lower"] + spec["upper"]) / 2}
    if name in slopes:
        return math.sqrt(2.0 / (1 + slopes[name]() ** 2))
    return variance_preserving_gain(spec)


def variance_preserving_gain(spec: dict[str, Any]) -> float:
    """1 / sqrt(E[f(z)^2]) for z ~ N(0, 1), by quadrature: the gain that keeps the second moment
    of the signal from layer to layer (the rule that gives ReLU its sqrt 2)."""
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    with torch.no_grad():
        act = build_activation(spec, 1).double().eval()
        second_moment = torch.trapezoid(act(z) ** 2 * density, z)
    return float(1.0 / torch.sqrt(second_moment))


# --------------------------------------------------------------------------------------------
# Initializers
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


def _fans(tensor: torch.Tensor) -> tuple[int, int]:
    return nn.init._calculate_fan_in_and_fan_out(tensor)


def _needs_matrix(name: str):
    def check(tensor: torch.Tensor) -> None:
        if tensor.dim() < 2:
            raise SpecError(f"{name} needs a weight matrix (it uses fan-in/fan-out); for biases use zeros, constant, normal, uniform or default")

    return check


# An initializer's build is `init(params, tensor, activation_spec)`: it fills `tensor` in place.


@initializers.register("normal", "N(mean, std^2)", NormalParams, aliases=("gaussian",), bias_ok=True)
def _init_normal(p: NormalParams, t: torch.Tensor, act: dict) -> None:
    nn.init.normal_(t, p.mean, p.std)


@initializers.register("uniform", "U(a, b)", UniformParams, bias_ok=True)
def _init_uniform(p: UniformParams, t: torch.Tensor, act: dict) -> None:
    nn.init.uniform_(t, p.a, p.b)


def _gain(p: GainParams, act: dict) -> float:
    return activation_gain(act) if p.gain == "auto" else float(p.gain)


@initializers.register("xavier_normal", "Glorot: N(0, gain^2 * 2/(fan_in+fan_out))", GainParams, aliases=("glorot_normal",))
def _init_xavier_normal(p: GainParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("xavier_normal")(t)
    nn.init.xavier_normal_(t, gain=_gain(p, act))


@initializers.register("xavier_uniform", "Glorot: U(+-gain * sqrt(6/(fan_in+fan_out)))", GainParams, aliases=("glorot_uniform",))
def _init_xavier_uniform(p: GainParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("xavier_uniform")(t)
    nn.init.xavier_uniform_(t, gain=_gain(p, act))


@initializers.register("kaiming_normal", "He: N(0, gain^2/fan), gain from nonlinearity and a", KaimingParams, aliases=("he_normal",))
def _init_kaiming_normal(p: KaimingParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("kaiming_normal")(t)
    nn.init.kaiming_normal_(t, a=p.a, mode=p.mode, nonlinearity=p.nonlinearity)


@initializers.register("kaiming_uniform", "He: U(+-gain * sqrt(3/fan))", KaimingParams, aliases=("he_uniform",))
def _init_kaiming_uniform(p: KaimingParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("kaiming_uniform")(t)
    nn.init.kaiming_uniform_(t, a=p.a, mode=p.mode, nonlinearity=p.nonlinearity)


@initializers.register("lecun_normal", "LeCun: N(0, 1/fan_in)")
def _init_lecun_normal(p: NoParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("lecun_normal")(t)
    fan_in, _ = _fans(t)
    nn.init.normal_(t, 0.0, 1.0 / math.sqrt(fan_in))


@initializers.register("orthogonal", "(semi-)orthogonal matrix times gain (Saxe et al.)", GainParams)
def _init_orthogonal(p: GainParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("orthogonal")(t)
    nn.init.orthogonal_(t, gain=_gain(p, act))


# Truncated N(0, 1) at +-2 has std 0.87962566103423978; dividing by it keeps the variance asked for
# (the constant JAX and Keras use for variance_scaling).
_TRUNC_STD = 0.87962566103423978


@initializers.register("variance_scaling", "variance scale/n, n = fan_in, fan_out or their mean (Keras/JAX)", VarianceScalingParams)
def _init_variance_scaling(p: VarianceScalingParams, t: torch.Tensor, act: dict) -> None:
    _needs_matrix("variance_scaling")(t)
    fan_in, fan_out = _fans(t)
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[p.mode]
    variance = p.scale / n
    if p.distribution == "normal":
        nn.init.normal_(t, 0.0, math.sqrt(variance))
    elif p.distribution == "uniform":
        limit = math.sqrt(3 * variance)
        nn.init.uniform_(t, -limit, limit)
    else:
        std = math.sqrt(variance) / _TRUNC_STD
        nn.init.trunc_normal_(t, 0.0, std, -2 * std, 2 * std)


@initializers.register("constant", "every entry = value", ConstantParams, bias_ok=True)
def _init_constant(p: ConstantParams, t: torch.Tensor, act: dict) -> None:
    nn.init.constant_(t, p.value)


@initializers.register("zeros", "every entry 0", aliases=("zero",), bias_ok=True)
def _init_zeros(p: NoParams, t: torch.Tensor, act: dict) -> None:
    nn.init.zeros_(t)


@initializers.register("default", "leave PyTorch's own layer initialization", bias_ok=True)
def _init_default(p: NoParams, t: torch.Tensor, act: dict) -> None:
    pass


def resolve_bias_init(spec: Any) -> dict[str, Any]:
    resolved = initializers.resolve(spec)
    if not initializers.get(resolved["name"]).extra.get("bias_ok"):
        allowed = [c.name for c in initializers if c.extra.get("bias_ok")]
        raise SpecError(f"{resolved['name']} needs a weight matrix; allowed for biases: {', '.join(allowed)}", "name")
    return resolved


def apply_init(spec: dict[str, Any], tensor: torch.Tensor, activation: dict[str, Any]) -> None:
    with torch.no_grad():
        initializers.get(spec["name"]).build(initializers.params_of(spec), tensor, activation)


# --------------------------------------------------------------------------------------------
# Normalizations
# --------------------------------------------------------------------------------------------

norms = Registry("normalization")

Placement = Literal["pre", "post"]


class BatchNormParams(Params):
    placement: Placement = Field("pre", description="pre: between linear map and nonlinearity; post: after it")
    momentum: float = Field(0.1, ge=0, le=1, description="weight of the new batch in the running statistics")
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
    alpha: float = Field(1e-4, ge=0)
    beta: float = Field(0.75, ge=0)
    k: float = Field(2.0, ge=0, description="AlexNet's k=2 (PyTorch's default is 1)")


class _UnitsAsChannels(nn.Module):
    """Lets a channel-wise norm run on (batch, units) by treating units as channels of length 1."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.inner(x.unsqueeze(-1)).squeeze(-1)
        return self.inner(x)


@norms.register("none", "no normalization", aliases=("identity",))
def _norm_none(p: NoParams, width: int, conv: bool) -> nn.Module | None:
    return None


@norms.register("batchnorm", "Ioffe & Szegedy: per unit (MLP) or per channel over batch x h x w (CNN)", BatchNormParams, aliases=("bn", "batch_norm"))
def _norm_batch(p: BatchNormParams, width: int, conv: bool) -> nn.Module:
    cls = nn.BatchNorm2d if conv else nn.BatchNorm1d
    return cls(width, eps=p.eps, momentum=p.momentum, affine=p.affine)


@norms.register("layernorm", "per example over all units (MLP) or channels x h x w (CNN)", LayerNormParams, aliases=("ln", "layer_norm"))
def _norm_layer(p: LayerNormParams, width: int, conv: bool) -> nn.Module:
    if conv:
        # GroupNorm with one group normalizes each example over (C, H, W) without fixing H and W.
        return nn.GroupNorm(1, width, eps=p.eps, affine=p.affine)
    return nn.LayerNorm(width, eps=p.eps, elementwise_affine=p.affine)


@norms.register("groupnorm", "Wu & He: per example over groups of units/channels", GroupNormParams, aliases=("gn", "group_norm"))
def _norm_group(p: GroupNormParams, width: int, conv: bool) -> nn.Module:
    if width % p.groups:
        raise SpecError(f"groups={p.groups} does not divide width={width}", "groups")
    return _UnitsAsChannels(nn.GroupNorm(p.groups, width, eps=p.eps, affine=p.affine))


@norms.register("lrn", "Local Response Normalization (AlexNet) across channels (CNN) or units (MLP)", LRNParams, aliases=("local_response_norm",))
def _norm_lrn(p: LRNParams, width: int, conv: bool) -> nn.Module:
    return _UnitsAsChannels(nn.LocalResponseNorm(p.size, alpha=p.alpha, beta=p.beta, k=p.k))


def build_norm(spec: dict[str, Any], width: int, conv: bool) -> nn.Module | None:
    return norms.get(spec["name"]).build(norms.params_of(spec), width, conv)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------

losses = Registry("loss")


def _one_hot(y: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    return nn.functional.one_hot(y, classes).to(dtype)


# A loss build is `loss(logits (B, C), labels (B,)) -> scalar`, the batch mean that is back-propagated.


@losses.register("cross_entropy", "softmax cross-entropy, PyTorch's, averaged over the batch", aliases=("ce", "xent"))
def _loss_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y)


@losses.register("bce", "sigmoid outputs vs one-hot targets; summed over units, averaged over the batch")
def _loss_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    target = _one_hot(y, logits.shape[1], logits.dtype)
    per_unit = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return per_unit.sum(dim=1).mean()


@losses.register("mse", "squared error of raw outputs vs one-hot targets; summed over units, averaged over the batch", aliases=("l2",))
def _loss_mse(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    target = _one_hot(y, logits.shape[1], logits.dtype)
    return ((logits - target) ** 2).sum(dim=1).mean()


def get_loss(name: str):
    return losses.get(name).build


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------

optimizers = Registry("optimizer")


class OptimParams(Params):
    lr: float = Field(0.1, ge=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this value")


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


@optimizers.register("sgd", "stochastic gradient descent (momentum, nesterov)", SGDParams)
def _opt_sgd(p: SGDParams, params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, nesterov=p.nesterov, weight_decay=p.weight_decay)


@optimizers.register("adam", "Adam (L2 weight decay added to the gradient)", AdamParams)
def _opt_adam(p: AdamParams, params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay)


@optimizers.register("adamw", "Adam with decoupled weight decay", AdamWParams)
def _opt_adamw(p: AdamWParams, params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay)


@optimizers.register("rmsprop", "RMSprop", RMSpropParams)
def _opt_rmsprop(p: RMSpropParams, params) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(params, lr=p.lr, alpha=p.alpha, eps=p.eps, momentum=p.momentum, weight_decay=p.weight_decay)


def build_optimizer(spec: dict[str, Any], params) -> torch.optim.Optimizer:
    return optimizers.get(spec["name"]).build(optimizers.params_of(spec), params)


# --------------------------------------------------------------------------------------------
# Datasets (the loaders live in data.py; this is the vocabulary and its documentation)
# --------------------------------------------------------------------------------------------

datasets = Registry("dataset")
for _name, _doc in {
    "gaussian": "synthetic: one Gaussian cluster per class in `dim` dimensions (spread `noise`)",
    "teacher": "synthetic: N(0, 1) inputs labelled by a fixed random teacher network",
    "spirals": "synthetic: `classes` interleaved spiral arms in 2-D, embedded in `dim` dimensions",
    "images": "synthetic 1x28x28 images: a class template shifted and noised (no download; for CNNs)",
    "mnist": "the four MNIST IDX files (gzipped or not) in the folder `path`; pixels in [0, 1]",
    "npz": "a NumPy .npz at `path` with x_train, y_train, x_test, y_test (or x, y, split by n_train/n_test)",
    "csv": "a CSV at `path` with a header; the `target` column holds labels, the rest are features",
}.items():
    datasets.add(Component(_name, _doc, NoParams))

REGISTRIES: dict[str, Registry] = {
    "activations": activations,
    "initializers": initializers,
    "normalizations": norms,
    "datasets": datasets,
    "losses": losses,
    "optimizers": optimizers,
}
