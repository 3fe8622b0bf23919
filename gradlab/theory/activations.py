"""One record per activation: everything gradlab knows about it, in one place.

    module(p, width)        the torch module a block uses (p: its typed parameters, specs.py)
    derivative(act, u, y)   act'(u) elementwise, from the input u and the output y = act(u) of the
                            same forward pass (for rrelu in training the output is the only record
                            of the random slopes); the probes' saturated_frac and dead_frac
    maximum(act)            sup |act'| of a built module: a float, or one per unit for PReLU's
                            learned slopes
    f(p, x), df(p, x)       numpy forms of the function and its derivative, in evaluation mode
                            (rrelu: its mean slope (lower+upper)/2; prelu: its initial slope)
    max_derivative(p)       sup |f'| from the parameters alone
    gain(p)                 PyTorch's `calculate_gain` where it has one; otherwise None and the
                            gain is `variance_preserving_gain`
    kinks(p)                the x where f or f' is not smooth (where quadrature must split)
    scale(p)                the width in x over which f bends (1; softplus 1/beta)

and, built on those, `gaussian_moments(spec, q)`: E[f(sqrt(q) z)^2] and E[f'(sqrt(q) z)^2] for
z ~ N(0, 1), what the mean-field theory of signal propagation needs (issue 10).

Why one record and torch imported lazily inside its functions, rather than a torch table in
components.py beside a numpy table here: a table per aspect joined by name is what this replaces
(builders, derivatives and gains had drifted into three tables). Importing this module costs no
torch, so the numpy forms, gains and moments serve the torch-free theory module; the torch parts
import torch when first called, which only a training process does.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np

from gradlab.theory import gaussian
from gradlab.vocab import specs
from gradlab.vocab.registry import implementations

if TYPE_CHECKING:
    import torch
    from torch import nn


def _torch():
    import torch  # a dictionary lookup once torch is loaded

    return torch


def _nn():
    from torch import nn

    return nn


@dataclass(frozen=True)
class Activation:
    """Everything about one activation (the module docstring says what each field is). `p` is the
    activation's typed parameters (specs.py); the public functions below take a spec instead."""

    name: str
    module: Callable[[Any, int], "nn.Module"]
    derivative: Callable[["nn.Module", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]
    maximum: Callable[["nn.Module"], "float | torch.Tensor"]
    f: Callable[[Any, np.ndarray], np.ndarray]
    df: Callable[[Any, np.ndarray], np.ndarray]
    max_derivative: Callable[[Any], float]
    gain: Callable[[Any], float] | None = None
    kinks: Callable[[Any], tuple[float, ...]] = lambda p: ()
    scale: Callable[[Any], float] = lambda p: 1.0
    regions: "Regions | None" = None  # where a unit is inactive, saturated, dead (set below)


@dataclass(frozen=True)
class Regions:
    """What inactive, saturated and dead mean for one activation family (the probes'
    inactive_frac, saturated_frac, dead_frac; t is `log.saturation_threshold`, default 0.05).

    inactive   u <= 0, whatever the slope there: the ReLU family's off side, and the negative side
               of the functions that are the identity for large u (ELU, SELU, GELU, SiLU, softplus).
               Empty for functions without such a side (sigmoid, tanh, hardtanh, identity).
    saturated  u in a flat tail of a saturating function, where |f'(u)| < t * sup |f'|:
               `tail` "both" (sigmoid, tanh, hardtanh: either tail), "negative" (the negative tail
               only: u < `tail_start` as well, the bottom of f''s negative lobe for GELU and SiLU,
               so the band around f''s zero crossing, GELU's u ~ -0.75, is not a tail), or None
               (the ReLU family, identity: no saturating tail; the column is empty).
    dead       (every family) f'(u) = 0 exactly, as autograd computes it, on every example of the
               batch (and every position of a CNN channel): no gradient at all passes the unit.
               A Leaky ReLU unit (slope > 0) is never dead; a ReLU unit that is off on the whole
               batch is.
    """

    family: str  # rectifier | saturating | negative tail | linear
    inactive: bool
    tail: str | None  # both | negative | None
    saturated: str  # the exact rule, for the records reference and --explain ('' when the column is empty)
    tail_start: Callable[[Any], float] = lambda p: 0.0  # negative tails: u below this (p: typed params)

    @property
    def inactive_rule(self) -> str:
        return "u <= 0" if self.inactive else ""


# --------------------------------------------------------------------------------------------
# Constants and closed forms shared by the torch and numpy sides
# --------------------------------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_INV_SQRT2 = 1 / math.sqrt(2)
_INV_SQRT2PI = 1 / math.sqrt(2 * math.pi)
_GELU_TANH_K = math.sqrt(2 / math.pi)
# sup of the tanh-approximate GELU's derivative, rounded (the exact value is 1.128993...): kept as
# the probes have always used it, so recorded saturation counts stay identical.
_GELU_TANH_MAX = 1.1289


def _gelu_max() -> float:
    # GELU'(u) = Phi(u) + u phi(u) peaks at u = sqrt(2)
    u = math.sqrt(2.0)
    return 0.5 * (1 + math.erf(u * _INV_SQRT2)) + u * math.exp(-u * u / 2) * _INV_SQRT2PI


@functools.cache
def _silu_max() -> float:
    # SiLU'(u) = s(u)(1 + u(1 - s(u))) peaks near u = 2.3994; found on a fine grid (the value the
    # probes have always used; within 1e-12 of the root of SiLU'' = 0)
    u = np.linspace(0, 6, 600001)
    s = 1 / (1 + np.exp(-u))
    return float((s * (1 + u * (1 - s))).max())


def _expit(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x); e^-x may overflow to inf for x < -709, which gives the right 0."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; math.erf is exact to double precision


def _Phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + _erf(np.asarray(x) * _INV_SQRT2).astype(float))


