"""Mean-field theory of a fully connected stack without normalization (Poole et al. 2016, Schoenholz
et al. 2017): the length map and its fixed point, χ₁, the per-layer gradient factors, depth scales,
the phase and the correlation map; and the conventions every theory module shares (batchnorm.py,
residual.py, recurrent.py).

Pure functions on numbers (numpy only: no torch, no pandas), so `gradlab theory` and `gradlab
compare` can predict without building a model. predict.py wires them to configs: an activation
record supplies the numpy forms, the initializers supply σw² and σb².

Conventions used throughout the theory modules
----------------------------------------------
* An *activation* is any object with numpy forms ``f(x)`` (the function) and ``df(x)`` (its
  derivative), both elementwise on float arrays.
* ``z ~ N(0, 1)``. ``E[g(√q z)]`` is computed by gradlab.theory.gaussian, the one home of gradlab's
  Gaussian quadrature (shared with activations.py): composite Gauss–Legendre on panels of
  |z| ≤ 12 cut at the activation's kinks and at every unit of z and of x = √q z (exact to double
  precision for every activation of the registry at any q), or probabilists' Gauss–Hermite
  (``method="hermite"``), which is accurate for smooth, moderately scaled integrands but not across a
  kink (ReLU's mean: 3e-3 off) or for a steep tanh (large q: 3% off). Closed forms are used only in
  the tests.
* σw² of a linear layer is ``Var(W_ij) · fan_in`` (so He init for ReLU has σw² = 2 whatever the
  width), σb² is ``Var(b_i)``.
* Layers are counted as gradlab counts them: block 0 is the hidden block nearest the input, block
  ``depth − 1`` the last hidden block. ``q[l]`` is the variance of block l's pre-activation
  z = W h + b (the quantity whose gradient gradlab records as ``delta_norm``).
* The input enters through its second moment ``x_second_moment = mean(x²)`` over examples and
  features (Poole et al.'s q⁰). Block 0's pre-activation variance is then
  ``q[0] = σw²₀ · mean(x²) + σb²₀`` with block 0's own σw²₀ (its fan_in is the input dimension), and
  ``q[l] = σw²_l · E[φ(√q[l−1] z)²] + σb²_l`` after that.
* Gradients flow from the last hidden block toward the first. A *per-layer factor*
  ``factor[l] = ‖∂L/∂z_l‖ / ‖∂L/∂z_{l+1}‖`` for l = 0 … depth−2 (above 1: the gradient grows toward
  the input). gradlab's measured ``layer_factor`` is ``(‖∂L/∂z_0‖ / ‖∂L/∂z_{depth−1}‖)^(1/(depth−1))``,
  so its prediction is the geometric mean of these factors (`geometric_mean_factor`).
* All predictions are mean-field: infinitely wide layers, weights independent of the back-propagated
  signal (the gradient-independence assumption of Schoenholz et al. 2017). A prediction that a
  theory does not make is ``None``, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import numpy as np

from gradlab.theory import gaussian


class Activation(Protocol):
    """The numpy forms an activation record provides.

    An optional attribute ``kinks`` (a tuple of x where φ or φ' is not smooth, e.g. hardtanh's ±1)
    makes the quadrature cut the line there too; x = 0 is always cut, which covers the ReLU family.
    An optional ``scale`` (softplus: 1/β) stretches the x grid the quadrature resolves φ on.
    """

    def f(self, x: np.ndarray) -> np.ndarray: ...

    def df(self, x: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------
# Expectations over an activation's pieces (gradlab.theory.gaussian)
# ----------------------------------------------------------------------------------------------


# A variance beyond this is out of float range for theory: E[φ(√q z)²] squares values up to
# 12·√q, which overflows a double (1.8e308) a little above q = 1e305. A length map that passes it
# has no finite fixed point "beyond float range", and the layers after it carry q = inf; their
# gradient factors are the q → ∞ limits, E[φ'(√q z)²] at q = Q_FLOAT (the corrections are
# O(q^-1/2) = 1e-150 there for every activation whose q can grow without bound).
Q_FLOAT = 1e300

# E[g(√q z)] per (activation, what, q, nodes): combinations of a sweep, the layers of a stack at
# its fixed point and the fixed-point search share them. Only activations with a hashable `key`
# (predict.NumpyActivation: the resolved spec) are cached; the cache is cleared when it is full.
_MOMENTS: dict[tuple, float] = {}
_MOMENTS_MAX = 200_000


def _moment(act: "Activation", what: str, q: float, n: int | None) -> float:
    """E[f²], E[f'²] or E[f f' u] at variance q, cached per activation key."""
    key = getattr(act, "key", None)
    cache_key = (key, what, q, n)
    if key is not None:
        value = _MOMENTS.get(cache_key)
        if value is not None:
            return value
    if what == "f2":
        value = expect(act, lambda u: act.f(u) ** 2, q, n)
    elif what == "df2":
        value = expect(act, lambda u: act.df(u) ** 2, q, n)
    else:
        value = expect(act, lambda u: act.f(u) * act.df(u) * u, q, n)
    if key is not None:
        if len(_MOMENTS) >= _MOMENTS_MAX:
            _MOMENTS.clear()
        _MOMENTS[cache_key] = value
    return value


def kinks_of(act: Activation) -> tuple[float, ...]:
    """Where the activation (or its derivative) is not smooth: 0 and whatever it declares in ``kinks``."""
    return tuple(sorted({0.0, *(float(k) for k in getattr(act, "kinks", ()) or ())}))


def scale_of(act: Activation) -> float:
    """The activation's feature scale in x (1 unless it declares ``scale``)."""
    return float(getattr(act, "scale", 1.0) or 1.0)


