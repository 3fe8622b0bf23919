"""What signal-propagation theory predicts a network's gradients look like at initialization.

Pure functions on numbers (numpy only: no torch, no pandas), so `gradlab theory` and `gradlab
compare` can predict without building a model. A later step wires them to configs: an activation
record supplies the numpy forms, the initializers supply σw² and σb².

Conventions used throughout
---------------------------
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

from gradlab.theory.gaussian import gauss_hermite  # noqa: F401  (theory.gauss_hermite: part of this module's API)
from gradlab.theory import gaussian

# Re-exported from gradlab.theory.gaussian, where the rule is designed and documented.
DEFAULT_NODES_2D = gaussian.NODES_2D
HERMITE_NODES = gaussian.HERMITE_NODES
Z_MAX = gaussian.Z_MAX

Method = gaussian.Method


class Activation(Protocol):
    """The numpy forms an activation record provides.

    An optional attribute ``kinks`` (a tuple of x where φ or φ' is not smooth, e.g. hardtanh's ±1)
    makes the quadrature cut the line there too; x = 0 is always cut, which covers the ReLU family.
    An optional ``scale`` (softplus: 1/β) stretches the x grid the quadrature resolves φ on.
    """

    def f(self, x: np.ndarray) -> np.ndarray: ...

    def df(self, x: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------------------------
# Gaussian expectations (gradlab.theory.gaussian)
# ----------------------------------------------------------------------------------------------


def kinks_of(act: Activation) -> tuple[float, ...]:
    """Where the activation (or its derivative) is not smooth: 0 and whatever it declares in ``kinks``."""
    return tuple(sorted({0.0, *(float(k) for k in getattr(act, "kinks", ()) or ())}))


def scale_of(act: Activation) -> float:
    """The activation's feature scale in x (1 unless it declares ``scale``)."""
    return float(getattr(act, "scale", 1.0) or 1.0)


def gaussian_expectation(
    fn: Callable[[np.ndarray], np.ndarray],
    q: float = 1.0,
    n: int | None = None,
    kinks: Sequence[float] = (0.0,),
    method: Method = "legendre",
    scale: float = 1.0,
) -> float:
    """E[fn(√q · z)] for z ~ N(0, 1): `gaussian.expectation` (this module's argument order)."""
    return gaussian.expectation(fn, q, kinks, n=n, scale=scale, method=method)


def gaussian_expectation_2d(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    q1: float,
    q2: float,
    c: float,
    n: int = DEFAULT_NODES_2D,
    kinks: Sequence[float] = (0.0,),
) -> float:
    """E[fn(u1, u2)] for a centred Gaussian pair with Var u1 = q1, Var u2 = q2, corr(u1, u2) = c:
    `gaussian.expectation_2d`."""
    return gaussian.expectation_2d(fn, q1, q2, c, n, kinks)


def _expect(act: Activation, fn: Callable[[np.ndarray], np.ndarray], q: float, n: int | None = None) -> float:
    return gaussian.expectation(fn, q, kinks_of(act), n=n, scale=scale_of(act))


def _expect_2d(act: Activation, fn, q1: float, q2: float, c: float, n: int = DEFAULT_NODES_2D) -> float:
    return gaussian_expectation_2d(fn, q1, q2, c, n, kinks=kinks_of(act))


# ----------------------------------------------------------------------------------------------
# Fully connected, no normalization: Poole et al. 2016, Schoenholz et al. 2017
# ----------------------------------------------------------------------------------------------


def length_map(act: Activation, q: float, sigma_w2: float, sigma_b2: float, n: int | None = None) -> float:
    """The length map of Poole et al. 2016 (eq. 3): q^l = σw² · E[φ(√q^{l−1} z)²] + σb².

    q is the previous layer's pre-activation variance; returns the next one's.
    """
    return sigma_w2 * _expect(act, lambda u: act.f(u) ** 2, q, n) + sigma_b2