def _one_or_more(slope: float) -> float:
    """sup |f'| of a function with slope 1 on one side and `slope` on the other."""
    return max(1.0, abs(slope))


def _leaky_gain(slope: float) -> float:
    # PyTorch's calculate_gain('leaky_relu', slope)
    return math.sqrt(2.0 / (1 + slope**2))


# --------------------------------------------------------------------------------------------
# Torch derivatives (closed forms; checked against autograd in the tests)
# --------------------------------------------------------------------------------------------


def _autograd_derivative(act, u, y):
    # the activation is elementwise, so the gradient of the sum is the elementwise derivative
    torch = _torch()
    with torch.enable_grad():
        leaf = u.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(act(leaf).sum(), leaf)
    return grad


def _piecewise_linear(slope_of_negatives) -> Callable:
    """Derivative 1 for u > 0 and a slope for u <= 0 (the ReLU family)."""

    def derivative(act, u, y):
        return _torch().where(u > 0, _torch().ones_like(u), slope_of_negatives(act, u, y))

    return derivative


def _unit_slopes(act, u):
    # one slope (shape (1,)) or one per unit/channel (C,) -> broadcastable over (B, C[, H, W])
    weight = act.weight.detach()
    return weight if weight.numel() == 1 else weight.reshape(1, -1, *([1] * (u.dim() - 2)))


def _rrelu_slopes(act, u, y):
    # in training the slope of each element was drawn at random: read it back as y / u
    torch = _torch()
    safe = torch.where(u < 0, u, torch.ones_like(u))
    return torch.where(u < 0, y / safe, torch.full_like(u, (act.lower + act.upper) / 2))


def _silu_derivative(act, u, y):
    s = _torch().sigmoid(u)
    return s * (1 + u * (1 - s))


def _gelu_derivative(act, u, y):
    if act.approximate == "tanh":
        return _autograd_derivative(act, u, y)
    torch = _torch()
    return 0.5 * (1 + torch.erf(u * _INV_SQRT2)) + u * torch.exp(-0.5 * u * u) * _INV_SQRT2PI


# --------------------------------------------------------------------------------------------
# numpy forms
# --------------------------------------------------------------------------------------------


def _relu_like(slope: float) -> tuple[Callable, Callable]:
    return (lambda x: np.where(x > 0, x, slope * x)), (lambda x: np.where(x > 0, 1.0, slope))


def _elu_f(alpha: float, x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _elu_df(alpha: float, x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0)))


def _gelu_f(p, x):
    if p.approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(_GELU_TANH_K * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x * _INV_SQRT2).astype(float))