def expect(act: Activation, fn: Callable[[np.ndarray], np.ndarray], q: float, n: int | None = None) -> float:
    """E[fn(√q · z)], z ~ N(0, 1), by gaussian.expectation cut at the activation's kinks and on its scale."""
    return gaussian.expectation(fn, q, kinks_of(act), n=n, scale=scale_of(act))


def _expect_2d(act: Activation, fn, q1: float, q2: float, c: float, n: int = gaussian.NODES_2D) -> float:
    return gaussian.expectation_2d(fn, q1, q2, c, n, kinks_of(act))


# ----------------------------------------------------------------------------------------------
# Fully connected, no normalization: Poole et al. 2016, Schoenholz et al. 2017
# ----------------------------------------------------------------------------------------------


def length_map(act: Activation, q: float, sigma_w2: float, sigma_b2: float, n: int | None = None) -> float:
    """The length map of Poole et al. 2016 (eq. 3): q^l = σw² · E[φ(√q^{l−1} z)²] + σb².

    q is the previous layer's pre-activation variance; returns the next one's.
    """
    return sigma_w2 * _moment(act, "f2", q, n) + sigma_b2


def first_layer_variance(x_second_moment: float, sigma_w2: float, sigma_b2: float) -> float:
    """Block 0's pre-activation variance from the input: q[0] = σw² · mean(x²) + σb².

    x_second_moment is mean(x²) over examples and input features (Poole et al.'s q⁰, the input
    treated as a layer without a nonlinearity); σw², σb² are block 0's own.
    """
    if x_second_moment < 0:
        raise ValueError(f"a second moment must be >= 0, got {x_second_moment}")
    return sigma_w2 * x_second_moment + sigma_b2


def per_layer(value: float | Sequence[float], depth: int, name: str) -> list[float]:
    if isinstance(value, (int, float, np.floating, np.integer)):
        return [float(value)] * depth
    values = [float(v) for v in value]
    if len(values) != depth:
        raise ValueError(f"{name} has {len(values)} entries; it needs one per block ({depth}) or a single number")
    return values


