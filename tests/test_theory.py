"""gradlab.theory.mean_field against independent computations: closed forms, a published critical point, and
Monte Carlo on wide random numpy networks at initialization (forward and hand-written backward).

The activations are defined here, as plain numpy pairs, so these tests do not depend on the
activation records (gradlab.theory.activations) that will feed theory in the product.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from gradlab.theory import batchnorm, gaussian, recurrent, residual
from gradlab.theory import mean_field as T


class Act:
    def __init__(self, f, df, kinks=()):
        self.f, self.df, self.kinks = f, df, kinks


relu = Act(lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float))
tanh = Act(np.tanh, lambda x: 1.0 - np.tanh(x) ** 2)
identity = Act(lambda x: np.asarray(x, dtype=float), lambda x: np.ones_like(x, dtype=float))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


sigmoid = Act(_sigmoid, lambda x: _sigmoid(x) * (1.0 - _sigmoid(x)))
_erf = np.vectorize(math.erf, otypes=[float])
erf = Act(_erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x))
hardtanh = Act(lambda x: np.clip(x, -1.0, 1.0), lambda x: (np.abs(x) < 1).astype(float), kinks=(-1.0, 1.0))


def test_theory_imports_neither_torch_nor_pandas():
    code = "import sys, gradlab.theory.mean_field, gradlab.theory.batchnorm, gradlab.theory.residual, gradlab.theory.recurrent; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- quadrature


def test_hermite_rule_is_a_probability_rule_exact_on_moments():
    nodes, weights = gaussian.gauss_hermite(20)
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    for power, moment in [(1, 0.0), (2, 1.0), (4, 3.0), (6, 15.0), (8, 105.0)]:
        assert np.dot(weights, nodes**power) == pytest.approx(moment, abs=1e-10)


@pytest.mark.parametrize("method", ["legendre", "hermite"])
def test_expectation_of_exponential_matches_closed_form(method):
    # E[exp(a √q z)] = exp(a² q / 2)
    for a, q in [(0.5, 1.0), (1.0, 2.0), (-0.7, 0.3)]:
        got = gaussian.expectation(lambda u: np.exp(a * u), q, method=method)
        assert got == pytest.approx(math.exp(a * a * q / 2), rel=1e-10)


def test_legendre_is_exact_across_a_kink_where_hermite_is_not():
    # E|√q z| = √(2q/π): the kink at 0 costs Gauss–Hermite ~3e-3, the cut rule nothing.
    exact = math.sqrt(2 * 2.0 / math.pi)
    assert gaussian.expectation(np.abs, 2.0) == pytest.approx(exact, rel=1e-10)
    assert abs(gaussian.expectation(np.abs, 2.0, method="hermite") - exact) > 1e-4


def test_declared_kinks_are_cut():
    # hardtanh at q = 4: E[clip(2z, -1, 1)²] = P(|z| > 1/2) + 4 E[z² ; |z| < 1/2], the latter by
    # integrating z² φ(z) = −d(z φ)/dz + φ: [−zφ]_{-a}^{a} + P(|z|<a).
    a = 0.5
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    p_in = math.erf(a / math.sqrt(2))
    exact = (1 - p_in) + 4 * (-2 * a * phi + p_in)
    got = gaussian.expectation(lambda u: hardtanh.f(u) ** 2, 4.0, kinks=T.kinks_of(hardtanh))
    assert got == pytest.approx(exact, rel=1e-10)


def test_2d_expectation_relu_arccosine_kernel():
    # Cho & Saul 2009: E[relu(u1) relu(u2)] = q/(2π) (√(1−c²) + (π − arccos c) c)
    q = 1.7
    for c in [-0.9, -0.3, 0.0, 0.3, 0.9, 0.999, 1.0]:
        exact = q / (2 * math.pi) * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c)
        got = gaussian.expectation_2d(lambda a, b: relu.f(a) * relu.f(b), q, q, c)
        assert got == pytest.approx(exact, rel=1e-8, abs=1e-12)


def test_theory_and_the_activation_records_integrate_with_one_rule():
    # gradlab.theory.gaussian is the one quadrature: theory's length map and chi1 at sigma_w2 = 1 are the
    # activation records' Gaussian moments to the last bit, for every activation and variance
    # (rrelu has no single function), and the rule is torch-free
    from gradlab.theory import activations
    from gradlab.theory.predict import NumpyActivation

    for name in activations.ACTIVATIONS:
        if name == "rrelu":
            continue
        act = NumpyActivation(name)
        for q in (1e-4, 0.3, 1.0, 3.7, 1e3, 1e8):
            moments = activations.gaussian_moments(name, q)
            assert (T.length_map(act, q, 1.0, 0.0), T.chi1(act, q, 1.0)) == (moments.second_moment, moments.derivative_second_moment), (name, q)
    code = "import sys, gradlab.theory.gaussian; print('torch' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_feature_scale_stretches_the_grid():
    # softplus with beta = 0.01 bends over |x| ~ 100s: its scale (1/beta) keeps E[f'(√q z)²] exact at
    # q = 1e6, where f'(x) = sigmoid(beta x); the reference is a fine trapezoid over z
    from gradlab.theory.predict import NumpyActivation

    act = NumpyActivation({"name": "softplus", "beta": 0.01})
    assert T.scale_of(act) == pytest.approx(100.0)
    z = np.linspace(-12, 12, 2_000_001)
    reference = np.trapezoid(act.df(1e3 * z) ** 2 * np.exp(-z * z / 2) / math.sqrt(2 * math.pi), z)
    assert T.chi1(act, 1e6, 1.0) == pytest.approx(reference, rel=1e-9)


def test_bad_quadrature_input_is_refused():
    with pytest.raises(ValueError, match="variance"):
        gaussian.expectation(np.abs, -1.0)
    with pytest.raises(ValueError, match="correlation"):
        gaussian.expectation_2d(lambda a, b: a * b, 1.0, 1.0, 1.5)


# ---------------------------------------------------------------- mean field: closed forms


@pytest.mark.parametrize("sw2,sb2,q", [(2.0, 0.0, 1.0), (1.5, 0.3, 0.7), (3.0, 1.0, 5.0)])
def test_relu_length_map_and_chi1_closed_forms(sw2, sb2, q):
    assert T.length_map(relu, q, sw2, sb2) == pytest.approx(q * sw2 / 2 + sb2, rel=1e-12)
    assert T.chi1(relu, q, sw2) == pytest.approx(sw2 / 2, rel=1e-12)


@pytest.mark.parametrize("sw2,sb2,q", [(0.5, 0.2, 1.0), (1.0, 0.0, 3.0), (2.0, 0.1, 0.4)])
def test_identity_length_map_and_chi1(sw2, sb2, q):
    assert T.length_map(identity, q, sw2, sb2) == pytest.approx(sw2 * q + sb2, rel=1e-12)
    assert T.chi1(identity, q, sw2) == pytest.approx(sw2, rel=1e-12)


def test_erf_closed_forms_williams_1997():
    # Williams 1997: E[erf(u1) erf(u2)] = (2/π) arcsin(2 Σ12 / √((1+2Σ11)(1+2Σ22)));
    # φ' = (2/√π) exp(−x²) gives E[φ'(u1) φ'(u2)] = (4/π) / √det(I + 2Σ).
    sw2, sb2 = 1.8, 0.1
    for q in [1e4, 1e6]:  # a steep, nearly sign-like activation: panels follow its scale
        assert T.length_map(erf, q, sw2, sb2) == pytest.approx(sw2 * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + sb2, rel=1e-12)
        assert T.chi1(erf, q, sw2) == pytest.approx(sw2 * 4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-10)
    for q in [0.2, 1.0, 4.0, 100.0]:  # 2-D: ~1e-14 up to q = 10, ~1e-7 at q = 100
        tol_2d = 1e-12 if q <= 10 else 1e-6
        assert T.length_map(erf, q, sw2, sb2) == pytest.approx(sw2 * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + sb2, rel=1e-10)
        assert T.chi1(erf, q, sw2) == pytest.approx(sw2 * 4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-10)
        for c in [0.0, 0.4, 0.95]:
            cmap = (sw2 * 2 / math.pi * math.asin(2 * c * q / (1 + 2 * q)) + sb2) / q
            assert T.correlation_map(erf, c, q, sw2, sb2) == pytest.approx(cmap, rel=tol_2d)
            det = (1 + 2 * q) ** 2 - (2 * c * q) ** 2
            assert T.chi_c(erf, c, q, sw2) == pytest.approx(sw2 * 4 / math.pi / math.sqrt(det), rel=tol_2d)


def test_length_map_slope_is_the_derivative_of_the_map():
    for act, q in [(tanh, 0.8), (erf, 1.5), (sigmoid, 2.0)]:
        h = 1e-5
        numeric = (T.length_map(act, q + h, 1.7, 0.1) - T.length_map(act, q - h, 1.7, 0.1)) / (2 * h)
        assert T.length_map_slope(act, q, 1.7) == pytest.approx(numeric, rel=1e-6)


# ---------------------------------------------------------------- fixed points, phase, depth scales


def test_fixed_point_outcomes():
    fp = T.fixed_point(relu, 1.5, 0.5)  # q* = σb² / (1 − σw²/2)
    assert fp.status == "converged" and fp.q_star == pytest.approx(2.0, rel=1e-8)
    fp = T.fixed_point(identity, 0.5, 0.2)
    assert fp.q_star == pytest.approx(0.4, rel=1e-8)
    for act, sw2, sb2 in [(relu, 2.5, 0.0), (relu, 2.0, 0.1), (identity, 1.2, 0.0)]:
        fp = T.fixed_point(act, sw2, sb2)
        assert fp.status == "diverged" and fp.q_star is None, (sw2, sb2, fp)
    fp = T.fixed_point(relu, 2.0, 0.0, q_init=3.0)  # neutral: every q is fixed, the input's stays
    assert fp.q_star == pytest.approx(3.0, rel=1e-12)
    fp = T.fixed_point(tanh, 0.8, 0.0)  # ordered, no bias: q -> 0
    assert fp.status == "converged" and fp.q_star < 1e-9
    fp = T.fixed_point(tanh, 1.0, 0.0)  # neutral at 0: slow (q ~ 1/(2l)), finished by bisection
    assert fp.status == "converged" and fp.q_star < 1e-6
    fp = T.fixed_point(tanh, 1.02, 0.0)  # just chaotic: small q* > 0, q ≈ (σw² − 1)/(2σw²)
    assert fp.status == "converged"
    assert T.length_map(tanh, fp.q_star, 1.02, 0.0) == pytest.approx(fp.q_star, rel=1e-8)
    assert fp.q_star == pytest.approx(0.02 / 2.04, rel=0.05)


def test_tanh_critical_point_at_sigma_b2_005_is_the_published_176():
    # Schoenholz et al. 2017 (Fig. 1, and Poole et al. 2016): the order-to-chaos line for tanh
    # crosses σb² = 0.05 at σw² ≈ 1.76. Bisection on χ₁(σw²) = 1 at the fixed point.
    lo, hi = 1.0, 3.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        fp = T.fixed_point(tanh, mid, 0.05)
        if T.chi1(tanh, fp.q_star, mid) < 1.0:
            lo = mid
        else:
            hi = mid
    assert lo == pytest.approx(1.76, abs=0.01)
    pred = T.mean_field_prediction(tanh, lo, 0.05, depth=10, x_second_moment=1.0)
    assert pred.phase == "critical" and abs(pred.xi_grad) > 1e4 and abs(pred.xi_c) > 1e4


def test_phases_and_depth_scales():
    assert T.phase(0.5) == "ordered" and T.phase(1.0005) == "critical" and T.phase(1.5) == "chaotic"
    assert T.depth_scale(1.0) == math.inf
    assert T.depth_scale(math.exp(-1 / 7)) == pytest.approx(7.0)
    assert T.depth_scale(math.exp(1 / 7)) == pytest.approx(-7.0)
    ordered = T.mean_field_prediction(tanh, 1.2, 0.05, depth=10, x_second_moment=1.0)
    assert ordered.phase == "ordered" and ordered.c_star == 1.0
    assert ordered.xi_c == pytest.approx(ordered.xi_grad) and ordered.xi_grad > 0
    assert ordered.predicted_factor == pytest.approx(math.sqrt(ordered.chi1))
    chaotic = T.mean_field_prediction(tanh, 2.5, 0.05, depth=10, x_second_moment=1.0)
    assert chaotic.phase == "chaotic" and chaotic.xi_grad < 0
    # c* is a fixed point of the correlation map, below 1, and stable there (χ_c < 1).
    assert chaotic.c_star < 1.0
    assert T.correlation_map(tanh, chaotic.c_star, chaotic.q_star, 2.5, 0.05) == pytest.approx(chaotic.c_star, abs=1e-7)
    assert 0 < chaotic.chi_c < 1 and chaotic.xi_c == pytest.approx(-1 / math.log(chaotic.chi_c))
    relu_bad = T.mean_field_prediction(relu, 2.5, 0.0, depth=10, x_second_moment=1.0)
    assert relu_bad.q_star is None and relu_bad.chi1 is None and "no fixed point" in relu_bad.detail
    assert len(relu_bad.layers) == 9  # the layer-by-layer prediction still exists
    assert relu_bad.layer_factor == pytest.approx(math.sqrt(2.5 / 2))


def test_layer_variances_convention_and_per_layer_sigma():
    qs = T.layer_variances(relu, 0.5, 3, [4.0, 2.0, 3.0], [0.1, 0.2, 0.0])
    assert qs[0] == pytest.approx(4.0 * 0.5 + 0.1)  # block 0: σw²₀ · mean(x²) + σb²₀
    assert qs[1] == pytest.approx(2.0 * qs[0] / 2 + 0.2)
    assert qs[2] == pytest.approx(3.0 * qs[1] / 2)
    # block l+1's σw² sets the factor between blocks l and l+1
    assert T.gradient_factors(relu, qs, [4.0, 2.0, 3.0]) == pytest.approx([1.0, math.sqrt(1.5)])
    with pytest.raises(ValueError, match="sigma_w2"):
        T.layer_variances(relu, 0.5, 3, [1.0, 2.0], 0.0)
    assert T.geometric_mean_factor([2.0, 8.0]) == pytest.approx(4.0)
    assert T.geometric_mean_factor([]) is None


# ---------------------------------------------------------------- Monte Carlo: wide MLP


def _simulate_mlp(act, x, sigma_w2, sigma_b2, width, rng):
    """Forward a random MLP (weights N(0, σw²/fan_in), biases N(0, σb²)), then backprop a random signal
    from the last hidden block by hand: δ_l = φ'(z_l) ⊙ W_{l+1}ᵀ δ_{l+1}. Columns are examples."""
    h, zs, weights = x, [], []
    for sw2, sb2 in zip(sigma_w2, sigma_b2):
        W = rng.standard_normal((width, h.shape[0])) * math.sqrt(sw2 / h.shape[0])
        b = rng.standard_normal((width, 1)) * math.sqrt(sb2)
        z = W @ h + b
        zs.append(z)
        weights.append(W)
        h = act.f(z)
    # one step of the length map, checked locally: the mean of φ(z)² over units against
    # E[φ(√q̂ z)²] with q̂ each example's measured mean of z² (no drift accumulated from below)
    local = [
        (float(np.mean(act.f(z) ** 2)), float(np.mean([gaussian.expectation(lambda u: act.f(u) ** 2, qb) for qb in np.mean(z * z, axis=0)])))
        for z in zs
    ]
    delta = act.df(zs[-1]) * rng.standard_normal(zs[-1].shape)
    norms = [np.linalg.norm(delta)]
    for layer in range(len(zs) - 2, -1, -1):
        delta = act.df(zs[layer]) * (weights[layer + 1].T @ delta)
        norms.append(np.linalg.norm(delta))
    return [float(np.mean(z * z)) for z in zs], norms[::-1], local