def _gelu_df(p, x):
    if p.approximate == "tanh":
        t = np.tanh(_GELU_TANH_K * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_TANH_K * (1 + 3 * 0.044715 * x**2)
    return _Phi(x) + x * np.exp(-0.5 * x * x) * _INV_SQRT2PI


def _silu_f(p, x):
    with np.errstate(over="ignore"):  # PyTorch's formula; e^-x = inf gives the right -0
        return x / (1 + np.exp(-x))


def _softplus_f(p, x):
    # PyTorch's: linear above beta * x > threshold
    # (PyTorch's formula log1p(exp(beta x)) / beta; exp is capped where it would overflow)
    bx = p.beta * x
    return np.where(bx > p.threshold, x, np.log1p(np.exp(np.minimum(bx, min(p.threshold, 700.0)))) / p.beta)


def _softplus_df(p, x):
    bx = p.beta * x
    return np.where(bx > p.threshold, 1.0, _expit(bx))


def _rrelu_mean(p) -> float:
    return (p.lower + p.upper) / 2


# --------------------------------------------------------------------------------------------
# The records
# --------------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Activation] = implementations(specs.activations, {
    "sigmoid": Activation(
        "sigmoid", lambda p, w: _nn().Sigmoid(),
        lambda a, u, y: y * (1 - y), lambda a: 0.25,
        lambda p, x: _expit(x), lambda p, x: _expit(x) * _expit(-x), lambda p: 0.25,
        gain=lambda p: 1.0,
    ),
    "tanh": Activation(
        "tanh", lambda p, w: _nn().Tanh(),
        lambda a, u, y: 1 - y * y, lambda a: 1.0,
        lambda p, x: np.tanh(x), lambda p, x: 1 - np.tanh(x) ** 2, lambda p: 1.0,
        gain=lambda p: 5.0 / 3,
    ),
    "relu": Activation(
        "relu", lambda p, w: _nn().ReLU(),
        _piecewise_linear(lambda a, u, y: _torch().zeros_like(u)), lambda a: 1.0,
        lambda p, x: _relu_like(0.0)[0](x), lambda p, x: _relu_like(0.0)[1](x), lambda p: 1.0,
        gain=lambda p: math.sqrt(2.0), kinks=lambda p: (0.0,),
    ),
    "leaky_relu": Activation(
        "leaky_relu", lambda p, w: _nn().LeakyReLU(p.negative_slope),
        _piecewise_linear(lambda a, u, y: _torch().full_like(u, a.negative_slope)), lambda a: _one_or_more(a.negative_slope),
        lambda p, x: _relu_like(p.negative_slope)[0](x), lambda p, x: _relu_like(p.negative_slope)[1](x),
        lambda p: _one_or_more(p.negative_slope),
        gain=lambda p: _leaky_gain(p.negative_slope), kinks=lambda p: (0.0,),
    ),
    "prelu": Activation(
        "prelu", lambda p, w: _nn().PReLU(num_parameters=1 if p.shared else w, init=p.init),
        _piecewise_linear(lambda a, u, y: _unit_slopes(a, u).expand_as(u)), lambda a: a.weight.detach().abs().clamp(min=1.0),
        lambda p, x: _relu_like(p.init)[0](x), lambda p, x: _relu_like(p.init)[1](x), lambda p: _one_or_more(p.init),
        gain=lambda p: _leaky_gain(p.init), kinks=lambda p: (0.0,),
    ),
    "rrelu": Activation(
        "rrelu", lambda p, w: _nn().RReLU(p.lower, p.upper),
        _piecewise_linear(_rrelu_slopes), lambda a: _one_or_more(a.upper),
        lambda p, x: _relu_like(_rrelu_mean(p))[0](x), lambda p, x: _relu_like(_rrelu_mean(p))[1](x),
        lambda p: _one_or_more(p.upper),  # training draws slopes up to `upper`
        gain=lambda p: _leaky_gain(_rrelu_mean(p)), kinks=lambda p: (0.0,),
    ),
    "elu": Activation(
        "elu", lambda p, w: _nn().ELU(p.alpha),
        lambda a, u, y: _torch().where(u > 0, _torch().ones_like(u), y + a.alpha), lambda a: _one_or_more(a.alpha),
        lambda p, x: _elu_f(p.alpha, x), lambda p, x: _elu_df(p.alpha, x), lambda p: _one_or_more(p.alpha),
        kinks=lambda p: (0.0,),
    ),
    "selu": Activation(
        "selu", lambda p, w: _nn().SELU(),
        lambda a, u, y: _torch().where(u > 0, _torch().full_like(u, _SELU_SCALE), y + _SELU_SCALE * _SELU_ALPHA),
        lambda a: _SELU_SCALE * _SELU_ALPHA,
        lambda p, x: _SELU_SCALE * _elu_f(_SELU_ALPHA, x), lambda p, x: _SELU_SCALE * _elu_df(_SELU_ALPHA, x),
        lambda p: _SELU_SCALE * _SELU_ALPHA,
        gain=lambda p: 0.75, kinks=lambda p: (0.0,),
    ),
    "gelu": Activation(
        "gelu", lambda p, w: _nn().GELU(approximate=p.approximate),
        _gelu_derivative, lambda a: _gelu_max() if a.approximate == "none" else _GELU_TANH_MAX,
        _gelu_f, _gelu_df, lambda p: _gelu_max() if p.approximate == "none" else _GELU_TANH_MAX,
    ),
    "silu": Activation(
        "silu", lambda p, w: _nn().SiLU(),
        _silu_derivative, lambda a: _silu_max(),
        _silu_f, lambda p, x: _expit(x) * (1 + x * _expit(-x)), lambda p: _silu_max(),
    ),
    "softplus": Activation(
        "softplus", lambda p, w: _nn().Softplus(p.beta, p.threshold),
        lambda a, u, y: _torch().where(u * a.beta > a.threshold, _torch().ones_like(u), _torch().sigmoid(a.beta * u)),
        lambda a: 1.0,
        _softplus_f, _softplus_df, lambda p: 1.0,
        kinks=lambda p: (p.threshold / p.beta,), scale=lambda p: 1 / p.beta,  # kink: where PyTorch switches to the identity
    ),
    "hardtanh": Activation(
        "hardtanh", lambda p, w: _nn().Hardtanh(p.min_val, p.max_val),
        lambda a, u, y: ((u > a.min_val) & (u < a.max_val)).to(u.dtype), lambda a: 1.0,
        lambda p, x: np.clip(x, p.min_val, p.max_val), lambda p, x: ((x > p.min_val) & (x < p.max_val)).astype(float),
        lambda p: 1.0,
        kinks=lambda p: (p.min_val, p.max_val),
    ),
    "identity": Activation(
        "identity", lambda p, w: _nn().Identity(),
        lambda a, u, y: _torch().ones_like(u), lambda a: 1.0,
        lambda p, x: np.asarray(x, dtype=float), lambda p, x: np.ones_like(x, dtype=float), lambda p: 1.0,
        gain=lambda p: 1.0,
    ),
})  # fmt: skip