def first_layer_variance(x_second_moment: float, sigma_w2: float, sigma_b2: float) -> float:
    """Block 0's pre-activation variance from the input: q[0] = σw² · mean(x²) + σb².

    x_second_moment is mean(x²) over examples and input features (Poole et al.'s q⁰, the input
    treated as a layer without a nonlinearity); σw², σb² are block 0's own.
    """
    if x_second_moment < 0:
        raise ValueError(f"a second moment must be >= 0, got {x_second_moment}")
    return sigma_w2 * x_second_moment + sigma_b2


def _per_layer(value: float | Sequence[float], depth: int, name: str) -> list[float]:
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
    w2 = _per_layer(sigma_w2, depth, "sigma_w2")
    b2 = _per_layer(sigma_b2, depth, "sigma_b2")
    qs = [first_layer_variance(x_second_moment, w2[0], b2[0])]
    for layer in range(1, depth):
        qs.append(length_map(act, qs[-1], w2[layer], b2[layer], n))
    return qs


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
    q_max: float = 1e30,
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
    q = float(q_init)
    previous_step = None
    zero_floor = rtol * q_init
    history = [q]
    for k in range(1, max_iter + 1):
        q_next = length_map(act, q, sigma_w2, sigma_b2, n)
        if not math.isfinite(q_next) or q_next > q_max:
            return FixedPoint(None, "diverged", k, f"q exceeded {q_max:g} after {k} iterations: no fixed point")
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
    return sigma_w2 * _expect(act, lambda u: act.df(u) ** 2, q, n)


def length_map_slope(act: Activation, q: float, sigma_w2: float, n: int | None = None) -> float:
    """χ_q = d(length map)/dq at q = σw² E[φ'(√q z)² + φ(√q z) φ''(√q z)] (Schoenholz 2017, eq. 5).

    Computed without φ'' by Stein's lemma: d/dq E[φ(√q z)²] = E[φ(√q z) φ'(√q z) z] / √q.
    """
    if q <= 0:
        raise ValueError(f"the slope needs q > 0, got {q}")
    return sigma_w2 * _expect(act, lambda u: act.f(u) * act.df(u) * u, q, n) / q


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
    w2 = _per_layer(sigma_w2, depth, "sigma_w2")
    return [math.sqrt(chi1(act, variances[l], w2[l + 1], n)) for l in range(depth - 1)]


def geometric_mean_factor(factors: Sequence[float]) -> float | None:
    """The predicted ``layer_factor``: (Π factors)^(1/len) = (first/last)^(1/(depth−1)); None if empty."""
    if len(factors) == 0:
        return None
    if any(f <= 0 for f in factors):
        return 0.0
    return float(math.exp(sum(math.log(f) for f in factors) / len(factors)))


def depth_scale(chi: float) -> float:
    """ξ = −1/ln χ (Schoenholz et al. 2017, eqs. 9 and 13): the depth over which a ratio that changes
    by χ per layer changes by a factor e. Signed: positive when χ < 1 (decay over ξ layers), negative
    when χ > 1 (growth over |ξ| layers), infinite at χ = 1; 0 when χ = 0.
    Used with χ₁ for gradients (ξ_∇, of the squared gradient norm) and χ_c for correlations (ξ_c).
    """
    if chi < 0:
        raise ValueError(f"chi must be >= 0, got {chi}")
    if chi == 0.0:
        return 0.0
    if chi == 1.0:
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
    act: Activation, c: float, q: float, sigma_w2: float, sigma_b2: float, n: int = DEFAULT_NODES_2D
) -> float:
    """The correlation map (Poole et al. 2016, eq. 5; Schoenholz et al. 2017, eq. 4), at q = q*:

    c^{l} = (σw² · E[φ(u1) φ(u2)] + σb²) / q*,  u1 = √q* z1, u2 = √q* (c z1 + √(1−c²) z2).
    Maps the correlation of two inputs' pre-activations at one layer to the next.
    """
    return (sigma_w2 * _expect_2d(act, lambda a, b: act.f(a) * act.f(b), q, q, c, n) + sigma_b2) / q