def _mlp_ensemble(act, sw2, sb2, seed, nets=8, depth=20, width=500, batch=16):
    """Ensemble averages over `nets` independent networks (the mean field predicts ensemble means:
    a single finite network drifts, e.g. ReLU's ‖h‖ performs a multiplicative random walk with
    variance ∝ depth/width, Hanin & Rolnick 2018). Input: 300 features of variance 0.64; block 0 has
    its own σw² = 1.5. Returns mean q per block, the ratio of mean squared gradient norms
    E‖δ_l‖²/E‖δ_last‖², the prediction, each network's measured layer_factor, and the one-step
    (measured, predicted) pairs of E[φ(z)²]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((300, batch)) * 0.8
    w2 = [1.5] + [sw2] * (depth - 1)
    b2 = [sb2] * depth
    qs, squares, factors, local = [], [], [], []
    for _ in range(nets):
        q, norms, steps = _simulate_mlp(act, x, w2, b2, width, rng)
        local.extend(steps)
        qs.append(q)
        squares.append(np.square(norms) / norms[-1] ** 2)
        factors.append((norms[0] / norms[-1]) ** (1 / (depth - 1)))
    pred = T.mean_field_prediction(act, sw2, sb2, depth, float(np.mean(x * x)), first_sigma_w2=1.5)
    return np.mean(qs, axis=0), np.sqrt(np.mean(squares, axis=0)), pred, np.array(factors), np.array(local)


@pytest.mark.parametrize(
    "act,sw2,sb2,q_tol",
    [(tanh, 1.2, 0.05, 0.10), (tanh, 2.5, 0.05, 0.10), (relu, 2.0, 0.0, 0.30), (sigmoid, 1.0, 1.0, 0.10)],
    ids=["tanh-ordered", "tanh-chaotic", "relu-he", "sigmoid-1-1"],
)
def test_wide_mlp_matches_length_map_and_gradient_factors(act, sw2, sb2, q_tol):
    # 8 networks of width 500, 16 examples, 20 blocks (seed-to-seed spread measured over 4 seeds:
    # one-step ≤ 1%, q trajectory ≤ 8% (ReLU 21%), profile ≤ 7%, layer_factor ≤ 1.4%).
    q_mean, profile, pred, factors, local = _mlp_ensemble(act, sw2, sb2, seed=0)
    # the length map, one step at a time, on average over the 160 (network, block) pairs within 3%
    # (500 units sample E[φ(z)²] with up to 10% noise per pair for ReLU, shared by the examples, so
    # the mean of 160 pairs has about 1% noise)
    ratio = local[:, 0] / local[:, 1]
    assert abs(np.mean(ratio) - 1) < 0.03
    # the ensemble's mean q per block against the map iterated from the actual input; contracting
    # maps keep the drift small (10%), ReLU with He init does not contract: a finite network's q
    # walks multiplicatively (log-variance about 5/width per block), hence 30% there
    np.testing.assert_allclose(q_mean, pred.q, rtol=q_tol)
    # the gradient profile √(E‖δ_l‖² / E‖δ_last‖²) within 12% of the product of predicted factors
    predicted_profile = np.cumprod(pred.layers[::-1])[::-1]
    np.testing.assert_allclose(profile[:-1], predicted_profile, rtol=0.12)
    # every single network's layer_factor (first/last)^(1/19) within 2.5% of the predicted one
    np.testing.assert_allclose(factors, pred.layer_factor, rtol=0.025)


@pytest.mark.parametrize("sw2", [1.0, 2.5], ids=["ordered", "chaotic"])
def test_wide_tanh_network_correlations_reach_c_star(sw2):
    # Inputs correlated 0.95 and 0.05 with a third, pushed through 60 tanh blocks (σb² = 0.05) of
    # width 400, 8 networks: the mean correlation of the pre-activations settles at c* (1 in the
    # ordered phase; the correlation map's stable fixed point, about 0.45, in the chaotic phase,
    # where ξ_c ≈ 12 blocks) within 0.03.
    rng = np.random.default_rng(7)
    sb2, width, depth = 0.05, 400, 60
    pred = T.mean_field_prediction(tanh, sw2, sb2, depth, 1.0)
    finals = []
    for _ in range(8):
        a = rng.standard_normal(width)
        h = np.stack([a] + [c0 * a + math.sqrt(1 - c0 * c0) * rng.standard_normal(width) for c0 in (0.95, 0.05)], axis=1)
        for _ in range(depth):
            W = rng.standard_normal((width, width)) * math.sqrt(sw2 / width)
            z = W @ h + rng.standard_normal((width, 1)) * math.sqrt(sb2)
            h = tanh.f(z)
        norms = np.sqrt(np.sum(z * z, axis=0))
        finals.append([z[:, 0] @ z[:, k] / (norms[0] * norms[k]) for k in (1, 2)])
    np.testing.assert_allclose(np.mean(finals, axis=0), pred.c_star, atol=0.03)


def test_sigmoid_at_unit_variances_vanishes_at_021_per_layer():
    pred = T.mean_field_prediction(sigmoid, 1.0, 1.0, depth=20, x_second_moment=1.0)
    assert pred.predicted_factor == pytest.approx(0.21, abs=0.01)


# ---------------------------------------------------------------- BatchNorm (Yang et al. 2019)


def test_batchnorm_factor_values_and_where_there_is_none():
    assert batchnorm.batchnorm_gradient_factor(relu) == pytest.approx(math.sqrt(math.pi / (math.pi - 1)), rel=1e-10)
    assert batchnorm.batchnorm_gradient_factor(relu) == pytest.approx(1.2112, abs=1e-4)
    assert batchnorm.batchnorm_gradient_factor(identity) == pytest.approx(1.0, rel=1e-10)
    assert batchnorm.batchnorm_gradient_factor(relu, norm="layernorm") is None
    assert batchnorm.batchnorm_gradient_factor(relu, norm="lrn") is None
    assert batchnorm.batchnorm_gradient_factor(relu, placement="post") is None
    constant = Act(lambda x: np.ones_like(x), lambda x: np.zeros_like(x))
    assert batchnorm.batchnorm_gradient_factor(constant) is None


def _simulate_bn_mlp(act, x, sigma_w2, width, rng, eps=1e-5):
    """linear → BatchNorm (batch statistics, γ = 1, β = 0) → φ, forward and hand-written backward;
    returns ‖∂L/∂z_l‖ for every block (z before the norm). Columns are examples."""
    h, cache = x, []
    for sw2 in sigma_w2:
        W = rng.standard_normal((width, h.shape[0])) * math.sqrt(sw2 / h.shape[0])
        z = W @ h
        s = np.sqrt(z.var(axis=1, keepdims=True) + eps)
        zhat = (z - z.mean(axis=1, keepdims=True)) / s
        cache.append((W, s, zhat))
        h = act.f(zhat)
    grad_h = rng.standard_normal(h.shape)
    norms = []
    for W, s, zhat in reversed(cache):
        g = act.df(zhat) * grad_h
        grad_z = (g - g.mean(axis=1, keepdims=True) - zhat * (g * zhat).mean(axis=1, keepdims=True)) / s
        norms.append(np.linalg.norm(grad_z))
        grad_h = W.T @ grad_z
    return norms[::-1]


@pytest.mark.parametrize("act", [relu, tanh], ids=["relu", "tanh"])
def test_wide_batchnorm_mlp_gradient_grows_as_predicted(act):
    # width 500, batch 256, 12 blocks; block 0's σw² (and the input's variance 0.5) differ on purpose.
    rng = np.random.default_rng(1)
    depth = 12
    x = rng.standard_normal((200, 256)) * math.sqrt(0.5) + 3.0  # the mean is removed by BN
    w2 = [3.0] + [2.0] * (depth - 1)
    norms = _simulate_bn_mlp(act, x, w2, 500, rng)
    predicted = batchnorm.batchnorm_gradient_factors(act, w2, depth, input_batch_variance=0.5)
    # blocks 1 … depth−1: the geometric mean of the measured factors within 2% of the prediction
    measured = (norms[1] / norms[-1]) ** (1 / (depth - 2))
    assert measured == pytest.approx(batchnorm.batchnorm_gradient_factor(act), rel=0.02)
    assert predicted[1:] == pytest.approx([batchnorm.batchnorm_gradient_factor(act)] * (depth - 2))
    # block 0 → 1, with its own σw² and input variance, within 5%
    assert norms[0] / norms[1] == pytest.approx(predicted[0], rel=0.05)


def test_finite_batch_batchnorm_factor_closed_forms():
    # a linear BatchNorm stack: (B - 2)/(B - 3) (1/chi2 and the projection by hand); ReLU and leaky: the large-batch limit as B grows
    for B in (4, 5, 8, 33, 1000):
        assert batchnorm.batchnorm_gradient_factor_finite_batch(1.0, B) == pytest.approx(math.sqrt((B - 2) / (B - 3)), rel=1e-13)
    assert batchnorm.batchnorm_gradient_factor_finite_batch(0.0, 10**8) == pytest.approx(math.sqrt(math.pi / (math.pi - 1)), rel=1e-7)
    leaky = batchnorm.batchnorm_gradient_factor(NumpyLeaky(0.2), "batchnorm", "pre")
    assert batchnorm.batchnorm_gradient_factor_finite_batch(0.2, 10**8) == pytest.approx(leaky, rel=1e-7)
    factors = [batchnorm.batchnorm_gradient_factor_finite_batch(0.0, B) for B in (4, 8, 16, 64, 256)]
    assert factors == sorted(factors, reverse=True)  # smaller batches explode faster
    with pytest.raises(ValueError, match="at least 4"):
        batchnorm.batchnorm_gradient_factor_finite_batch(0.0, 3)


class NumpyLeaky:
    def __init__(self, slope):
        self.slope = slope

    def f(self, x):
        return np.where(x > 0, x, self.slope * x)

    def df(self, x):
        return np.where(x > 0, 1.0, self.slope)


@pytest.mark.parametrize("batch", [8, 16])
def test_finite_batch_batchnorm_factor_against_a_monte_carlo_of_wide_relu_stacks(batch):
    # an independent computation: float64 torch, linear (He) -> BatchNorm over the batch -> ReLU,
    # width 512, 20 blocks, 3 seeds; the growth of ||dL/dz|| per block from block 6 (the batch has
    # reached BatchNorm's fixed point) to block 18, geometric mean over seeds. Measured here:
    # 1.3401 at B = 8 and 1.2606 at B = 16 against 1.3372 and 1.2609; the large-batch limit 1.2112
    # is 10% and 4% away.
    torch = pytest.importorskip("torch")
    width, depth, first = 512, 20, 6
    logs = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        h = torch.randn(batch, width, generator=g, dtype=torch.float64)
        zs = []
        for _ in range(depth):
            z = h @ (torch.randn(width, width, generator=g, dtype=torch.float64) * math.sqrt(2.0 / width)).T
            z.requires_grad_(True) if not zs else None
            z.retain_grad()
            zs.append(z)
            h = torch.relu((z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5))
        (h * torch.randn(batch, width, generator=g, dtype=torch.float64)).sum().backward()
        norms = [float(z.grad.norm()) for z in zs]
        logs.append(math.log(norms[first] / norms[depth - 2]) / (depth - 2 - first))
    measured = math.exp(sum(logs) / len(logs))
    predicted = batchnorm.batchnorm_gradient_factor_finite_batch(0.0, batch)
    assert measured == pytest.approx(predicted, rel=0.015)
    assert abs(measured / math.sqrt(math.pi / (math.pi - 1)) - 1) > 0.03  # the correction is what is measured


# ---------------------------------------------------------------- recurrent (Pascanu et al. 2013)


def test_max_derivative_and_top_singular_values():
    assert recurrent.max_abs_derivative(tanh) == pytest.approx(1.0)
    assert recurrent.max_abs_derivative(sigmoid) == pytest.approx(0.25)
    rng = np.random.default_rng(2)
    n, std = 400, 0.05
    W = rng.standard_normal((n, n)) * std
    assert np.linalg.norm(W, 2) == pytest.approx(recurrent.top_singular_value("normal", n, std=std), rel=0.03)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    assert np.linalg.norm(1.3 * Q, 2) == pytest.approx(recurrent.top_singular_value("orthogonal", n, gain=1.3), rel=1e-10)
    assert recurrent.top_singular_value("identity", n, gain=0.9) == 0.9
    with pytest.raises(ValueError, match="init"):
        recurrent.top_singular_value("sparse", n)


def test_recurrent_step_bound_holds_and_is_tight_for_a_linear_orthogonal_rnn():
    rng = np.random.default_rng(3)
    n = 64
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    W = 1.1 * Q
    bound = recurrent.recurrent_step_bound(recurrent.max_abs_derivative(tanh), recurrent.top_singular_value("orthogonal", n, gain=1.1))
    for _ in range(5):  # Jacobian of h_t = tanh(W h_{t-1} + x_t) at random states
        pre = W @ rng.standard_normal(n) + rng.standard_normal(n)
        jac = np.diag(tanh.df(pre)) @ W
        assert np.linalg.norm(jac, 2) <= bound + 1e-12
    # identity activation (γ = 1): the bound is attained
    assert np.linalg.norm(np.eye(n) @ W, 2) == pytest.approx(recurrent.recurrent_step_bound(1.0, 1.1))


@pytest.mark.parametrize("forget_bias", [0.0, 1.0, 3.0])
def test_lstm_cell_path_factor_with_small_weights(forget_bias):
    # A numpy LSTM with weights of std 1e-3: perturb c_0 and watch c_T; per step the change is σ(b_f).
    rng = np.random.default_rng(4)
    n, steps = 16, 10
    U = rng.standard_normal((4 * n, n)) * 1e-3
    V = rng.standard_normal((4 * n, n)) * 1e-3
    b = np.zeros(4 * n)
    b[n : 2 * n] = forget_bias
    xs = rng.standard_normal((steps, n))

    def run(c0):
        h, c = np.zeros(n), c0
        for x in xs:
            a = U @ x + V @ h + b
            i, f, o, g = _sigmoid(a[:n]), _sigmoid(a[n : 2 * n]), _sigmoid(a[2 * n : 3 * n]), np.tanh(a[3 * n :])
            c = f * c + i * g
            h = o * np.tanh(c)
        return c

    c0 = rng.standard_normal(n)
    e = np.zeros(n)
    e[0] = 1e-6
    ratio = (run(c0 + e)[0] - run(c0 - e)[0]) / (2e-6)
    assert ratio ** (1 / steps) == pytest.approx(recurrent.lstm_cell_factor(forget_bias), rel=2e-3)


# ---------------------------------------------------------------- residual networks


def test_residual_recursion_closed_forms():
    he_relu = [residual.BranchLayer(2.0, 0.0, relu)]
    m = residual.residual_moments(he_relu, 3, 1.0, x_second_moment=1.0)
    assert m[1].second_moment == pytest.approx(2.0)  # centred stream: (1 + α²) q
    assert m[1].mean == pytest.approx(math.sqrt(1 / math.pi))  # α E[relu(√2 z)]
    assert m[1].variance == pytest.approx(1.0 + (1 - 1 / math.pi))
    q1, m1 = m[1].second_moment, m[1].mean
    assert m[2].second_moment == pytest.approx(2 * q1 + 2 * m1 * math.sqrt(q1 / math.pi))
    assert residual.residual_gradient_factors(he_relu, 1.0, m) == pytest.approx([math.sqrt(2)] * 3)
    assert residual.residual_gradient_factors(he_relu, 0.5, m) == pytest.approx([math.sqrt(1.25)] * 3)
    # a branch ending in a linear layer has a zero-mean output: exact doubling at α = 1
    linear_end = [residual.BranchLayer(2.0, 0.0, relu), residual.BranchLayer(1.0)]
    m = residual.residual_moments(linear_end, 4, 1.0, x_second_moment=0.7)
    assert [s.second_moment for s in m] == pytest.approx([0.7 * 2**k for k in range(5)])
    # BatchNorm: variance grows by α² Var relu(z) = α² (1/2 − 1/(2π)) per block, linearly
    bn = [residual.BranchLayer(2.0, 0.0, relu, batchnorm=True)]
    m = residual.residual_moments(bn, 5, 0.5, x_second_moment=1.0)
    assert [s.variance for s in m] == pytest.approx([1.0 + k * 0.25 * (0.5 - 0.5 / math.pi) for k in range(6)])
    with pytest.raises(ValueError, match="normalizes some"):
        residual.residual_moments([residual.BranchLayer(2.0, 0.0, relu, True), residual.BranchLayer(1.0)], 2, 1.0, 1.0)


def _simulate_residual(branch_kind, alpha, depth, width, batch, rng, branch_layers=1):
    """x_{l+1} = x_l + α·branch(x_l), the branch `branch_layers` times relu(W ·) with He init
    ("plain") or relu(BN(W ·)) ("bn"); forward, then the stream's gradient by hand from a random
    signal at the top. Columns are examples. Returns per-stream (mean x², mean x, mean per-unit
    batch variance) and ‖∂L/∂x_l‖ for l = 0 … depth."""
    x = rng.standard_normal((width, batch))
    stats, blocks = [(float(np.mean(x * x)), float(np.mean(x)), float(np.mean(x.var(axis=1))))], []
    for _ in range(depth):
        h, cache = x, []
        for _ in range(branch_layers):
            W = rng.standard_normal((width, width)) * math.sqrt(2.0 / width)
            y = W @ h
            if branch_kind == "bn":
                s = y.std(axis=1, keepdims=True)
                y = (y - y.mean(axis=1, keepdims=True)) / s
            else:
                s = None
            cache.append((W, s, y))
            h = relu.f(y)
        blocks.append(cache)
        x = x + alpha * h
        stats.append((float(np.mean(x * x)), float(np.mean(x)), float(np.mean(x.var(axis=1)))))
    g = rng.standard_normal(x.shape)
    norms = [np.linalg.norm(g)]
    for cache in reversed(blocks):
        gb = g
        for W, s, y in reversed(cache):
            gy = relu.df(y) * gb
            if s is not None:
                gy = (gy - gy.mean(axis=1, keepdims=True) - y * (gy * y).mean(axis=1, keepdims=True)) / s
            gb = W.T @ gy
        g = g + alpha * gb
        norms.append(np.linalg.norm(g))
    return stats, norms[::-1]


@pytest.mark.parametrize("alpha,layers", [(1.0, 1), (0.5, 1), (0.5, 2)])
def test_wide_residual_relu_stream_and_gradient(alpha, layers):
    # 8 networks of width 500, 8 examples, 8 blocks, ensemble means (spread over 4 seeds, one-layer
    # branches: q ≤ 8%, mean ≤ 4%, gradient profile ≤ 5.5%).
    rng = np.random.default_rng(5)
    depth, branch = 8, [residual.BranchLayer(2.0, 0.0, relu)] * layers
    runs = [_simulate_residual("plain", alpha, depth, 500, 8, rng, layers) for _ in range(8)]
    q = np.mean([[s[0] for s in stats] for stats, _ in runs], axis=0)
    m = np.mean([[s[1] for s in stats] for stats, _ in runs], axis=0)
    profile = np.sqrt(np.mean([np.square(norms) / norms[-1] ** 2 for _, norms in runs], axis=0))
    moments = residual.residual_moments(branch, depth, alpha, x_second_moment=q[0], x_mean=m[0])
    np.testing.assert_allclose(q, [s.second_moment for s in moments], rtol=0.12)
    np.testing.assert_allclose(m[1:], [s.mean for s in moments[1:]], rtol=0.08)
    factors = residual.residual_gradient_factors(branch, alpha, moments)
    np.testing.assert_allclose(profile[:-1], np.cumprod(factors[::-1])[::-1], rtol=0.08)


def test_wide_residual_batchnorm_variance_grows_linearly():
    rng = np.random.default_rng(6)
    depth, alpha = 20, 1.0
    stats, norms = _simulate_residual("bn", alpha, depth, 400, 128, rng)
    branch = [residual.BranchLayer(2.0, 0.0, relu, batchnorm=True)]
    moments = residual.residual_moments(branch, depth, alpha, stats[0][0], stats[0][1], x_batch_variance=stats[0][2])
    # per-unit batch variance of the stream: Var(x_0) + l α² (1/2 − 1/(2π)), within 5%
    np.testing.assert_allclose([s[2] for s in stats], [m.batch_variance for m in moments], rtol=0.05)
    factors = residual.residual_gradient_factors(branch, alpha, moments)
    predicted_profile = np.cumprod(factors[::-1])[::-1]
    np.testing.assert_allclose(np.array(norms[:-1]) / norms[-1], predicted_profile, rtol=0.05)


# --- branch_delta_gain: how much of the stream's gradient reaches a residual branch's first layer ---


class _Relu:
    kinks = (0.0,)

    @staticmethod
    def f(x):
        return np.maximum(x, 0.0)

    @staticmethod
    def df(x):
        return (x > 0).astype(float)


def test_branch_delta_gain_closed_forms():
    relu = _Relu()
    stream = residual.StreamMoments(second_moment=3.0, mean=0.0, variance=3.0, batch_variance=2.5)
    # one ReLU layer, no norm: E[relu'(u)^2] = 1/2 whatever the pre-activation variance
    assert residual.branch_delta_gain([residual.BranchLayer(2.0, 0.0, relu)], stream) == pytest.approx(0.5)
    # two: 1/2 * sigma_w2 of the second layer * 1/2
    two = [residual.BranchLayer(2.0, 0.0, relu), residual.BranchLayer(1.5, 0.0, relu)]
    assert residual.branch_delta_gain(two, stream) == pytest.approx(0.25 * 1.5)
    # BatchNorm: divided by the batch std^2 of z = sigma_w2 * the stream's batch variance
    assert residual.branch_delta_gain([residual.BranchLayer(2.0, 0.0, relu, batchnorm=True)], stream) == pytest.approx(0.5 / (2.0 * 2.5))
    # two BN layers: the second divides by sigma_w2 * Var relu(z) = sigma_w2 (1/2 - 1/(2 pi)), then sigma_w2 comes back
    bn2 = [residual.BranchLayer(2.0, 0.0, relu, batchnorm=True), residual.BranchLayer(3.0, 0.0, relu, batchnorm=True)]
    expected = 0.5 / (2.0 * 2.5) * 0.5 / (3.0 * (0.5 - 1 / (2 * math.pi))) * 3.0
    assert residual.branch_delta_gain(bn2, stream) == pytest.approx(expected)
    # a linear layer (no activation) without norm: only its sigma_w2 when it is not the first
    assert residual.branch_delta_gain([residual.BranchLayer(2.0, 0.0, relu), residual.BranchLayer(4.0, 0.0, None)], stream) == pytest.approx(0.5 * 4.0)


def test_branch_delta_gain_against_a_wide_numpy_branch():
    # ||dL/dz|| / ||g|| for z = W1 x, r = relu(W2 relu(z)), g the gradient arriving at r: one draw, width 2000
    rng = np.random.default_rng(0)
    n, batch = 2000, 64
    x = rng.normal(0, math.sqrt(3.0), (batch, n))
    w1 = rng.normal(0, math.sqrt(2.0 / n), (n, n))
    w2 = rng.normal(0, math.sqrt(1.5 / n), (n, n))
    z1 = x @ w1.T
    z2 = np.maximum(z1, 0) @ w2.T
    g = rng.normal(0, 1, (batch, n))
    dz2 = g * (z2 > 0)
    dz1 = (dz2 @ w2) * (z1 > 0)
    measured = (np.linalg.norm(dz1) / np.linalg.norm(g)) ** 2
    stream = residual.StreamMoments(3.0, 0.0, 3.0)
    predicted = residual.branch_delta_gain([residual.BranchLayer(2.0, 0.0, _Relu()), residual.BranchLayer(1.5, 0.0, _Relu())], stream)
    assert measured == pytest.approx(predicted, rel=0.03)