@functools.lru_cache(maxsize=16)
def _lobe_bottom(name: str, items: tuple) -> float:
    """Where f' is smallest on the negative side (GELU, SiLU dip below 0 there and then rise back to
    0): the u below which |f'| falls monotonically to 0, the start of the flat negative tail. Found
    on a grid of step 1e-5 (exact GELU: -sqrt 2, where GELU'' = phi(u)(2 - u^2) = 0; SiLU: minus
    the argmax of SiLU', as SiLU'(u) + SiLU'(-u) = 1)."""
    record, p = _record(dict(items))
    if name == "gelu" and p.approximate == "none":
        return -math.sqrt(2.0)
    u = np.linspace(-10, 0, 1000001)
    return float(u[np.argmin(record.df(p, u))])


def _tail_start(name: str):
    return lambda p: _lobe_bottom(name, tuple(p.model_dump().items()) + (("name", name),))


_RECTIFIER = Regions("rectifier", inactive=True, tail=None, saturated="")
_REGIONS: dict[str, Regions] = {
    "sigmoid": Regions("saturating", False, "both", "sigmoid'(u) = y(1 - y) < t / 4, on either tail (t = 0.05: |u| > 4.36)"),
    "tanh": Regions("saturating", False, "both", "tanh'(u) = 1 - y^2 < t, on either tail (t = 0.05: |u| > 2.18)"),
    "hardtanh": Regions("saturating", False, "both", "u <= min_val or u >= max_val (f' = 0 there; below t * 1 nowhere else)"),
    "relu": _RECTIFIER,
    "leaky_relu": _RECTIFIER,
    "prelu": _RECTIFIER,
    "rrelu": _RECTIFIER,
    "softplus": Regions("negative tail", True, "negative", "u < 0 and sigmoid(beta u) < t (t = 0.05: u < -2.94 / beta)"),
    "elu": Regions("negative tail", True, "negative", "u < 0 and alpha e^u < t * max(1, alpha)"),
    "selu": Regions("negative tail", True, "negative", "u < 0 and e^u < t (scale * alpha * e^u below t of its sup scale * alpha; t = 0.05: u < -3.00)"),
    "gelu": Regions("negative tail", True, "negative", "u < -sqrt(2) (the bottom of the negative lobe of GELU') and |GELU'(u)| < t * sup GELU' (t = 0.05: u < -2.28); the band around the zero crossing of GELU' at u = -0.75 passes gradient and is not a tail", _tail_start("gelu")),
    "silu": Regions("negative tail", True, "negative", "u < -2.3994 (the bottom of the negative lobe of SiLU') and |SiLU'(u)| < t * sup SiLU' (t = 0.05: u < -3.93)", _tail_start("silu")),
    "identity": Regions("linear", False, None, ""),
}  # fmt: skip
ACTIVATIONS = {name: dataclasses.replace(record, regions=_REGIONS[name]) for name, record in ACTIVATIONS.items()}

