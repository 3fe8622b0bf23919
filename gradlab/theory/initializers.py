"""What each initializer draws from: the mean and the variance of an entry of the tensor it fills,
given the layer's fan-in and fan-out, stated without drawing anything (no torch).

    variance(spec, fan_in, fan_out, activation, receptive_field=1)   Var of one entry
    mean(spec)                                                       E of one entry

fan_in and fan_out are PyTorch's (`nn.init._calculate_fan_in_and_fan_out`): for a Linear weight of
shape (out, in) they are in and out; for a Conv2d weight (out, in, k, k) they are in*k*k and
out*k*k, and `receptive_field` = k*k. For a bias, pass the fans of the layer's weight (PyTorch's
default bias init depends on the weight's fan-in).

Per initializer (g the gain: a number, or for `gain: auto` activations.gain of the activation):
    normal              std^2                              mean: mean
    uniform             (b - a)^2 / 12                     mean: (a + b) / 2
    xavier_normal       g^2 * 2 / (fan_in + fan_out)       (xavier_uniform: the same; its bound is sqrt(3) std)
    kaiming_normal      g^2 / fan, fan = fan_in or fan_out by `mode`, g = calculate_gain(nonlinearity, a)
    kaiming_uniform     the same (bound sqrt(3) std)
    lecun_normal        1 / fan_in
    orthogonal          g^2 / max(rows, cols), rows = fan_out / receptive_field, cols = fan_in: PyTorch
                        flattens the weight to (rows, cols) and makes the shorter side's vectors
                        orthonormal, so the squares of the entries sum to g^2 * min(rows, cols)
                        exactly; a square matrix gives g^2 / fan_in. (The mean square of the
                        drawn matrix, exact for every draw; the mean is 0 by symmetry.)
    identity            the matrix g I (rows x cols as for orthogonal): its min(rows, cols) diagonal entries are g,
                        the rest 0; variance g^2 m - (g m)^2 and mean g m with m = min(rows, cols) / (rows cols),
                        exact (mean() needs the fans for it)
    variance_scaling    scale / n, n = fan_in, fan_out or their mean; exact for every distribution
                        (the truncated normal's std is divided by the truncation's 0.8796...)
    constant, zeros     0                                  mean: value, 0
    fixup               g^2 / fan_in, g = activations.gain of the activation: the draw before the
                        model rescales it (Zhang et al. 2019; models.Stack.initialize)
    default             PyTorch's own Linear/Conv init: the weight kaiming_uniform with a = sqrt(5),
                        i.e. U(+-1/sqrt(fan_in)), variance 1 / (3 fan_in); the bias
                        U(+-1/sqrt(fan_in)) with the weight's fan_in: also 1 / (3 fan_in).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from gradlab.theory import activations
from gradlab.vocab import specs
from gradlab.vocab.registry import implementations

# PyTorch's nn.init.calculate_gain, for the nonlinearities kaiming_* accept.
_KAIMING_GAINS: dict[str, Callable[[float], float]] = {
    "linear": lambda a: 1.0,
    "sigmoid": lambda a: 1.0,
    "tanh": lambda a: 5.0 / 3,
    "relu": lambda a: math.sqrt(2.0),
    "leaky_relu": lambda a: math.sqrt(2.0 / (1 + a**2)),
    "selu": lambda a: 3.0 / 4,
}


def _gain(p, activation: dict[str, Any] | None) -> float:
    if p.gain != "auto":
        return float(p.gain)
    if activation is None:
        raise ValueError("gain: auto needs the activation the layer feeds")
    return activations.gain(activation)


def _kaiming(p, fan_in: int, fan_out: int) -> float:
    fan = fan_in if p.mode == "fan_in" else fan_out
    return _KAIMING_GAINS[p.nonlinearity](p.a) ** 2 / fan


def _variance_scaling(p, fan_in: int, fan_out: int) -> float:
    n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[p.mode]
    return p.scale / n


# variance(params, fan_in, fan_out, activation, receptive_field)
_VARIANCES = implementations(specs.initializers, {
    "normal": lambda p, fi, fo, act, rf: p.std**2,
    "uniform": lambda p, fi, fo, act, rf: (p.b - p.a) ** 2 / 12,
    "xavier_normal": lambda p, fi, fo, act, rf: _gain(p, act) ** 2 * 2 / (fi + fo),
    "xavier_uniform": lambda p, fi, fo, act, rf: _gain(p, act) ** 2 * 2 / (fi + fo),
    "kaiming_normal": lambda p, fi, fo, act, rf: _kaiming(p, fi, fo),
    "kaiming_uniform": lambda p, fi, fo, act, rf: _kaiming(p, fi, fo),
    "lecun_normal": lambda p, fi, fo, act, rf: 1 / fi,
    "orthogonal": lambda p, fi, fo, act, rf: _gain(p, act) ** 2 / max(fo // rf, fi),
    "identity": lambda p, fi, fo, act, rf: _identity_moments(_gain(p, act), fo // rf, fi)[1],
    "variance_scaling": lambda p, fi, fo, act, rf: _variance_scaling(p, fi, fo),
    "constant": lambda p, fi, fo, act, rf: 0.0,
    "zeros": lambda p, fi, fo, act, rf: 0.0,
    "default": lambda p, fi, fo, act, rf: 1 / (3 * fi),
    # the tensor-wise draw only (He normal with the activation's gain); models.Stack.initialize then
    # scales or zeroes each layer by its place in the network, which a tensor's fans do not say
    "fixup": lambda p, fi, fo, act, rf: activations.gain(act) ** 2 / fi,
})  # fmt: skip

def _identity_moments(gain: float, rows: int, cols: int) -> tuple[float, float]:
    """(mean, variance) over the entries of gain * I (rows x cols): min(rows, cols) entries are gain."""
    share = min(rows, cols) / (rows * cols)
    return gain * share, gain**2 * share - (gain * share) ** 2


_MEANS = {"normal": lambda p: p.mean, "uniform": lambda p: (p.a + p.b) / 2, "constant": lambda p: p.value}


def variance(spec: Any, fan_in: int, fan_out: int, activation: Any = None, receptive_field: int = 1) -> float:
    """The variance of one entry drawn by the initializer `spec` (a name or a mapping) for a layer
    with these fans; `activation` (a spec) is needed only for `gain: auto`."""
    resolved = specs.initializers.resolve(spec)
    if fan_in < 1 or fan_out < 1 or receptive_field < 1:
        raise ValueError(f"fans and receptive field must be >= 1, got fan_in={fan_in}, fan_out={fan_out}, receptive_field={receptive_field}")
    p = specs.initializers.params_of(resolved)
    return float(_VARIANCES[resolved["name"]](p, fan_in, fan_out, activation, receptive_field))


def mean(spec: Any, fan_in: int | None = None, fan_out: int | None = None, activation: Any = None, receptive_field: int = 1) -> float:
    """The mean of one entry drawn by the initializer `spec` (0 for every zero-centred one); the
    fans are needed for `identity` only (its mean depends on the matrix's shape)."""
    resolved = specs.initializers.resolve(spec)
    if resolved["name"] == "identity":
        if fan_in is None or fan_out is None:
            raise ValueError("identity's mean depends on the matrix's shape: give fan_in and fan_out")
        p = specs.initializers.params_of(resolved)
        return _identity_moments(_gain(p, activation), fan_out // receptive_field, fan_in)[0]
    rule = _MEANS.get(resolved["name"])
    return float(rule(specs.initializers.params_of(resolved))) if rule else 0.0
