"""The input-output Jacobian's spectrum at initialization (Pennington, Schoenholz & Ganguli 2017,
2018): the mean squared singular value m1 and the normalized variance s2 of the squared singular
values of J_l = d(block l's output) / d(input), block by block, by free probability. Numpy only.

The derivation (docs/jacobian.md). J_l = D_l W_l ... D_1 W_1 D_0 W_0 with D_k = diag(φ'(h_k)),
h_k the pre-activations of block k, W_0 the first layer (width x n_in). For a square matrix A let
m_j(A) = tr(A^j) / n and v(A) = m_2 / m_1^2 - 1. Its S-transform starts S_A(z) = (1 - v(A) z) / m_1(A)
+ O(z^2), and for asymptotically free A and B, S_AB = S_A S_B: so m_1 multiplies and v adds,
exactly in the wide limit (the O(z^2) terms carry the higher moments only). With the D_k and W_k
free (Pennington et al.'s assumption, their Sec. 2.3),

    M_l^T M_l, M_l = D_l W_l ... W_1 D_0:  m_1 = prod_k sigma_w,k^2 mu_1(q_k),
                                           v   = sum_{k=0..l} (mu_2(q_k) / mu_1(q_k)^2 - 1) + sum_{k=1..l} v_W,
    mu_j(q) = E[φ'(sqrt(q) z)^(2j)],  z ~ N(0, 1), q_k block k's pre-activation variance (the q-map),

with v_W = v(W^T W) of a square layer: 1 for i.i.d. entries (Marchenko-Pastur at ratio 1; Pennington's
s_1 = -v_W = -1) and 0 for an orthogonal matrix (s_1 = 0). At the fixed point q_k = q* this is the
paper's s2 = L (mu_2 / mu_1^2 - 1 - s_1). The first layer is rectangular: J_l^T J_l = W_0^T M^T M W_0
(n_in x n_in) has the nonzero spectrum of M^T M W_0 W_0^T (width x width), so with r = width / n_in,

    m_1(J_l^T J_l) = r m_1(M^T M W_0 W_0^T),   s2 = (1 + v(M^T M) + v(W_0 W_0^T)) / r - 1,

where v(W_0 W_0^T) = r for i.i.d. entries (Marchenko-Pastur at ratio width / n_in), 0 for orthogonal
rows (width <= n_in) and r - 1 for orthogonal columns (width > n_in, a projection of rank n_in). At
r = 1 these reduce to the square case. ReLU (mu_1 = mu_2 = 1/2) at sigma_w^2 = 2: Gaussian s2 = 2L,
orthogonal L; linear: Gaussian L, orthogonal 0.

Where it does not apply, a reason and no number: convolutions (a convolution's matrix is not free
of the D's, and zero padding, pooling and global structure break the i.i.d. picture), residual
stacks (J is a sum of paths, not a product), BatchNorm (its Jacobian is not a diagonal D: it
projects out the batch's mean and rescales), initializers that are neither i.i.d. nor orthogonal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gradlab.theory import mean_field

# Initializers whose entries are i.i.d. and zero-mean (Marchenko-Pastur holds whatever their law:
# v(W^T W) = 1 for a square layer), and the orthogonal one (v = 0).
IID = ("normal", "uniform", "xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "lecun_normal", "variance_scaling", "default")
ORTHOGONAL = ("orthogonal",)


@dataclass(frozen=True)
class JacobianPrediction:
    """Per hidden block l (0 = nearest the input): m1[l] and s2[l] of J_l, or empty lists and the reason."""

    m1: tuple[float, ...] = ()
    s2: tuple[float, ...] = ()
    reason: str = ""


def weight_family(name: str) -> str | None:
    """'iid', 'orthogonal', or None for an initializer the free-probability formula has no v(W^T W) for."""
    if name in IID:
        return "iid"
    if name in ORTHOGONAL:
        return "orthogonal"
    return None


def square_variance(family: str) -> float:
    """v(W^T W) = m_2 / m_1^2 - 1 of a wide square layer: 1 for i.i.d. entries, 0 for orthogonal."""
    return 1.0 if family == "iid" else 0.0


def first_layer_variance(family: str, ratio: float) -> float:
    """v(W_0 W_0^T) of the first layer (width x n_in), ratio = width / n_in."""
    if family == "iid":
        return ratio
    return 0.0 if ratio <= 1 else ratio - 1.0


def derivative_moments(act: mean_field.Activation, q: float) -> tuple[float, float]:
    """(mu_1, mu_2) = (E[φ'(sqrt(q) z)^2], E[φ'(sqrt(q) z)^4]) for z ~ N(0, 1)."""
    mu1 = mean_field.expect(act, lambda x: act.df(x) ** 2, q)
    mu2 = mean_field.expect(act, lambda x: act.df(x) ** 4, q)
    return float(mu1), float(mu2)


def spectrum(act: mean_field.Activation, qs: Sequence[float], sigma_w2: Sequence[float], family: str, n_in: int, width: int) -> JacobianPrediction:
    """m1 and s2 of J_l for every block l, from the blocks' pre-activation variances `qs` and their
    sigma_w^2 (variance of a weight entry times fan-in; block 0's reads the n_in inputs)."""
    ratio = width / n_in
    v_first = first_layer_variance(family, ratio)
    v_square = square_variance(family)
    m1s, s2s = [], []
    gain, v_product = ratio, 0.0  # m_1 of J_l^T J_l so far, and v(M^T M)
    for layer, (q, w2) in enumerate(zip(qs, sigma_w2)):
        mu1, mu2 = derivative_moments(act, q)
        if mu1 <= 0 or not math.isfinite(mu1):
            return JacobianPrediction(reason=f"E[φ'(h)^2] = {mu1:g} at block {layer} (q = {q:g}): the Jacobian vanishes, its s2 is undefined")
        gain *= w2 * mu1
        v_product += mu2 / (mu1 * mu1) - 1 + (v_square if layer > 0 else 0.0)
        m1s.append(gain)
        s2s.append((1 + v_product + v_first) / ratio - 1)
    return JacobianPrediction(tuple(m1s), tuple(s2s))


def not_applicable(model: Any) -> str:
    """Why the formula does not apply to this model config ('' when it does)."""
    if model.kind != "mlp":
        return (f"model.kind {model.kind}: a convolution's matrix is structured (shared, local weights, zero padding, pooling), "
                "not free of the activations' derivatives; the free-probability product formula is derived for fully connected layers")  # fmt: skip
    if getattr(model, "residual", False):
        return "residual stacks: J = prod (I + alpha dbranch/dx) is a sum over paths, not a product of free factors"
    if model.norm["name"] != "none":
        return f"model.norm {model.norm['name']}: its Jacobian is not a diagonal matrix of derivatives (it projects out means and rescales), which the formula assumes"
    name = model.init.weight["name"]
    if weight_family(name) is None:
        return (f"model.init.weight {name}: the formula needs v(W^T W), known for i.i.d. entries ({', '.join(IID)}: 1) "
                "and orthogonal matrices (0)")  # fmt: skip
    return ""