def chi_c(act: Activation, c: float, q: float, sigma_w2: float, n: int = DEFAULT_NODES_2D) -> float:
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
    n: int = DEFAULT_NODES_2D,
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


# ----------------------------------------------------------------------------------------------
# Batch normalization before the nonlinearity: Yang et al. 2019
# ----------------------------------------------------------------------------------------------


def _standard_moments(act: Activation, n: int | None = None) -> tuple[float, float, float]:
    """E[φ(z)], E[φ(z)²], E[φ'(z)²] for z ~ N(0, 1)."""
    mean = _expect(act, act.f, 1.0, n)
    second = _expect(act, lambda u: act.f(u) ** 2, 1.0, n)
    slope2 = _expect(act, lambda u: act.df(u) ** 2, 1.0, n)
    return mean, second, slope2


def batchnorm_gradient_factor(
    act: Activation, norm: str = "batchnorm", placement: str = "pre", n: int | None = None
) -> float | None:
    """Per-layer growth of ‖∂L/∂z‖ toward the input in a deep batch-normalized stack at init.

    Yang et al. 2019 ("A mean field theory of batch normalization", ICLR) show the gradient explodes
    at a rate set by the nonlinearity alone; in their large-batch limit (and Luther 2020's
    derivation of the same value) it is

        factor² = E[φ'(z)²] / Var[φ(z)],  z ~ N(0, 1),

    for the block linear → BatchNorm → φ (BN's affine at its init, γ = 1, β = 0). Why: BN feeds φ a
    unit-variance input whatever the scale of W, and divides the backward signal by the batch std
    s = √(σw² · Var φ) of its own input, while Wᵀ and φ' multiply the squared gradient by σw² · E[φ'²];
    σw² cancels. For ReLU: (1/2) / (1/2 − 1/(2π)) = π/(π − 1), a factor √(π/(π−1)) ≈ 1.2112 per layer.
    Finite batches B change it by O(1/B). Assumes equal σw² in consecutive blocks (else see
    `batchnorm_gradient_factors`).

    Returns None where the derivation does not apply: any norm other than BatchNorm (LayerNorm and
    LRN normalize over units, not the batch), post placement (the norm is not between W and φ), or
    an activation whose output has no variance.
    """
    if norm != "batchnorm" or placement != "pre":
        return None
    mean, second, slope2 = _standard_moments(act, n)
    variance = second - mean * mean
    if not variance > 1e-15:
        return None
    return math.sqrt(slope2 / variance)