def regions_table() -> str:
    """The records reference's table of what inactive_frac and saturated_frac count, per activation."""
    lines = ["| activation | family | inactive_frac counts | saturated_frac counts (t = log.saturation_threshold) |", "| --- | --- | --- | --- |"]
    for name, record in ACTIVATIONS.items():
        r = record.regions
        cells = [f"`{name}`", r.family, r.inactive_rule or "(empty)", r.saturated or "(empty: no saturating tail)"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


DEAD_RULE = "f'(u) = 0 exactly (as autograd computes it) on every example of the batch, and every position of a CNN channel"


def get(name: str) -> Activation:
    """The record of an activation by name or alias (did-you-mean error otherwise)."""
    return ACTIVATIONS[specs.activations.get(name).name]


def _record(spec: Any) -> tuple[Activation, Any]:
    """(record, typed parameters) of a spec: a name or a mapping, resolved as a config would be."""
    resolved = specs.activations.resolve(spec)
    return ACTIVATIONS[resolved["name"]], specs.activations.params_of(resolved)


# --------------------------------------------------------------------------------------------
# Torch side: building, and what the probes ask
# --------------------------------------------------------------------------------------------


def build(spec: dict[str, Any], width: int) -> "nn.Module":
    """The activation module of a resolved spec, for a layer of `width` units (PReLU's slopes)."""
    record = get(spec["name"])
    return record.module(specs.activations.params_of(spec), width)


def saturation_mask(name: str, act: "nn.Module", u: "torch.Tensor", y: "torch.Tensor", threshold: float) -> "torch.Tensor":
    """Where |act'(u)| < threshold * max |act'| (bool, shape of u)."""
    record = ACTIVATIONS[name]
    maximum = record.maximum(act)
    if not isinstance(maximum, float) and maximum.numel() > 1:
        maximum = maximum.reshape(1, -1, *([1] * (u.dim() - 2)))  # per unit/channel
    return record.derivative(act, u, y).abs() < threshold * maximum


def region_counts(name: str, act: "nn.Module", u: "torch.Tensor", y: "torch.Tensor", threshold: float) -> dict[str, "torch.Tensor"]:
    """This activation's counts on one forward pass, as 0-d tensors still on the device (u, y of
    shape (B, C[, H, W]); a unit is dim 1, a channel of a CNN):

        inactive  (example, unit[, position]) entries with u <= 0      (absent: no such side)
        saturated entries in a flat tail (`Regions`, threshold t)      (absent: no tail)
        alive     units whose f'(u) is nonzero somewhere in the batch  (dead = C - alive)
        dact      sum of |f'(u)| over all entries                      (dact_mean = dact / u.numel())
        dact_sq   sum of f'(u)^2 over all entries                      (rms f' = sqrt(dact_sq / u.numel()))

    ReLU's are read off y (relu' is 1 exactly where y > 0, else 0): its inactive count is the
    complement of a sign sum, and |f'| sums to the active count."""
    torch = _torch()
    record = ACTIVATIONS[name]
    regions = record.regions
    unit_dims = (0, *range(2, u.dim()))
    counts: dict[str, torch.Tensor] = {}
    if name == "relu":
        active = y.sign().sum() if y.numel() < 2**24 else (y > 0).sum()  # exact: a float sum of ones below 2^24
        counts["inactive"] = u.numel() - active
        counts["alive"] = (y.amax(dim=unit_dims) > 0).sum()
        counts["dact"] = counts["dact_sq"] = active
        return counts
    slope = record.derivative(act, u, y)
    magnitude = slope.abs()
    counts["dact"] = magnitude.sum()
    counts["dact_sq"] = (magnitude * magnitude).sum()
    counts["alive"] = (magnitude.amax(dim=unit_dims) > 0).sum()
    if regions.inactive:
        counts["inactive"] = (u <= 0).sum()
    if regions.tail is not None:
        maximum = record.maximum(act)
        if not isinstance(maximum, float) and maximum.numel() > 1:
            maximum = maximum.reshape(1, -1, *([1] * (u.dim() - 2)))
        flat = magnitude < threshold * maximum
        if regions.tail == "negative":
            flat &= u < _module_tail_start(name, getattr(act, "approximate", None))
        counts["saturated"] = flat.sum()
    return counts


@functools.lru_cache(maxsize=16)
def _module_tail_start(name: str, approximate: str | None) -> float:
    """The start of a built module's negative tail (it depends on GELU's approximation only)."""
    spec = {"name": name} if approximate is None else {"name": name, "approximate": approximate}
    return ACTIVATIONS[name].regions.tail_start(specs.activations.params_of(specs.activations.resolve(spec)))


# --------------------------------------------------------------------------------------------
# numpy side: function values, gains, Gaussian moments (no torch)
# --------------------------------------------------------------------------------------------


def forward(spec: Any, x: np.ndarray) -> np.ndarray:
    """f(x) in evaluation mode, as float64."""
    record, p = _record(spec)
    return record.f(p, np.asarray(x, dtype=float))


def derivative(spec: Any, x: np.ndarray) -> np.ndarray:
    """f'(x) in evaluation mode, as float64 (at a kink: the side PyTorch's autograd takes)."""
    record, p = _record(spec)
    return record.df(p, np.asarray(x, dtype=float))


def max_derivative(spec: Any) -> float:
    """sup |f'| over the real line (for rrelu: over every slope training may draw)."""
    record, p = _record(spec)
    return float(record.max_derivative(p))


def gain(spec: Any) -> float:
    """The init gain that suits an activation (`gain: auto`).

    PyTorch's `calculate_gain` values where it defines one (relu sqrt 2, tanh 5/3, selu 3/4,
    leaky ReLUs sqrt(2 / (1 + a^2)) with the slope, or rrelu's mean slope; sigmoid and identity 1).
    For the rest (elu, gelu, silu, softplus, hardtanh) it is `variance_preserving_gain`.
    """
    record, p = _record(spec)
    return record.gain(p) if record.gain is not None else variance_preserving_gain(spec)


def variance_preserving_gain(spec: Any) -> float:
    """1 / sqrt(E[f(z)^2]) for z ~ N(0, 1): the gain that keeps the second moment of the signal
    from layer to layer (the rule that gives ReLU its sqrt 2).

    By the trapezoid rule on 200001 points over [-12, 12], the rule this gain has always been
    computed by (weights drawn with it are part of recorded runs); it agrees with
    `gaussian_moments(spec, 1).second_moment` to about 1e-9 (tested).
    """
    resolved = specs.activations.resolve(spec)
    return _trapezoid_gain(tuple(resolved.items()))


@functools.lru_cache(maxsize=64)
def _trapezoid_gain(items: tuple) -> float:
    record, p = _record(dict(items))
    z = np.linspace(-12, 12, 200001)
    density = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    second_moment = np.trapezoid(record.f(p, z) ** 2 * density, z)
    return float(1.0 / np.sqrt(second_moment))


class GaussianMoments(NamedTuple):
    second_moment: float  # E[f(sqrt(q) z)^2]
    derivative_second_moment: float  # E[f'(sqrt(q) z)^2]


# E[g(sqrt(q) z)], z ~ N(0, 1), is gaussian.expectation: composite Gauss-Legendre on panels cut at
# every unit of z, at every unit of x = sqrt(q) z times the activation's feature scale up to 64
# units, and at its kinks (why not Gauss-Hermite is written there). Exact to double precision here
# at any q: tested against mpmath to 1e-10 and against the asymptotic forms at q = 1e12.


def gaussian_moments(spec: Any, q: float) -> GaussianMoments:
    """E[f(sqrt(q) z)^2] and E[f'(sqrt(q) z)^2], z ~ N(0, 1): a layer's output second moment and
    its squared slope, averaged over pre-activations of variance q (evaluation-mode f)."""
    record, p = _record(spec)
    kinks, scale = record.kinks(p), record.scale(p)
    return GaussianMoments(
        gaussian.expectation(lambda x: record.f(p, x) ** 2, q, kinks, scale=scale),
        gaussian.expectation(lambda x: record.df(p, x) ** 2, q, kinks, scale=scale),
    )