def layer_variances(
    act: Activation,
    x_second_moment: float,
    depth: int,
    sigma_w2: float | Sequence[float],
    sigma_b2: float | Sequence[float],
    n: int | None = None,
) -> list[float]:
    """q[l] for blocks l = 0 … depth−1: the length map iterated from the actual input.

    sigma_w2 / sigma_b2: one number for every block, or one per block (block 0's σw² usually differs
    when the input dimension differs from the width and the init fixes the std, not the variance).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    w2 = per_layer(sigma_w2, depth, "sigma_w2")
    b2 = per_layer(sigma_b2, depth, "sigma_b2")
    qs = [first_layer_variance(x_second_moment, w2[0], b2[0])]
    uniform = _uniform_from(w2, b2)
    homogeneous = getattr(act, "homogeneous", False)
    for layer in range(1, depth):
        previous = qs[-1]
        if not previous <= Q_FLOAT:  # beyond float range (or not a number): so is every later layer
            qs.extend([math.inf] * (depth - layer))
            break
        if homogeneous and previous > 0:  # φ(λx) = λφ(x): E[φ(√q z)²] = q E[φ(z)²], one quadrature for the stack
            q = w2[layer] * previous * _moment(act, "f2", 1.0, n) + b2[layer]
        else:
            q = length_map(act, previous, w2[layer], b2[layer], n)
        if not q <= Q_FLOAT:
            q = math.inf
        qs.append(q)
        if layer >= uniform and abs(q - previous) <= _SETTLED * abs(q):
            # at the fixed point to double precision: the map gives this q to every later block
            # (the cost of a stack no longer grows with its depth once it has converged)
            qs.extend([q] * (depth - 1 - layer))
            break
    return qs


# |q − map(q)| within this of q: the fixed point to double precision (a few units in the last place)
_SETTLED = 4e-16


def _uniform_from(*per_block: list[float]) -> int:
    """The first block from which every list holds one value to the end."""
    start = len(per_block[0]) - 1
    while start > 0 and all(values[start - 1] == values[-1] for values in per_block):
        start -= 1
    return start


@dataclass(frozen=True)
class FixedPoint:
    """The outcome of iterating the length map.

    status: ``converged`` (q_star is the stable fixed point reached from q_init), ``diverged`` (q
    grows without bound: no fixed point, e.g. ReLU with σw² > 2, or σw² = 2 with σb² > 0), or
    ``not_converged`` (still moving after the iteration budget; q_star is None).
    """

    q_star: float | None
    status: Literal["converged", "diverged", "not_converged"]
    iterations: int
    detail: str = ""


def fixed_point(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    q_init: float = 1.0,
    rtol: float = 1e-10,
    max_iter: int = 1000,
    q_max: float = Q_FLOAT,
    n: int | None = None,
) -> FixedPoint:
    """The fixed point q* = σw² E[φ(√q* z)²] + σb² reached by iterating the length map from q_init.

    Iteration finds the *stable* fixed point the network actually approaches (Poole et al. 2016).
    Convergence is declared when the remaining distance, estimated from the geometric decay of the
    steps (Aitken: |Δ_k| · r/(1 − r), r = Δ_k/Δ_{k−1}), is below rtol · max(q, 1e-300) — or, for a
    fixed point at 0 (σb² = 0 in the ordered phase), when q itself falls below rtol · q_init.
    When the map is monotone but slow (near a neutral fixed point), the iteration's bracket is
    finished by bisection on q − map(q). Divergence: q exceeds q_max or stops being finite.
    For a fixed point at 0 the returned q_star is a tiny positive number, not 0: at exactly 0 a kinked
    activation's derivative is ill-defined, while the limit q → 0 is what the network sees.
    """
    if q_init <= 0:
        raise ValueError(f"q_init must be > 0, got {q_init}")
    if getattr(act, "homogeneous", False):
        # φ(λx) = λφ(x): the map is linear, q → a·q + σb² with a = σw² E[φ(z)²], so whether a
        # finite fixed point exists is known at once (a within 1e-12 of 1 is exactly 1, as for χ₁)
        a = sigma_w2 * _moment(act, "f2", 1.0, n)
        if a > 1.0 + 1e-12 or (abs(a - 1.0) <= 1e-12 and sigma_b2 > 0):
            how = f"grows ×{a:.6g} per layer" if a > 1.0 + 1e-12 else f"grows by σb² = {sigma_b2:g} per layer"
            return FixedPoint(None, "diverged", 0, f"q {how} without bound (σw² E[φ(z)²] = {a:.6g}): no fixed point")
        if abs(a - 1.0) <= 1e-12:
            return FixedPoint(float(q_init), "converged", 0, "every q is a fixed point (σw² E[φ(z)²] = 1, σb² = 0): the input's stays")
    q = float(q_init)
    previous_step = None
    zero_floor = rtol * q_init
    history = [q]
    for k in range(1, max_iter + 1):
        q_next = length_map(act, q, sigma_w2, sigma_b2, n)
        if not math.isfinite(q_next) or q_next > q_max:
            beyond = " (beyond float range)" if q_max >= Q_FLOAT else ""
            return FixedPoint(None, "diverged", k, f"q exceeded {q_max:g}{beyond} after {k} iterations: no finite fixed point")
        step = q_next - q
        q = q_next
        history.append(q)
        if step == 0.0:
            return FixedPoint(q, "converged", k)
        if q < zero_floor and sigma_b2 == 0.0:
            return FixedPoint(q, "converged", k, "q -> 0")
        if previous_step is not None and previous_step != 0.0:
            r = step / previous_step
            if 0.0 <= r < 1.0 and abs(step) * r / (1.0 - r) <= rtol * max(abs(q), 1e-300):
                return FixedPoint(q, "converged", k)
            if r < 0.0 and abs(step) <= rtol * max(abs(q), 1e-300):
                return FixedPoint(q, "converged", k)
        previous_step = step
    # Slow, monotone approach: finish by bisection on g(q) = map(q) − q inside the bracket the
    # iteration points into.
    refined = _bisect_fixed_point(act, sigma_w2, sigma_b2, history, q_max, rtol, n)
    if refined is not None:
        return refined
    return FixedPoint(None, "not_converged", max_iter, f"q still changing after {max_iter} iterations (last {q:.6g})")


def _bisect_fixed_point(act, sigma_w2, sigma_b2, history, q_max, rtol, n) -> FixedPoint | None:
    steps = np.diff(history[-50:])
    if not (np.all(steps > 0) or np.all(steps < 0)):
        return None

    def g(x: float) -> float:
        return length_map(act, x, sigma_w2, sigma_b2, n) - x

    # g must be clearly of the other sign (beyond the rounding of map(q) at large q) to close a
    # bracket; a map that is q + σb² up to rounding (ReLU at σw² = 2) must read as divergent.
    noise = 1e-9
    q = history[-1]
    if steps[-1] > 0:  # increasing: a root lies above q, unless q grows without bound
        lo, hi = q, q
        while g(hi) > -noise * hi:
            hi *= 2.0
            if hi > q_max:
                return FixedPoint(None, "diverged", len(history) - 1, "map(q) > q for all q above the iterate: no fixed point")
    else:  # decreasing toward a root below q, possibly at 0
        hi, lo = q, q
        while g(lo) < noise * lo:
            lo /= 2.0
            if lo < 1e-300:
                return FixedPoint(lo, "converged", len(history) - 1, "q -> 0")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if g(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= rtol * hi:
            break
    return FixedPoint(0.5 * (lo + hi), "converged", len(history) - 1, "finished by bisection")


def chi1(act: Activation, q: float, sigma_w2: float, n: int | None = None) -> float:
    """χ₁ = σw² · E[φ'(√q z)²] (Schoenholz et al. 2017, eq. 7; Poole et al. 2016).

    At q = q* it is the slope of the correlation map at c = 1 and the factor by which the mean
    squared back-propagated gradient changes per layer: E‖δ_l‖² = χ₁ · E‖δ_{l+1}‖².
    """
    return sigma_w2 * _moment(act, "df2", min(q, Q_FLOAT), n)


def length_map_slope(act: Activation, q: float, sigma_w2: float, n: int | None = None) -> float:
    """χ_q = d(length map)/dq at q = σw² E[φ'(√q z)² + φ(√q z) φ''(√q z)] (Schoenholz 2017, eq. 5).

    Computed without φ'' by Stein's lemma: d/dq E[φ(√q z)²] = E[φ(√q z) φ'(√q z) z] / √q.
    """
    if q <= 0:
        raise ValueError(f"the slope needs q > 0, got {q}")
    return sigma_w2 * _moment(act, "fdfu", q, n) / q


def gradient_factors(
    act: Activation,
    variances: Sequence[float],
    sigma_w2: float | Sequence[float],
    n: int | None = None,
) -> list[float]:
    """Per-layer factors ‖∂L/∂z_l‖ / ‖∂L/∂z_{l+1}‖ for l = 0 … depth−2 (toward the input).

    δ_l = φ'(z_l) ⊙ W_{l+1}ᵀ δ_{l+1} gives, in mean field (Schoenholz et al. 2017, eq. 12),
    E‖δ_l‖² = σw²_{l+1} · E[φ'(√q_l z)²] · E‖δ_{l+1}‖², whatever the widths (σw² = Var W · fan_in).
    So factor[l] = √(σw²_{l+1} · E[φ'(√q[l] z)²]): block l+1's weights, block l's variance.
    variances: q[l] for every block (`layer_variances`); sigma_w2: one number or one per block.
    """
    depth = len(variances)
    w2 = per_layer(sigma_w2, depth, "sigma_w2")
    factors, last, value = [], None, 0.0
    homogeneous = getattr(act, "homogeneous", False)
    for l in range(depth - 1):
        # a stack at its fixed point repeats one factor; for φ(λx) = λφ(x), E[φ'(√q z)²] is the
        # same at every q > 0, so a growing q needs one quadrature, not one per layer
        q = 1.0 if homogeneous and variances[l] > 0 else variances[l]
        if (q, w2[l + 1]) != last:
            last = (q, w2[l + 1])
            value = math.sqrt(chi1(act, q, w2[l + 1], n))
        factors.append(value)
    return factors


def geometric_mean_factor(factors: Sequence[float]) -> float | None:
    """The predicted ``layer_factor``: (Π factors)^(1/len) = (first/last)^(1/(depth−1)); None if empty."""
    if len(factors) == 0:
        return None
    if any(f <= 0 for f in factors):
        return 0.0
    return float(math.exp(sum(math.log(f) for f in factors) / len(factors)))


def depth_scale(chi: float, tol: float = 0.0) -> float:
    """ξ = −1/ln χ (Schoenholz et al. 2017, eqs. 9 and 13): the depth over which a ratio that changes
    by χ per layer changes by a factor e. Signed: positive when χ < 1 (decay over ξ layers), negative
    when χ > 1 (growth over |ξ| layers), infinite at χ = 1; 0 when χ = 0.
    Used with χ₁ for gradients (ξ_∇, of the squared gradient norm) and χ_c for correlations (ξ_c).
    χ within `tol` of 1 counts as exactly 1 (predict passes 1e-12: the stated variances carry
    rounding, He init's σw² reads 2.0000000000000004, which must not turn an exactly critical network
    into one with a depth scale of 4e15).
    """
    if chi < 0:
        raise ValueError(f"chi must be >= 0, got {chi}")
    if chi == 0.0:
        return 0.0
    if chi == 1.0 or abs(chi - 1.0) <= tol:
        return math.inf
    return -1.0 / math.log(chi)


Phase = Literal["ordered", "critical", "chaotic"]


def phase(chi: float, tol: float = 1e-3) -> Phase:
    """Schoenholz et al. 2017's phase from χ₁: ordered (χ₁ < 1 − tol), critical (|χ₁ − 1| ≤ tol),
    chaotic (χ₁ > 1 + tol)."""
    if abs(chi - 1.0) <= tol:
        return "critical"
    return "ordered" if chi < 1.0 else "chaotic"


def correlation_map(
    act: Activation, c: float, q: float, sigma_w2: float, sigma_b2: float, n: int = gaussian.NODES_2D
) -> float:
    """The correlation map (Poole et al. 2016, eq. 5; Schoenholz et al. 2017, eq. 4), at q = q*:

    c^{l} = (σw² · E[φ(u1) φ(u2)] + σb²) / q*,  u1 = √q* z1, u2 = √q* (c z1 + √(1−c²) z2).
    Maps the correlation of two inputs' pre-activations at one layer to the next.
    """
    return (sigma_w2 * _expect_2d(act, lambda a, b: act.f(a) * act.f(b), q, q, c, n) + sigma_b2) / q


def chi_c(act: Activation, c: float, q: float, sigma_w2: float, n: int = gaussian.NODES_2D) -> float:
    """χ_c = ∂c^{l+1}/∂c^l = σw² · E[φ'(u1) φ'(u2)] at correlation c and q = q*
    (Schoenholz et al. 2017, eq. 9). At c = 1 it equals χ₁."""
    return sigma_w2 * _expect_2d(act, lambda a, b: act.df(a) * act.df(b), q, q, c, n)


def correlation_fixed_point(
    act: Activation,
    q_star: float,
    sigma_w2: float,
    sigma_b2: float,
    chi1_value: float | None = None,
    tol: float = 1e-10,
    n: int = gaussian.NODES_2D,
) -> float:
    """The stable fixed point c* of the correlation map (Schoenholz et al. 2017, Section 3).

    c = 1 is always a fixed point (at q*); it is the stable one when χ₁ ≤ 1 (ordered phase and the
    critical line), and then c* = 1. When χ₁ > 1 (chaotic) it is unstable and the stable c* < 1 is
    the root of g(c) = map(c) − c below it, found by bisection: g(−1) ≥ 0 because the map stays in
    [−1, 1], and g(1 − ε) < 0 for small ε because the map's slope at 1 is χ₁ > 1. (Iterating the map
    instead crawls near the critical line, where c* → 1.) If no ε ≥ 1e-12 makes g negative, the
    map is numerically critical and c* = 1.
    """
    if chi1_value is None:
        chi1_value = chi1(act, q_star, sigma_w2)
    if chi1_value <= 1.0:
        return 1.0

    def g(c: float) -> float:
        return correlation_map(act, c, q_star, sigma_w2, sigma_b2, n) - c

    eps = 1e-3
    while g(1.0 - eps) >= 0.0:
        eps /= 4.0
        if eps < 1e-12:
            return 1.0
    lo, hi = -1.0, 1.0 - eps
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if g(mid) >= 0.0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _xi_q(act: Activation, q_star: float, sigma_w2: float) -> float | None:
    """ξ_q = −1/ln χ_q, Schoenholz 2017 eq. 5; None at q* = 0 or when the map's slope is negative."""
    if q_star <= 0:
        return None
    slope = length_map_slope(act, q_star, sigma_w2)
    return depth_scale(slope) if slope >= 0 else None


@dataclass(frozen=True)
class MeanFieldPrediction:
    """Everything mean-field theory predicts for a fully connected stack without normalization.

    q_star: the length map's fixed point (None when there is none); chi1: σw² E[φ'(√q* z)²];
    predicted_factor: √χ₁, the per-layer factor of ‖∂L/∂z‖ toward the input once q has reached q*;
    xi_grad: −1/ln χ₁ (signed, see `depth_scale`); c_star, chi_c, xi_c: the correlation map's stable
    fixed point, its slope there and −1/ln χ_c; xi_q: −1/ln χ_q, the depth over which q reaches q*;
    phase: from χ₁. q: each block's pre-activation variance from the actual input; layers: the
    per-layer factors from it (`gradient_factors`, depth−1 of them, layers[l] between blocks l and
    l+1); layer_factor: their geometric mean, the prediction of gradlab's measured `layer_factor`.
    detail: why a fixed-point quantity is missing.
    """

    q_star: float | None
    chi1: float | None
    predicted_factor: float | None
    xi_grad: float | None
    xi_q: float | None
    c_star: float | None
    chi_c: float | None
    xi_c: float | None
    phase: Phase | None
    q: list[float] = field(default_factory=list)
    layers: list[float] = field(default_factory=list)
    layer_factor: float | None = None
    detail: str = ""


def mean_field_prediction(
    act: Activation,
    sigma_w2: float,
    sigma_b2: float,
    depth: int,
    x_second_moment: float,
    first_sigma_w2: float | None = None,
    first_sigma_b2: float | None = None,
    phase_tol: float = 1e-3,
) -> MeanFieldPrediction:
    """Poole et al. 2016 / Schoenholz et al. 2017 for a stack of `depth` identical hidden blocks
    (σw², σb²), block 0 possibly with its own (first_sigma_w2, first_sigma_b2).

    The layer-by-layer quantities (q, layers, layer_factor) always exist; the fixed-point ones are
    None when the length map has no fixed point (detail says why). The fixed point is sought from
    the variance the stack itself starts at (q[0]), so that it is the one this network approaches.
    """
    w2 = [sigma_w2 if first_sigma_w2 is None else first_sigma_w2] + [sigma_w2] * (depth - 1)
    b2 = [sigma_b2 if first_sigma_b2 is None else first_sigma_b2] + [sigma_b2] * (depth - 1)
    qs = layer_variances(act, x_second_moment, depth, w2, b2)
    factors = gradient_factors(act, qs, w2)
    q_init = qs[0] if qs[0] > 0 else 1.0
    fp = fixed_point(act, sigma_w2, sigma_b2, q_init=q_init)
    if fp.q_star is None:
        return MeanFieldPrediction(
            None, None, None, None, None, None, None, None, None, qs, factors, geometric_mean_factor(factors), fp.detail
        )
    q_star = fp.q_star
    x1 = chi1(act, q_star, sigma_w2)
    c_star = correlation_fixed_point(act, q_star, sigma_w2, sigma_b2, chi1_value=x1)
    xc = x1 if c_star == 1.0 else chi_c(act, c_star, q_star, sigma_w2)
    return MeanFieldPrediction(
        q_star=q_star,
        chi1=x1,
        predicted_factor=math.sqrt(x1),
        xi_grad=depth_scale(x1),
        xi_q=_xi_q(act, q_star, sigma_w2),
        c_star=c_star,
        chi_c=xc,
        xi_c=depth_scale(xc),
        phase=phase(x1, phase_tol),
        q=qs,
        layers=factors,
        layer_factor=geometric_mean_factor(factors),
        detail=fp.detail,
    )