def batchnorm_gradient_factor_finite_batch(negative_slope: float, batch: int) -> float:
    """The per-layer growth of ‖∂L/∂z‖ toward the input in a deep linear → BatchNorm → φ stack at
    initialization with batch size B, for φ(x) = x (x > 0), a·x (x < 0): relu (a = 0), leaky
    ReLUs and PReLU at its init (a), identity (a = 1). Tends to `batchnorm_gradient_factor` as B → ∞
    (ReLU: √(π/(π−1)) ≈ 1.2112) and is larger at small B (ReLU: 1.2609 at B = 16, 1.3372 at B = 8).

    Derivation (derived here, not quoted: mean field over the width at fixed B, as Yang et al. 2019
    set the problem up; for a = 1, a linear stack, it gives factor² = (B−2)/(B−3)). Deep in the stack the batch sits at BatchNorm's
    symmetric fixed point: each unit's normalized pre-activations y ∈ R^B are uniform on the sphere
    ‖y‖² = B in the (B−1)-dimensional subspace ⊥ 1. A unit's pre-activation z = Φw (Φ the previous
    block's outputs, w ~ N(0, σw²/n)) is then Gaussian with P1·z isotropic in that subspace, so
    BatchNorm's batch variance is σ² = σw²·α·χ²_(B−1)/B with α = E[φ(y1)²] − E[φ(y1)φ(y2)], and
    E[1/σ²] = B/(σw² α (B−3)) — larger than 1/E[σ²] (Jensen), which is the finite-batch explosion.
    Backward, ∂L/∂z = (1/σ)·P_{1,y}·diag φ'(y)·g with P_{1,y} the projection ⊥ {1, y} and g = Wᵀ(next
    gradient), isotropic in the subspace ⊥ 1 with E‖g‖² = σw² times the next block's mean squared
    gradient per unit; σw² cancels:

        factor² = B·T / (α (B−1)(B−3)),   T = E tr(P_{1,y} D P1 D),  D = diag φ'(y),

    with P1 the projection ⊥ 1. φ is positively homogeneous, so every expectation over the sphere is
    one over u ~ N(0, P1) (Var u_b = 1 − 1/B, corr(u_b, u_c) = ρ = −1/(B−1)) rescaled by B/(B−1)
    for degree-2 terms, and the pair terms are closed forms in ρ: P(u1 > 0, u2 > 0) =
    1/4 + arcsin ρ/(2π) and E[relu(z1) relu(z2)] = (√(1−ρ²) + (π − arccos ρ) ρ)/(2π) (Cho & Saul
    2009). Tested against a Monte Carlo of wide BN-ReLU stacks at B = 8 and 16. Needs B ≥ 4
    (E[1/χ²_(B−1)] is infinite below); at B = 4 a width-1024 stack's measured growth converges slowly
    to it (1/χ²_3 has no variance).
    """
    if batch < 4:
        raise ValueError(f"the finite-batch factor needs a batch of at least 4 (E[1/chi2_(B-1)] is infinite below), got {batch}")
    B, slope = float(batch), float(negative_slope)
    rho = -1.0 / (B - 1.0)
    v = 1.0 - 1.0 / B  # Var u_b
    half = (1.0 + slope * slope) / 2.0  # E[φ'(u)²], and E[φ(u)²] / Var u
    relu_pair = (math.sqrt(1.0 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2.0 * math.pi)
    pair = slope * slope * rho + slope * (1.0 - slope) * rho + (1.0 - slope) ** 2 * relu_pair  # E[φ(z1)φ(z2)], corr ρ
    same_sign = 0.25 + math.asin(rho) / (2.0 * math.pi)
    slopes_pair = same_sign * (1.0 + slope * slope) + 2.0 * (0.5 - same_sign) * slope  # E[φ'(u1)φ'(u2)]
    alpha = B / (B - 1.0) * v * (half - pair)
    trace = (B - 1.0) * half  # E tr(D P1 D)
    ones = (B * half - (B * half + B * (B - 1.0) * slopes_pair) / B) / B  # E (D1)ᵀ P1 (D1) / B
    along_y = (B * v * half - (B * v * half + B * (B - 1.0) * v * pair) / B) / (B - 1.0)  # E (Dy)ᵀ P1 (Dy) / B
    t = trace - ones - along_y
    return math.sqrt(B * t / (alpha * (B - 1.0) * (B - 3.0)))


def batchnorm_gradient_factors(
    act: Activation,
    sigma_w2: float | Sequence[float],
    depth: int,
    input_batch_variance: float,
    n: int | None = None,
) -> list[float]:
    """The per-layer factors ‖∂L/∂z_l‖ / ‖∂L/∂z_{l+1}‖ (l = 0 … depth−2) of a linear → BN → φ stack.

    Same derivation as `batchnorm_gradient_factor`, keeping each block's σw²:
    factor[l]² = σw²_{l+1} · E[φ'(z)²] / (σw²_l · v_{l−1}), where v_{l−1} is the per-unit batch
    variance of block l's input: Var φ(z) for l ≥ 1, and for block 0 the input's per-feature batch
    variance averaged over features (input_batch_variance; BN removes the input's mean).
    """
    w2 = _per_layer(sigma_w2, depth, "sigma_w2")
    mean, second, slope2 = _standard_moments(act, n)
    variance = second - mean * mean
    factors = []
    for layer in range(depth - 1):
        v_in = input_batch_variance if layer == 0 else variance
        factors.append(math.sqrt(w2[layer + 1] * slope2 / (w2[layer] * v_in)))
    return factors


# ----------------------------------------------------------------------------------------------
# Recurrent networks: Pascanu et al. 2013
# ----------------------------------------------------------------------------------------------


def max_abs_derivative(act: Activation, lo: float = -30.0, hi: float = 30.0, points: int = 600001) -> float:
    """γ = sup |φ'(x)|, read off a fine grid on [lo, hi] that includes 0 (tanh: 1, sigmoid: 1/4).

    Use an activation record's stated maximum where it has one; this is the fallback and the check.
    """
    grid = np.linspace(lo, hi, points)
    return float(np.max(np.abs(act.df(grid))))


def top_singular_value(init: str, n: int, gain: float = 1.0, std: float | None = None) -> float:
    """λ₁, the largest singular value of an n × n recurrent matrix as initialized.

    orthogonal (scaled by gain): every singular value is the gain, λ₁ = gain. identity (scaled):
    λ₁ = gain. normal with entry std s: λ₁ → 2 s √n as n grows (the edge of the quarter-circle law,
    Bai & Yin 1988); a prediction for large n, a few percent off for n ~ 100.
    """
    if init in ("orthogonal", "identity", "eye"):
        return float(abs(gain))
    if init == "normal":
        if std is None:
            raise ValueError("the normal init needs its std")
        return 2.0 * float(std) * math.sqrt(n)
    raise ValueError(f"no singular-value prediction for init {init!r}; known: orthogonal, identity, normal")


def recurrent_step_bound(gamma: float, lambda1: float) -> float:
    """Pascanu, Mikolov & Bengio 2013 (eq. 7): ‖∂h_t/∂h_{t−1}‖ ≤ ‖W_recᵀ‖ ‖diag φ'(·)‖ ≤ γ · λ₁.

    An upper bound on the per-step factor of the gradient going back in time: below 1 the gradient
    must vanish (λ₁ < 1/γ is their sufficient condition); above 1 it may, but need not, explode.
    """
    return float(gamma) * float(lambda1)


def lstm_cell_factor(forget_bias: float) -> float:
    """The per-step factor along an LSTM's cell path, ∂c_t/∂c_{t−1} = diag(f_t), with small weights.

    c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t and f_t = σ(W_f x_t + U_f h_{t−1} + b_f); when the weights are
    small f_t ≈ σ(b_f), so the cell gradient decays (or is kept) by σ(forget_bias) per step
    (Gers et al. 2000; Jozefowicz et al. 2015 for the forget-bias-of-1 recommendation).
    """
    return 1.0 / (1.0 + math.exp(-float(forget_bias)))


# ----------------------------------------------------------------------------------------------
# Residual networks: x_{l+1} = x_l + α · branch(x_l)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BranchLayer:
    """One layer of a residual branch: linear (σw² = Var W · fan_in, σb²), then BatchNorm if
    `batchnorm` (pre placement; the linear bias is then irrelevant), then `activation` (None: none)."""

    sigma_w2: float
    sigma_b2: float = 0.0
    activation: Activation | None = None
    batchnorm: bool = False


@dataclass(frozen=True)
class StreamMoments:
    """Moments of the residual stream x_l, pooled over units (and examples).

    second_moment q_l = mean(x²); mean m_l = mean(x); variance v_l = q_l − m_l²; batch_variance: the
    per-unit variance over the batch averaged over units (what a BatchNorm in the next branch
    divides by), None when it is not predicted (branches without BatchNorm).
    """

    second_moment: float
    mean: float
    variance: float
    batch_variance: float | None = None


def _branch_output(branch: Sequence[BranchLayer], q_in: float, n: int) -> tuple[float, float]:
    """Mean and second moment of one unit of branch(x) for a stream of second moment q_in."""
    q = q_in
    mean = 0.0
    for layer in branch:
        pre = 1.0 if layer.batchnorm else layer.sigma_w2 * q + layer.sigma_b2
        if layer.activation is None:
            mean, q = 0.0, pre
        else:
            act = layer.activation
            mean = _expect(act, act.f, pre, n)
            q = _expect(act, lambda u: act.f(u) ** 2, pre, n)
    return mean, q


def _check_branch(branch: Sequence[BranchLayer]) -> bool:
    if len(branch) == 0:
        raise ValueError("a residual branch needs at least one layer")
    uses_bn = [layer.batchnorm for layer in branch]
    if any(uses_bn) and not all(uses_bn):
        raise ValueError("no prediction for a branch that normalizes some layers and not others")
    return all(uses_bn)


def residual_moments(
    branch: Sequence[BranchLayer],
    depth: int,
    alpha: float,
    x_second_moment: float,
    x_mean: float = 0.0,
    x_batch_variance: float | None = None,
    n: int | None = None,
) -> list[StreamMoments]:
    """The stream's moments before block 0 and after each of `depth` residual blocks (depth+1 entries).

    Mean field, wide layers: the branch's last W is fresh, so each unit of branch(x_l) is
    independent of the same unit of x_l, with mean μ_l and second moment s_l (`_branch_output`: a
    layer without BatchNorm sees a pre-activation of variance σw² · (its input's second moment) + σb²;
    with BatchNorm it sees N(0, 1) whatever the stream's scale). Hence, exactly in that limit,

        m_{l+1} = m_l + α μ_l,   q_{l+1} = q_l + 2 α m_l μ_l + α² s_l,
        Var(x_{l+1}) = Var(x_l) + α² (s_l − μ_l²).

    Unnormalized ReLU, one-layer branch φ(W x), He init (σw² = 2): s_l = q_l, μ_l = √(q_l/π), so the
    second moment grows by (1 + α²) plus the cross term 2α m_l μ_l (zero only while the stream is
    centred: exactly doubling at α = 1 for the branch relu(W₁ ·) then a linear W₂ with σw² = 1,
    whose output has mean 0 and second moment q_l; faster than doubling for a branch ending in ReLU,
    whose output mean accumulates in the stream); the variance grows by α²(1 − 1/π) q_l. Both grow
    exponentially in depth.
    With BatchNorm in the branch (De & Smith 2020), s and μ are constants, so the variance grows
    linearly: Var(x_l) = Var(x_0) + l α² (s − μ²) (= Var(x_0) + l α² when the branch's output has
    unit variance, De & Smith's statement), and the second moment quadratically once a nonzero
    branch mean accumulates.
    x_batch_variance (the input's per-feature batch variance averaged over features) is needed only
    for the gradient prediction of BatchNorm branches; it defaults to Var(x_0) = q_0 − m_0².
    """
    batchnorm = _check_branch(branch)
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    q, m = float(x_second_moment), float(x_mean)
    v_batch = None
    if batchnorm:
        v_batch = float(x_batch_variance) if x_batch_variance is not None else q - m * m
    out = [StreamMoments(q, m, q - m * m, v_batch)]
    for _ in range(depth):
        mu, s = _branch_output(branch, q, n)
        q = q + 2.0 * alpha * m * mu + alpha * alpha * s
        m = m + alpha * mu
        if v_batch is not None:
            v_batch = v_batch + alpha * alpha * (s - mu * mu)
        out.append(StreamMoments(q, m, q - m * m, v_batch))
    return out


def residual_gradient_factors(
    branch: Sequence[BranchLayer],
    alpha: float,
    moments: Sequence[StreamMoments],
    n: int | None = None,
) -> list[float]:
    """Per-block factors ‖∂L/∂x_l‖ / ‖∂L/∂x_{l+1}‖ on the residual stream (toward the input), one per
    block, from `residual_moments` (the factor of block l uses moments[l], the stream entering it).

    ∂L/∂x_l = (I + α J_l)ᵀ ∂L/∂x_{l+1} with J_l the branch's Jacobian; the cross term has mean 0 (the
    branch's W is independent of the signal), so in mean field
        factor_l² = 1 + α² · Π_k χ_k,
    one χ per branch layer k: without BatchNorm χ_k = σw²_k · E[φ'(√pre_k z)²] (1 without an
    activation), the `chi1` of that layer at its pre-activation variance; with BatchNorm the batch
    std s_k = √(σw²_k · v_k) divides the signal and σw²_k cancels: χ_k = E[φ'(z)²] / v_k, where v_k is
    the per-unit batch variance of layer k's input (the stream's `batch_variance` for k = 0, the
    previous layer's output variance after). For ReLU with He init (no norm, one layer): 1 + α², a
    factor √2 per block at α = 1 — the same (1 + α²) as the forward variance of a centred stream.
    With BatchNorm the factor tends to 1 as the stream's variance grows linearly, so the gradient grows
    toward the input only as a power of depth (De & Smith 2020).
    """
    batchnorm = _check_branch(branch)
    factors = []
    for moment in moments[:-1]:
        q_in = moment.second_moment
        v_in = moment.batch_variance
        if batchnorm and v_in is None:
            raise ValueError("a BatchNorm branch needs the stream's batch_variance (see residual_moments)")
        product = 1.0
        for layer in branch:
            act = layer.activation
            if batchnorm:
                slope2 = 1.0 if act is None else _expect(act, lambda u: act.df(u) ** 2, 1.0, n)
                product *= slope2 / v_in
                if act is None:
                    q_in, v_in = 1.0, 1.0
                else:
                    mean = _expect(act, act.f, 1.0, n)
                    q_in = _expect(act, lambda u: act.f(u) ** 2, 1.0, n)
                    v_in = q_in - mean * mean
            else:
                pre = layer.sigma_w2 * q_in + layer.sigma_b2
                if act is None:
                    product *= layer.sigma_w2
                    q_in = pre
                else:
                    product *= chi1(act, pre, layer.sigma_w2, n)
                    q_in = _expect(act, lambda u: act.f(u) ** 2, pre, n)
        factors.append(math.sqrt(1.0 + alpha * alpha * product))
    return factors


def branch_delta_gain(branch: Sequence[BranchLayer], moment: StreamMoments) -> float:
    """‖∂L/∂z‖² / ‖∂L/∂(α·branch(x))‖² for one block, z its branch's first linear output: how much of
    the stream's gradient reaches the branch's first layer, in mean field.

    Going back from the branch's output: through each layer's φ a factor E[φ'(u)²] (u its input:
    N(0, pre) without BatchNorm, N(0, 1) with it), through BatchNorm 1/(σw²_k · v_k) (it divides by
    the batch std of its input, whose variance is σw²_k times the per-unit batch variance v_k of the
    layer's input), and through the weights of every layer but the first σw²_k (‖Wᵀg‖² = σw² ‖g‖²).
    A layer without an activation contributes its BatchNorm and weights only. gradlab's
    `layer_factor` of a residual stack follows: ‖δ_l‖ = α √gain_l ‖∂L/∂x_{l+1}‖ (predict.py).
    """
    batchnorm = _check_branch(branch)
    if batchnorm and moment.batch_variance is None:
        raise ValueError("a BatchNorm branch needs the stream's batch_variance (see residual_moments)")
    q_in, v_in = moment.second_moment, moment.batch_variance
    gain = 1.0
    for k, layer in enumerate(branch):
        act = layer.activation
        if act is None:
            gain /= layer.sigma_w2 * v_in if layer.batchnorm else 1.0
            q_in, v_in = (1.0, 1.0) if layer.batchnorm else (layer.sigma_w2 * q_in + layer.sigma_b2, v_in)
        elif layer.batchnorm:
            slope2 = _expect(act, lambda u: act.df(u) ** 2, 1.0)
            gain *= slope2 / (layer.sigma_w2 * v_in)
            mean = _expect(act, act.f, 1.0)
            q_in = _expect(act, lambda u: act.f(u) ** 2, 1.0)
            v_in = q_in - mean * mean
        else:
            pre = layer.sigma_w2 * q_in + layer.sigma_b2
            gain *= _expect(act, lambda u: act.df(u) ** 2, pre)
            q_in = _expect(act, lambda u: act.f(u) ** 2, pre)
        if k > 0:
            gain *= layer.sigma_w2
    return gain
