"""What theory predicts for batch normalization before the nonlinearity (Yang et al. 2019): the
per-layer growth of the gradient toward the input, in the large-batch limit and at a finite batch.
Numpy only; the conventions are theory/mean_field.py's."""

from __future__ import annotations

import math
from typing import Sequence

from gradlab.theory.mean_field import Activation, expect, per_layer


def _standard_moments(act: Activation, n: int | None = None) -> tuple[float, float, float]:
    """E[φ(z)], E[φ(z)²], E[φ'(z)²] for z ~ N(0, 1)."""
    mean = expect(act, act.f, 1.0, n)
    second = expect(act, lambda u: act.f(u) ** 2, 1.0, n)
    slope2 = expect(act, lambda u: act.df(u) ** 2, 1.0, n)
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
    w2 = per_layer(sigma_w2, depth, "sigma_w2")
    mean, second, slope2 = _standard_moments(act, n)
    variance = second - mean * mean
    factors = []
    for layer in range(depth - 1):
        v_in = input_batch_variance if layer == 0 else variance
        factors.append(math.sqrt(w2[layer + 1] * slope2 / (w2[layer] * v_in)))
    return factors
